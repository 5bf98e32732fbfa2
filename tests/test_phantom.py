"""Tests of ``cxmind.data.phantom``: determinism, visible findings, honest boxes, reports, the source."""

from __future__ import annotations

import csv
import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest

from cxmind.data.images import load_image, probe_size, read_image
from cxmind.data.phantom import (
    PHANTOM_BOXED_FINDINGS,
    PHANTOM_CSV,
    PHANTOM_CSV_COLUMNS,
    PHANTOM_FINDINGS,
    PhantomSource,
    phantom_report,
    render_phantom,
    write_phantom_dataset,
)
from cxmind.data.schema import Study
from cxmind.vocab import canonical, is_known

SIZE = 256
SEEDS = range(6)


def _gray(findings: tuple[str, ...], seed: int, **kwargs: object) -> tuple[np.ndarray, list]:
    image, boxes = render_phantom(findings, seed=seed, size=SIZE, **kwargs)  # type: ignore[arg-type]
    assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    arr = np.asarray(image).astype(np.int16)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])  # grey
    return arr[..., 0], boxes


def _box_mask(boxes: list, pad: int = 0) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for b in boxes:
        mask[max(0, int(b.y0) - pad) : int(b.y1) + pad, max(0, int(b.x0) - pad) : int(b.x1) + pad] = True
    return mask


def _crop(arr: np.ndarray, box) -> np.ndarray:
    return arr[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)]


# ---------------------------------------------------------------------------------------------
# render_phantom
# ---------------------------------------------------------------------------------------------


def test_findings_are_canonical_vocabulary() -> None:
    assert len(PHANTOM_FINDINGS) >= 5 and len(set(PHANTOM_FINDINGS)) == len(PHANTOM_FINDINGS)
    for name in PHANTOM_FINDINGS:
        assert is_known(name) and canonical(name) == name
    assert set(PHANTOM_BOXED_FINDINGS) == set(PHANTOM_FINDINGS) - {"Edema"}


def test_render_is_deterministic_and_seed_dependent() -> None:
    findings = ("Cardiomegaly", "Nodule", "Support Devices")
    first, boxes = render_phantom(findings, seed=11)
    again, boxes_again = render_phantom(list(reversed(findings)), seed=11)
    assert first.tobytes() == again.tobytes() and boxes == boxes_again
    other, _ = render_phantom(findings, seed=12)
    assert first.tobytes() != other.tobytes()
    normal_a, _ = render_phantom((), seed=1)
    normal_b, _ = render_phantom((), seed=2)
    diff = np.abs(np.asarray(normal_a, dtype=int) - np.asarray(normal_b, dtype=int))
    assert diff.mean() > 3  # anatomy, exposure and noise all vary: no pixel template to memorise


def test_findings_change_only_their_own_region() -> None:
    """Same seeds with and without a finding: every visibly changed pixel lies in the finding's boxes."""
    for finding in PHANTOM_BOXED_FINDINGS:
        for seed in SEEDS:
            with_it, boxes = _gray((finding,), seed)
            without, none = _gray((), seed)
            assert none == []
            assert boxes and {b.finding for b in boxes} == {finding}
            changed = np.abs(with_it - without) > 8
            assert changed.sum() > 80, (finding, seed)  # visible at all
            assert (changed & ~_box_mask(boxes, pad=2)).sum() <= 0.01 * changed.sum(), (finding, seed)
            for b in boxes:
                assert 0 <= b.x0 < b.x1 <= SIZE and 0 <= b.y0 < b.y1 <= SIZE
                assert (changed & _box_mask([b])).sum() > 0.2 * (b.x1 - b.x0) * (b.y1 - b.y0) or finding in (
                    "Support Devices",  # thin tubes fill a small part of their box
                    "Nodule",
                )


def test_cardiomegaly_widens_the_bright_central_band() -> None:
    rows, cols = slice(int(0.45 * SIZE), int(0.8 * SIZE)), slice(int(0.2 * SIZE), int(0.8 * SIZE))
    for seed in SEEDS:
        big, boxes = _gray(("Cardiomegaly",), seed)
        normal, _ = _gray((), seed)
        bright_big = (big[rows, cols] > 150).sum()
        bright_normal = (normal[rows, cols] > 150).sum()
        assert bright_big > 1.3 * bright_normal, seed
        (box,) = boxes
        assert (box.x1 - box.x0) > 0.33 * SIZE  # cardiothoracic ratio >= 0.56 of a ~0.7 wide thorax


def test_effusion_brightens_the_lower_lung_zone() -> None:
    for seed in SEEDS:
        wet, boxes = _gray(("Pleural Effusion",), seed)
        dry, _ = _gray((), seed)
        for box in boxes:
            assert (box.y0 + box.y1) / 2 > 0.6 * SIZE  # a base, not an apex
            assert _crop(wet, box).mean() > _crop(dry, box).mean() + 25, seed


