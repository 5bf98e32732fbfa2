"""Check a built record set before training: images readable and big enough, prompts within budget.

Every problem becomes a line in ``validate.rejects.jsonl`` (id, reason, detail) and is counted by
reason; ``load_records`` then leaves those ids out. Nothing is truncated: a multimodal prompt that
does not fit the token budget is rejected whole, because cutting it would cut image tokens.

Images are decoded fully by default (truncated files pass a header read and would crash training);
``ValidationConfig(decode=False)`` (``--headers-only``) only reads headers, which is much faster. A bad
image or data row never stops validation: it becomes a reject whose detail names the record, the field
and the fix. The rejects file is replaced atomically when validation completes, so an interrupted run
leaves the previous one intact and never a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxmind.data.images import ImageBudget, ImageError, image_tokens, probe_size, read_image, resolve_under
from cxmind.data.prompts import prompt_messages
from cxmind.data.records import META_FILE, VALIDATE_REJECTS_FILE, image_roots, load_records
from cxmind.errors import UserError, require_model

__all__ = ["ValidationConfig", "ValidationReport", "prompt_tokens", "validate"]


@dataclass(frozen=True)
class ValidationConfig:
    """Limits to check. Token limits need ``model`` (a tokenizer or processor folder or Hub id)."""

    budget: ImageBudget = field(default_factory=ImageBudget)
    max_prompt_tokens: int | None = None  # text + image tokens of the prompt
    max_completion_tokens: int | None = None  # tokens of the gold solution (or answer) + end of turn
    model: str | None = None
    decode: bool = True  # decode every image fully; False reads headers only (fast; misses truncated files)

    def __post_init__(self) -> None:
        if (self.max_prompt_tokens or self.max_completion_tokens) and not self.model:
            raise UserError("token budgets need --model: the tokenizer that will train on these records")


@dataclass
class ValidationReport:
    """How many records were checked and why some were rejected."""

    checked: int = 0
    images_checked: int = 0
    rejected: Counter = field(default_factory=Counter)
    max_prompt_tokens_seen: int = 0

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def table(self) -> str:
        lines = [
            f"checked {self.checked} records, {self.images_checked} images; rejected {self.total_rejected}"
        ]
        lines += [f"  {reason:<32}{n:>9}" for reason, n in self.rejected.most_common()]
        if self.max_prompt_tokens_seen:
            lines.append(f"longest prompt: {self.max_prompt_tokens_seen} tokens")
        return "\n".join(lines)


class _ImageChecker:
    """Checks each distinct image once; returns its (width, height) or raises ImageError."""

    def __init__(self, roots: dict[str, Path], config: ValidationConfig) -> None:
        self.roots, self.config = roots, config
        self.cache: dict[tuple[str, str], tuple[int, int] | ImageError] = {}
        self.limit = config.budget.max_source_pixels

    def size(self, source: str, rel: str) -> tuple[int, int]:
        key = (source, rel)
        if key not in self.cache:
            self.cache[key] = self._check(source, rel)
        result = self.cache[key]
        if isinstance(result, ImageError):
            raise result
        return result

    def _check(self, source: str, rel: str) -> tuple[int, int] | ImageError:
        root = self.roots.get(source)
        if root is None:
            return ImageError(
                f"source {source!r} has no image root in {META_FILE} (roots: "
                f"{', '.join(sorted(self.roots)) or 'none'}); fix: correct the record's source or rebuild "
                "the record set",
                path=None,
                reason="missing",
            )
        try:
            path = resolve_under(root, rel)
            if self.config.decode:
                width, height = read_image(path, max_source_pixels=self.limit).size
            else:
                width, height = probe_size(path, max_source_pixels=self.limit)
            if min(width, height) < self.config.budget.min_side:
                minimum = self.config.budget.min_side
                message = f"{path}: {width}x{height} pixels, below the {minimum} px minimum side"
                return ImageError(message, path=path, reason="undersized")
            return width, height
        except ImageError as error:
            return error
        except Exception as error:  # a file no check foresaw: a reject, never a crash of the whole run
            return ImageError(
                f"image {rel!r} under {root} cannot be checked ({type(error).__name__}: {error}); fix: "
                "re-export or drop it (if it opens elsewhere, please report this as a cxmind bug)",
                path=root / rel,
                reason="corrupt",
            )


def validate(
    out: str | Path, config: ValidationConfig | None = None, *, progress: bool = True
) -> ValidationReport:
    """Validate every record of the set in ``out``; writes ``validate.rejects.jsonl`` there.

    The rejects file is written to a temporary file and renamed into place once every record has been
    checked: readers (``load_records``) see the previous complete file or the new one, never a part.
    """
    from tqdm.auto import tqdm

    config = config or ValidationConfig()
    out = Path(out)
    if config.model:  # a mistyped or uncached --model fails before any record or image is read
        require_model(config.model, markers=("tokenizer_config.json", "config.json"))
    dataset = load_records(out, decode_images=False, exclude_rejects=False)
    checker = _ImageChecker(image_roots(out), config)
    tokenizer = _load_tokenizer(config.model) if config.model else None
    report = ValidationReport()
    fd, tmp = tempfile.mkstemp(prefix=f".{VALIDATE_REJECTS_FILE}.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as rejects:
            for split in dataset:
                rows = tqdm(dataset[split], desc=f"validate {split}", unit=" records", disable=not progress)
                for row in rows:
                    report.checked += 1
                    problem = _check_row(row, checker, tokenizer, config, report)
                    if problem is not None:
                        reason, detail = problem
                        report.rejected[reason] += 1
                        line = {"id": row["id"], "split": split, "reason": reason, "detail": detail}
                        rejects.write(json.dumps(line) + "\n")
            rejects.flush()
            os.fsync(rejects.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; record sets are meant to be shared
        os.replace(tmp, out / VALIDATE_REJECTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    report.images_checked = len(checker.cache)
    return report


def _check_row(
    row: dict[str, Any],
    checker: _ImageChecker,
    tokenizer: Any,
    config: ValidationConfig,
    report: ValidationReport,
) -> tuple[str, str] | None:
    sizes = []
    for index, rel in enumerate(row["images"] or ()):
        field_name = f"images[{index}] of record {row['id']}"
        if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
            what = "contains a NUL byte" if isinstance(rel, str) and "\0" in rel else "is not a file path"
            fix = "fix: correct the data row (its data file is damaged or was written by a bug) or rebuild it"
            return "image invalid path", f"{field_name} {what} ({rel!r}); {fix}"
        try:
            sizes.append(checker.size(row["source"], rel))
        except ImageError as error:
            return f"image {error.reason}", f"{field_name}: {error}"
    if tokenizer is None:
        return None
    n_prompt = prompt_tokens(row, sizes, tokenizer, config.budget)
    report.max_prompt_tokens_seen = max(report.max_prompt_tokens_seen, n_prompt)
    if config.max_prompt_tokens is not None and n_prompt > config.max_prompt_tokens:
        return "prompt over token budget", f"{n_prompt} > {config.max_prompt_tokens} tokens"
    if config.max_completion_tokens is not None:
        target = row["solution"] or row["answer"]
        n_completion = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 1
        if n_completion > config.max_completion_tokens:
            return "completion over token budget", f"{n_completion} > {config.max_completion_tokens} tokens"
    return None


def prompt_tokens(
    row: Mapping[str, Any], sizes: list[tuple[int, int]], tokenizer: Any, budget: ImageBudget
) -> int:
    """Exact prompt length in tokens once the processor expands each image (``sizes``: width, height)."""
    text_ids = tokenizer.apply_chat_template(prompt_messages(row), tokenize=True, add_generation_prompt=True)
    if isinstance(text_ids, Mapping):  # transformers 5 returns a BatchEncoding
        text_ids = text_ids["input_ids"]
    # Each image placeholder is one <|image_pad|> in the template; the processor expands it.
    return len(text_ids) - len(sizes) + sum(image_tokens(w, h, budget) for w, h in sizes)


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)
