"""SFT on cxmind data: TRL's ``SFTTrainer`` with a collator that refuses to cut through images.

TRL's vision collator truncates every sequence at ``max_length``. For a VLM that can drop part of
an image's ``<|image_pad|>`` run (the model then fails with a token/feature mismatch deep in the
forward pass) or silently cut the end of a gold trajectory. :class:`CXMindVisionCollator`
collates without truncation and raises, naming the records, when a sample exceeds ``max_length``;
``cxmind data validate --max-prompt-tokens/--max-completion-tokens`` rejects such rows upstream.

Loss masking is TRL's: for prompt/completion data (what :mod:`cxmind.training.data` produces)
``completion_only_loss`` masks the prompt and its image tokens with -100, and the completion's
end-of-turn token (``<|im_end|>``) is learned, so the model learns to stop.

The console shows one line per log step (:mod:`cxmind.training.console`); the full metrics go to
the ``report_to`` backends and ``trainer.state.log_history``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from cxmind.errors import UserError
from cxmind.training.checkpoint import ConvertedCheckpointMixin
from cxmind.training.console import (
    SFT_FIELDS,
    ActivationCheckpointingArgs,
    quiet_dependency_aliases,
    use_compact_console,
)

__all__ = ["CXMindSFTConfig", "CXMindSFTTrainer", "CXMindVisionCollator", "SequenceTooLongError"]


class SequenceTooLongError(UserError):
    """A training sample longer than ``max_length``: truncating it would cut image tokens or the answer."""


@dataclass
class CXMindVisionCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language collator, never truncating: over-long samples raise with their record ids.

    ``length_limit`` takes the role of TRL's ``max_length`` (which stays ``None`` so the parent
    never truncates).
    """

    length_limit: int | None = None

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [str(example.get("id", f"#{i}")) for i, example in enumerate(examples)]
        batch = super().torch_call(examples)
        if self.length_limit is not None:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            over = [(i, n) for i, n in zip(ids, lengths, strict=True) if n > self.length_limit]
            if over:
                listed = ", ".join(f"{i} ({n} tokens)" for i, n in over)
                raise SequenceTooLongError(
                    f"{len(over)} sample(s) exceed max_length={self.length_limit}: {listed}. Truncating "
                    "would cut image tokens or the gold trajectory; raise `max_length`, lower the image "
                    "`max_pixels`, or "
                    "reject long rows first with `cxmind data validate --max-prompt-tokens N "
                    "--max-completion-tokens M`"
                )
        return batch


@dataclass
class CXMindSFTConfig(ActivationCheckpointingArgs, SFTConfig):
    """``trl.SFTConfig`` with defaults for cxmind data (every TRL option stays available).

    ``max_length`` is a *limit*, not a truncation point: a longer sample raises (see module doc).
    ``remove_unused_columns`` is off because rows carry their record ``id`` for error messages.
    Activation checkpointing is on by default, set under its transformers 5 name
    (:class:`~cxmind.training.console.ActivationCheckpointingArgs`).
    """

    max_length: int | None = 4096
    remove_unused_columns: bool = False


class CXMindSFTTrainer(ConvertedCheckpointMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose vision collator raises instead of truncating, with a compact console
    (see module doc)."""

    def __init__(self, *args: Any, data_collator: Any = None, **kwargs: Any) -> None:
        quiet_dependency_aliases()
        super().__init__(*args, data_collator=data_collator, **kwargs)
        use_compact_console(self, SFT_FIELDS)
        if data_collator is None and isinstance(self.data_collator, DataCollatorForVisionLanguageModeling):
            # every field of TRL's collator carries over (also ones a later TRL adds), except truncation
            parent = self.data_collator
            kept = {
                f.name: getattr(parent, f.name)
                for f in fields(DataCollatorForVisionLanguageModeling)
                if f.init
            }
            self.data_collator = CXMindVisionCollator(
                **{**kept, "max_length": None}, length_limit=self.args.max_length
            )
