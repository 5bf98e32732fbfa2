"""Resume a full fine-tune with the weights it saved.

transformers' ``Trainer._load_from_checkpoint`` reads ``model.safetensors`` and calls
``model.load_state_dict(raw_keys, strict=False)``. Qwen2.5-VL saves its weights under the legacy
key names (``visual.*``, ``model.layers.*``) that ``from_pretrained`` converts on load, so the raw
load matches no key, only logs a warning, and the "resumed" run silently restarts from the initial
weights (seen with transformers 5.24). Loading the checkpoint through ``from_pretrained`` applies
the model's own key conversion; a strict ``load_state_dict`` then fails loudly on any mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

__all__ = ["ConvertedCheckpointMixin"]


class ConvertedCheckpointMixin:
    """Trainer mixin: full-model checkpoints are reloaded via ``from_pretrained`` (see module doc)."""

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
