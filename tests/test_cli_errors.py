"""The command's error boundary: a user's mistake is one line naming the fix (exit status 2), with no
traceback and nothing half-written; a bug keeps its traceback; ``--debug`` shows it for user errors too;
Ctrl-C is one line (exit status 130). Plus the command-line conventions of issue 15."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from cxmind import cli
from cxmind.cli import build_parser, main
from cxmind.errors import MissingExtraError, UserError, model_problem, require_model

CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "max_steps": 1, "save_strategy": "no"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub is offline (as conftest sets it) however huggingface_hub was imported: no request is made."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, command: str, *expected: str) -> str:
    """Exit status 2 and exactly one stderr line ``cxmind COMMAND: error: ...`` holding ``expected``."""
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"cxmind {command}: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.fixture
def stub_model(tmp_path: Path) -> Path:
    """A folder that resolves as a model (config.json) without being loaded."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


def write_recipe(tmp_path: Path, model: str, **top: object) -> Path:
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    (records / "cxmind_data.json").write_text("{}", encoding="utf-8")
    raw = {
        "model": model,
        "output_dir": str(tmp_path / "run"),
        "stages": [{"name": "sft", "type": "sft", "data": str(records), "args": dict(CPU)}],
        **top,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# -- train -----------------------------------------------------------------------------------------


def test_train_with_a_missing_model_folder(tmp_path, capsys):
    recipe = write_recipe(tmp_path, str(tmp_path / "models" / "missing"))
    code, out, err = run(capsys, "train", str(recipe))
    assert_one_line(code, err, "train", "model", "is not a model folder", "fix the path")
    assert out == "" and not (tmp_path / "run").exists()


def test_train_with_a_hub_id_not_cached_offline(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "some-org/not-cached-model")
    code, _, err = run(capsys, "train", str(recipe))
    assert_one_line(
        code,
        err,
        "train",
        "some-org/not-cached-model",
        "HF_HUB_OFFLINE=1",
        "hf download some-org/not-cached-model",
    )
    assert not (tmp_path / "run").exists()


def test_train_with_an_invalid_model_id(tmp_path, capsys):
    """Once a transformers ``OSError: Repo id must be in the form ...`` traceback."""
    recipe = write_recipe(tmp_path, "not a valid id!")
    code, _, err = run(capsys, "train", str(recipe))
    assert_one_line(code, err, "train", "not a valid Hub id")


def test_a_mistyped_recipe_key_names_the_nearest_keys_only(tmp_path, stub_model, capsys):
    recipe = write_recipe(tmp_path, str(stub_model), output_dri="runs/x")
    code, _, err = run(capsys, "train", str(recipe))
    assert_one_line(code, err, "train", "'output_dri' (did you mean 'output_dir'?)")
    assert "allowed" not in err and "hub_model_id" not in err and len(err) < 300  # not every key


def test_a_mistyped_override_key_names_at_most_three_keys(tmp_path, stub_model, capsys):
    recipe = write_recipe(tmp_path, str(stub_model))
    code, _, err = run(capsys, "train", str(recipe), "--lerning_rate", "1e-5")
    assert_one_line(code, err, "train", "override --lerning_rate: unknown recipe key 'lerning_rate'")
    assert err.count("'") <= 2 + 3 * 2  # the key and at most three suggestions
    code, _, err = run(capsys, "train", str(recipe), "--stages.sft.learnig_rate", "1e-5")
    assert_one_line(code, err, "train", "'learnig_rate' (did you mean 'learning_rate'?)")


def test_a_mistyped_value_type_is_one_line(tmp_path, stub_model, capsys):
    recipe = write_recipe(tmp_path, str(stub_model), peft={"r": "sixty-four"})
    code, _, err = run(capsys, "train", str(recipe))
    assert_one_line(code, err, "train", "peft.r: 'sixty-four' is not an integer")
    recipe = write_recipe(tmp_path, str(stub_model))
    code, _, err = run(capsys, "train", str(recipe), "--peft.r", "sixty-four")
    assert_one_line(code, err, "train", "peft.r: 'sixty-four' is not an integer")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--num_processes", "2"], "run `accelerate launch --num_processes 2 -m cxmind train "),
        (["--config_file", "zero3.yaml"], "run `accelerate launch --config_file zero3.yaml -m cxmind train "),
        (["--mixed_precision=bf16"], "run `accelerate launch --mixed_precision bf16 -m cxmind train "),
        (["--check", "--num_processes", "2"], "with --check, describe the launch with --num-processes 2"),
        (
            ["--check", "--config_file", "zero3.yaml"],
            "describe the launch with --accelerate-config zero3.yaml",
        ),
    ],
)
def test_accelerate_flags_say_where_they_belong(tmp_path, stub_model, capsys, flags, expected):
    recipe = write_recipe(tmp_path, str(stub_model))
    code, _, err = run(capsys, "train", str(recipe), *flags)
    assert_one_line(code, err, "train", "is an `accelerate launch` flag", expected)


