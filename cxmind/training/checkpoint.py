"""Checkpoints of full fine-tunes that load and save under the names the rest of the world expects.

Two transformers 5.24 defects around Qwen2.5-VL's weight-name conversion, both silent:

- ``Trainer._load_from_checkpoint`` reads ``model.safetensors`` and calls
  ``model.load_state_dict(raw_keys, strict=False)``. Qwen2.5-VL saves its weights under the Hub's
  key names (``visual.*``, ``model.layers.*``) that ``from_pretrained`` converts on load, so the raw
  load matches no key, only logs a warning, and the "resumed" run restarts from the initial
  weights. We reload through ``from_pretrained`` (the model's own conversion) and a strict load.
- A model loaded under DeepSpeed ZeRO-3 keeps *every* conversion rule, used or not, and saving
  reverses them all: ``model.model.layers.*`` instead of ``model.layers.*``. transformers still
  reads such files, vLLM's loader does not. Under ZeRO-3 we drop the recorded rules, so saving
  falls back to the model type's standard mapping, as for a model loaded without ZeRO-3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

__all__ = ["ConvertedCheckpointMixin", "standard_save_names"]


def standard_save_names(model: Any) -> None:
    """Under ZeRO-3, make ``save_pretrained`` write the standard key names (see module doc)."""
    if not is_deepspeed_zero3_enabled():
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_weight_conversions", None):
        base._weight_conversions = None


class ConvertedCheckpointMixin:
    """Trainer mixin: standard names when saving, full-model checkpoints reloaded via ``from_pretrained``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        standard_save_names(self.model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        has_weights = (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
        if isinstance(target, PreTrainedModel) and has_weights and not self.is_fsdp_enabled:
            dtype = next(target.parameters()).dtype
            saved = type(target).from_pretrained(folder, dtype=dtype)
            target.load_state_dict(saved.state_dict(), strict=True)
            del saved
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
