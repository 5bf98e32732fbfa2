"""End to end on phantoms: build -> validate -> load records; bad inputs are rejected, never dropped."""

import json
import subprocess
import sys
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from cxmind.cli import main
from cxmind.data import load_records
from cxmind.data.build import BuildConfig, SourceSpec, build, parse_source_spec, parse_source_specs
from cxmind.data.images import ImageBudget, PathEscapeError
from cxmind.data.phantom import write_phantom_dataset
from cxmind.data.schema import TASKS
from cxmind.data.tasks import TaskConfig
from cxmind.data.validate import ValidationConfig, validate
from cxmind.rewards import score

BUDGET = ImageBudget(min_pixels=56 * 56, max_pixels=224 * 224)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_patients=24, seed=0, size=128)


@pytest.fixture(scope="module")
def records_dir(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("records") / "set"
    code = main(
        [
            "data",
            "build",
            "--source",
            f"phantom={phantom_root}",
            "--out",
            str(out),
            "--seed",
            "0",
            "--max-pixels",
            str(224 * 224),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def test_build_writes_every_task_with_patient_level_splits(records_dir):
    dataset = load_records(records_dir, decode_images=False)
    rows = [row for split in dataset for row in dataset[split]]
    tasks = {row["task"] for row in rows}
    assert tasks == set(TASKS), set(TASKS) - tasks
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["patient_id"]].add(row["split"])
        assert row["split"] in dataset
    assert all(len(s) == 1 for s in splits_of.values())
    assert len({s for ss in splits_of.values() for s in ss}) >= 2
    for row in rows:
        if row["task_type"] in ("closed", "open"):
            full = score(row["solution"], row["solution"], row["task_type"], options=row["options"])
            assert (full.format, full.outcome, full.process) == (
                1.0,
                1.0,
                0.5 if row["task_type"] == "closed" else 0.2,
            )
    meta = json.loads((records_dir / "cxmind_data.json").read_text())
    assert meta["records"] == len(rows) and "phantom" in meta["image_roots"]
    assert "Not for clinical use" in (records_dir / "README.md").read_text()


def test_records_decode_images_lazily(records_dir):
    train = load_records(records_dir, "train")
    image = train[0]["images"][0]
    assert image.mode == "RGB" and min(image.size) >= 28


def test_build_is_deterministic(phantom_root, records_dir, tmp_path):
    again = tmp_path / "again"
    assert (
        main(
            [
                "data",
                "build",
                "--source",
                f"phantom={phantom_root}",
                "--out",
                str(again),
                "--seed",
                "0",
                "--max-pixels",
                str(224 * 224),
                "--no-progress",
            ]
        )
        == 0
    )
    for shard in sorted((records_dir / "data").glob("*.parquet")):
        assert pq.read_table(shard).equals(pq.read_table(again / "data" / shard.name))


def test_materialized_images_are_resized_to_the_budget_and_boxes_follow(phantom_root, tmp_path):
    out = tmp_path / "mat"
    config = BuildConfig(
        sources=[SourceSpec("phantom", phantom_root)],
        out=out,
        materialize_images=True,
        task=TaskConfig(tasks=("grounding", "disease_binary"), budget=ImageBudget(max_pixels=112 * 112)),
    )
    summary = build(config, progress=False)
    assert summary.total_records > 0
    dataset = load_records(out, decode_images=True)
    for split in dataset:
        for row in dataset[split]:
            image = row["images"][0]
            assert image.size == (112, 112)
            if row["task"] == "grounding":
                for item in json.loads(row["answer"]):
                    x1, y1, x2, y2 = item["bbox_2d"]
                    assert 0 <= x1 < x2 <= 112 and 0 <= y1 < y2 <= 112


def test_validate_rejects_missing_corrupt_escaping_and_over_budget(
    phantom_root, records_dir, tmp_path, tiny_qwen25_vl_path
):
    import shutil

    root = tmp_path / "phantom"
    shutil.copytree(phantom_root, root)
    out = tmp_path / "set"
    shutil.copytree(records_dir, out)
    meta = json.loads((out / "cxmind_data.json").read_text())
    meta["image_roots"]["phantom"] = str(root)
    (out / "cxmind_data.json").write_text(json.dumps(meta))

    shard = sorted((out / "data").glob("train-*.parquet"))[0]
    table = pq.read_table(shard).to_pylist()
    images = sorted({rel for row in table for rel in row["images"]})
    (root / images[0]).unlink()  # missing
    data = (root / images[1]).read_bytes()
    (root / images[1]).write_bytes(data[: len(data) // 3])  # truncated
    table[0]["images"] = ["../../etc/passwd"]  # escapes the root
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)

    report = validate(
        out,
        ValidationConfig(budget=BUDGET, decode=True, model=str(tiny_qwen25_vl_path), max_prompt_tokens=150),
        progress=False,
    )
    reasons = set(report.rejected)
    assert {"image missing", "image corrupt", "image escapes root", "prompt over token budget"} <= reasons
    lines = [json.loads(line) for line in (out / "validate.rejects.jsonl").read_text().splitlines()]
    assert len(lines) == report.total_rejected and all(line["reason"] and line["detail"] for line in lines)
    assert any(line["id"] == table[0]["id"] and line["reason"] == "image escapes root" for line in lines)

    kept = load_records(out, decode_images=False)
    kept_ids = {row["id"] for split in kept for row in kept[split]}
    assert kept_ids.isdisjoint({line["id"] for line in lines})
    # without excluding rejects, resolving the escaping path is refused outright
    with pytest.raises(PathEscapeError):
        load_records(out, exclude_rejects=False)


def test_prompt_token_count_equals_the_processor(records_dir, phantom_root, tiny_qwen25_vl_path):
    from PIL import Image
    from transformers import AutoProcessor

    from cxmind.data.prompts import prompt_messages
    from cxmind.data.validate import prompt_tokens

    processor = AutoProcessor.from_pretrained(tiny_qwen25_vl_path)
    rows = load_records(records_dir, "train", decode_images=False)
    for row in [r for r in rows if r["images"]][:12]:
        images = [Image.open(phantom_root / rel).convert("RGB") for rel in row["images"]]
        text = processor.apply_chat_template(prompt_messages(row), add_generation_prompt=True)
        expected = processor(text=[text], images=images, return_tensors="pt")["input_ids"].shape[1]
        sizes = [image.size for image in images]
        assert prompt_tokens(row, sizes, processor.tokenizer, BUDGET) == expected, row["task"]
    config = ValidationConfig(budget=BUDGET, model=str(tiny_qwen25_vl_path))
    loose = validate(records_dir, config, progress=False)
    assert loose.total_rejected == 0 and loose.max_prompt_tokens_seen > 150


def test_cli_errors_name_the_fix(tmp_path, capsys):
    assert main(["data", "build", "--source", "nih", "--out", str(tmp_path / "x")]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err
    assert main(["data", "build", "--source", f"nosuch={tmp_path}", "--out", str(tmp_path / "y")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "build",
                "--source",
                f"phantom={tmp_path}",
                "--out",
                str(tmp_path / "z"),
                "--tasks",
                "disease_guess",
            ]
        )
        == 2
    )
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"SOURCE\.OPTION=VALUE"):
        parse_source_spec("chexpert=/x", ["uncertain=positive"])
    assert parse_source_spec("chexpert=/x", ["chexpert.uncertain=positive", "nih.a=1"]).options == {
        "uncertain": "positive"
    }


def test_a_source_option_for_no_source_being_built_is_an_error(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"'nhi' is not a source being built \(nih\); valid sources: .*chexpert"
    ):
        parse_source_specs(["nih=/x"], ["nhi.foo=1"])
    with pytest.raises(ValueError, match="'chexpert' is not a source being built"):
        parse_source_specs(["nih=/x"], ["chexpert.uncertain=positive"])
    nih, chexpert = parse_source_specs(["nih=/x", "CheXpert=/y"], ["chexpert.uncertain=positive"])
    assert nih.options == {} and chexpert.options == {"uncertain": "positive"}
    args = ["data", "build", "--source", f"phantom={tmp_path}", "--out", str(tmp_path / "o")]
    assert main([*args, "--source-option", "phantm.seed=1"]) == 2
    err = capsys.readouterr().err
    assert "'phantm' is not a source being built (phantom)" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_help_runs_as_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "cxmind", "data", "build", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--source" in done.stdout


def test_push_sends_shards_card_and_scrubbed_metadata_in_one_commit(records_dir, monkeypatch, capsys):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = (repo_id, kwargs)

        def create_commit(self, repo_id, operations, **kwargs):
            calls["ops"] = operations
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    assert main(["data", "push", str(records_dir), "--repo-id", "org/cxr"]) == 0
    assert calls["repo"] == ("org/cxr", {"repo_type": "dataset", "private": True, "exist_ok": True})
    paths = {op.path_in_repo for op in calls["ops"]}
    assert {"README.md", "cxmind_data.json"} <= paths and any(p.startswith("data/") for p in paths)
    assert not any(p.startswith("images/") for p in paths)
    (meta_op,) = [op for op in calls["ops"] if op.path_in_repo == "cxmind_data.json"]
    meta = json.loads(meta_op.path_or_fileobj)
    assert (
        meta["image_roots"] == {"phantom": "<local>"}
        and str(records_dir.parent) not in meta_op.path_or_fileobj.decode()
    )
    assert "hf_secret_token_value" not in capsys.readouterr().out


def test_teach_rewrites_gold_traces_through_an_openai_compatible_server(records_dir, tmp_path):
    import re
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Teacher(BaseHTTPRequestHandler):
        def do_POST(self):  # writes its own thinks around the answer blocks the prompt dictates
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            answers = re.findall(r"^\d+\. [a-z ]+round: (<answer>.*?</answer>)$", prompt, re.M)
            text = " ".join(
                f"<think>Teacher reasoning for step {i}.</think> {a}" for i, a in enumerate(answers)
            )
            reply = json.dumps(
                {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "set"
    shutil.copytree(records_dir, out)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert main(["data", "teach", str(out), "--base-url", url, "--model", "fake", "--no-progress"]) == 0
    finally:
        server.shutdown()
    dataset = load_records(out, decode_images=False)
    rows = [row for split in dataset for row in dataset[split]]
    taught = [row for row in rows if row["solution"] and "Teacher reasoning" in row["solution"]]
    assert taught, "no record received a teacher trace"
    for row in taught:
        s = score(row["solution"], row["solution"], row["task_type"], options=row["options"])
        assert (s.format, s.outcome) == (1.0, 1.0)
    assert (out / "teacher.traces.jsonl").is_file()


def test_records_do_not_depend_on_the_number_of_workers(phantom_root, tmp_path, monkeypatch):
    import cxmind.data.build as build_module

    monkeypatch.setattr(build_module, "CHUNK_STUDIES", 7)  # several work units from a small source
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        config = BuildConfig(
            sources=[SourceSpec("phantom", phantom_root)],
            out=outs[workers],
            task=TaskConfig(budget=BUDGET),
            materialize_images=True,
            workers=workers,
        )
        build(config, progress=False)
    shards = sorted(p.name for p in (outs[1] / "data").glob("*.parquet"))
    assert len(shards) > 3 and shards == sorted(p.name for p in (outs[2] / "data").glob("*.parquet"))
    for name in shards:
        assert pq.read_table(outs[1] / "data" / name).equals(pq.read_table(outs[2] / "data" / name))
    for name in ("rejects.jsonl", "audit.json"):
        one, two = ((outs[w] / name).read_text().replace(str(outs[w]), "OUT") for w in (1, 2))
        assert one == two
    images = sorted(p.relative_to(outs[1]) for p in (outs[1] / "images").rglob("*.png"))
    assert images and images == sorted(p.relative_to(outs[2]) for p in (outs[2] / "images").rglob("*.png"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_terminated_build_leaves_nothing_behind(phantom_root, tmp_path, workers):
    """SIGTERM (a cluster pre-emption) mid-build: exit status 143, no staging folder, no output."""
    script = f"""
import os, signal
import cxmind.data.build as b
from cxmind.data.tasks import TaskBuilder
b.CHUNK_STUDIES = 5
original = TaskBuilder.build
def build_then_stop(self, study, *args, **kwargs):
    if study.study_id == {_second_chunk_study(phantom_root)!r}:
        os.kill(os.getppid() if {workers} > 1 else os.getpid(), signal.SIGTERM)
    return original(self, study, *args, **kwargs)
TaskBuilder.build = build_then_stop
config = b.BuildConfig(sources=[b.SourceSpec("phantom", {str(phantom_root)!r})],
                       out={str(tmp_path / "set")!r}, materialize_images=True, workers={workers})
b.build(config, progress=False)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _second_chunk_study(phantom_root) -> str:
    """A study the build reaches after its first work unit (chunks of 5 studies in patient order)."""
    from cxmind.data.phantom import PhantomSource

    return list(PhantomSource(phantom_root).studies())[12].study_id


def test_the_record_set_is_readable_as_the_umask_allows(phantom_root, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        out = tmp_path / "set"
        build(
            BuildConfig(sources=[SourceSpec("phantom", phantom_root)], out=out, audit=False), progress=False
        )
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.rglob("*"))


def test_the_dataset_card_carries_hub_metadata_and_the_audit(records_dir):
    from huggingface_hub import DatasetCard

    card = DatasetCard((records_dir / "README.md").read_text())
    data = card.data.to_dict()
    assert data["task_categories"] == ["visual-question-answering", "image-to-text"]
    assert data["size_categories"] == ["n<1K"] and "medical" in data["tags"]
    assert "## Counts" in card.text and "Not for clinical use" in card.text
    assert "{{" not in card.text and "audit" in card.text.lower()
