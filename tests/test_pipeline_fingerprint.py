"""A finished stage is skipped only while the recipe would train it the same way (settings, data, start)."""

import json
import shutil

import pytest
import yaml

from cxmind.cli import main
from cxmind.training.pipeline import DONE_FILE, _changes, _start, stage_fingerprint
from cxmind.training.recipe import Recipe

CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "logging_steps": 1, "learning_rate": 1e-3}


def recipe_dict(model, records, out):
    return {
        "model": str(model),
        "output_dir": str(out),
        "seed": 0,
        "max_pixels": 224 * 224,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "data": [{"path": str(records), "task_types": ["closed"]}],
                "args": {**CPU, "per_device_train_batch_size": 2, "max_steps": 1, "save_strategy": "no"},
            },
            {
                "name": "grpo_closed",
                "type": "grpo",
                "data": [{"path": str(records), "task_types": ["closed"]}],
                "args": {
                    **CPU,
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_completion_length": 8,
                    "max_steps": 1,
                    "save_strategy": "no",
                },
            },
        ],
    }


@pytest.mark.slow
def test_finished_stages_are_checked_against_the_recipe(
    tiny_qwen25_vl_path, phantom_records, tmp_path, capsys
):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run")))
    run = tmp_path / "run"

    def train(*args):
        capsys.readouterr()
        code = main(["train", str(path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    def states(out):  # the summary lines: stage name, then "trained" or "skipped (finished earlier)"
        return {
            line.split()[0]: line.split()[1]
            for line in out.splitlines()
            if line.split()[:1] in (["sft"], ["grpo_closed"])
        }

    def ids():
        return {
            name: json.loads((run / name / DONE_FILE).read_text())["stage_id"]
            for name in ("sft", "grpo_closed")
        }

    # --only runs the named stage and leaves the later ones alone
    code, out, _ = train("--only", "sft")
    assert code == 0 and states(out) == {"sft": "trained"}
    assert (run / "sft" / DONE_FILE).is_file() and not (run / "grpo_closed").exists()
    code, out, _ = train()
    assert code == 0 and states(out) == {"sft": "skipped", "grpo_closed": "trained"}
    first = ids()

    # an unchanged recipe, or one changing how a run is logged and saved, still skips finished stages
    code, out, _ = train("--stages.sft.logging_steps", "7", "--stages.grpo_closed.save_strategy", "steps")
    assert code == 0 and states(out) == {"sft": "skipped", "grpo_closed": "skipped"} and ids() == first

    # a recipe edit that changes what a finished stage learns is refused in one line, naming the key
    code, out, err = train("--stages.sft.learning_rate", "0.5")
    (error,) = [line for line in err.splitlines() if not line.startswith("cxmind train: warning:")]
    assert code == 2 and out == ""
    assert error == (
        "cxmind train: error: stage 'sft' finished with different settings "
        "(changed: learning_rate 0.001 -> 0.5); pass --restart sft to redo it (and the stages after it) "
        "or --overwrite to start the whole run over"
    )
    code, _, err = train("--stages.grpo_closed.beta", "0.02")
    assert (
        code == 2
        and "stage 'grpo_closed' finished with different settings (changed: beta 0.0 -> 0.02)" in err
    )
    assert ids() == first  # nothing was trained or deleted

    # --restart redoes that stage (and the ones after it) with the new settings
    code, out, _ = train("--stages.grpo_closed.beta", "0.02", "--restart", "grpo_closed")
    assert code == 0 and states(out) == {"sft": "skipped", "grpo_closed": "trained"}
    second = ids()
    assert second["sft"] == first["sft"] and second["grpo_closed"] != first["grpo_closed"]
    assert train("--stages.grpo_closed.beta", "0.02")[0] == 0  # now finished with beta 0.02 ...
    assert train()[0] == 2  # ... so the recipe's own beta is refused

    # restarting an earlier stage redoes every later one too: their starting model changes
    code, out, _ = train("--stages.sft.learning_rate", "0.5", "--restart", "sft")
    assert code == 0 and states(out) == {"sft": "trained", "grpo_closed": "trained"}
    third = ids()
    assert all(third[name] != second[name] for name in third)
    grpo_done = json.loads((run / "grpo_closed" / DONE_FILE).read_text())
    assert grpo_done["fingerprint"]["start"] == {"after": "sft", "stage_id": third["sft"]}
    assert grpo_done["fingerprint"]["args"]["beta"] == 0.0

    # --overwrite starts the whole run over
    code, out, _ = train("--overwrite")
    assert code == 0 and states(out) == {"sft": "trained", "grpo_closed": "trained"}
    assert all(ids()[name] != third[name] for name in third)
    with pytest.raises(SystemExit):
        main(["train", str(path), "--overwrite", "--restart", "sft"])

    # a stage finished before fingerprints existed is skipped, with a warning saying how to redo it
    done = json.loads((run / "sft" / DONE_FILE).read_text())
    del done["fingerprint"], done["stage_id"]
    (run / "sft" / DONE_FILE).write_text(json.dumps(done))
    grpo_done = json.loads((run / "grpo_closed" / DONE_FILE).read_text())
    grpo_done["fingerprint"]["start"]["stage_id"] = None  # it started from that legacy stage
    (run / "grpo_closed" / DONE_FILE).write_text(json.dumps(grpo_done))
    with pytest.warns(UserWarning, match=r"stage 'sft' finished before .*\(pass --restart sft to redo it\)"):
        code, out, _ = train("--stages.sft.learning_rate", "0.5")
    assert code == 0 and states(out) == {"sft": "skipped", "grpo_closed": "skipped"}


def test_fingerprint_follows_what_a_stage_learns_from(tiny_qwen25_vl_path, phantom_records, tmp_path):
    """Settings, data content and the starting model count; logging, output place and locations do not."""
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run")

    def fingerprint(raw, model_path=None):
        recipe = Recipe.from_dict(raw)
        stage = recipe.stages[1]
        return stage_fingerprint(recipe, stage, recipe.stage_config(stage), _start(recipe, 0, None))

    base = fingerprint(raw)
    assert "learning_rate" in base["args"] and "logging_steps" not in base["args"]
    assert base["args"]["generation_batch_size"] is None  # depends on the launch's world size: as written
    # a copy of the record set and of the base model elsewhere, another output folder and logging: the same
    records = shutil.copytree(phantom_records, tmp_path / "copy" / "records")
    model = shutil.copytree(tiny_qwen25_vl_path, tmp_path / "copy" / "model")
    moved = json.loads(json.dumps(raw))
    moved.update(model=str(model), output_dir=str(tmp_path / "elsewhere"))
    moved["model_init_kwargs"] = {"attn_implementation": "sdpa", "device_map": None}
    moved["stages"][1]["data"][0]["path"] = str(records)
    moved["stages"][1]["args"].update(logging_steps=50, report_to="tensorboard", dataloader_num_workers=2)
    assert _changes(base, fingerprint(moved)) == []
    # what the stage learns from does count
    (records / "validate.rejects.jsonl").write_text('{"id": "x"}\n')  # validation now drops a record
    moved["stages"][1]["args"]["temperature"] = 0.7
    moved["stages"][1]["data"][0]["task_types"] = ["open"]
    moved["peft"] = {"r": 8}
    moved["model_init_kwargs"]["dtype"] = "bfloat16"
    changes = _changes(base, fingerprint(moved))
    assert "temperature 1.0 -> 0.7" in changes and 'data[0].task_types ["closed"] -> ["open"]' in changes
    assert "peft.r (absent) -> 8" in changes and 'model_init_kwargs null -> {"dtype": "bfloat16"}' in changes
    assert any(c.startswith("data[0].content sha256:") for c in changes)
    # a data source removed after the stage finished cannot be checked, so it is not a change
    shutil.rmtree(records)
    del moved["peft"], moved["model_init_kwargs"]["dtype"]
    moved["stages"][1]["args"]["temperature"] = 1.0
    moved["stages"][1]["data"][0]["task_types"] = ["closed"]
    assert _changes(base, fingerprint(moved)) == []
    # a field a TRL upgrade adds or removes is not a change either
    older = json.loads(json.dumps(base))
    del older["args"]["beta"]
    assert _changes(older, base) == []


def test_the_model_card_lists_hub_datasets_but_not_local_paths(tmp_path):
    from cxmind.training.data import DataSource
    from cxmind.training.pipeline import _hub_dataset_id

    local = tmp_path / "records"
    local.mkdir()
    assert _hub_dataset_id(DataSource("your-org/cxmind-records")) == "your-org/cxmind-records"
    for path in (str(local), "./records", "/data/missing", "~/records"):
        assert _hub_dataset_id(DataSource(path)) is None, path


def test_the_default_data_style_leaves_fingerprints_of_earlier_runs_unchanged(tmp_path):
    """Runs finished before data sources had a ``style`` still resume; choosing one is a change."""
    from cxmind.training.data import DataSource
    from cxmind.training.pipeline import _data_identity

    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    assert "style" not in _data_identity(DataSource(str(data)))
    assert _data_identity(DataSource(str(data), style="instruction"))["style"] == "instruction"


def test_a_start_model_trained_again_by_another_run_is_a_change(tmp_path):
    """A recipe starting from another run's stage sees that stage retrained (same file sizes)."""
    import json

    from cxmind.training.pipeline import DONE_FILE, _model_identity

    model = tmp_path / "cold_start"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"0" * 16)
    plain = _model_identity(str(model))
    (model / DONE_FILE).write_text(json.dumps({"stage_id": "a"}))
    first = _model_identity(str(model))
    (model / DONE_FILE).write_text(json.dumps({"stage_id": "b"}))
    assert len({plain, first, _model_identity(str(model))}) == 3