def test_launch_options_of_check_launch_nothing(tmp_path, stub_model, capsys):
    recipe = write_recipe(tmp_path, str(stub_model))
    code, _, err = run(capsys, "train", str(recipe), "--num-processes", "2")
    assert_one_line(code, err, "train", "run `accelerate launch --num_processes 2 -m cxmind train ")
    code, _, err = run(capsys, "train", str(recipe), "--gpu-memory-gib", "80")
    assert_one_line(code, err, "train", "--gpu-memory-gib only describes a launch for --check")
    assert not (tmp_path / "run").exists()


def test_train_takes_the_recipe_as_config_too(tmp_path, stub_model, capsys):
    recipe = write_recipe(tmp_path, str(stub_model))
    # an override's value after --config is not taken for the RECIPE positional
    code, out, err = run(
        capsys, "train", "--config", str(recipe), "--check", "--output_dir", str(tmp_path / "o")
    )
    assert code == 0, err
    assert f"cxmind train: {recipe}: no errors (1 stages)" in out
    assert run(capsys, "train", str(recipe), "--check")[0] == 0
    code, _, err = run(capsys, "train", str(recipe), "--config", str(recipe))
    assert_one_line(code, err, "train", "pass the recipe once")
    code, _, err = run(capsys, "train", "--check")
    assert_one_line(code, err, "train", "no recipe: run `cxmind train RECIPE` (or `--config RECIPE`)")
    code, _, err = run(capsys, "train", str(tmp_path / "nope.yaml"))
    assert_one_line(code, err, "train", "nope.yaml not found")


# -- eval, predict ---------------------------------------------------------------------------------


def test_eval_with_a_missing_model_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run(
        capsys, "eval", "--model", str(tmp_path / "missing"), "--data", str(tmp_path), "--out", str(out)
    )
    assert_one_line(code, err, "eval", f"--model {tmp_path / 'missing'}: is not a model folder")
    assert stdout == "" and not out.exists()


def test_eval_with_a_missing_record_set(stub_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = run(
        capsys, "eval", "--model", str(stub_model), "--data", str(tmp_path / "nope"), "--out", str(out)
    )
    assert_one_line(code, err, "eval", "not a cxmind record set", "cxmind data build")
    assert not out.exists()


def test_eval_with_a_missing_adapter(stub_model, tmp_path, capsys):
    args = ["--model", str(stub_model), "--adapter", str(stub_model), "--data", str(tmp_path)]
    code, _, err = run(capsys, "eval", *args, "--out", str(tmp_path / "eval"))
    assert_one_line(code, err, "eval", "--adapter", "without adapter_config.json")


def test_vllm_backend_without_vllm_names_the_extra(stub_model, tmp_path, capsys):
    from cxmind.eval.generate import _installed

    if _installed("vllm"):
        pytest.skip("vllm is installed here")
    args = ["--model", str(stub_model), "--data", str(tmp_path), "--out", str(tmp_path / "eval")]
    code, _, err = run(capsys, "eval", *args, "--backend", "vllm")
    assert_one_line(code, err, "eval", 'pip install "cxmind[vllm]"')
    from cxmind.eval.generate import require_backend

    with pytest.raises(ImportError):  # still an ImportError for API callers
        require_backend("vllm")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--task-type", "closed"], "--task-type closed needs two or more --option"),
        (["--task-type", "closed", "--option", "A) Yes"], "got 1"),
        (["--option", "A) Yes", "--option", "B) No"], "--option is for --task-type closed"),
        (["--task-type", "report", "--option", "A) Yes"], "(not report)"),
    ],
)
def test_predict_options_must_match_the_task_type(tmp_path, capsys, extra, expected):
    code, out, err = run(
        capsys, "predict", "--model", "m", "--image", str(tmp_path / "x.png"), "--question", "Edema?", *extra
    )
    assert_one_line(code, err, "predict", expected)
    assert out == ""


def test_predict_has_no_batch_size():
    with pytest.raises(SystemExit) as info:
        main(["predict", "--model", "m", "--image", "x.png", "--question", "q", "--batch-size", "2"])
    assert info.value.code == 2
    args = build_parser().parse_args(
        ["eval", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "2"]
    )
    assert args.batch_size == 2  # eval batches its prompts


