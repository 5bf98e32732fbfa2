"""Generation backends for evaluation: Hugging Face ``generate`` (CPU/GPU) and vLLM offline (GPU).

Both see exactly what training saw: prompts from ``cxmind.data.prompts.prompt_messages`` (same
format instructions) and images from ``cxmind.data.images.load_image`` (same RGB conversion and
pixel budget). Decoding is greedy by default with fixed seeds, so a run is reproducible, and both
count ``n_tokens`` the same way (generated tokens before the first end-of-turn/eos/pad token).
``generate_predictions`` appends one JSON line per record and resumes where a run stopped; each
line carries its record's :func:`record_fingerprint`, so a resume can tell whether the record that
prompted it is still the one being evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cxmind.data.images import ImageBudget, ImageError, image_tokens, load_image, probe_size, resolve_under
from cxmind.data.prompts import prompt_messages

__all__ = [
    "BACKENDS",
    "GenerationConfig",
    "HFBackend",
    "VLLMBackend",
    "count_until_stop",
    "generate_predictions",
    "load_backend",
    "longest_prompt_tokens",
    "lora_rank",
    "prompt_tokens",
    "read_predictions",
    "record_fingerprint",
    "require_backend",
]

BACKENDS = ("hf", "vllm")
_VLLM_MISSING = '--backend vllm needs vLLM: `pip install "cxmind[vllm]"` on a GPU host (or use --backend hf)'


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings (greedy unless ``temperature > 0``).

    ``max_model_len`` (vLLM only) is the context vLLM reserves KV cache for. ``None`` derives it as
    the longest prompt of the run + ``max_new_tokens``: vLLM's own default is the model's full
    context (128k tokens for Qwen2.5-VL), which does not fit a 24 GB card.
    """

    max_new_tokens: int = 1024
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # "auto", "bfloat16", "float16", "float32"
    budget: ImageBudget = field(default_factory=ImageBudget)
    max_model_len: int | None = None


class Backend(Protocol):
    """Generates completions for prompts given as chat messages plus their PIL images."""

    def generate(
        self, prompts: Sequence[tuple[list[dict[str, Any]], list[Any]]]
    ) -> list[tuple[str, int]]: ...


class HFBackend:
    """``transformers`` generation with left padding, batched; optional PEFT adapter."""

    def __init__(
        self, model: str, adapter: str | None = None, config: GenerationConfig | None = None
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config or GenerationConfig()
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"
        dtype = self.config.dtype if self.config.dtype != "auto" else "auto"
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        # generated ids end at the first end-of-turn or padding token; count only those before it
        self.stop_ids = {self.processor.tokenizer.pad_token_id, *eos} - {None}
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()

    def generate(self, prompts: Sequence[tuple[list[dict[str, Any]], list[Any]]]) -> list[tuple[str, int]]:
        import torch

        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True) for m, _ in prompts]
        images = [img for _, imgs in prompts for img in imgs]
        inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        sampling = self.config.temperature > 0
        torch.manual_seed(self.config.seed)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=sampling,
                temperature=self.config.temperature if sampling else None,
                top_p=self.config.top_p if sampling else None,
                top_k=None,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        tokenizer = self.processor.tokenizer
        results = []
        for ids in new.tolist():
            n = count_until_stop(ids, self.stop_ids)
            results.append((tokenizer.decode(ids[:n], skip_special_tokens=True), n))
        return results


def count_until_stop(ids: Sequence[int], stop_ids: set[int]) -> int:
    """Generated tokens before the first stop (end-of-turn/eos/pad) token: the ``n_tokens`` of both backends.

    The stop token itself is not counted; HF pads finished rows of a batch with it, and vLLM
    includes the eos it stopped on in ``token_ids``, so counting up to it makes the two agree.
    """
    return next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))


