"""``evaluate`` resumes only from predictions it can vouch for (run manifest + record fingerprints).

A fake backend stands in for the model (these tests are about bookkeeping, not generation), and a fake
model folder is hashed like a real one; the vLLM sizing test fakes the ``vllm`` module.
"""

import json
import sys
import types

import pytest

from cxmind.data.images import ImageBudget
from cxmind.data.phantom import write_phantom_dataset
from cxmind.data.records import image_roots
from cxmind.eval import run as run_module
from cxmind.eval.generate import GenerationConfig
from cxmind.eval.run import EvalConfig, StalePredictionsError, evaluate

BUDGET = ImageBudget(min_pixels=56 * 56, max_pixels=112 * 112)
ANSWER = "<think>The heart is normal in size.</think> <answer>A</answer>"


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    from cxmind.cli import main

    root = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_patients=12, seed=1, size=112)
    out = tmp_path_factory.mktemp("records") / "set"
    pixels = ["--min-pixels", str(BUDGET.min_pixels), "--max-pixels", str(BUDGET.max_pixels)]
    assert (
        main(["data", "build", "--source", f"phantom={root}", "--out", str(out), "--no-progress", *pixels])
        == 0
    )
    return out


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\x00weights" * 1000)
    return folder


class FakeBackend:
    """Answers every prompt with ``ANSWER``; counts prompts; can fail after ``fail_after`` calls."""

    def __init__(self, fail_after=None):
        self.prompts = 0
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, prompts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # the run is interrupted mid-way
        self.calls += 1
        self.prompts += len(prompts)
        return [(ANSWER, 12) for _ in prompts]


@pytest.fixture
def backend(monkeypatch):
    """Every ``load_backend`` in run.py returns this fake (kwargs recorded)."""
    fake = FakeBackend()
    fake.loads = []

    def load(name, model, adapter, config, **kwargs):
        fake.loads.append({"name": name, "model": model, "adapter": adapter, "config": config, **kwargs})
        return fake

    monkeypatch.setattr(run_module, "load_backend", load)
    return fake


def _config(model_dir, records_dir, out, **generation):
    return EvalConfig(
        model=str(model_dir),
        data=records_dir,
        out=out,
        generation=GenerationConfig(
            **{"max_new_tokens": 16, "batch_size": 4, "budget": BUDGET, **generation}
        ),
        n_bootstrap=20,
        html_samples=5,
    )


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hand_written_predictions_are_refused(records_dir, model_dir, backend, tmp_path):
    from cxmind.data.records import load_records

    out = tmp_path / "eval"
    out.mkdir()
    # complete, well-formed rows for every record: today's resume would score them as the model's
    rows = [
        {**record, "prediction": f"<answer>{record['answer']}</answer>", "n_tokens": 3}
        for record in load_records(records_dir, "test", decode_images=False)
    ]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StalePredictionsError, match=r"no readable manifest\.json.*--overwrite"):
        evaluate(_config(model_dir, records_dir, out), progress=False)
    assert backend.loads == []  # refused before any model is loaded
    assert len(_lines(out / "predictions.jsonl")) == len(rows)  # and nothing was touched
    assert not (out / "results.json").exists()