def test_predict_with_a_missing_image_or_model(stub_model, tmp_path, capsys):
    base = ["predict", "--question", "q"]
    code, _, err = run(capsys, *base, "--model", str(stub_model), "--image", str(tmp_path / "none.png"))
    assert_one_line(code, err, "predict", "--image", "no such file")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    code, _, err = run(capsys, *base, "--model", "some-org/not-cached", "--image", str(image))
    assert_one_line(code, err, "predict", "--model some-org/not-cached", "HF_HUB_OFFLINE=1")


# -- data ------------------------------------------------------------------------------------------


def test_data_validate_with_an_uncached_model_offline(phantom_records, capsys):
    before = files_under(phantom_records)
    code, out, err = run(capsys, "data", "validate", str(phantom_records), "--model", "some-org/not-cached")
    assert_one_line(
        code, err, "data validate", "--model some-org/not-cached", "HF_HUB_OFFLINE=1", "hf download"
    )
    assert out == "" and files_under(phantom_records) == before  # no rejects file, no temporary file


def test_data_validate_of_a_missing_record_set(tmp_path, capsys):
    code, _, err = run(capsys, "data", "validate", str(tmp_path / "nope"))
    assert_one_line(code, err, "data validate", "not a cxmind record set")
    assert not (tmp_path / "nope").exists()


def test_data_push_offline(phantom_records, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    code, out, err = run(capsys, "data", "push", str(phantom_records), "--repo-id", "org/cxr")
    assert_one_line(code, err, "data push", "HF_HUB_OFFLINE=1 is set: unset it to push to org/cxr")
    assert out == "" and "hf_secret" not in err


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            lambda: __import__("huggingface_hub").errors.HfHubHTTPError(
                "401 Client Error: Unauthorized",
                response=types.SimpleNamespace(headers={}, request=None, status_code=401),
            ),
            "refused the token (401): log in with `hf auth login` or set HF_TOKEN",
        ),
        (lambda: ConnectionError("Name or service not known"), "cannot be reached (ConnectionError)"),
    ],
)
def test_data_push_hub_refusals_name_the_fix(phantom_records, monkeypatch, capsys, failure, expected):
    import huggingface_hub

    class RefusingApi:
        def create_repo(self, *args, **kwargs):
            raise failure()

    monkeypatch.setattr(huggingface_hub, "HfApi", RefusingApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    code, _, err = run(capsys, "data", "push", str(phantom_records), "--repo-id", "org/cxr")
    assert_one_line(code, err, "data push", expected)
    assert "hf_secret" not in err


def test_data_push_bug_keeps_its_traceback(phantom_records, monkeypatch):
    import huggingface_hub

    class BuggyApi:
        def create_repo(self, *args, **kwargs):
            raise AttributeError("'NoneType' object has no attribute 'repo_id'")

    monkeypatch.setattr(huggingface_hub, "HfApi", BuggyApi)
    with pytest.raises(AttributeError):
        main(["data", "push", str(phantom_records), "--repo-id", "org/cxr"])


def test_data_build_argument_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["data", "build", "--source", f"phantom={tmp_path}", "--out", str(out)]
    code, _, err = run(capsys, *base, "--split-fractions", "0.8,0.3,0.1")
    assert_one_line(code, err, "data build", "summing to 1")
    code, _, err = run(capsys, *base, "--min-pixels", "900000", "--max-pixels", "3136")
    assert_one_line(code, err, "data build", "exceeds max_pixels")
    assert not out.exists()


# -- the boundary itself ---------------------------------------------------------------------------


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch, capsys):
    args = [
        "eval",
        "--model",
        str(tmp_path / "missing"),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "e"),
    ]
    with pytest.raises(UserError, match="is not a model folder"):
        main(["--debug", *args])
    with pytest.raises(UserError):
        main([*args, "--debug"])  # after the command too
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(UserError):
        main(args)


def _cxmind(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != cli.DEBUG_ENV}
    environ.update({"HF_HUB_OFFLINE": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "cxmind", *argv], capture_output=True, text=True, env=environ
    )