#: ``max_lora_rank`` values vLLM accepts (``LoRAConfig``); an adapter's rank is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class VLLMBackend:
    """vLLM offline inference (GPU); LoRA adapters through ``LoRARequest``.

    The engine is sized for this run rather than vLLM's defaults, which fail for cxmind models:
    ``max_model_len`` is ``config.max_model_len`` or ``max_prompt_tokens + max_new_tokens`` (vLLM would
    otherwise reserve KV cache for the full 128k context), and with an adapter ``max_lora_rank`` is
    the adapter's rank (vLLM's default 16 refuses the recipes' r=64) with ``max_loras=1``.
    """

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        config: GenerationConfig | None = None,
        *,
        max_prompt_tokens: int | None = None,
        max_images: int = 2,
        gpu_memory_utilization: float = 0.8,
        tensor_parallel_size: int = 1,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:  # pragma: no cover - GPU hosts only
            from cxmind.errors import MissingExtraError

            raise MissingExtraError(_VLLM_MISSING) from error
        from transformers import AutoProcessor

        self.config = config or GenerationConfig()
        if self.config.max_model_len is not None:
            max_model_len = self.config.max_model_len
        elif max_prompt_tokens is not None:
            max_model_len = max_prompt_tokens + self.config.max_new_tokens
        else:
            raise ValueError(
                "the vllm backend needs a context length: set GenerationConfig.max_model_len "
                "(--max-model-len) or pass max_prompt_tokens (the longest prompt of the run)"
            )
        self.processor = AutoProcessor.from_pretrained(model)
        self.stop_ids = _stop_ids(model, self.processor.tokenizer)
        engine: dict[str, Any] = {
            "model": model,
            "dtype": self.config.dtype,
            "seed": self.config.seed,
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": max_images},
            "enable_lora": adapter is not None,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if adapter is not None:
            rank = lora_rank(adapter)
            engine["max_lora_rank"] = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
            engine["max_loras"] = 1
        self.llm = LLM(**engine)
        self.sampling = SamplingParams(
            max_tokens=self.config.max_new_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=self.config.seed,
        )
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, adapter)

    def generate(self, prompts: Sequence[tuple[list[dict[str, Any]], list[Any]]]) -> list[tuple[str, int]]:
        requests = []
        for messages, images in prompts:
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            request: dict[str, Any] = {"prompt": text}
            if images:
                request["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
            requests.append(request)
        outputs = self.llm.generate(requests, self.sampling, lora_request=self.lora, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            # token_ids end with the eos vLLM stopped on; count as the HF backend does (without it)
            results.append((completion.text, count_until_stop(list(completion.token_ids), self.stop_ids)))
        return results


def _stop_ids(model: str, tokenizer: Any) -> set[int]:
    """The ids generation stops on: the model's ``generation_config`` eos ids, the tokenizer's eos and pad."""
    from transformers import GenerationConfig as HFGenerationConfig

    try:
        eos = HFGenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):  # no generation_config.json: vLLM stops on the tokenizer's eos
        eos = None
    eos = eos if isinstance(eos, list) else [eos]
    return {tokenizer.pad_token_id, tokenizer.eos_token_id, *eos} - {None}


def lora_rank(adapter: str) -> int:
    """The largest rank of a PEFT LoRA adapter (folder or Hub id): ``r`` and any ``rank_pattern`` value."""
    folder = Path(adapter)
    if folder.is_dir():
        path = folder / "adapter_config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(adapter, "adapter_config.json"))
    from cxmind.errors import MissingFileError, UserError

    if not path.is_file():
        raise MissingFileError(f"{path} not found: {adapter} is not a PEFT adapter")
    config = json.loads(path.read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    if max(ranks) < 1:
        raise UserError(f"{path}: no LoRA rank (`r`) found; is {adapter} a LoRA adapter?")
    return max(ranks)


def prompt_tokens(
    processor: Any, messages: list[dict[str, Any]], sizes: Sequence[tuple[int, int]], budget: ImageBudget
) -> int:
    """Prompt length in tokens once each image (``sizes``: original width, height) is expanded.

    Counted on the text the backends send (the processor's chat template), with one
    ``<|image_pad|>`` per image replaced by the image's tokens under ``budget``.
    """
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    n_text = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return n_text - len(sizes) + sum(image_tokens(w, h, budget) for w, h in sizes)


def longest_prompt_tokens(
    records: Iterable[Mapping[str, Any]],
    processor: Any,
    *,
    image_root_of: Callable[[Mapping[str, Any]], Path],
    budget: ImageBudget,
) -> int:
    """The longest prompt of ``records`` in tokens (image sizes from file headers, nothing decoded).

    Records whose images cannot be read are skipped: generation writes them as errors, unprompted.
    """
    longest = 0
    for record in records:
        try:
            root = image_root_of(record)
            sizes = [probe_size(resolve_under(root, rel)) for rel in record.get("images") or ()]
        except (ImageError, OSError):
            continue
        longest = max(longest, prompt_tokens(processor, prompt_messages(record), sizes, budget))
    return longest


def require_backend(name: str) -> None:
    """Raise a :class:`~cxmind.errors.UserError` before any output if backend ``name`` cannot run here."""
    from cxmind.errors import MissingExtraError, UserError

    if name not in BACKENDS:
        raise UserError(f"--backend {name}: use one of {', '.join(BACKENDS)}")
    if name == "vllm" and not _installed("vllm"):
        raise MissingExtraError(_VLLM_MISSING)


def _installed(module: str) -> bool:
    import importlib.util
    import sys

    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def load_backend(
    name: str,
    model: str,
    adapter: str | None,
    config: GenerationConfig,
    *,
    max_prompt_tokens: int | None = None,
) -> Backend:
    """The backend ``name`` ("hf" or "vllm") for ``model`` (+ ``adapter``).

    ``max_prompt_tokens`` (the run's longest prompt) sizes vLLM's context when ``config.max_model_len``
    is ``None``; the HF backend needs no such bound.
    """
    if name == "hf":
        return HFBackend(model, adapter, config)
    if name == "vllm":
        return VLLMBackend(model, adapter, config, max_prompt_tokens=max_prompt_tokens)
    from cxmind.errors import UserError

    raise UserError(f"backend must be one of {BACKENDS}, got {name!r}")


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Finished predictions by id; a torn last line (an interrupted run) is dropped from the file."""
    if not path.exists():
        return {}
    done: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break
            done[row["id"]] = row
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return done


def generate_predictions(
    records: Iterable[Mapping[str, Any]],
    backend: Backend | None,
    out_path: Path,
    *,
    image_root_of: Callable[[Mapping[str, Any]], Path],
    config: GenerationConfig,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Predict every record not yet in ``out_path`` (append-only JSONL); returns all predictions by id.

    A record whose image cannot be loaded is written with ``error`` set and an empty prediction, so
    it is counted (as wrong) rather than silently dropped. Each line stores its record's
    ``record_sha256`` (:func:`record_fingerprint`). ``backend`` may be ``None`` when every record is
    already predicted (a finished run is rescored without loading a model).
    """
    from tqdm.auto import tqdm

    done = read_predictions(out_path)
    todo = [r for r in records if r["id"] not in done]
    if todo and backend is None:
        raise ValueError(f"{len(todo)} records still need predictions but no backend was given")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="generate", unit=" records", disable=not progress)
    with open(out_path, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            prompts, ready, failed = [], [], []
            for record in batch:
                root = image_root_of(record)
                try:
                    images = [load_image(root, rel, config.budget) for rel in record.get("images") or ()]
                except ImageError as error:
                    failed.append((record, root, f"image {error.reason}: {error}"))
                    continue
                prompts.append((prompt_messages(record), images))
                ready.append((record, root))
            outputs = backend.generate(prompts) if prompts else []  # type: ignore[union-attr]
            lines = [
                _prediction(r, root, text, n) for (r, root), (text, n) in zip(ready, outputs, strict=True)
            ]
            lines += [_prediction(r, root, "", 0, error=message) for r, root, message in failed]
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                done[line["id"]] = line
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    return done


#: Record fields that decide a prediction (the prompt) or its score (the gold fields).
FINGERPRINT_FIELDS = (
    "id",
    "task",
    "task_type",
    "source",
    "question",
    "options",
    "answer",
    "solution",
    "images",
)


def record_fingerprint(record: Mapping[str, Any], image_root: str | os.PathLike[str] | None) -> str:
    """sha256 of what makes a record's prediction and its score, stored with each prediction.

    Covers :data:`FINGERPRINT_FIELDS`, the prompt messages as built now (so changed format
    instructions count as a change) and each image's byte size. Sizes rather than contents: one
    ``stat`` per image keeps the check cheap on large splits on every resume, and images rebuilt
    differently (another pixel budget, another source file) change size in practice.
    """
    sizes: list[int | None] = []
    for rel in record.get("images") or ():
        try:
            sizes.append(resolve_under(image_root, rel).stat().st_size if image_root is not None else None)
        except (ImageError, OSError):
            sizes.append(None)
    payload = {key: record.get(key) for key in FINGERPRINT_FIELDS}
    payload["prompt"] = prompt_messages(record)
    payload["image_bytes"] = sizes
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_KEPT = ("id", "task", "task_type", "source", "split", "question", "options", "answer", "solution", "images")


def _prediction(
    record: Mapping[str, Any],
    image_root: str | os.PathLike[str] | None,
    text: str,
    n_tokens: int,
    error: str | None = None,
) -> dict[str, Any]:
    """One predictions.jsonl line: the record's fields (for reading the file), its fingerprint, the output."""
    row = {key: record.get(key) for key in _KEPT}
    row.update(record_sha256=record_fingerprint(record, image_root), prediction=text, n_tokens=n_tokens)
    if error is not None:
        row["error"] = error
    return row