def test_pneumothorax_is_a_dark_rim_without_markings() -> None:
    for seed in SEEDS:
        ptx, (box,) = _gray(("Pneumothorax",), seed)
        lung, _ = _gray((), seed)
        assert (box.y0 + box.y1) / 2 < 0.55 * SIZE  # apical / upper lateral
        darker = (ptx < lung - 12) & _box_mask([box])
        assert darker.sum() > 300, seed  # a rim of real extent
        assert ptx[darker].mean() < lung[darker].mean() - 25
        assert ptx[darker].std() < lung[darker].std()  # no lung markings in the rim


def test_small_findings_are_bright_and_local() -> None:
    for seed in SEEDS:
        base, _ = _gray((), seed)
        nodule, boxes = _gray(("Nodule",), seed)
        for box in boxes:
            assert box.x1 - box.x0 < 0.1 * SIZE and box.y1 - box.y0 < 0.1 * SIZE
            assert _crop(nodule, box).mean() > _crop(base, box).mean() + 30
        cons, (box,) = _gray(("Consolidation",), seed)
        assert box.x1 - box.x0 > 0.08 * SIZE  # large
        assert _crop(cons, box).mean() > _crop(base, box).mean() + 15
        atel, (box,) = _gray(("Atelectasis",), seed)
        assert _crop(atel, box).mean() > _crop(base, box).mean() + 15
        devices, boxes = _gray(("Support Devices",), seed)
        assert (devices >= 230).sum() > (base >= 230).sum() + 100


def test_edema_is_diffuse_perihilar_haze_without_boxes() -> None:
    centre = (slice(int(0.3 * SIZE), int(0.6 * SIZE)), slice(int(0.15 * SIZE), int(0.85 * SIZE)))
    for seed in SEEDS:
        edema, boxes = _gray(("Edema",), seed)
        base, _ = _gray((), seed)
        assert boxes == []
        assert edema[centre].mean() > base[centre].mean() + 4


def test_boxes_stay_inside_for_any_combination_and_size() -> None:
    rng = random.Random(0)
    for i in range(30):
        findings = tuple(f for f in PHANTOM_FINDINGS if rng.random() < 0.5)
        size = (64, 224, 256, 512)[i % 4]
        image, boxes = render_phantom(findings, seed=i, size=size, view=("PA", "AP")[i % 2])
        assert image.size == (size, size)
        assert {b.finding for b in boxes} == set(findings) & set(PHANTOM_BOXED_FINDINGS)
        for b in boxes:
            assert 0 <= b.x0 < b.x1 <= size and 0 <= b.y0 < b.y1 <= size


def test_anatomy_seed_keeps_a_patient_and_findings_in_place() -> None:
    _, first = render_phantom(("Nodule",), seed=1, anatomy_seed=99)
    image_b, second = render_phantom(("Nodule",), seed=2, anatomy_seed=99)
    image_c, _ = render_phantom(("Nodule",), seed=2, anatomy_seed=98)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):  # same place up to the study's positioning shift
        assert abs(a.x0 - b.x0) <= 0.05 * SIZE and abs(a.y0 - b.y0) <= 0.05 * SIZE
    assert image_b.tobytes() != image_c.tobytes()


def test_views_differ_and_inputs_are_validated() -> None:
    pa, _ = _gray((), 3, view="PA")
    ap, _ = _gray((), 3, view="AP")
    assert np.abs(pa - ap).sum() > 0
    _, boxes = render_phantom(["effusion", "No Finding"], seed=0)  # synonyms are canonicalised
    assert {b.finding for b in boxes} == {"Pleural Effusion"}
    with pytest.raises(ValueError, match="cannot draw 'Hernia'"):
        render_phantom(["Hernia"], seed=0)
    with pytest.raises(ValueError, match="view"):
        render_phantom([], seed=0, view="LL")
    with pytest.raises(ValueError, match="size"):
        render_phantom([], seed=0, size=8)


def test_render_speed() -> None:
    start = time.perf_counter()
    for seed in range(100):
        render_phantom(PHANTOM_FINDINGS[: seed % 4 * 2], seed=seed)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"100 phantoms took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------

