"""Model cards and Hub pushes (cxmind.hub): offline; the Hub API is a recording fake or offline."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

from cxmind import hub
from cxmind.hub import (
    PUSH_IGNORE_PATTERNS,
    StageCardInfo,
    push_stage,
    render_model_card,
    scrub,
    upload_files,
    write_model_card,
)

TOKEN = "hf_abcdefghijklmnopqrstuvwx"
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
BASE = "Qwen/Qwen2.5-VL-3B-Instruct"
REWARDS = {
    "mode": "fixed",
    "weights": [0.1, 0.9, 1.0, 1.0],
    "w_closed": 0.5,
    "w_open": 0.2,
    "alpha": 0.3,
    "gate": {"ema_alpha": 0.2, "margin": 0.05},
    "curriculum": ["closed", "open"],
}
EVAL_RESULTS: dict[str, Any] = {  # the shape `cxmind eval` writes to results.json
    "model": {"model": "/home/alice/models/qwen", "adapter": "/home/alice/runs/grpo_open"},
    "config": {"data": "/home/alice/data/cxr", "split": "test", "out": "/home/alice/eval"},
    "n_records": 40,
    "limited": False,
    "metrics": {
        "overall": {
            "accuracy": {"value": 0.8123, "ci": [0.7012, 0.9], "n": 30},
            "f1": {"value": 0.5, "ci": [0.3, 0.7], "n": 10},
        },
        "by_task": {
            "disease_binary": {"accuracy": {"value": 0.8123, "ci": [0.7012, 0.9], "n": 30}},
            "disease_open": {"f1": {"value": 0.5, "ci": [0.3, 0.7], "n": 10}},
        },
        "by_source": {"nih": {"disease_binary": {"accuracy": {"value": 0.1, "ci": None, "n": 1}}}},
        "notes": ["BERTScore not computed: no bertscore_model (a local scorer path) was given"],
    },
}


def _stages() -> list[StageCardInfo]:
    return [
        StageCardInfo(
            name="sft",
            kind="sft",
            datasets=["records: /home/alice/data/cxr (train), traces gold"],
            num_examples=1200,
            hyperparameters={
                "learning_rate": 2e-5,
                "num_train_epochs": 2,
                "hub_token": TOKEN,
                "output_dir": "/home/alice/runs/sft",
            },
        ),
        StageCardInfo(
            name="grpo_closed",
            kind="grpo",
            datasets=["records: ~/cxset (train), tasks closed"],
            num_examples=5000,
            hyperparameters={"learning_rate": 1e-6, "beta": 0.04, "num_generations": 8, "api_key": "sk-x"},
            rewards=REWARDS,
        ),
        StageCardInfo(
            name="grpo_open",
            kind="grpo",
            datasets=["records: C:\\Users\\alice\\cx (train), tasks open"],
            num_examples=None,
            hyperparameters={"learning_rate": 5e-7, "num_generations": 8},
            rewards={**REWARDS, "w_open": 0.35, "mode": "reference"},
        ),
    ]


def _card(**overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "base_model": BASE,
        "stages": _stages(),
        "adapter": True,
        "eval_results": EVAL_RESULTS,
        "repo_id": "alice/cxmind-3b",
        "peft_config": {
            "peft_type": "LORA",
            "r": 16,
            "lora_alpha": 32,
            "target_modules": ["q_proj", "v_proj"],
            "base_model_name_or_path": "/home/alice/models/qwen",
        },
    }
    return render_model_card(**(kwargs | overrides))


def _section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    after = start + len(heading) + 1
    ends = [m.start() for m in re.finditer(rf"^#{{1,{level}}} ", text[after:], re.M)]
    return text[start : after + ends[0]] if ends else text[start:]


def _rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split(" | ")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


# ---------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------


def test_card_front_matter_parses_back_with_model_card() -> None:
    card = ModelCard(_card())
    assert card.data.base_model == BASE
    assert card.data.library_name == "peft"
    assert card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert {"cxmind", "chest-x-ray", "medical", "grpo", "sft", "trl", "peft", "lora"} <= set(card.data.tags)
    assert card.text.lstrip().startswith("# cxmind-3b")


def test_merged_model_card_uses_transformers_and_plain_from_pretrained() -> None:
    text = _card(adapter=False, peft_config=None, stages=_stages()[:1], license="mit")
    card = ModelCard(text)
    assert card.data.library_name == "transformers"
    assert card.data.license == "mit"
    assert "grpo" not in card.data.tags and "peft" not in card.data.tags and "sft" in card.data.tags
    usage = _section(text, "## How to use")
    assert 'AutoModelForImageTextToText.from_pretrained("alice/cxmind-3b"' in usage
    assert "PeftModel" not in usage
    assert "### Reward configuration" not in text and "### Adapter" not in text


def test_adapter_usage_loads_base_then_adapter() -> None:
    usage = _section(_card(), "## How to use")
    assert f'AutoModelForImageTextToText.from_pretrained("{BASE}"' in usage
    assert 'PeftModel.from_pretrained(base, "alice/cxmind-3b")' in usage
    assert "Qwen2_5_VLForConditionalGeneration" in usage


def test_intended_use_section_says_not_for_clinical_use() -> None:
    text = _card()
    section = _section(text, "## Intended use and limitations")
    assert "**Not for clinical use.**" in section
    assert "research artifact" in section
    assert "validated on real patients" in section
    assert "diagnosis" in section and "biased" in section
    # prominent: before the training details, and right after the summary
    assert text.index("Not for clinical use") < text.index("## Training")


def test_stage_table_lists_every_stage_in_order() -> None:
    rows = _rows(_section(_card(), "## Training").split("###")[0])
    assert rows[0] == ["#", "stage", "kind", "data", "examples", "key hyperparameters"]
    body = rows[2:]
    assert [r[1] for r in body] == ["`sft`", "`grpo_closed`", "`grpo_open`"]
    assert [r[2] for r in body] == ["SFT", "GRPO", "GRPO"]
    assert [r[4] for r in body] == ["1200", "5000", "–"]
    assert "learning_rate=2e-05" in body[0][5] and "num_train_epochs=2" in body[0][5]
    assert "beta=0.04" in body[1][5] and "num_generations=8" in body[1][5]
    assert "tasks closed" in body[1][3]


def test_reward_configuration_of_each_grpo_stage() -> None:
    section = _section(_card(), "### Reward configuration (CuRL-VPR)")
    closed = dict(_rows(_section(section, "#### `grpo_closed`"))[2:])
    assert closed["mode"] == "fixed"
    assert [closed[f"weight: {c}"] for c in ("format", "outcome", "think", "process")] == [
        "0.1",
        "0.9",
        "1",
        "1",
    ]
    assert (closed["w_closed"], closed["w_open"], closed["alpha"]) == ("0.5", "0.2", "0.3")
    assert (closed["gate.ema_alpha"], closed["gate.margin"]) == ("0.2", "0.05")
    assert closed["curriculum"] == '["closed", "open"]'
    open_ = dict(_rows(_section(section, "#### `grpo_open`"))[2:])
    assert (open_["mode"], open_["w_open"]) == ("reference", "0.35")
    assert "#### `sft`" not in section


def test_adapter_section_shows_lora_settings() -> None:
    rows = dict(_rows(_section(_card(), "### Adapter"))[2:])
    assert rows == {
        "peft_type": "LORA",
        "r": "16",
        "lora_alpha": "32",
        "target_modules": '["q_proj", "v_proj"]',
    }


def test_eval_table_from_cxmind_eval_results() -> None:
    section = _section(_card(), "## Evaluation")
    rows = _rows(section)
    assert rows[0] == ["task", "n", "accuracy", "f1"]
    table = {r[0]: r[1:] for r in rows[2:]}
    assert table["overall"] == ["30", "0.8123 [0.7012, 0.9]", "0.5 [0.3, 0.7]"]
    assert table["disease_binary"] == ["30", "0.8123 [0.7012, 0.9]", ""]
    assert table["disease_open"] == ["10", "", "0.5 [0.3, 0.7]"]
    assert "nih" not in table  # per-source breakdown stays in results.json
    assert "40 records" in section and "split `test`" in section
    assert "BERTScore not computed" in section


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ({"metrics": {"closed": {"accuracy": 0.75, "format": 1.0}, "open": {"f1": 0.4}}}, None),
        ({"closed": {"accuracy": 0.75, "format": 1.0}, "open": {"f1": 0.4}}, None),
        (
            {"eval_loss": 0.25, "accuracy": 0.75, "epoch": 2},
            {"eval_loss": "0.25", "accuracy": "0.75", "epoch": "2"},
        ),
        (
            {"metrics": {"eval_loss": 0.25, "note": "/home/alice/x/y"}},
            {"eval_loss": "0.25", "note": "&lt;local&gt;/y"},
        ),
    ],
)
def test_eval_table_accepts_simple_shapes(results: dict[str, Any], expected: dict[str, str] | None) -> None:
    section = _section(_card(eval_results=results), "## Evaluation")
    rows = _rows(section)
    if expected is None:
        assert rows[0] == ["task", "accuracy", "format", "f1"]
        assert {r[0]: r[1:] for r in rows[2:]} == {"closed": ["0.75", "1", ""], "open": ["", "", "0.4"]}
    else:
        assert rows[0] == ["metric", "value"]
        assert dict(rows[2:]) == expected


def test_no_eval_section_without_results_and_empty_results_say_so() -> None:
    assert "## Evaluation" not in _card(eval_results=None)
    assert "_No metrics recorded._" in _section(
        _card(eval_results={"metrics": {"notes": []}}), "## Evaluation"
    )


def test_card_cites_cx_mind_and_trl() -> None:
    citation = _section(_card(), "## Citation")
    assert "arXiv:2508.03733" in citation and "CX-Mind" in citation
    assert "TRL: Transformer Reinforcement Learning" in citation


def test_card_never_contains_tokens_or_local_paths() -> None:
    text = _card()
    assert TOKEN not in text
    assert TOKEN_RE.search(text) is None
    assert "hub_token" not in text and "api_key" not in text and "sk-x" not in text
    assert "/home/alice" not in text and "alice\\cx" not in text and "~/cxset" not in text
    assert "base_model_name_or_path" not in text
    # the data descriptions keep their meaning, with the path reduced to its last component
    training = _section(text, "## Training")
    assert "records: &lt;local&gt;/cxr (train), traces gold" in training
    assert "records: &lt;local&gt;/cxset (train), tasks closed" in training
    assert "records: &lt;local&gt;/cx (train), tasks open" in training
    assert "output_dir=&lt;local&gt;/sft" in training
    assert "data `<local>/cxr`" in _section(text, "## Evaluation")


def test_secrets_anywhere_in_the_inputs_are_redacted() -> None:
    stages = _stages()
    stages[0].datasets.append(f"records pulled with {TOKEN}")
    stages[1].rewards = {**REWARDS, "notes": {"secret_thing": "x", "comment": f"key={TOKEN}"}}
    text = _card(stages=stages, repo_id="alice/cxmind-3b", eval_results={"metrics": {"loss": TOKEN}})
    assert TOKEN_RE.search(text) is None
    assert "secret_thing" not in text
    assert "records pulled with &lt;redacted&gt;" in text


def test_local_base_model_is_kept_out_of_the_metadata() -> None:
    text = _card(base_model="/home/alice/models/Qwen2.5-VL-3B-Instruct")
    card = ModelCard(text)
    assert card.data.base_model is None
    assert "/home/alice" not in text
    assert "`<local>/Qwen2.5-VL-3B-Instruct`" in text


def test_rendered_card_is_stable_under_scrub() -> None:
    """The final safety pass over the whole card must not rewrite the card's own text (URLs, code)."""
    text = _card()
    assert scrub(text) == text
    assert "https://arxiv.org/abs/2508.03733" in text and "https://huggingface.co/" + BASE in text


