"""Tests of ``cxmind.testing``: the offline tiny Qwen2.5-VL checkpoint every other model test relies on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from trl.chat_template_utils import (
    get_training_chat_template,
    qwen2_5_vl_chat_template,
    qwen2_5_vl_training_chat_template,
)

import cxmind.testing as tiny
from cxmind.errors import UserError
from cxmind.testing import (
    BUILDER_VERSION,
    FORMAT_TOKENS,
    MODEL_SIZES,
    QWEN_SPECIAL_TOKENS,
    build_tiny_qwen25_vl,
    load_tiny_qwen25_vl,
)

COMPLETION = (
    "<think>Option A suggests a pleural effusion, which matches the blunted costophrenic angle.</think> "
    "<answer>A) ✅</answer>\n<think>Option B suggests a pneumothorax, but no pleural line is seen.</think> "
    "<answer>B) ❌</answer>\n<answer>Differential Diagnoses: [Atelectasis, Lung Opacity]</answer>"
)
QUESTION: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a pleural effusion?"}]}
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module_name(checkpoint_key: str) -> str:
    """Map an on-disk (original Qwen2.5-VL layout) weight name to the transformers 5 module name."""
    if checkpoint_key.startswith("visual."):
        return f"model.{checkpoint_key}"
    if checkpoint_key.startswith("model."):
        return f"model.language_model.{checkpoint_key.removeprefix('model.')}"
    return checkpoint_key


def _gray_noise(size: int = 112, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L").convert("RGB")


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _assert_no_warnings() -> Iterator[None]:
    """Fail on any Python warning and on any transformers log record at WARNING or above.

    transformers reports most config inconsistencies through its own logger (which does not propagate to the
    root logger, hence the handler) rather than through ``warnings``.
    """
    handler = _ListHandler()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        hf_logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert [record.getMessage() for record in handler.records] == []


@pytest.fixture(scope="module")
def processor(tiny_qwen25_vl_path: Path) -> Qwen2_5_VLProcessor:
    return AutoProcessor.from_pretrained(tiny_qwen25_vl_path)


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen25_vl_path: Path) -> Qwen2Tokenizer:
    loaded = AutoTokenizer.from_pretrained(tiny_qwen25_vl_path)
    assert isinstance(loaded, Qwen2Tokenizer)
    return loaded


@pytest.fixture(scope="module")
def model(tiny_qwen25_vl_path: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25_vl_path).eval()


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_locally_trained_byte_level_bpe(
    tiny_qwen25_vl_path: Path, tokenizer: Qwen2Tokenizer
) -> None:
    backend = json.loads((tiny_qwen25_vl_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert backend["model"]["type"] == "BPE"
    assert backend["decoder"]["type"] == "ByteLevel"
    assert "ByteLevel" in json.dumps(backend["pre_tokenizer"])
    assert type(tokenizer) is Qwen2Tokenizer
    assert 2000 <= len(tokenizer) <= 4000
    # Trained on chest X-ray text: common findings are single BPE pieces, not byte soup.
    for word in (" effusion", " pneumothorax", " atelectasis", " consolidation", " Cardiomegaly"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    # Byte-level: anything round-trips, with no unknown token.
    text = "Pleural effusion — 2.5 cm, ünïcode 🫁 \t tabs\r\nand CRLF"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("token", QWEN_SPECIAL_TOKENS + FORMAT_TOKENS)
def test_special_and_format_tokens_are_single_ids(tokenizer: Qwen2Tokenizer, token: str) -> None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.decode(ids) == token
    # Inside text too (added tokens are matched before BPE).
    assert tokenizer.convert_tokens_to_ids(token) in tokenizer.encode(f"x{token}y", add_special_tokens=False)


def test_special_vs_format_tokens(tokenizer: Qwen2Tokenizer) -> None:
    added = tokenizer.added_tokens_decoder
    by_content = {token.content: token for token in added.values()}
    assert all(by_content[token].special for token in QWEN_SPECIAL_TOKENS)
    assert not any(by_content[token].special for token in FORMAT_TOKENS)
    assert set(QWEN_SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
    assert not set(FORMAT_TOKENS) & set(tokenizer.all_special_tokens)
    # Qwen's id layout: the special tokens are contiguous, right after the BPE vocabulary, in Qwen's order.
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert ids == list(range(tokenizer.vocab_size, tokenizer.vocab_size + len(QWEN_SPECIAL_TOKENS)))


def test_decode_keeps_format_tokens_and_drops_special_ones(tokenizer: Qwen2Tokenizer) -> None:
    ids = tokenizer.encode(COMPLETION, add_special_tokens=False)
    for token in FORMAT_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == COMPLETION
    assert tokenizer.decode(ids) == COMPLETION
    wrapped = tokenizer.encode(f"<|im_start|>assistant\n{COMPLETION}<|im_end|><|endoftext|>")
    assert tokenizer.decode(wrapped, skip_special_tokens=True) == f"assistant\n{COMPLETION}"


def test_eos_pad_bos_and_config_ids(
    tokenizer: Qwen2Tokenizer, model: Qwen2_5_VLForConditionalGeneration
) -> None:
    ids: dict[str, Any] = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    im_end, endoftext = ids["<|im_end|>"], ids["<|endoftext|>"]
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", im_end)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", endoftext)
    assert tokenizer.bos_token is None and tokenizer.bos_token_id is None
    assert tokenizer.unk_token is None
    config = model.config
    text_config: Any = config.text_config
    rows = model.model.language_model.embed_tokens.num_embeddings
    assert max(ids.values()) < len(tokenizer) <= rows == text_config.vocab_size

    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert text_config.eos_token_id == im_end
    assert text_config.pad_token_id == endoftext

    generation = model.generation_config
    assert generation.eos_token_id == [im_end, endoftext]
    assert generation.pad_token_id == endoftext
    assert not generation.do_sample  # greedy by default, unlike the real checkpoint's sampling defaults


def test_tokenizer_reload_is_identical(tiny_qwen25_vl_path: Path, tokenizer: Qwen2Tokenizer) -> None:
    fresh = tiny.build_tiny_tokenizer()
    assert fresh.get_vocab() == tokenizer.get_vocab()
    assert fresh.encode(COMPLETION) == tokenizer.encode(COMPLETION)
    assert fresh.all_special_ids == tokenizer.all_special_ids
    assert fresh.eos_token_id == tokenizer.eos_token_id and fresh.pad_token_id == tokenizer.pad_token_id


# ------------------------------------------------------------------------------------------ chat template


def test_chat_template_is_trls_qwen25_vl_template(
    tiny_qwen25_vl_path: Path, processor: Qwen2_5_VLProcessor, tokenizer: Qwen2Tokenizer
) -> None:
    assert processor.chat_template == qwen2_5_vl_chat_template
    assert processor.tokenizer.chat_template == qwen2_5_vl_chat_template
    assert tokenizer.chat_template == qwen2_5_vl_chat_template
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Is there a pleural effusion?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("use_processor", [True, False], ids=["processor", "tokenizer"])
def test_training_chat_template_masks_assistant_only(
    processor: Qwen2_5_VLProcessor, tokenizer: Qwen2Tokenizer, use_processor: bool
) -> None:
    processing_class: Any = processor if use_processor else tokenizer
    template = get_training_chat_template(processing_class)
    assert template == qwen2_5_vl_training_chat_template

    answers = [COMPLETION, "<answer>B) ❌</answer>"]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Is there a pleural effusion?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]},
        {"role": "user", "content": [{"type": "text", "text": "And option B?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[1]}]},
    ]
    out = processing_class.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids, mask = out["input_ids"], out["assistant_masks"]
    if use_processor:  # processors return a batch of one
        input_ids, mask = input_ids[0], mask[0]
    assert len(mask) == len(input_ids)
    masked = [token for token, keep in zip(input_ids, mask, strict=True) if keep]
    unmasked = [token for token, keep in zip(input_ids, mask, strict=True) if not keep]
    expected = "".join(f"{answer}<|im_end|>\n" for answer in answers)
    assert tokenizer.decode(masked) == expected
    assert masked == tokenizer.encode(expected)  # whole tokens: the mask boundaries fall on token boundaries
    assert tokenizer.decode(unmasked) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nIs there a pleural effusion?<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nAnd option B?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The training variant renders exactly what the original template renders.
    rendered = processing_class.apply_chat_template(messages, tokenize=False)
    assert processing_class.apply_chat_template(messages, chat_template=template, tokenize=False) == rendered


# ----------------------------------------------------------------------------------------- model + files


def test_model_config(model: Qwen2_5_VLForConditionalGeneration, tokenizer: Qwen2Tokenizer) -> None:
    text: Any = model.config.text_config
    vision: Any = model.config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (128, 2, 1)
    assert (text.num_hidden_layers, text.intermediate_size, text.max_position_embeddings) == (2, 256, 4096)
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 64
    assert text.rope_parameters["rope_type"] == "default"
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.vocab_size % 64 == 0 and text.vocab_size - 64 < len(tokenizer) <= text.vocab_size
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight

    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.intermediate_size) == (2, 128, 2, 256)
    assert vision.hidden_size // vision.num_heads == 64
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert (vision.window_size, list(vision.fullatt_block_indexes)) == (112, [1])
    assert vision.out_hidden_size == text.hidden_size
    assert model.dtype == torch.float32


def test_checkpoint_files_and_size(tiny_qwen25_vl_path: Path) -> None:
    names = {path.name for path in tiny_qwen25_vl_path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "processor_config.json", "chat_template.jinja"} <= names
    assert not any(name.endswith(".bin") for name in names)
    size = sum(path.stat().st_size for path in tiny_qwen25_vl_path.iterdir())
    assert size < 10 * 2**20
    marker = json.loads((tiny_qwen25_vl_path / tiny._MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["builder_version"] == BUILDER_VERSION and marker["seed"] == 0


def test_image_and_video_processors(processor: Qwen2_5_VLProcessor) -> None:
    assert type(processor) is Qwen2_5_VLProcessor
    assert type(processor.image_processor) is Qwen2VLImageProcessor
    assert type(processor.video_processor) is Qwen2VLVideoProcessor
    bounds = {"shortest_edge": tiny.IMAGE_MIN_PIXELS, "longest_edge": tiny.IMAGE_MAX_PIXELS}
    assert dict(processor.image_processor.size) == bounds
    assert processor.image_processor.patch_size == 14 and processor.image_processor.merge_size == 2
    # A large image is capped at max_pixels: few vision tokens, cheap on CPU.
    out = processor.image_processor(images=[_gray_noise(1024)], return_tensors="pt")
    t, h, w = out["image_grid_thw"][0].tolist()
    assert t == 1 and h * w * 14 * 14 <= tiny.IMAGE_MAX_PIXELS


def test_same_seed_is_byte_identical_and_seeds_differ(tiny_qwen25_vl_path: Path, tmp_path: Path) -> None:
    same = build_tiny_qwen25_vl(tmp_path / "same", seed=0)
    other = build_tiny_qwen25_vl(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert _sha256(same / name) == _sha256(tiny_qwen25_vl_path / name), name
    assert _sha256(other / "model.safetensors") != _sha256(same / "model.safetensors")
    assert _sha256(other / "tokenizer.json") == _sha256(same / "tokenizer.json")  # the tokenizer has no seed


def test_build_does_not_disturb_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen25_vl(tmp_path / "build", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("auto", [False, True], ids=["Qwen2_5_VLForConditionalGeneration", "AutoModel"])
def test_weights_round_trip(tiny_qwen25_vl_path: Path, auto: bool) -> None:
    cls: Any = AutoModelForImageTextToText if auto else Qwen2_5_VLForConditionalGeneration
    with _assert_no_warnings():
        loaded = cls.from_pretrained(tiny_qwen25_vl_path)
        AutoProcessor.from_pretrained(tiny_qwen25_vl_path)
    assert type(loaded) is Qwen2_5_VLForConditionalGeneration
    saved = load_file(tiny_qwen25_vl_path / "model.safetensors")
    state = loaded.state_dict()
    # transformers 5 saves in the original Qwen2.5-VL key layout (what vLLM and older loaders read) and
    # renames on load: "model.*" -> "model.language_model.*", "visual.*" -> "model.visual.*".
    assert {"model.embed_tokens.weight", "visual.patch_embed.proj.weight"} <= set(saved)
    renamed = {_module_name(key): tensor for key, tensor in saved.items()}
    assert "lm_head.weight" not in renamed  # tied to the input embeddings, so stored once
    assert set(renamed) == set(state) - {"lm_head.weight"}
    for name, tensor in renamed.items():
        assert torch.equal(state[name], tensor), name
    assert torch.equal(state["lm_head.weight"], renamed["model.language_model.embed_tokens.weight"])


def test_processor_round_trip_keeps_special_ids(
    tiny_qwen25_vl_path: Path, processor: Qwen2_5_VLProcessor
) -> None:
    fresh = tiny._build_processor()
    assert processor.tokenizer.get_added_vocab() == fresh.tokenizer.get_added_vocab()
    assert processor.tokenizer.all_special_ids == fresh.tokenizer.all_special_ids
    assert (
        processor.image_token_id
        == fresh.image_token_id
        == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    )
    assert processor.video_token_id == fresh.video_token_id


# ------------------------------------------------------------------------------------------- generation


def test_generate_on_image_prompt(
    processor: Qwen2_5_VLProcessor, model: Qwen2_5_VLForConditionalGeneration
) -> None:
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(text=[text], images=[_gray_noise()], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4 == 16  # 112 px / 14 = 8x8 patches
    with _assert_no_warnings():
        first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    second = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert first.shape[0] == 1 and prompt_length < first.shape[1] <= prompt_length + 8
    assert torch.equal(first[:, :prompt_length], inputs["input_ids"])
    assert torch.equal(first, second)
    assert int(first.max()) < model.model.language_model.embed_tokens.num_embeddings
    assert isinstance(processor.batch_decode(first[:, prompt_length:], skip_special_tokens=True)[0], str)


def test_batched_generate_with_left_padding(
    processor: Qwen2_5_VLProcessor, model: Qwen2_5_VLForConditionalGeneration
) -> None:
    long_question: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Describe the findings of this chest X-ray, then the impression."},
            ],
        }
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in (QUESTION, long_question)]
    images = [_gray_noise(seed=0), _gray_noise(seed=1)]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all()  # the shorter prompt is padded on the left
    assert torch.all(batch["input_ids"][mask == 0] == processor.tokenizer.pad_token_id)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    assert out.shape[0] == 2 and out.shape[1] > prompt_length
    # Left padding must not change what the model generates for either prompt.
    for row, (text, image) in enumerate(zip(texts, images, strict=True)):
        single = processor(text=[text], images=[image], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)
        new_tokens = alone[0, single["input_ids"].shape[1] :]
        assert torch.equal(out[row, prompt_length : prompt_length + len(new_tokens)], new_tokens)


# ------------------------------------------------------------------------------------- caching + builders


def test_default_cache_is_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXMIND_CACHE", str(tmp_path / "cache"))
    path = build_tiny_qwen25_vl(seed=3)
    assert path == tmp_path / "cache" / f"tiny-qwen2.5-vl-v{BUILDER_VERSION}-seed3"
    weights = _sha256(path / "model.safetensors")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete cached build must be reused, not rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(tiny, "_write_build", fail)
        assert build_tiny_qwen25_vl(seed=3) == path
        assert build_tiny_qwen25_vl(path, seed=3) == path

    (path / "model.safetensors").write_bytes(b"corrupted")
    assert build_tiny_qwen25_vl(seed=3, overwrite=True) == path
    assert _sha256(path / "model.safetensors") == weights
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no staging leftovers


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CXMIND_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tiny.default_cache_dir() == tmp_path / ".cache" / "cxmind"
    monkeypatch.setenv("CXMIND_CACHE", str(tmp_path / "elsewhere"))
    assert tiny.default_cache_dir() == tmp_path / "elsewhere"


def test_incomplete_or_foreign_directory_is_not_reused(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")  # e.g. a crashed build: no marker
    with pytest.raises(FileExistsError):
        build_tiny_qwen25_vl(target)
    build_tiny_qwen25_vl(target, overwrite=True)
    with pytest.raises(FileExistsError):  # a build of another seed is not silently reused
        build_tiny_qwen25_vl(target, seed=1)
    assert build_tiny_qwen25_vl(target, seed=0) == target


def test_losing_a_build_race_returns_the_winners_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A concurrent builder finishing first (between our check and our rename) must not make us fail."""
    target = tmp_path / "model"
    real_write_build = tiny._write_build

    def racing_write_build(directory: Path, seed: int, size: str = "tiny") -> None:
        with monkeypatch.context() as patch:
            patch.setattr(tiny, "_write_build", real_write_build)
            build_tiny_qwen25_vl(target, seed=seed, size=size)  # the "other process" wins
        real_write_build(directory, seed, size)

    monkeypatch.setattr(tiny, "_write_build", racing_write_build)
    assert build_tiny_qwen25_vl(target) == target
    assert tiny._is_complete(target, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_concurrent_processes_build_once_into_the_cache(tmp_path: Path) -> None:
    repo_root = Path(tiny.__file__).resolve().parents[1]
    env = {**os.environ, "CXMIND_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    code = "from cxmind.testing import build_tiny_qwen25_vl; print(build_tiny_qwen25_vl(seed=0))"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err.decode() for _, err in results]
    expected = tmp_path / f"tiny-qwen2.5-vl-v{BUILDER_VERSION}-seed0"
    assert {Path(out.decode().strip()) for out, _ in results} == {expected}
    assert [p.name for p in tmp_path.iterdir()] == [expected.name]
    assert tiny._is_complete(expected, 0)


def test_load_tiny_qwen25_vl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_qwen25_vl_path: Path
) -> None:
    monkeypatch.setenv("CXMIND_CACHE", str(tmp_path))
    with _assert_no_warnings():
        loaded_model, loaded_processor = load_tiny_qwen25_vl(seed=0)
    assert isinstance(loaded_model, Qwen2_5_VLForConditionalGeneration) and not loaded_model.training
    assert isinstance(loaded_processor, Qwen2_5_VLProcessor)
    cached = tmp_path / f"tiny-qwen2.5-vl-v{BUILDER_VERSION}-seed0"
    assert _sha256(cached / "model.safetensors") == _sha256(tiny_qwen25_vl_path / "model.safetensors")


# ------------------------------------------------------------------------------------------- size presets


@pytest.fixture(scope="module")
def small_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("small-qwen2.5-vl"), seed=0, size="small")