def test_as_a_command_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    argv = [
        "predict",
        "--model",
        "m",
        "--image",
        str(tmp_path / "x.png"),
        "--question",
        "q",
        "--task-type",
        "closed",
    ]
    done = _cxmind(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        'cxmind predict: error: --task-type closed needs two or more --option (e.g. --option "A) Yes" '
        '--option "B) No"); got none'
    ]
    debug = _cxmind("--debug", *argv)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "cxmind.errors.UserError: --task-type closed needs two or more --option" in debug.stderr
    assert _cxmind(*argv, CXMIND_DEBUG="1").stderr == debug.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Once printed as ``cxmind train: error: pixel_values``: a KeyError is a bug, not a user's mistake."""

    def broken(args, overrides):
        raise KeyError("pixel_values")

    monkeypatch.setattr(cli, "_train", broken)
    with pytest.raises(KeyError, match="pixel_values"):
        main(["train", "recipe.yaml"])
    for error in (ValueError("x"), FileNotFoundError("y"), ImportError("z")):  # bare ones are bugs too
        monkeypatch.setattr(cli, "_eval", lambda args, error=error: (_ for _ in ()).throw(error))
        with pytest.raises(type(error)):
            main(["eval", "--model", "m", "--data", "d", "--out", "o"])


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_eval", interrupted)
    code, out, err = run(capsys, "eval", "--model", "m", "--data", "d", "--out", "o")
    assert code == 130 and out == "" and err == "cxmind eval: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "eval", "--model", "m", "--data", "d", "--out", "o"])


def test_help_shows_defaults():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    eval_help = commands["eval"].format_help()
    assert (
        "(default: 1024)" in eval_help and "(default: test)" in eval_help and "(default: 3136)" in eval_help
    )
    assert "(default: None)" not in eval_help and "(default: False)" not in eval_help
    data = commands["data"]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in data.items():
        assert isinstance(sub.formatter_class(prog="x"), cli._HelpFormatter), name
        assert "--debug" in sub.format_help(), name
    assert "(default: 50)" in data["phantom"].format_help()
    assert "--batch-size" not in commands["predict"].format_help()


# -- the model check -------------------------------------------------------------------------------


def test_model_problem(tmp_path, stub_model, monkeypatch):
    from unittest import mock

    assert model_problem(str(stub_model)) is None
    assert "without config.json" in (model_problem(str(tmp_path)) or "")
    assert "is a file" in (model_problem(str(stub_model / "config.json")) or "")
    assert "not a model folder" in (model_problem(str(tmp_path / "a" / "b")) or "")
    assert "not a model folder" in (model_problem("missing-folder/") or "")
    assert "not a valid Hub id" in (model_problem("org/bad id") or "")
    assert "HF_HUB_OFFLINE=1" in (model_problem("org/model") or "")
    with mock.patch("huggingface_hub.try_to_load_from_cache", return_value="/cache/config.json"):
        assert model_problem("org/model") is None  # cached: fine offline
    assert model_problem("org/model", offline=False) is None  # online, not probed: it will download
    with pytest.raises(UserError, match=r"^--adapter org/a: .*HF_HUB_OFFLINE=1"):
        require_model("org/a", flag="--adapter", markers=("adapter_config.json",))


def test_an_unreachable_hub_is_a_user_error(monkeypatch):
    """Online, an uncached id is looked up: an unreachable Hub or an unknown repo says so in one line."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def unreachable(url, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    problem = model_problem("org/model", offline=False, probe_hub=True)
    assert problem is not None and "cannot be reached" in problem and "hf download org/model" in problem

    def missing(url, **kwargs):
        raise RepositoryNotFoundError("404", response=types.SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", missing)
    problem = model_problem("org/model", offline=False, probe_hub=True)
    assert problem is not None and "not a model on the Hugging Face Hub" in problem

    def bug(url, **kwargs):
        raise TypeError("unexpected keyword")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", bug)
    with pytest.raises(TypeError):
        model_problem("org/model", offline=False, probe_hub=True)


def test_user_errors_keep_the_builtin_types_api_callers_catch(tmp_path):
    from cxmind.data.images import ImageBudget, ImageError
    from cxmind.data.records import read_meta
    from cxmind.eval.run import StalePredictionsError
    from cxmind.training.recipe import RecipeError

    with pytest.raises(FileNotFoundError):
        read_meta(tmp_path)
    with pytest.raises(UserError):
        read_meta(tmp_path)
    with pytest.raises(ValueError):
        ImageBudget(min_pixels=10**7)
    assert issubclass(MissingExtraError, ImportError)
    for cls in (RecipeError, StalePredictionsError, ImageError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    (tmp_path / "cxmind_data.json").write_text(json.dumps([1]))
    with pytest.raises(UserError, match="rebuild the record set"):
        read_meta(tmp_path)