def test_stage_kind_and_stage_list_are_validated() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        StageCardInfo(name="dpo", kind="dpo", datasets=[], num_examples=None, hyperparameters={})
    with pytest.raises(ValueError, match="at least one training stage"):
        render_model_card(base_model=BASE, stages=[], adapter=True)


# ---------------------------------------------------------------------------------------------
# scrub
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/home/alice/data/cxr", "<local>/cxr"),
        ("records: /data/cxset (train)", "records: <local>/cxset (train)"),
        ("out=/home/alice/runs/sft/", "out=<local>/sft"),
        ("'/home/alice/a.json'", "'<local>/a.json'"),
        ("~/data/cxr", "<local>/cxr"),
        ("~alice/data", "<local>/data"),
        ("C:\\Users\\alice\\data", "<local>/data"),
        ("D:/datasets/mimic", "<local>/mimic"),
        ("\\\\server\\share\\cxr", "<local>/cxr"),
        ("file:///home/alice/x.png", "<local>/x.png"),
        ("host:/srv/data/cxr", "host:<local>/cxr"),
        (f"token {TOKEN} here", "token <redacted> here"),
        ("key sk-proj-abcdefghijklmnop1234", "key <redacted>"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "Authorization: <redacted>"),
        (f"/home/alice/{TOKEN}/x", "<local>/x"),
        (f"/home/alice/{TOKEN}", "<local>/<redacted>"),
        # kept: URLs, Hub ids, relative paths, a single component, tags, fractions
        (
            "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct",
            "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct",
        ),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ("data/cxr/train", "data/cxr/train"),
        ("./runs/sft", "./runs/sft"),
        ("../runs/sft", "../runs/sft"),
        ("/data", "/data"),
        ("<think>a</think><answer>B</answer>", "<think>a</think><answer>B</answer>"),
        ("1/2/3", "1/2/3"),
        ("task-closed-questions-and-answers", "task-closed-questions-and-answers"),
        ("hf_short", "hf_short"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_scrub_objects_recursively() -> None:
    value = {
        "/home/alice/k": ["/home/alice/a/b", ("~/x/y", 3)],
        "n": 1.5,
        "flag": True,
        "none": None,
        "path": Path("/home/alice/data/cxr"),
        "tags": {"/a/b", "c"},
    }
    assert scrub(value) == {
        "<local>/k": ["<local>/b", ("<local>/y", 3)],
        "n": 1.5,
        "flag": True,
        "none": None,
        "path": "<local>/cxr",
        "tags": ["<local>/b", "c"],
    }


# ---------------------------------------------------------------------------------------------
# write_model_card / push_stage
# ---------------------------------------------------------------------------------------------


def _stage_folder(root: Path, *, weights: str = "adapter_model.safetensors") -> Path:
    """A trainer output folder: final adapter + processor, plus resume state, checkpoints and logs."""
    folder = root / "grpo_open"
    files = {
        weights: b"\0" * 16,
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": BASE}),
        "tokenizer.json": "{}",
        "tokenizer_config.json": "{}",
        "preprocessor_config.json": "{}",
        "chat_template.jinja": "{{ messages }}",
        "results.json": json.dumps(
            {"metrics": {"overall": {"accuracy": {"value": 0.5, "ci": None, "n": 2}}}}
        ),
        "results.md": "| task |",
        "README.md": "stub written by the trainer",
        "optimizer.pt": b"x",
        "scheduler.pt": b"x",
        "scaler.pt": b"x",
        "rng_state_0.pth": b"x",
        "trainer_state.json": "{}",
        "training_args.bin": b"x",
        "predictions.jsonl": "{}",
        "report.html": "<html>",
        "checkpoint-50/adapter_model.safetensors": b"x",
        "checkpoint-50/optimizer.pt": b"x",
        "checkpoint-50/adapter_model.bin": b"x",
        "runs/Jan01_host/events.out.tfevents.1.host": b"x",
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


PUSHED = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "preprocessor_config.json",
    "results.json",
    "results.md",
    "tokenizer.json",
    "tokenizer_config.json",
}


class FakeCommit:
    commit_url = "https://huggingface.co/alice/cxmind-3b/commit/0123abc"


class FakeHfApi:
    """Records what push_stage asks of the Hub; ``instances`` collects every construction."""

    instances: ClassVar[list[FakeHfApi]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.init = (args, kwargs)
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.readme_at_upload: str | None = None
        FakeHfApi.instances.append(self)

    def create_repo(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"

    def upload_folder(self, *args: Any, **kwargs: Any) -> FakeCommit:
        self.calls.append(("upload_folder", args, kwargs))
        self.readme_at_upload = (Path(kwargs["folder_path"]) / "README.md").read_text(encoding="utf-8")
        return FakeCommit()


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeHfApi]:
    FakeHfApi.instances = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


def _push(folder: Path, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {"base_model": BASE, "stages": _stages(), "adapter": True}
    return push_stage(folder, "alice/cxmind-3b", **(kwargs | overrides))


def test_upload_files_leave_out_resume_state_checkpoints_logs_and_predictions(tmp_path: Path) -> None:
    assert set(upload_files(_stage_folder(tmp_path))) == PUSHED


def test_push_creates_private_repo_and_uploads_once(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    folder = _stage_folder(tmp_path)
    url = _push(folder)
    assert url == FakeCommit.commit_url
    [api] = fake_api.instances
    assert api.init == ((), {})  # no token handed to the client: huggingface_hub resolves HF_TOKEN itself
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    _, args, kwargs = api.calls[0]
    assert (args, kwargs) == (("alice/cxmind-3b",), {"private": True, "exist_ok": True, "repo_type": "model"})
    _, args, kwargs = api.calls[1]
    assert "token" not in kwargs
    assert kwargs["repo_id"] == "alice/cxmind-3b" and kwargs["repo_type"] == "model"
    assert Path(kwargs["folder_path"]) == folder
    assert kwargs["ignore_patterns"] == list(PUSH_IGNORE_PATTERNS)
    for pattern in ("checkpoint-*/", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json"):
        assert pattern in kwargs["ignore_patterns"]
    assert kwargs["commit_message"] == "cxmind adapter after sft → grpo_closed → grpo_open"
    # what the Hub client would upload with exactly these patterns
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert set(filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"])) == PUSHED
    # the card was in the folder before the upload, and it is the full card
    assert api.readme_at_upload is not None
    card = ModelCard(api.readme_at_upload)
    assert card.data.library_name == "peft" and card.data.base_model == BASE
    assert "# cxmind-3b" in card.text
    assert "| overall | 2 | 0.5 |" in card.text  # results.json of the folder fills the evaluation table
    assert "| r | 8 |" in card.text  # adapter_config.json fills the adapter table


def test_push_passes_public_flag_and_commit_message(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    _push(_stage_folder(tmp_path), private=False, commit_message="stage 3", adapter=False)
    [api] = fake_api.instances
    assert api.calls[0][2]["private"] is False
    assert api.calls[1][2]["commit_message"] == "stage 3"


def test_push_has_no_token_argument() -> None:
    assert not [p for p in inspect.signature(push_stage).parameters if "token" in p.lower()]
    with pytest.raises(TypeError):
        push_stage("x", "alice/x", base_model=BASE, stages=_stages(), adapter=True, token=TOKEN)  # type: ignore[call-arg]


@pytest.mark.parametrize("weights", ["adapter_model.bin", "pytorch_model.bin", "model.pt"])
def test_push_refuses_pickled_weights(tmp_path: Path, fake_api: type[FakeHfApi], weights: str) -> None:
    folder = _stage_folder(tmp_path, weights=weights)
    with pytest.raises(ValueError, match=rf"pickled weights \({re.escape(weights)}\).*safetensors"):
        _push(folder)
    assert fake_api.instances == []  # nothing reached the Hub
    assert (folder / "README.md").read_text(encoding="utf-8") == "stub written by the trainer"


def test_push_refuses_pickles_next_to_safetensors(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    folder = _stage_folder(tmp_path)
    (folder / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"adapter_model\.bin"):
        _push(folder)
    assert fake_api.instances == []


def test_push_refuses_a_folder_without_weights(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    folder = _stage_folder(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        _push(folder)
    with pytest.raises(FileNotFoundError):
        _push(tmp_path / "missing")
    assert fake_api.instances == []


def test_push_refuses_files_holding_a_token(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    folder = _stage_folder(tmp_path)
    (folder / "training_config.json").write_text(json.dumps({"hub_token": TOKEN}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"training_config\.json") as info:
        _push(folder)
    assert TOKEN not in str(info.value)
    assert fake_api.instances == []


def test_push_warns_about_local_paths_in_pushed_files(tmp_path: Path, fake_api: type[FakeHfApi]) -> None:
    folder = _stage_folder(tmp_path)
    config = {"peft_type": "LORA", "base_model_name_or_path": "/home/alice/models/qwen"}
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.warns(UserWarning, match="adapter_config.json"):
        _push(folder)
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "/home/alice" not in readme  # the card itself stays clean


def test_offline_push_raises_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = _stage_folder(tmp_path)
    with pytest.raises(RuntimeError, match=r"push to alice/cxmind-3b failed: .*HF_TOKEN") as info:
        _push(folder)
    assert "hf auth login" in str(info.value)
    assert isinstance(info.value.__cause__, huggingface_hub.errors.OfflineModeIsEnabled)
    assert ModelCard.load(folder / "README.md").data.base_model == BASE  # the card was written first


def test_write_model_card_reads_adapter_config_and_results(tmp_path: Path) -> None:
    folder = _stage_folder(tmp_path)
    path = write_model_card(folder, base_model=BASE, stages=_stages(), adapter=True, repo_id="alice/x")
    assert path == folder / "README.md"
    card = ModelCard.load(path)
    assert card.data.tags and "lora" in card.data.tags
    assert "| r | 8 |" in card.text and "| overall | 2 | 0.5 |" in card.text
    explicit = write_model_card(
        folder,
        base_model=BASE,
        stages=_stages(),
        adapter=True,
        eval_results={"accuracy": 0.9},
        peft_config={},
    )
    text = explicit.read_text(encoding="utf-8")
    assert "| accuracy | 0.9 |" in text and "| overall |" not in text and "### Adapter" not in text
    with pytest.raises(FileNotFoundError):
        write_model_card(tmp_path / "missing", base_model=BASE, stages=_stages(), adapter=True)


# ---------------------------------------------------------------------------------------------
# Hub metadata: model-index, datasets, and the template
# ---------------------------------------------------------------------------------------------


def test_model_index_holds_the_headline_metrics_per_task() -> None:
    card = ModelCard(_card())
    results = {(r.task_name, r.metric_type): r for r in card.data.eval_results}
    assert set(results) == {
        ("disease_binary", "accuracy"),
        ("disease_open", "f1"),
    }  # no overall, no per-source
    binary, open_ = results["disease_binary", "accuracy"], results["disease_open", "f1"]
    assert (binary.task_type, binary.metric_value, binary.metric_name) == (
        "visual-question-answering",
        0.8123,
        "Accuracy",
    )
    assert (open_.task_type, open_.metric_value) == ("visual-question-answering", 0.5)
    for result in (binary, open_):
        assert result.dataset_type == hub.LOCAL_RECORDS and result.dataset_name == "cxmind records cxr"
        assert result.dataset_split == "test" and result.dataset_config == result.task_name
    assert card.data.model_name == "cxmind-3b"
    # the Hub groups entries by (task type, dataset, config, split): one entry per task
    [index] = card.data.to_dict()["model-index"]
    assert index["name"] == "cxmind-3b"
    assert [r["task"]["name"] for r in index["results"]] == ["disease_binary", "disease_open"]


def test_front_matter_is_plain_yaml_and_round_trips() -> None:
    text = _card()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == BASE and front["pipeline_tag"] == "image-text-to-text"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "accuracy", "value": 0.8123, "name": "Accuracy"}]
    card = ModelCard(text)
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict() == front


def test_model_index_covers_every_task_type_and_skips_missing_values() -> None:
    results = {
        "config": {"data": "data/cxset/", "split": "validation"},
        "n_records": 7,
        "limited": True,
        "metrics": {
            "by_task": {
                "report_findings": {
                    "bleu_4": {"value": 0.1, "ci": [0.0, 0.2], "n": 3},
                    "rouge_l": 0.25,
                    "bertscore_f1": {"value": None, "ci": None, "n": 3},  # not computed
                    "ce_f1": {"value": float("nan"), "ci": None, "n": 3},
                    "tokens": {"value": 80, "ci": None, "n": 3},  # not a headline metric
                },
                "grounding": {"iou": 0.4, "acc@0.5": {"value": 0.5, "ci": None, "n": 2}},
                "some_new_task": {"accuracy": 1},
            }
        },
    }
    entries = hub.model_index_results(results, dataset_ids=["alice/cxset", "bob/other"])
    assert [(e.task_name, e.task_type, e.metric_type, e.metric_value) for e in entries] == [
        ("report_findings", "image-to-text", "bleu_4", 0.1),
        ("report_findings", "image-to-text", "rouge_l", 0.25),
        ("grounding", "object-detection", "iou", 0.4),
        ("grounding", "object-detection", "acc@0.5", 0.5),
        ("some_new_task", "image-text-to-text", "accuracy", 1.0),
    ]
    # the evaluated folder is a record set pushed as alice/cxset; a --limit run says so in the name
    assert {(e.dataset_type, e.dataset_name, e.dataset_split) for e in entries} == {
        ("alice/cxset", "alice/cxset (7-record subset, --limit)", "validation")
    }


def test_simple_result_shapes_give_no_model_index() -> None:
    card = ModelCard(_card(eval_results={"metrics": {"closed": {"accuracy": 0.75}}}))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "| closed | 0.75 |" in card.text  # the table still shows them
    assert ModelCard(_card(eval_results=None)).data.eval_results is None


def test_datasets_metadata_lists_hub_datasets_only() -> None:
    stages = _stages()
    stages[0].dataset_ids = ["alice/cxset", "/home/alice/data/cxr", "../up/x"]
    stages[1].dataset_ids = ["alice/cxset"]
    card = ModelCard(_card(stages=stages, datasets=["bob/instructions", "~/local/set"]))
    assert card.data.datasets == ["alice/cxset", "bob/instructions"]
    assert ModelCard(_card()).data.datasets is None


def test_card_text_comes_from_the_packaged_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable the template uses is passed (Jinja would render a missing one as empty text), and
    the template ships in the wheel."""
    import jinja2
    import jinja2.meta

    calls: list[dict[str, Any]] = []
    original = ModelCard.from_template.__func__  # type: ignore[attr-defined]

    def spy(cls: type[ModelCard], card_data: Any, **kwargs: Any) -> ModelCard:
        calls.append({**card_data.to_dict(), **kwargs})
        return original(cls, card_data, **kwargs)

    monkeypatch.setattr(ModelCard, "from_template", classmethod(spy))
    text = _card()
    [passed] = calls
    assert passed["template_path"] == str(hub.MODEL_CARD_TEMPLATE)
    source = hub.MODEL_CARD_TEMPLATE.read_text(encoding="utf-8")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    assert used - {"card_data"} <= set(passed), used - set(passed)
    before_bibtex = text.split("```bibtex")[0]  # BibTeX braces its titles: {{CX-Mind}}
    assert "{{" not in before_bibtex and "{%" not in text and "{#" not in text
    assert "\n\n\n" not in text
    pyproject = (Path(hub.__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    package_data = re.search(r"^\[tool\.setuptools\.package-data\]\ncxmind = (\[.*\])$", pyproject, re.M)
    assert package_data and '"templates/*.md"' in package_data.group(1)


def test_card_links_are_absolute() -> None:
    """The card is read on the Hub, where a relative link would point into the model repo."""
    text = _card()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets and all(t.startswith("https://") for t in targets), targets
    assert "https://github.com/SII-zyj/CX-Mind-private" in targets  # reward mode "reference" is explained