def test_size_presets_are_named_and_unknown_sizes_refused(tmp_path: Path) -> None:
    assert MODEL_SIZES == ("tiny", "small")
    for call in (
        lambda: build_tiny_qwen25_vl(tmp_path / "x", size="huge"),
        lambda: load_tiny_qwen25_vl(size="Small"),
    ):
        with pytest.raises(UserError, match=r"unknown model size .*'tiny', 'small'"):
            call()
    assert not (tmp_path / "x").exists()


def test_tiny_is_the_default_size_and_unchanged(tiny_qwen25_vl_path: Path, tmp_path: Path) -> None:
    explicit = build_tiny_qwen25_vl(tmp_path / "tiny", seed=0, size="tiny")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert _sha256(explicit / name) == _sha256(tiny_qwen25_vl_path / name), name
    # the tiny preset's settings, as they were before sizes existed (cached builds stay valid)
    text, vision = tiny._SIZES["tiny"]
    assert text is tiny._TEXT_CONFIG and vision is tiny._VISION_CONFIG
    assert {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")} == {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
    }
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["max_window_layers"]) == (2, 1, 2)
    assert text["rope_parameters"]["mrope_section"] == [8, 12, 12]
    assert (vision["depth"], vision["hidden_size"], vision["num_heads"], vision["out_hidden_size"]) == (
        2,
        128,
        2,
        128,
    )
    # a marker written before sizes existed (no "size" key) is a tiny build, reused as such
    marker = tmp_path / "tiny" / tiny._MARKER_NAME
    legacy = {k: v for k, v in json.loads(marker.read_text(encoding="utf-8")).items() if k != "size"}
    marker.write_text(json.dumps(legacy), encoding="utf-8")
    assert tiny._is_complete(tmp_path / "tiny", 0) and not tiny._is_complete(tmp_path / "tiny", 0, "small")