def test_manifest_is_written_and_results_say_what_made_them(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    results = evaluate(_config(model_dir, records_dir, out), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source"] == "local" and len(manifest["model"]["sha256"]) == 64
    assert set(manifest["model"]["files"]) == {"config.json", "model.safetensors"}
    assert manifest["adapter"] is None and manifest["backend"] == "hf" and manifest["cxmind"]
    assert manifest["generation"]["max_new_tokens"] == 16
    assert manifest["generation"]["budget"]["max_pixels"] == BUDGET.max_pixels
    assert results["manifest"] == manifest and len(results["records_sha256"]) == 64
    assert json.loads((out / "results.json").read_text())["manifest"] == manifest
    assert all(len(line["record_sha256"]) == 64 for line in _lines(out / "predictions.jsonl"))


def test_changed_generation_settings_are_refused_naming_the_key(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    evaluate(_config(model_dir, records_dir, out), progress=False)
    n = backend.prompts
    with pytest.raises(StalePredictionsError) as caught:
        evaluate(_config(model_dir, records_dir, out, max_new_tokens=32), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "different generation settings" in message
    assert "(changed: generation.max_new_tokens)" in message and "--overwrite" in message
    # the batch size only changes throughput: a resume may change it
    evaluate(_config(model_dir, records_dir, out, batch_size=2), progress=False)
    assert backend.prompts == n


def test_changed_model_file_is_refused_and_overwrite_starts_over(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    evaluate(_config(model_dir, records_dir, out), progress=False)
    n = backend.prompts
    with open(model_dir / "model.safetensors", "ab") as handle:
        handle.write(b"retrained")
    with pytest.raises(StalePredictionsError, match=r"a different model \(changed: model\.sha256\)"):
        evaluate(_config(model_dir, records_dir, out), progress=False)
    config = _config(model_dir, records_dir, out)
    config.overwrite = True
    results = evaluate(config, progress=False)
    assert backend.prompts == 2 * n  # every record generated again
    assert len(_lines(out / "predictions.jsonl")) == n == results["n_records"]
    assert (
        json.loads((out / "manifest.json").read_text())["model"]["sha256"]
        == results["manifest"]["model"]["sha256"]
    )
    evaluate(_config(model_dir, records_dir, out), progress=False)  # and now resumes
    assert backend.prompts == 2 * n


def test_large_weight_files_keep_their_hash_while_unchanged(
    records_dir, model_dir, backend, tmp_path, monkeypatch
):
    monkeypatch.setattr(run_module, "_ALWAYS_HASH_BYTES", 1024)  # the fake weights count as large
    hashed = []
    original = run_module._file_sha256
    monkeypatch.setattr(run_module, "_file_sha256", lambda path: hashed.append(path.name) or original(path))
    out = tmp_path / "eval"
    evaluate(_config(model_dir, records_dir, out), progress=False)
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    evaluate(_config(model_dir, records_dir, out), progress=False)
    assert hashed == ["config.json"]  # small files are always re-read, weights only when they change
    (model_dir / "model.safetensors").write_bytes(b"\x01other" * 1000)
    with pytest.raises(StalePredictionsError, match=r"model\.sha256"):
        evaluate(_config(model_dir, records_dir, out), progress=False)


def test_scores_use_the_current_records_not_the_stored_gold(records_dir, model_dir, backend, tmp_path):
    from cxmind.data.records import load_records

    out = tmp_path / "eval"
    first = evaluate(_config(model_dir, records_dir, out), progress=False)
    lines = _lines(out / "predictions.jsonl")
    for line in lines:  # tamper with the stored gold: the other letter, other options and task type
        flipped = "B" if line["answer"] == "A" else "A"
        line.update(answer=flipped, options=["A) x", "B) y"], task_type="closed", solution=ANSWER)
    (out / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    second = evaluate(_config(model_dir, records_dir, out), progress=False)
    assert second["metrics"] == first["metrics"]
    # the fake model always answers A: its accuracy is the share of current records whose gold is A
    closed = [r for r in load_records(records_dir, "test", decode_images=False) if r["task_type"] == "closed"]
    assert closed
    for task in {r["task"] for r in closed}:
        rows = [r for r in closed if r["task"] == task]
        expected = sum(r["answer"] == "A" for r in rows) / len(rows)
        assert second["metrics"]["by_task"][task]["accuracy"]["value"] == pytest.approx(expected)


def test_an_interrupted_run_resumes_without_regenerating(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    backend.fail_after = 2  # two batches of 4 are written, then the run dies
    with pytest.raises(KeyboardInterrupt):
        evaluate(_config(model_dir, records_dir, out), progress=False)
    assert (out / "manifest.json").is_file()  # written before the first prediction
    before = (out / "predictions.jsonl").read_text().splitlines()
    assert len(before) == 8
    backend.fail_after = None
    results = evaluate(_config(model_dir, records_dir, out), progress=False)
    after = (out / "predictions.jsonl").read_text().splitlines()
    assert after[:8] == before and len(after) == results["n_records"] == backend.prompts


def test_limit_and_tasks_may_change_on_resume(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    config = _config(model_dir, records_dir, out)
    config.limit = 5
    evaluate(config, progress=False)
    assert backend.prompts == 5
    config.limit = None  # a superset: only the new records are generated
    full = evaluate(config, progress=False)
    assert backend.prompts == full["n_records"]
    task = sorted(full["metrics"]["by_task"])[0]
    config.tasks = (task,)  # a subset: nothing to generate, scored on the subset only
    subset = evaluate(config, progress=False)
    assert backend.prompts == full["n_records"] and set(subset["metrics"]["by_task"]) == {task}


def test_a_changed_record_is_refused(records_dir, model_dir, backend, tmp_path):
    out = tmp_path / "eval"
    evaluate(_config(model_dir, records_dir, out), progress=False)
    first = _lines(out / "predictions.jsonl")[0]
    image = image_roots(records_dir)[first["source"]] / first["images"][0]
    original = image.read_bytes()
    try:
        image.write_bytes(original + b"\x00" * 64)  # the image was rebuilt since
        with pytest.raises(
            StalePredictionsError, match=r"different records \(changed: record_sha256 of \d+ stored"
        ):
            evaluate(_config(model_dir, records_dir, out), progress=False)
    finally:
        image.write_bytes(original)
    evaluate(_config(model_dir, records_dir, out), progress=False)


def test_vllm_context_is_sized_for_the_longest_prompt(
    records_dir, tiny_qwen25_vl_path, tmp_path, monkeypatch
):
    """Through ``evaluate``: vLLM gets max_model_len = longest prompt of the run + max_new_tokens."""
    from transformers import AutoProcessor

    from cxmind.data.images import load_image
    from cxmind.data.prompts import prompt_messages
    from cxmind.data.records import load_records

    processor = AutoProcessor.from_pretrained(tiny_qwen25_vl_path)
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    engines = []

    class LLM:
        def __init__(self, **kwargs):
            engines.append(kwargs)

        def generate(self, requests, sampling, lora_request=None, use_tqdm=False):
            completion = types.SimpleNamespace(text="<answer>A</answer>", token_ids=[1, 2, im_end])
            return [types.SimpleNamespace(outputs=[completion]) for _ in requests]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    config = EvalConfig(
        model=str(tiny_qwen25_vl_path),
        data=records_dir,
        out=tmp_path / "eval",
        backend="vllm",
        generation=GenerationConfig(max_new_tokens=16, budget=BUDGET),
        n_bootstrap=0,
        html_samples=0,
    )
    results = evaluate(config, progress=False)
    # the exact prompt lengths, as the processor expands them
    roots = image_roots(records_dir)
    longest = 0
    for record in load_records(records_dir, "test", decode_images=False):
        images = [load_image(roots[record["source"]], rel, BUDGET) for rel in record["images"]]
        text = processor.apply_chat_template(prompt_messages(record), add_generation_prompt=True)
        inputs = processor(text=[text], images=images or None, return_tensors="pt")
        longest = max(longest, inputs["input_ids"].shape[1])
    (engine,) = engines
    assert engine["max_model_len"] == longest + 16
    assert engine["enable_lora"] is False and "max_lora_rank" not in engine
    assert results["metrics"]["overall"]  # scored; the eos vLLM stopped on is not counted
    assert {line["n_tokens"] for line in _lines(tmp_path / "eval" / "predictions.jsonl")} == {2}


def test_report_metrics_come_with_the_most_frequent_train_report_as_baseline(
    records_dir, model_dir, backend, tmp_path
):
    from collections import Counter

    from cxmind.data.records import load_records

    results = evaluate(_config(model_dir, records_dir, tmp_path / "eval"), progress=False)
    constant = results["metrics"]["baselines"]["constant_report"]
    train = load_records(records_dir, "train", decode_images=False)
    for task in ("report_impression", "report_findings"):
        counts = Counter(r["answer"] for r in train if r["task"] == task)
        top = max(counts.values())
        assert counts[constant[task]] == top  # the commonest train report (not one from the test split)
        assert "ce_f1" in results["metrics"]["baselines"]["by_task"][task]