KEYWORDS = {
    "Cardiomegaly": ("heart", "cardiac", "cardiomegaly"),
    "Pleural Effusion": ("effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Nodule": ("nodule",),
    "Consolidation": ("consolidation",),
    "Atelectasis": ("atelectasis",),
    "Edema": ("edema",),
    "Support Devices": ("tube", "device", "lines"),
}


def test_report_mentions_every_positive() -> None:
    for seed in range(200):
        rng = np.random.default_rng(seed)
        positives = [f for f in PHANTOM_FINDINGS if rng.random() < 0.3]
        negatives = [f for f in PHANTOM_FINDINGS if f not in positives]
        report = phantom_report(positives, negatives, rng)
        findings_text, impression = report.findings.lower(), report.impression.lower()
        assert report.indication and report.impression.endswith(".")
        for finding in positives:
            assert any(k in findings_text for k in KEYWORDS[finding]), (finding, report)
            assert any(k in impression for k in KEYWORDS[finding]), (finding, report)
        if not positives:
            assert "no acute" in impression or "normal" in impression
            assert findings_text.startswith(("no ", "there is no", "the heart size is normal", "normal"))


def test_report_is_deterministic_and_varied() -> None:
    positives, negatives = ["Cardiomegaly", "Pleural Effusion"], ["Pneumothorax", "Nodule", "Edema"]
    a = phantom_report(positives, negatives, np.random.default_rng(5), sides={"Pleural Effusion": "left"})
    b = phantom_report(positives, negatives, np.random.default_rng(5), sides={"Pleural Effusion": "left"})
    assert a == b and "left" in a.findings.lower() and "left pleural effusion" in a.impression.lower()
    texts = {phantom_report(positives, negatives, random.Random(i)).findings for i in range(40)}
    assert len(texts) > 5  # the standard library's generator works too
    with pytest.raises(ValueError, match="both positive and negative"):
        phantom_report(["Edema"], ["Edema"], random.Random(0))
    with pytest.raises(ValueError, match="cannot describe"):
        phantom_report(["Hernia"], [], random.Random(0))


# ---------------------------------------------------------------------------------------------
# dataset and source
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_patients=40, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_byte_identical_for_a_seed(dataset: Path, tmp_path: Path) -> None:
    again = write_phantom_dataset(tmp_path / "again", n_patients=40, seed=3)
    assert _files(again) == _files(dataset)
    other = write_phantom_dataset(tmp_path / "other", n_patients=40, seed=4)
    assert (other / PHANTOM_CSV).read_bytes() != (dataset / PHANTOM_CSV).read_bytes()


def test_source_round_trip(dataset: Path) -> None:
    source = PhantomSource(dataset)
    assert source.name == "phantom" and source.label_space == PHANTOM_FINDINGS
    with (dataset / PHANTOM_CSV).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == PHANTOM_CSV_COLUMNS
        rows = list(reader)
    studies = list(source.studies())
    assert len(studies) == len(rows) >= 40
    assert len({s.study_id for s in studies}) == len(studies)
    for study, row in zip(studies, rows, strict=True):
        assert isinstance(study, Study) and study.source == "phantom" and study.split is None
        assert study.images == (row["image"],) and study.study_id == row["study_id"]
        assert study.positives == tuple(p for p in row["positives"].split("|") if p)
        assert set(study.positives) | set(study.negatives) == set(PHANTOM_FINDINGS)
        assert not set(study.positives) & set(study.negatives)
        assert study.view in ("PA", "AP") and study.order == int(row["order"])
        assert study.image_size == probe_size(dataset / study.images[0]) == (256, 256)
        assert {b.finding for b in study.boxes} == set(study.positives) & set(PHANTOM_BOXED_FINDINGS)
        for b in study.boxes:
            assert 0 <= b.x0 < b.x1 <= 256 and 0 <= b.y0 < b.y1 <= 256
        assert study.report is not None and study.report.impression
        for finding in study.positives:
            assert any(k in study.report.findings.lower() for k in KEYWORDS[finding])


def test_dataset_statistics_and_progression(dataset: Path) -> None:
    studies = list(PhantomSource(dataset).studies())
    normal = sum(not s.positives for s in studies) / len(studies)
    assert 0.15 < normal < 0.55  # about a third "No Finding"
    assert {s.view for s in studies} == {"PA", "AP"}
    assert sum(s.view == "PA" for s in studies) > len(studies) / 2
    by_patient: dict[str, list[Study]] = {}
    for s in studies:
        by_patient.setdefault(s.patient_id, []).append(s)
    changes = 0
    for patient in by_patient.values():
        assert [s.order for s in patient] == list(range(len(patient)))
        assert all(s.images[0].startswith(f"images/{s.patient_id}/s") for s in patient)
        changes += sum(a.positives != b.positives for a, b in itertools.pairwise(patient))
    assert changes > 0  # progression tasks have material
    assert max(len(p) for p in by_patient.values()) > 1


def test_images_load_through_the_qwen_path(dataset: Path) -> None:
    study = next(PhantomSource(dataset).studies())
    assert read_image(dataset / study.images[0]).size == (256, 256)
    assert load_image(dataset, study.images[0]).size == (252, 252)


def test_label_subset_and_errors(tmp_path: Path) -> None:
    root = write_phantom_dataset(
        tmp_path / "two", n_patients=6, studies_per_patient=(1, 1), findings=("Nodule", "effusion"), size=64
    )
    source = PhantomSource(root)
    assert source.label_space == ("Pleural Effusion", "Nodule")
    for study in source.studies():
        assert set(study.positives) | set(study.negatives) == {"Pleural Effusion", "Nodule"}
        assert study.image_size == (64, 64)
    with pytest.raises(FileNotFoundError, match="write_phantom_dataset"):
        PhantomSource(tmp_path / "nothing")
    with pytest.raises(ValueError, match="subset"):
        write_phantom_dataset(tmp_path / "bad", findings=("Hernia",))
    with pytest.raises(ValueError, match="studies"):
        write_phantom_dataset(tmp_path / "bad", studies_per_patient=(3, 1))
    with pytest.raises(ValueError, match="p_finding"):
        write_phantom_dataset(tmp_path / "bad", p_finding=1.5)