def test_small_model_config_and_parameter_count(small_path: Path, tiny_qwen25_vl_path: Path) -> None:
    with _assert_no_warnings():
        model = AutoModelForImageTextToText.from_pretrained(small_path)
        processor = AutoProcessor.from_pretrained(small_path)
    assert type(model) is Qwen2_5_VLForConditionalGeneration and type(processor) is Qwen2_5_VLProcessor
    text: Any = model.config.text_config
    vision: Any = model.config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (4, 256, 512)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 64 and sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert list(text.layer_types) == ["full_attention"] * 4
    assert vision.out_hidden_size == text.hidden_size == 256
    assert vision.hidden_size // vision.num_heads == 64
    assert (
        model.config.tie_word_embeddings
        and model.lm_head.weight is model.model.language_model.embed_tokens.weight
    )
    parameters = sum(p.numel() for p in model.parameters())
    assert 3_000_000 <= parameters <= 5_000_000, parameters
    tiny_parameters = sum(
        p.numel()
        for p in Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25_vl_path).parameters()
    )
    assert parameters > 2 * tiny_parameters
    # one tokenizer and processor for every size: data and prompts do not depend on the size
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert _sha256(small_path / name) == _sha256(tiny_qwen25_vl_path / name), name
    assert json.loads((small_path / tiny._MARKER_NAME).read_text(encoding="utf-8"))["size"] == "small"


