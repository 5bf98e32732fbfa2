"""Records -> chat messages: the one place that decides what the model is asked.

Training (SFT/GRPO), validation (token budgets) and evaluation all build prompts here, so the
instructions a model was trained with are exactly the ones it is evaluated with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxmind.format import instructions

__all__ = ["prompt_messages", "user_text"]


def user_text(record: Mapping[str, Any]) -> str:
    """The user turn's text: the question, plus the format instructions for closed/open tasks."""
    question = record["question"]
    if record["task_type"] in ("closed", "open"):
        options = record.get("options") if record["task_type"] == "closed" else None
        return f"{question}\n\n{instructions(record['task_type'], options)}"
    return question


def prompt_messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Conversational prompt (TRL/transformers format): one image placeholder per image, then the text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in record.get("images") or ()]
    content.append({"type": "text", "text": user_text(record)})
    return [{"role": "user", "content": content}]
