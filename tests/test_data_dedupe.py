"""Copies of one image (or one report) across sources and patients end in one split."""

import csv
from collections import defaultdict

import pytest
from PIL import Image

from cxmind.data.build import BuildConfig, SourceSpec, build
from cxmind.data.dedupe import DisjointSets, image_hash, near_pairs, report_key
from cxmind.data.phantom import write_phantom_dataset
from cxmind.data.records import load_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """A phantom set, and an NIH-format re-release of its images (resized, under other ids/patients)."""
    phantom = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_patients=60, seed=3, size=128)
    nih = tmp_path_factory.mktemp("nih")
    (nih / "images").mkdir()
    rows = []
    with open(phantom / "phantom.csv", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            name = f"{10_000 + i:08d}_000.png"
            Image.open(phantom / row["image"]).convert("L").resize((160, 160)).save(nih / "images" / name)
            rows.append([name, row["positives"] or "No Finding", 0, str(20_000 + i), "PA"])
    with open(nih / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"])
        writer.writerows(rows)
    return phantom, nih


def image_splits(out):
    """Per phantom image (by content hash), the splits its copies were put in."""
    from cxmind.data.records import image_roots

    roots = image_roots(out)
    dataset = load_records(out, decode_images=False)
    seen = defaultdict(set)
    for split in dataset:
        for row in dataset[split]:
            for rel in row["images"]:
                with Image.open(roots[row["source"]] / rel) as image:
                    seen[image_hash(image)].add(row["split"])
    return seen


def test_copies_of_an_image_in_two_sources_share_a_split(two_sources, tmp_path):
    phantom, nih = two_sources
    specs = [SourceSpec("phantom", phantom), SourceSpec("nih", nih)]
    kept = build(BuildConfig(sources=specs, out=tmp_path / "dedupe", audit=False), progress=False)
    hashed = kept.duplicates["images_hashed"]
    assert set(hashed) == {"phantom", "nih"} and hashed["phantom"] == hashed["nih"] > 60
    assert kept.duplicates["groups"] > 0 and kept.duplicates["patients_moved"] > 0
    merged = image_splits(tmp_path / "dedupe")
    # near-identical hashes (the resized copies) are the same image: group them first
    hashes = list(merged)
    sets = DisjointSets()
    for i, j, _ in near_pairs(hashes):
        sets.union(i, j)
    by_image = defaultdict(set)
    for index, value in enumerate(hashes):
        by_image[sets.find(index)] |= merged[value]
    assert all(len(splits) == 1 for splits in by_image.values())

    # without image hashing, each source splits on its own and copies cross splits
    loose = build(
        BuildConfig(sources=specs, out=tmp_path / "loose", audit=False, dedupe_images=False), progress=False
    )
    assert loose.duplicates["images_hashed"] == {}
    by_image = defaultdict(set)
    merged = image_splits(tmp_path / "loose")
    hashes = list(merged)
    sets = DisjointSets()
    for i, j, _ in near_pairs(hashes):
        sets.union(i, j)
    for index, value in enumerate(hashes):
        by_image[sets.find(index)] |= merged[value]
    assert any(len(splits) > 1 for splits in by_image.values())


def test_the_audit_finds_no_cross_split_duplicate_after_a_deduplicated_build(two_sources, tmp_path):
    from cxmind.data.audit import audit

    phantom, nih = two_sources
    specs = [SourceSpec("phantom", phantom), SourceSpec("nih", nih)]
    build(BuildConfig(sources=specs, out=tmp_path / "out"), progress=False)
    result = audit(tmp_path / "out")
    assert result["duplicates"]["near_images"]["status"] == "ok"
    assert result["duplicates"]["near_images"]["pairs"] == 0
    assert result["duplicates"]["report_texts"]["groups"] == 0
    assert "Duplicates" in (tmp_path / "out" / "README.md").read_text()


def test_rsna_nih_mapping_aliases_link_the_copies_without_images(tmp_path):
    from cxmind.data.dedupe import align_duplicate_splits
    from cxmind.data.schema import Study

    nih = [Study("nih", f"{i:08d}_000", f"{i}", (f"images/{i:08d}_000.png",)) for i in range(200)]
    rsna = [
        Study("rsna", f"r{i}", f"r{i}", (f"stage_2_train_images/r{i}.dcm",), aliases=(f"nih/{i:08d}_000",))
        for i in range(200)
    ]
    splits = {
        "nih": {s.patient_id: ("train", "test")[i % 2] for i, s in enumerate(nih)},
        "rsna": {s.patient_id: ("test", "train")[i % 2] for i, s in enumerate(rsna)},  # all crossed
    }
    found = align_duplicate_splits({"nih": nih, "rsna": rsna}, {"nih": tmp_path, "rsna": tmp_path}, splits)
    assert found["aliases_linked"] == 200 and found["groups"] == 200 and not found["notes"]
    assert all(splits["nih"][f"{i}"] == splits["rsna"][f"r{i}"] for i in range(200))
    # neither images nor a mapping: say so
    plain = [Study("rsna", f"r{i}", f"r{i}", (f"x/r{i}.dcm",)) for i in range(3)]
    found = align_duplicate_splits(
        {"nih": nih[:3], "rsna": plain}, {"nih": tmp_path, "rsna": tmp_path}, {"nih": {}, "rsna": {}}
    )
    assert "rsna (copies of nih images)" in found["notes"][0]


def test_report_keys_skip_boilerplate_and_ignore_spacing():
    assert report_key("No acute disease.") is None
    assert report_key("Heart size normal.  Lungs are clear.\nNo effusion.") == report_key(
        "heart size normal. lungs are clear. no effusion."
    )
