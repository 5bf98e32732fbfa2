"""``cxmind data validate`` on hostile input: every bad image or row is a reject, never a crash.

Bad files are made here (decompression-bomb PNG and DICOM, truncated files, NUL bytes in row paths) on
a hand-written record set, so each test takes well under a second or two.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_images import _bomb_png, _deflated_dicom, _dicom, _dicom_pixels

import cxmind.data.validate as validate_module
from cxmind.cli import main
from cxmind.data import load_records
from cxmind.data.images import MAX_SOURCE_PIXELS, ImageBudget
from cxmind.data.records import META_FILE, VALIDATE_REJECTS_FILE
from cxmind.data.validate import ValidationConfig, validate

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("images", pa.list_(pa.string())),
        ("task_type", pa.string()),
        ("task", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("solution", pa.string()),
        ("source", pa.string()),
        ("patient_id", pa.string()),
        ("study_id", pa.string()),
        ("split", pa.string()),
    ]
)


def _row(record_id: str, images: list[str], source: str = "toy") -> dict:
    return {
        "id": record_id,
        "images": images,
        "task_type": "closed",
        "task": "disease_binary",
        "question": "Is there a pneumothorax?",
        "options": ["yes", "no"],
        "answer": "no",
        "solution": "<think>The lungs are fully expanded.</think>\n<answer>no</answer>",
        "source": source,
        "patient_id": f"p-{record_id}",
        "study_id": f"s-{record_id}",
        "split": "train",
    }


def _record_set(tmp_path: Path, root: Path, rows: list[dict]) -> Path:
    out = tmp_path / "set"
    (out / "data").mkdir(parents=True)
    meta = {"format_version": 1, "image_roots": {"toy": str(root)}, "records": len(rows)}
    (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), out / "data" / "train-00000.parquet")
    return out


def _truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image root shared by this module's record sets (read only)."""
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(np.full((48, 64), 90, dtype=np.uint8)).save(root / "good.png")
    _bomb_png(root / "bomb.png")
    _truncated_png(root / "truncated.png")
    _deflated_dicom(root / "bomb.dcm", 15000, 15000, zeros=15000 * 15000, bits=8)
    data = _dicom(root / "full.dcm", _dicom_pixels()).read_bytes()
    (root / "cut.dcm").write_bytes(data[: len(data) - 2000])
    return root


def _rejects(out: Path) -> dict[str, dict]:
    lines = (out / VALIDATE_REJECTS_FILE).read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is complete JSON
    return {line["id"]: line for line in parsed}


@pytest.fixture
def hostile_set(tmp_path: Path, images: Path) -> Path:
    rows = [
        _row("good", ["good.png"]),
        _row("png-bomb", ["bomb.png"]),
        _row("truncated", ["truncated.png"]),
        _row("dicom-bomb", ["bomb.dcm"]),
        _row("cut-dicom", ["cut.dcm"]),
        _row("nul", ["good\0.png"]),
        _row("second", ["good.png", "bomb.png"]),
        _row("no-root", ["good.png"], source="elsewhere"),
        _row("good-too", ["good.png"]),
    ]
    return _record_set(tmp_path, images, rows)


def test_validate_turns_hostile_images_and_rows_into_rejects(hostile_set: Path) -> None:
    report = validate(hostile_set, progress=False)  # decodes by default
    assert report.checked == 9 and report.total_rejected == 7
    assert report.rejected == {
        "image oversized": 3,
        "image corrupt": 2,
        "image invalid path": 1,
        "image missing": 1,
    }
    rejects = _rejects(hostile_set)
    assert set(rejects) == {"png-bomb", "truncated", "dicom-bomb", "cut-dicom", "nul", "second", "no-root"}
    limit = f"{MAX_SOURCE_PIXELS:,}"
    bomb = rejects["png-bomb"]["detail"]
    assert bomb.startswith("images[0] of record png-bomb: image ")
    assert "bomb.png is too large" in bomb and "900,000,000 pixels" in bomb and limit in bomb
    assert "15000x15000 = 225,000,000 pixels" in rejects["dicom-bomb"]["detail"]
    assert rejects["second"]["detail"].startswith("images[1] of record second: ")
    assert rejects["nul"]["detail"].startswith("images[0] of record nul contains a NUL byte")
    assert "'elsewhere' has no image root" in rejects["no-root"]["detail"]
    assert all("fix:" in line["detail"] and line["split"] == "train" for line in rejects.values())
    kept = load_records(hostile_set, decode_images=False)
    assert sorted(row["id"] for row in kept["train"]) == ["good", "good-too"]


