"""Offline tiny Qwen2.5-VL checkpoint for tests.

Tests, CI and GPU smoke checks need a *real* ``Qwen2_5_VLForConditionalGeneration`` checkpoint directory
(config, safetensors weights, tokenizer, image/video processor, chat template) that loads through the
ordinary ``from_pretrained`` paths of transformers, TRL and vLLM. The Hugging Face Hub is not reachable from
every machine and the real 3B model is far too big for CPU tests, so :func:`build_tiny_qwen25_vl` builds one
without any network access: a randomly initialised model of a few MB with the real architecture, a byte-level
BPE tokenizer trained locally on a small chest X-ray corpus, Qwen's special tokens and Qwen2.5-VL's exact chat
template.

Two sizes share the tokenizer, processor and architecture (:data:`MODEL_SIZES`, the ``size`` argument):
``"tiny"`` (the default, 1.4 M parameters: 2 language layers of hidden size 128) for tests, and
``"small"`` (3.8 M parameters: 4 language layers of hidden size 256, 4 heads) for learning benchmarks that
need a model able to bind a question's finding to the image, still trainable on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxmind.errors import UserError
from cxmind.format import ACCEPT, REJECT

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2Tokenizer

__all__ = [
    "BUILDER_VERSION",
    "FORMAT_TOKENS",
    "IMAGE_MAX_PIXELS",
    "IMAGE_MIN_PIXELS",
    "MODEL_SIZES",
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_qwen25_vl",
    "build_tiny_tokenizer",
    "default_cache_dir",
    "link_torchxrayvision_tables",
    "load_tiny_qwen25_vl",
]

#: Bump whenever the built artefacts change, so stale cached builds are not reused.
BUILDER_VERSION = 1

#: Qwen2.5's special tokens, in Qwen's id order (``<|endoftext|>`` first, ``<|video_pad|>`` last).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Tokens the real Qwen2.5 tokenizer adds as *non-special* added tokens after its special tokens.
_QWEN_NON_SPECIAL_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

#: The interleaved-reasoning format tags and marks. They are added, non-special tokens (one id each) so that
#: ``decode(skip_special_tokens=True)`` keeps them, as the real Qwen tokenizer keeps ``<think>``.
FORMAT_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>", ACCEPT, REJECT)

#: Pixel bounds of the image processor: small so that a CPU forward pass over an image takes milliseconds.
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 224 * 224

_TOKENIZER_VOCAB_SIZE = 3000  # BPE target (bytes + merges); the added tokens come on top
_MARKER_NAME = ".cxmind-tiny-qwen25-vl.json"  # written last: its presence means "complete build"
_SYSTEM_PROMPT = "You are a helpful assistant."

_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 64: the smallest head size vLLM's attention backends accept
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "use_sliding_window": False,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    # mrope_section splits head_dim / 2 = 32 rotary frequencies over (temporal, height, width).
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]},
}

_VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 128,
    "num_heads": 2,  # head_dim 64
    "intermediate_size": 256,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "out_hidden_size": 128,  # = text hidden size
}

# "small": twice as wide and deep a language model (head_dim stays 64, so the rope sections stay as they
# are), fed by the tiny vision tower whose merger projects to the wider hidden size.
_SMALL_TEXT_CONFIG: dict[str, Any] = {
    **_TEXT_CONFIG,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,  # head_dim 64 = 256 / 4
    "num_key_value_heads": 2,  # grouped-query attention, 2 query heads per key/value head, as in Qwen2.5
    "max_window_layers": 4,
}
_SMALL_VISION_CONFIG: dict[str, Any] = {**_VISION_CONFIG, "out_hidden_size": 256}  # = text hidden size

#: Model size presets: name -> (text config, vision config). "tiny" must never change (tests and cached
#: builds rely on it bit for bit); a new size is a new entry.
_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (_TEXT_CONFIG, _VISION_CONFIG),
    "small": (_SMALL_TEXT_CONFIG, _SMALL_VISION_CONFIG),
}

#: The names :func:`build_tiny_qwen25_vl` and :func:`load_tiny_qwen25_vl` accept as ``size``.
MODEL_SIZES: tuple[str, ...] = tuple(_SIZES)

# Generic English (function words, common verbs and nouns), so that arbitrary prompts get short encodings.
_ENGLISH = """\
You are a helpful assistant. The quick brown fox jumps over the lazy dog.
A picture is worth a thousand words, and a good question is half of the answer.
Please look at the image carefully and answer the question below. Think step by step before you answer.
First, describe what you see. Then, compare each option with the evidence. Finally, give your answer.
It is important to be precise, honest and concise. If you are not sure, say that you are not sure.
The patient is a man who was admitted to the hospital yesterday with shortness of breath and a fever.
She has a history of smoking, high blood pressure and heart failure, and she takes several medications.
What is the most likely diagnosis? Which of the following statements is correct? Select all that apply.
Is there any abnormality in this study? Where is it located, and how large is it compared with last time?
There are many reasons why this could happen: some are common, others are rare, and a few are serious.
We should consider the clinical history, the physical examination, laboratory results and prior imaging.
This model was trained on public data to read images and write short reports in plain English.
Hello, how are you today? I am fine, thank you. Could you help me with this question, please?
One, two, three, four, five, six, seven, eight, nine, ten; first, second, third, last; left, right, both.
Yes or no? True or false? Option A, option B, option C, option D, option E. None of the above.
Because the evidence supports it, the answer must be correct; however, the other options cannot be excluded.
The time is now, the place is here, and the people are waiting for the results of the examination.
Although the image quality is limited, the main structures are visible and can be assessed with confidence.
There is nothing new to report since the previous examination, which was performed last week in the morning.
Every report should include the technique, the comparison, the findings and an impression at the end.
Summarize the findings in one sentence. Explain your reasoning. Give the final answer in the requested format.
The system, the user and the assistant take turns in a conversation until the question has been answered.
Small, medium, large; mild, moderate, severe; new, old, stable, improved, worsened, unchanged, resolved.
Upper, lower, middle, anterior, posterior, lateral, medial, central, peripheral, basal, apical, focal.
"""

# Chest X-ray vocabulary: label names (CheXpert / MIMIC-CXR / ChestX-ray14 style) and report phrases.
_RADIOLOGY = """\
Findings: Atelectasis, Cardiomegaly, Consolidation, Edema, Enlarged Cardiomediastinum, Fracture, Lung Lesion,
Lung Opacity, No Finding, Pleural Effusion, Pleural Other, Pneumonia, Pneumothorax, Support Devices,
Emphysema, Fibrosis, Hernia, Infiltration, Mass, Nodule, Pleural Thickening, Effusion, Granuloma.
Impression: No acute cardiopulmonary process. Stable cardiomegaly without pulmonary edema.
The lungs are clear bilaterally. There is no focal consolidation, pleural effusion, or pneumothorax.
The cardiomediastinal silhouette is within normal limits. The heart size is normal. The aorta is tortuous.
Mild cardiomegaly is present. There is mild pulmonary vascular congestion and interstitial edema.
Small bilateral pleural effusions with adjacent bibasilar atelectasis. Left lower lobe consolidation.
Right upper lobe opacity concerning for pneumonia in the appropriate clinical setting.
Patchy airspace opacities in the right middle lobe and lingula. Linear atelectasis at the left lung base.
A right-sided pneumothorax is present, measuring approximately 2 cm at the apex. No tension physiology.
Endotracheal tube terminates 4 cm above the carina. Nasogastric tube courses below the diaphragm.
Right internal jugular central venous catheter with tip in the superior vena cava. Left chest wall pacemaker.
Sternotomy wires and mediastinal clips are intact. Healed left rib fractures. Calcified aortic knob.
Hyperinflated lungs with flattened hemidiaphragms consistent with chronic obstructive pulmonary disease.
A 1.5 cm nodule projects over the right mid lung; recommend chest CT for further evaluation.
Blunting of the costophrenic angles. Elevated right hemidiaphragm. Hilar lymphadenopathy. Widened mediastinum.
Frontal and lateral views of the chest. Portable AP upright view. PA and lateral chest radiographs.
Compared to the prior radiograph, there is interval improvement of the right lower lobe opacity.
Reticular interstitial markings, ground-glass opacity, air bronchograms, Kerley B lines, cephalization.
The trachea is midline. Degenerative changes of the thoracic spine. Subcutaneous emphysema. Free air.
Differential diagnosis includes aspiration, infection, hemorrhage, malignancy and pulmonary infarction.
Chest X-ray, chest radiograph, CXR, radiology report, radiologist, thorax, lung, lungs, heart, pleura.
"""

# The answer formats the rewards parse: interleaved reasoning and verdicts, closed and open answers.
_FORMATS = """\
<think>The image shows blunting of the left costophrenic angle.</think>
<think>Option A suggests a pleural effusion, which matches the blunted angle.</think> <answer>A) ✅</answer>
<think>Option B suggests a pneumothorax, but no pleural line is visible.</think> <answer>B) ❌</answer>
<think>Option C suggests cardiomegaly; the heart is not enlarged.</think> <answer>C) ❌</answer>
<think>Option D suggests consolidation, which is not seen.</think> <answer>D) ❌</answer>
<answer>Differential Diagnoses: [Atelectasis, Lung Opacity]</answer>
<answer>Differential Diagnoses: [Pleural Effusion, Cardiomegaly, Edema]</answer>
<answer>Differential Diagnoses: [No Finding]</answer>
<answer>Final Diagnosis: Pneumonia</answer> <answer>Yes</answer> <answer>No</answer>
<think>Let me compare the findings with each candidate diagnosis.</think>
<answer>Findings: The lungs are clear. Impression: No acute cardiopulmonary process.</answer>
"""


def default_cache_dir() -> Path:
    """Where cached builds live: ``$CXMIND_CACHE`` if set, else ``~/.cache/cxmind``."""
    env = os.environ.get("CXMIND_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxmind"


def _training_corpus() -> list[str]:
    """The built-in tokenizer corpus as training lines (BPE merges follow how often each word occurs)."""
    lines = [line for text in (_ENGLISH, _RADIOLOGY, _FORMATS) for line in text.splitlines() if line]
    # Lowercase and upper-case variants: reports and labels are written in all three casings.
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines[:20]]


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """Train a byte-level BPE tokenizer locally and wrap it as Qwen's ``Qwen2Tokenizer``.

    The normaliser, pre-tokeniser and decoder are exactly the ones ``Qwen2Tokenizer`` rebuilds on reload
    (only the vocabulary and merges are read back from ``tokenizer.json``), so the trained tokenizer and the
    reloaded one tokenize identically.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    # tokenizers wants (left, right) pairs, whatever transformers' annotation of ``merges`` says.
    merges: list[Any] = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # As in the real Qwen2.5 tokenizer_config.json: no bos and no unk (byte-level BPE never needs one).
    no_token: Any = None

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=no_token,
        bos_token=no_token,
        eos_token="<|endoftext|>",  # re-pointed to <|im_end|> below, once ids are laid out in Qwen's order
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=_TEXT_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    special = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS[1:]]
    tokenizer.add_special_tokens({"extra_special_tokens": special})
    plain = [AddedToken(t, special=False, normalized=False) for t in _QWEN_NON_SPECIAL_ADDED_TOKENS]
    tokenizer.add_tokens(plain + [AddedToken(t, special=False, normalized=False) for t in FORMAT_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _build_processor() -> Qwen2_5_VLProcessor:
    """Tokenizer + small-pixel image/video processors + Qwen2.5-VL's chat template, as one processor."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = qwen2_5_vl_chat_template
    size = {"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=qwen2_5_vl_chat_template,
    )


def _token_id(tokenizer: Qwen2Tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:
        raise ValueError(f"{token!r} is not a single token of the tokenizer")
    return token_id


def _check_size(size: str) -> str:
    if size not in _SIZES:
        raise UserError(f"unknown model size {size!r}; choose one of {list(MODEL_SIZES)}")
    return size


def _build_model(
    tokenizer: Qwen2Tokenizer, seed: int, size: str = "tiny"
) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised model whose config points at the tokenizer's ids; deterministic in ``seed``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_config, vision_config = _SIZES[_check_size(size)]
    ids = {token: _token_id(tokenizer, token) for token in QWEN_SPECIAL_TOKENS}
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    config = Qwen2_5_VLConfig(
        text_config={
            **text_config,
            "vocab_size": _round_up(len(tokenizer), 64),
            # As in the real checkpoint: bos/pad are <|endoftext|> in the config (the tokenizer has no bos).
            "bos_token_id": endoftext,
            "eos_token_id": im_end,
            "pad_token_id": endoftext,
        },
        vision_config=dict(vision_config),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        dtype="float32",
    )
    # fork_rng: seed the initialisation without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    return model.eval()


def _is_complete(path: Path, seed: int, size: str = "tiny") -> bool:
    """Whether ``path`` holds a finished build of this builder version, ``seed`` and ``size`` (its marker
    says so; a marker without a size, written before sizes existed, is a tiny build)."""
    try:
        marker = json.loads((path / _MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    return (
        marker.get("builder_version") == BUILDER_VERSION
        and marker.get("seed") == seed
        and marker.get("size", "tiny") == size
    )


def _write_build(directory: Path, seed: int, size: str = "tiny") -> None:
    """Save processor and model into ``directory``; the marker file goes last (it means "complete")."""
    import transformers
    from transformers.utils import logging as hf_logging

    processor = _build_processor()
    model = _build_model(processor.tokenizer, seed, size)
    processor.save_pretrained(directory)
    bars_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per build is noise in test logs
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        if bars_enabled:
            hf_logging.enable_progress_bar()
    marker = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "size": size,
        "transformers": transformers.__version__,
    }
    (directory / _MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def build_tiny_qwen25_vl(
    path: str | os.PathLike[str] | None = None, *, seed: int = 0, overwrite: bool = False, size: str = "tiny"
) -> Path:
    """Build (or reuse) a small random Qwen2.5-VL checkpoint directory, fully offline, and return its path.

    ``size`` is one of :data:`MODEL_SIZES`: ``"tiny"`` (default; 2 language layers of hidden size 128,
    1.4 M parameters) or ``"small"`` (4 layers of hidden size 256 with 4 heads, 3.8 M parameters). All
    sizes share the tokenizer, processor and chat template; an unknown size is a ``UserError``.

    With ``path=None`` the build is cached under :func:`default_cache_dir` as
    ``{size}-qwen2.5-vl-v{BUILDER_VERSION}-seed{seed}``, so a test session builds it once. A directory
    holding a complete build of the same version, seed and size is reused unless ``overwrite``; a
    non-empty directory holding anything else is an error unless ``overwrite``. Builds go into a temporary
    sibling directory renamed into place only once complete, so concurrent builders (e.g. pytest-xdist
    workers) never see half a checkpoint.
    """
    _check_size(size)
    target = (
        default_cache_dir() / f"{size}-qwen2.5-vl-v{BUILDER_VERSION}-seed{seed}"
        if path is None
        else Path(path).expanduser()
    ).absolute()
    if not overwrite and _is_complete(target, seed, size):
        return target
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(
            f"{target} is not empty and holds no matching {size} build (seed {seed}); pass overwrite=True"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the build is an ordinary, shareable cache directory
        _write_build(staging, seed, size)
        if overwrite and target.exists():
            # Move the old build aside first: rename() cannot replace a non-empty directory.
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(staging, target)  # atomic; also replaces an empty directory (e.g. a fresh tmp_path)
        except OSError:
            if not _is_complete(
                target, seed, size
            ):  # else a concurrent builder won the race with a full build
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tiny_qwen25_vl(
    seed: int = 0, size: str = "tiny"
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Build (cached) and load a model of ``size`` and its processor through the ordinary ``from_pretrained``
    paths."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = build_tiny_qwen25_vl(seed=seed, size=size)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor


#: Official file name -> file shipped by ``torchxrayvision`` (real public label tables), per source.
TORCHXRAYVISION_TABLES: dict[str, dict[str, str]] = {
    "nih": {
        "Data_Entry_2017_v2020.csv.gz": "Data_Entry_2017_v2020.csv.gz",
        "BBox_List_2017.csv.gz": "BBox_List_2017.csv.gz",
    },
    "chexpert": {"train.csv.gz": "chexpert_train.csv.gz"},
    "padchest": {
        "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz": (
            "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
        )
    },
    "vindr": {"train.csv.gz": "vinbigdata-train.csv.gz"},
    "rsna": {"stage_2_train_labels.csv.zip": "kaggle_stage_2_train_labels.csv.zip"},
    "siim": {"train-rle.csv.gz": "siim-pneumothorax-train-rle.csv.gz"},
    "iu_xray": {"NLMCXR_reports.tgz": "NLMCXR_reports.tgz"},
}


def link_torchxrayvision_tables(dest: str | os.PathLike[str], sources: Any = None) -> dict[str, Path]:
    """Lay out the real label tables ``torchxrayvision`` ships as each source's official files.

    Returns ``{source: folder}`` ready for ``--source NAME=FOLDER``: the builders can then be run on
    real public metadata (no images) without any download. Files are symlinked, not copied.
    """
    import torchxrayvision

    shipped = Path(torchxrayvision.__file__).parent / "data"
    roots: dict[str, Path] = {}
    for source in sources or TORCHXRAYVISION_TABLES:
        root = Path(dest) / source
        root.mkdir(parents=True, exist_ok=True)
        for official, name in TORCHXRAYVISION_TABLES[source].items():
            link = root / official
            if not link.exists():
                link.symlink_to(shipped / name)
        roots[source] = root
    return roots