def test_small_model_forward_and_generate_on_an_image(small_path: Path) -> None:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(small_path).eval()
    processor = AutoProcessor.from_pretrained(small_path)
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(text=[text], images=[_gray_noise(224)], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64  # 224 px: 16x16 patches / 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    with _assert_no_warnings():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_length + 6) and torch.equal(out[:, :prompt_length], inputs["input_ids"])
    assert isinstance(processor.batch_decode(out[:, prompt_length:], skip_special_tokens=True)[0], str)


def test_sizes_are_cached_apart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_path: Path) -> None:
    monkeypatch.setenv("CXMIND_CACHE", str(tmp_path / "cache"))
    small = build_tiny_qwen25_vl(seed=0, size="small")
    assert small == tmp_path / "cache" / f"small-qwen2.5-vl-v{BUILDER_VERSION}-seed0"
    assert _sha256(small / "model.safetensors") == _sha256(small_path / "model.safetensors")
    with _assert_no_warnings():
        loaded, _ = load_tiny_qwen25_vl(seed=0, size="small")  # reuses the cached build
    assert loaded.config.text_config.hidden_size == 256 and not loaded.training
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [small.name]
    # a folder holding one size is never taken for another
    with pytest.raises(FileExistsError, match="no matching tiny build"):
        build_tiny_qwen25_vl(small, seed=0)
    assert tiny._is_complete(small, 0, "small") and not tiny._is_complete(small, 0)
