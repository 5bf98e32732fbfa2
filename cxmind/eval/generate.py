"""Generation backends for evaluation: Hugging Face ``generate`` (CPU/GPU) and vLLM offline (GPU).

Both see exactly what training saw: prompts from ``cxmind.data.prompts.prompt_messages`` (same
format instructions) and images from ``cxmind.data.images.load_image`` (same RGB conversion and
pixel budget). Decoding is greedy by default with fixed seeds, so a run is reproducible.
``generate_predictions`` appends one JSON line per record and resumes where a run stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cxmind.data.images import ImageBudget, load_image
from cxmind.data.prompts import prompt_messages

__all__ = [
    "BACKENDS",
    "GenerationConfig",
    "HFBackend",
    "VLLMBackend",
    "generate_predictions",
    "load_backend",
    "read_predictions",
]

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings (greedy unless ``temperature > 0``)."""

    max_new_tokens: int = 1024
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # "auto", "bfloat16", "float16", "float32"
    budget: ImageBudget = field(default_factory=ImageBudget)


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
            n = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
            results.append((tokenizer.decode(ids[:n], skip_special_tokens=True), n))
        return results


class VLLMBackend:
    """vLLM offline inference (GPU); LoRA adapters through ``LoRARequest``."""

    def __init__(
        self,
        model: str,
        adapter: str | None = None,
        config: GenerationConfig | None = None,
        *,
        max_images: int = 2,
        gpu_memory_utilization: float = 0.8,
        tensor_parallel_size: int = 1,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:  # pragma: no cover - GPU hosts only
            raise ImportError("the vllm backend needs `pip install 'cxmind[vllm]'` on a GPU host") from error
        from transformers import AutoProcessor

        self.config = config or GenerationConfig()
        self.processor = AutoProcessor.from_pretrained(model)
        self.llm = LLM(
            model=model,
            dtype=self.config.dtype,
            seed=self.config.seed,
            limit_mm_per_prompt={"image": max_images},
            enable_lora=adapter is not None,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
        )
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
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs]


def load_backend(name: str, model: str, adapter: str | None, config: GenerationConfig) -> Backend:
    """The backend ``name`` ("hf" or "vllm") for ``model`` (+ ``adapter``)."""
    if name == "hf":
        return HFBackend(model, adapter, config)
    if name == "vllm":
        return VLLMBackend(model, adapter, config)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


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
    backend: Backend,
    out_path: Path,
    *,
    image_root_of: Callable[[Mapping[str, Any]], Path],
    config: GenerationConfig,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Predict every record not yet in ``out_path`` (append-only JSONL); returns all predictions by id.

    A record whose image cannot be loaded is written with ``error`` set and an empty prediction, so
    it is counted (as wrong) rather than silently dropped.
    """
    from tqdm.auto import tqdm

    from cxmind.data.images import ImageError

    done = read_predictions(out_path)
    todo = [r for r in records if r["id"] not in done]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="generate", unit=" records", disable=not progress)
    with open(out_path, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            prompts, ready, failed = [], [], []
            for record in batch:
                try:
                    root = image_root_of(record)
                    images = [load_image(root, rel, config.budget) for rel in record.get("images") or ()]
                except ImageError as error:
                    failed.append((record, f"image {error.reason}: {error}"))
                    continue
                prompts.append((prompt_messages(record), images))
                ready.append(record)
            outputs = backend.generate(prompts) if prompts else []
            lines = [_prediction(r, text, n) for r, (text, n) in zip(ready, outputs, strict=True)]
            lines += [_prediction(r, "", 0, error=message) for r, message in failed]
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                done[line["id"]] = line
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    return done


_KEPT = ("id", "task", "task_type", "source", "split", "question", "options", "answer", "solution", "images")


def _prediction(
    record: Mapping[str, Any], text: str, n_tokens: int, error: str | None = None
) -> dict[str, Any]:
    row = {key: record.get(key) for key in _KEPT}
    row.update(prediction=text, n_tokens=n_tokens)
    if error is not None:
        row["error"] = error
    return row