def test_validate_decodes_by_default_and_headers_only_misses_truncation(tmp_path: Path, images: Path) -> None:
    out = _record_set(tmp_path, images, [_row("truncated", ["truncated.png"]), _row("cut", ["cut.dcm"])])
    assert ValidationConfig().decode is True
    decoded = validate(out, progress=False)
    assert decoded.rejected == {"image corrupt": 2} and set(_rejects(out)) == {"truncated", "cut"}
    headers = validate(out, ValidationConfig(decode=False), progress=False)
    assert headers.total_rejected == 0 and _rejects(out) == {}


def test_headers_only_still_refuses_bombs(hostile_set: Path) -> None:
    report = validate(hostile_set, ValidationConfig(decode=False), progress=False)
    assert report.rejected["image oversized"] == 3 and "truncated" not in _rejects(hostile_set)


def test_an_interrupted_validation_leaves_the_previous_rejects_intact(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [_row(f"missing-{i}", [f"missing-{i}.png"]) for i in range(6)] + [_row("good", ["good.png"])]
    out = _record_set(tmp_path, images, rows)
    assert validate(out, progress=False).rejected == {"image missing": 6}
    before = (out / VALIDATE_REJECTS_FILE).read_bytes()
    files = sorted(p.name for p in out.iterdir())
    real, calls = validate_module._check_row, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # after several rejects have been written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(validate_module, "_check_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        validate(out, progress=False)
    assert (out / VALIDATE_REJECTS_FILE).read_bytes() == before  # not truncated, no half-written line
    assert sorted(p.name for p in out.iterdir()) == files  # no temporary file left behind
    assert (out / VALIDATE_REJECTS_FILE).stat().st_mode & 0o044 == 0o044


def test_an_unforeseen_decoder_failure_is_a_reject(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _record_set(tmp_path, images, [_row("good", ["good.png"]), _row("odd", ["full.dcm"])])
    real = validate_module.read_image

    def flaky(path, **kwargs):
        if Path(path).name == "full.dcm":
            raise RuntimeError("decoder bug")
        return real(path, **kwargs)

    monkeypatch.setattr(validate_module, "read_image", flaky)
    report = validate(out, ValidationConfig(decode=True), progress=False)
    assert report.rejected == {"image corrupt": 1}
    assert "RuntimeError: decoder bug" in _rejects(out)["odd"]["detail"]


def test_cli_validate(hostile_set: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(hostile_set), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "rejected 7" in captured.out and "Traceback" not in captured.err
    assert main(["data", "validate", str(hostile_set), "--headers-only", "--no-progress"]) == 0
    assert "rejected 5" in capsys.readouterr().out  # truncated pixel data passes a header read
    assert main(["data", "validate", str(hostile_set), "--decode", "--no-progress"]) == 0  # old scripts
    assert "rejected 7" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "validate", str(hostile_set), "--decode", "--headers-only"])
    capsys.readouterr()
    args = ["data", "validate", str(hostile_set), "--max-source-pixels", "3000", "--no-progress"]
    assert main(args) == 0
    assert "rejected 9" in capsys.readouterr().out  # 64x48 = 3,072 pixels: now too large as well
    assert "over the limit of 3,000 pixels" in _rejects(hostile_set)["good"]["detail"]


def test_budget_limit_reaches_validation(hostile_set: Path) -> None:
    config = ValidationConfig(budget=ImageBudget(max_source_pixels=1000 * 1000 * 1000), decode=False)
    report = validate(hostile_set, config, progress=False)
    # the 900 M pixel PNG is now allowed by cxmind; Pillow's own limit (2x 89 M) still refuses it
    assert "too large for Pillow" in _rejects(hostile_set)["png-bomb"]["detail"]
    assert report.rejected["image oversized"] == 2  # the PNG bomb (Pillow) and 'second'; not the DICOM
