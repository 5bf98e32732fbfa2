"""Dataset sources read the official file layouts: real tables shipped by torchxrayvision, a MIMIC fixture.

Each test builds a root folder holding the *official* file names (decompressed where the official
name is a plain csv, gzipped/zipped variants checked too) and asserts facts of the real tables.
The big tables are read once per module through module-scoped fixtures.
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxmind.data.schema import Box, Study
from cxmind.data.sources import SOURCES, get_source, source_options
from cxmind.data.sources._common import view_name
from cxmind.data.sources.iu_xray import parse_report_xml
from cxmind.data.sources.mimic import parse_report
from cxmind.data.sources.padchest import parse_labels
from cxmind.data.sources.siim import rle_extent, rle_mask
from cxmind.data.sources.vindr import cluster_boxes
from cxmind.vocab import CHEXPERT_14, NIH_14, NO_FINDING, is_known

xrv = pytest.importorskip("torchxrayvision")
XRV = Path(xrv.__file__).parent / "data"
MIMIC_FIXTURE = Path(__file__).parent / "fixtures" / "mimic"
CHEXPERT_13 = tuple(c for c in CHEXPERT_14 if c != NO_FINDING)


def gunzip(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def by_id(studies: list[Study]) -> dict[str, Study]:
    return {s.study_id: s for s in studies}


def check_study(study: Study) -> None:
    """Invariants every source keeps."""
    assert study.images and all(isinstance(i, str) and not i.startswith("/") for i in study.images)
    assert NO_FINDING not in study.positives and NO_FINDING not in study.negatives
    assert not set(study.positives) & set(study.negatives)
    assert all(is_known(n) for n in study.negatives)


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_every_source_and_builds_them(tmp_path):
    assert sorted(SOURCES) == [
        "chexpert",
        "iu_xray",
        "mimic",
        "nih",
        "padchest",
        "phantom",
        "rsna",
        "siim",
        "vindr",
    ]
    assert all(cls.name == name for name, cls in SOURCES.items())
    assert source_options("chexpert") == {"uncertain": "ignore", "blank": "ignore"}
    assert source_options("vindr") == {"merge": "majority", "probe_size": True}
    source = get_source("MIMIC", MIMIC_FIXTURE, labeler="negbio")
    assert source.name == "mimic" and source.labeler == "negbio"
    with pytest.raises(ValueError, match=r"unknown source 'mimic-iv'; valid sources: chexpert, iu_xray"):
        get_source("mimic-iv", tmp_path)
    with pytest.raises(
        ValueError, match=r"mimic: unknown option uncertainty; valid options .*uncertain='ignore'"
    ):
        get_source("mimic", MIMIC_FIXTURE, uncertainty="positive")
    with pytest.raises(ValueError, match=r"unknown option merge; valid options \(defaults\): none"):
        get_source("nih", tmp_path, merge="union")
    with pytest.raises(
        ValueError, match=r"mimic: uncertain='maybe' is not one of 'ignore', 'positive', 'negative'"
    ):
        get_source("mimic", MIMIC_FIXTURE, uncertain="maybe")
    with pytest.raises(
        FileNotFoundError, match=r"siim: .*missing is not a folder; point --source siim=<dir> at"
    ):
        get_source("siim", tmp_path / "missing")


def test_views_are_normalised():
    assert [view_name(v) for v in ("PA", "POSTEROANTERIOR", "AP_horizontal", "L", "LL", "Lateral")] == [
        "PA",
        "PA",
        "AP",
        "LATERAL",
        "LATERAL",
        "LATERAL",
    ]
    assert [view_name(v) for v in (None, float("nan"), "UNK", "", "COSTAL")] == [
        None,
        None,
        None,
        None,
        "COSTAL",
    ]


# --------------------------------------------------------------------------------------------- NIH


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nih")
    gunzip(XRV / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv")
    gunzip(XRV / "BBox_List_2017.csv.gz", root / "BBox_List_2017.csv")
    return root


@pytest.fixture(scope="module")
def nih(nih_root) -> list[Study]:
    return list(get_source("nih", nih_root).studies())


def test_nih_reads_every_image_as_a_study(nih):
    assert len(nih) == 112120 and len({s.study_id for s in nih}) == 112120
    first = nih[0]
    assert first.study_id == "00000001_000" and first.patient_id == "1"
    assert first.images == ("images/00000001_000.png",)
    assert first.positives == ("Cardiomegaly",) and first.order == 0 and first.view == "PA"
    assert set(first.negatives) == set(NIH_14) - {"Cardiomegaly"}
    assert first.image_size == (1024, 1024) and first.split is None
    second = nih[1]
    assert set(second.positives) == {"Cardiomegaly", "Emphysema"} and second.order == 1
    assert by_id(nih)["00000001_002"].positives == ("Cardiomegaly", "Pleural Effusion")  # NIH "Effusion"
    for study in nih[:2000]:
        check_study(study)
    table = pd.read_csv(XRV / "Data_Entry_2017_v2020.csv.gz")
    normal = [s for s in nih if not s.positives]
    assert len(normal) == (table["Finding Labels"] == "No Finding").sum() == 60361
    assert all(set(s.negatives) == set(NIH_14) for s in normal)
    thickening = table["Finding Labels"].str.contains("Pleural_Thickening").sum()
    assert sum("Pleural Thickening" in s.positives for s in nih) == thickening
    assert Counter(s.view for s in nih) == Counter(table["View Position"])


def test_nih_boxes_come_from_the_bbox_list(nih):
    boxes = pd.read_csv(XRV / "BBox_List_2017.csv.gz", usecols=range(6), header=0, names=list("ifxywh"))
    with_boxes = [s for s in nih if s.boxes]
    assert len(with_boxes) == boxes["i"].nunique() == 880
    assert sum(len(s.boxes) for s in nih) == len(boxes) == 984
    row = boxes.iloc[0]  # 00013118_008.png, Atelectasis
    box = by_id(nih)["00013118_008"].boxes[0]
    assert box == Box("Atelectasis", row.x, row.y, row.x + row.w, row.y + row.h)
    infiltrate = boxes[boxes["f"] == "Infiltrate"].iloc[0]
    assert by_id(nih)[infiltrate.i.removesuffix(".png")].boxes[0].finding == "Infiltration"


def test_nih_official_split_lists_and_gzipped_tables(tmp_path):
    link(XRV / "Data_Entry_2017_v2020.csv.gz", tmp_path / "Data_Entry_2017.csv.gz")  # the older name, gzipped
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    source = get_source("nih", tmp_path)
    studies = by_id(list(source.studies()))
    assert len(studies) == 112120
    assert studies["00000001_000"].split == studies["00000001_001"].split == "train"
    assert studies["00000002_000"].split == "test" and studies["00000003_000"].split is None
    assert all(not s.boxes for s in studies.values())  # no BBox_List: no boxes


def test_nih_missing_file_and_wrong_column_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        get_source("nih", tmp_path)
    message = str(missing.value)
    assert f"nih: {tmp_path / 'Data_Entry_2017_v2020.csv'} not found" in message
    assert "point --source nih=<dir> at the folder holding the official Data_Entry csv" in message
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Labels,Follow-up #,Patient ID,View Position\n"
    )
    with pytest.raises(ValueError, match=r"nih: .*Data_Entry_2017_v2020.csv has no column 'Finding Labels'"):
        get_source("nih", tmp_path)


# ---------------------------------------------------------------------------------------- CheXpert


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chexpert")
    gunzip(XRV / "chexpert_train.csv.gz", root / "CheXpert-v1.0-small" / "train.csv")
    valid = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv", nrows=6)
    valid["Path"] = [
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg",
        "CheXpert-v1.0-small/valid/patient64543/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/valid/patient64544/study1/view1_frontal.jpg",
        "CheXpert-v1.0-small/valid/patient64545/study1/view1_frontal.jpg",
    ]
    label_columns = list(valid.columns[5:])
    valid[label_columns] = valid[label_columns].fillna(0.0).replace(-1.0, 1.0)  # valid.csv: 0/1 consensus
    valid.to_csv(root / "CheXpert-v1.0-small" / "valid.csv", index=False)
    return root


@pytest.fixture(scope="module")
def chexpert(chexpert_root) -> list[Study]:
    return list(get_source("chexpert", chexpert_root).studies())


@pytest.fixture(scope="module")
def chexpert_first_rows() -> pd.DataFrame:
    """One row per train study (labels are per study, identical on every view)."""
    table = pd.read_csv(XRV / "chexpert_train.csv.gz")
    table["study"] = table["Path"].str.rsplit("/", n=1).str[0]
    return table.drop_duplicates("study")


def test_chexpert_groups_the_views_of_a_study(chexpert, chexpert_first_rows):
    train = [s for s in chexpert if s.split is None]
    assert len(train) == len(chexpert_first_rows) == 187641
    assert sum(len(s.images) for s in train) == 223414
    studies = by_id(chexpert)
    first = studies["train/patient00001/study1"]
    assert first.patient_id == "patient00001" and first.order == 0 and first.view == "AP"
    assert first.images == ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",)
    # "No Finding" = 1 with Support Devices = 1: a normal study apart from the device
    assert first.positives == ("Support Devices",) and set(first.negatives) == set(CHEXPERT_13) - {
        "Support Devices"
    }
    pair = studies["train/patient00071/study1"]
    assert [Path(i).name for i in pair.images] == [
        "view1_frontal.jpg",
        "view2_lateral.jpg",
        "view3_lateral.jpg",
    ]
    assert pair.view == "PA" and not pair.positives
    assert studies["train/patient00002/study2"].order == 1
    multi = [s for s in train if len(s.images) > 1]
    assert len(multi) == 187641 - sum(1 for s in train if len(s.images) == 1)
    assert all("frontal" in s.images[0] or s.view == "LATERAL" for s in multi)
    for study in train[:3000]:
        check_study(study)
    valid = [s for s in chexpert if s.split == "validation"]
    assert [s.study_id for s in valid][:2] == ["valid/patient64541/study1", "valid/patient64542/study1"]
    assert len(valid) == 5 and len(by_id(valid)["valid/patient64542/study1"].images) == 2


def chexpert_expected(first_rows: pd.DataFrame, uncertain: str, blank: str) -> tuple[int, int]:
    """(positives, negatives) totals of the train studies, computed column-wise from the raw cells."""
    values = first_rows[list(CHEXPERT_13)].to_numpy(dtype=float)
    normal = (first_rows["No Finding"] == 1).to_numpy()
    blank_cells = np.isnan(values)
    pathology = np.array([c != "Support Devices" for c in CHEXPERT_13])
    positive = (values == 1) | ((values == -1) & (uncertain == "positive"))
    negative = (values == 0) | ((values == -1) & (uncertain == "negative"))
    negative |= blank_cells & ((blank == "negative") | (normal[:, None] & pathology))
    undecided = ~positive.any(axis=1) & ~(positive | negative).all(axis=1) & ~normal
    return int(positive.sum()), int((negative & ~undecided[:, None]).sum())


@pytest.mark.parametrize(
    ("uncertain", "blank"),
    [("ignore", "negative"), ("positive", "negative"), ("negative", "negative"), ("ignore", "ignore")],
)
def test_chexpert_uncertain_and_blank_policies(
    chexpert_root, chexpert, chexpert_first_rows, uncertain, blank
):
    if (uncertain, blank) == ("ignore", "ignore"):  # the defaults
        studies = chexpert
    else:
        studies = list(get_source("chexpert", chexpert_root, uncertain=uncertain, blank=blank).studies())
    train = [s for s in studies if s.split is None]
    positives = sum(len(s.positives) for s in train)
    negatives = sum(len(s.negatives) for s in train)
    assert (positives, negatives) == chexpert_expected(chexpert_first_rows, uncertain, blank)
    normal = sum(1 for s in train if not s.positives and s.negatives)
    unlabelled = sum(1 for s in train if not s.positives and not s.negatives)
    expected = {
        ("ignore", "negative"): (435642, 12006, 4891),
        ("positive", "negative"): (553616, 11929, 0),
        ("negative", "negative"): (435642, 16897, 0),
        ("ignore", "ignore"): (435642, 9306, 7591),
    }
    assert (positives, normal, unlabelled) == expected[(uncertain, blank)]
    # Only "No Finding" = 1 makes a study normal; blanks read as negatives are marked as assumed.
    values = chexpert_first_rows[list(CHEXPERT_13)].to_numpy(dtype=float)
    any_positive = ((values == 1) | ((values == -1) & (uncertain == "positive"))).any(axis=1)
    no_finding = (chexpert_first_rows["No Finding"] == 1).to_numpy()
    assert sum(s.normal for s in train) == int((no_finding & ~any_positive).sum())
    assert all(not s.assumed_negatives for s in train) == (blank == "ignore")


def test_chexpert_normal_means_no_finding_or_every_label_resolved(chexpert):
    studies = by_id(chexpert)
    # Enlarged Cardiomediastinum -1, three explicit 0s, No Finding blank: not known to be normal
    uncertain_only = studies["train/patient00014/study1"]
    assert uncertain_only.positives == uncertain_only.negatives == ()
    # "No Finding" = 1: normal whatever the other blanks
    normal = [s for s in chexpert if s.split is None and not s.positives and s.negatives]
    assert all(len(s.negatives) >= 12 for s in normal)


def test_chexpert_root_may_be_the_dataset_folder_and_csvs_may_be_gzipped(tmp_path, chexpert):
    folder = tmp_path / "CheXpert-v1.0-small"
    link(XRV / "chexpert_train.csv.gz", folder / "train.csv.gz")
    studies = list(get_source("chexpert", folder).studies())
    assert [s.study_id for s in studies[:50]] == [s.study_id for s in chexpert[:50]]
    assert studies[0].images == ("train/patient00001/study1/view1_frontal.jpg",)
    assert (
        (folder / studies[0].images[0])
        .as_posix()
        .endswith("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    )


def test_chexpert_errors_are_clear(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"chexpert: .*train.csv not found .*CheXpert-v1.0-small/train.csv"
    ):
        get_source("chexpert", tmp_path)
    (tmp_path / "train.csv").write_text(
        "Path,Sex,Age\nCheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg,F,1\n"
    )
    with pytest.raises(ValueError, match=r"chexpert: .*train.csv has no column 'Frontal/Lateral', 'AP/PA'"):
        get_source("chexpert", tmp_path)


# ---------------------------------------------------------------------------------------- PadChest

PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


@pytest.fixture(scope="module")
def padchest_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("padchest")
    gunzip(XRV / f"{PADCHEST}.gz", root / PADCHEST)
    return get_source("padchest", root)


@pytest.fixture(scope="module")
def padchest(padchest_source) -> list[Study]:
    return list(padchest_source.studies())


def test_padchest_studies_labels_and_skips(padchest_source, padchest):
    table = pd.read_csv(XRV / f"{PADCHEST}.gz", usecols=["ImageID", "StudyID", "Labels"], dtype=str)
    assert padchest_source.skipped == {"labelled 'exclude'": 1312, "empty Labels": 777, "missing Labels": 103}
    assert len(padchest_source.rejects) == 2192
    kept = table[~table["ImageID"].isin({r[0].split("/", 1)[1] for r in padchest_source.rejects})]
    assert len(padchest) == kept["StudyID"].nunique() == 108358
    assert sum(len(s.images) for s in padchest) == len(kept) == 160861 - 2192
    studies = by_id(padchest)
    normal = studies["20536686640136348236148679891455886468"]  # Labels ['normal']
    assert normal.positives == () and normal.negatives == padchest_source.label_space
    assert normal.images == ("0/20536686640136348236148679891455886468_k6ga29.png",)
    assert normal.image_size == (1872, 1728) and normal.view == "PA"
    two = studies["135803415504923515076821959678074435083"]  # a PA and a lateral image
    assert [i[-11:] for i in two.images] == ["_fzis7b.png", "_fzis7d.png"] and two.view == "PA"
    assert {"Fibrosis", "Kyphosis"} <= set(two.positives) and "chronic changes" in two.positives
    only_normal = table["Labels"].map(lambda t: isinstance(t, str) and parse_labels(t) == ["normal"])
    normal_ids = set(table.loc[only_normal, "StudyID"])
    assert sum(1 for s in padchest if s.study_id in normal_ids and not s.positives) == len(normal_ids)
    assert sum(1 for s in padchest if not s.positives and s.negatives) == len(normal_ids) == 35687
    for study in padchest[:3000]:
        check_study(study)


def test_padchest_vocabulary_mapping(padchest_source, padchest):
    space = padchest_source.label_space
    assert {"Cardiomegaly", "Pleural Effusion", "Pneumonia", "Nodule", "Atelectasis"} <= set(space)
    assert NO_FINDING not in space and all(is_known(n) for n in space)
    top = dict(padchest_source.unmapped_labels.most_common(3))
    assert top["unchanged"] > 9000 and "chronic changes" in top
    assert "nsg tube" not in padchest_source.unmapped_labels  # a device, mapped via PADCHEST_TERMS
    table = pd.read_csv(XRV / f"{PADCHEST}.gz", usecols=["StudyID", "Labels"], dtype=str).dropna()
    studies = by_id(padchest)
    loculated = table[table["Labels"].str.contains("loculated pleural effusion")]["StudyID"].iloc[0]
    assert "Pleural Effusion" in studies[loculated].positives
    laminar = table[table["Labels"] == "['laminar atelectasis']"]["StudyID"].iloc[0]
    assert studies[laminar].positives == ("Atelectasis",)
    sequelae = table[table["Labels"] == "['tuberculosis sequelae']"]["StudyID"].iloc[0]
    assert studies[sequelae].positives == ("tuberculosis sequelae",)
    assert "Tuberculosis" not in studies[sequelae].negatives  # a more specific term never asserts absence
    assert "Cardiomegaly" in studies[sequelae].negatives


def test_padchest_order_follows_study_dates(padchest):
    table = pd.read_csv(
        XRV / f"{PADCHEST}.gz",
        usecols=["StudyID", "PatientID", "StudyDate_DICOM"],
        dtype={"PatientID": str, "StudyID": str},
    )
    by_patient: dict[str, list[Study]] = {}
    for study in padchest:
        by_patient.setdefault(study.patient_id, []).append(study)
    dates = dict(zip(table["StudyID"], table["StudyDate_DICOM"], strict=True))
    several = [v for v in by_patient.values() if len(v) >= 3][:200]
    assert several
    for studies in several:
        ranked = sorted(studies, key=lambda s: s.order)
        assert [s.order for s in ranked] == list(range(len(studies)))
        assert [dates[s.study_id] for s in ranked] == sorted(dates[s.study_id] for s in studies)


def test_padchest_label_parsing_and_unmapped_policy(tmp_path):
    assert parse_labels("['normal']") == ["normal"]
    assert parse_labels("['cardiomegaly', ' pleural effusion', '']") == ["cardiomegaly", "pleural effusion"]
    assert parse_labels("[\"Chilaiditi's sign\", 'nodule']") == ["Chilaiditi's sign", "nodule"]
    assert parse_labels("['it\\'s', 'b']") == ["it's", "b"]
    assert parse_labels("[]") == [] and parse_labels("normal") is None
    header = "ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,Projection,Rows_DICOM,Columns_DICOM,Labels\n"
    rows = [
        "a.png,1,20140101,S1,P1,PA,10,20,\"['chronic changes', 'unchanged']\"",
        "b.png,1,20150101,S2,P1,L,10,20,\"['cardiomegaly', 'unchanged']\"",
        "c.png,1,20150101,S2,P1,PA,None,20,\"['cardiomegaly', 'unchanged']\"",
        "d.png,2,20150101,S3,P2,PA,10,20,\"['normal']\"",
    ]
    (tmp_path / PADCHEST).write_text(header + "\n".join(rows) + "\n")
    keep = by_id(list(get_source("padchest", tmp_path).studies()))
    assert keep["S1"].positives == ("chronic changes", "unchanged") and keep["S1"].negatives == (
        "Cardiomegaly",
    )
    assert (
        keep["S2"].images == ("1/c.png", "1/b.png")
        and keep["S2"].view == "PA"
        and keep["S2"].image_size is None
    )
    assert keep["S2"].order == 1 and keep["S1"].order == 0
    drop = by_id(list(get_source("padchest", tmp_path, unmapped="drop").studies()))
    assert drop["S1"].positives == drop["S1"].negatives == ()  # all terms unmapped: no labels, not normal
    assert drop["S2"].positives == ("Cardiomegaly",) and drop["S3"].positives == ()
    assert drop["S3"].negatives == ("Cardiomegaly",)


# ------------------------------------------------------------------------------------------- VinDr


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr")
    gunzip(XRV / "vinbigdata-train.csv.gz", root / "train.csv")
    return root


@pytest.fixture(scope="module")
def vindr_raw() -> pd.DataFrame:
    return pd.read_csv(XRV / "vinbigdata-train.csv.gz")


def test_vindr_majority_and_union(vindr_root, vindr_raw):
    majority_source = get_source("vindr", vindr_root)
    majority = list(majority_source.studies())
    union = list(get_source("vindr", vindr_root, merge="union").studies())
    assert len(majority) == len(union) == vindr_raw["image_id"].nunique() == 15000
    assert majority[0].study_id == majority[0].patient_id == "50a418190bc3fb1ef1633bf9678929b3"
    assert majority[0].images == ("train/50a418190bc3fb1ef1633bf9678929b3.dicom",)
    assert majority[0].image_size is None
    assert len(majority_source.label_space) == 14
    assert {
        "Aortic Enlargement",
        "Interstitial Lung Disease",
        "Nodule/Mass",
        "Other Lesion",
        "Fibrosis",
    } <= set(majority_source.label_space)
    findings = vindr_raw[vindr_raw["class_name"] != "No finding"]
    votes = (
        findings.drop_duplicates(["image_id", "class_name", "rad_id"])
        .groupby(["image_id", "class_name"])
        .size()
    )
    assert sum(len(s.positives) for s in majority) == (votes >= 2).sum() == 8825
    assert sum(len(s.positives) for s in union) == len(votes) == 15365
    assert sum(len(s.boxes) for s in union) == findings["x_min"].notna().sum() == 36096
    assert sum(not s.positives for s in majority) == 10648 > sum(not s.positives for s in union) == 10606
    assert sum(not s.positives and s.negatives == majority_source.label_space for s in majority) == 10606
    assert sum(not s.positives and not s.negatives for s in majority) == 42  # single-reader findings only
    marked = votes.reset_index().groupby("image_id").size()
    assert sum(len(s.negatives) for s in union) == 15000 * 14 - marked.sum()
    single = marked[marked.index.isin([s.study_id for s in majority if not s.positives and not s.negatives])]
    assert sum(len(s.negatives) for s in majority) == 15000 * 14 - marked.sum() - (14 * 42 - single.sum())
    for study in majority[:2000]:
        check_study(study)
        assert all(b.finding in study.positives for b in study.boxes)


def test_vindr_majority_boxes_are_supported_by_two_radiologists(vindr_root, vindr_raw):
    from cxmind.vocab import canonical

    majority = list(get_source("vindr", vindr_root).studies())
    raw = vindr_raw.dropna(subset=["x_min"]).assign(finding=lambda t: t["class_name"].map(canonical))
    merged = pd.DataFrame(
        [(s.study_id, b.finding, b.x0, b.y0, b.x1, b.y1) for s in majority for b in s.boxes],
        columns=["image_id", "finding", "x0", "y0", "x1", "y1"],
    ).reset_index()
    assert len(merged) == 8821
    pairs = merged.merge(raw, on=["image_id", "finding"])
    width = (np.minimum(pairs.x1, pairs.x_max) - np.maximum(pairs.x0, pairs.x_min)).clip(lower=0)
    height = (np.minimum(pairs.y1, pairs.y_max) - np.maximum(pairs.y0, pairs.y_min)).clip(lower=0)
    inter = width * height
    union = (pairs.x1 - pairs.x0) * (pairs.y1 - pairs.y0) + (pairs.x_max - pairs.x_min) * (
        pairs.y_max - pairs.y_min
    )
    close = pairs[inter / (union - inter) >= 0.4]
    support = close.groupby("index")["rad_id"].nunique().reindex(merged["index"], fill_value=0)
    assert (support >= 2).all()  # every merged box overlaps boxes of two readers with IoU >= 0.4
    study = by_id(majority)["9a5094b2563a1ef3ff50dc5c7ff71345"]
    assert study.positives == ("Cardiomegaly",)  # three readers; the other findings have one vote each
    cardio = raw[(raw["image_id"] == study.study_id) & (raw["finding"] == "Cardiomegaly")]
    assert study.boxes[0].x0 == pytest.approx(cardio["x_min"].mean())
    assert {"Aortic Enlargement", "Pleural Effusion"}.isdisjoint(study.negatives)


def test_vindr_box_clustering_rules():
    boxes = pd.DataFrame(
        {
            "group": [0, 0, 0, 0, 1, 1],
            "reader": [1, 2, 1, 3, 1, 1],
            "x0": [0, 1, 100, 300, 0, 0],
            "y0": [0, 1, 100, 300, 0, 0],
            "x1": [10, 11, 110, 310, 10, 10],
            "y1": [10, 11, 110, 310, 10, 10],
        }
    )
    labels = cluster_boxes(boxes).tolist()
    assert labels[0] == labels[1]  # two readers overlapping
    assert len({labels[0], labels[2], labels[3]}) == 3  # far apart
    assert labels[4] != labels[5]  # the same reader's boxes are never linked


def test_vindr_images_are_found_and_probed(tmp_path, vindr_raw):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    link(XRV / "vinbigdata-train.csv.gz", tmp_path / "train.csv.gz")
    ids = vindr_raw["image_id"].unique()[:2].tolist()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = 2880, 2304
    (tmp_path / "train").mkdir()
    ds.save_as(tmp_path / "train" / f"{ids[0]}.dcm", enforce_file_format=True)
    from PIL import Image

    Image.new("L", (40, 30)).save(tmp_path / "train" / f"{ids[1]}.png")
    studies = by_id(list(get_source("vindr", tmp_path, merge="any").studies()))
    assert studies[ids[0]].images == (f"train/{ids[0]}.dcm",) and studies[ids[0]].image_size == (2304, 2880)
    assert studies[ids[1]].images == (f"train/{ids[1]}.png",) and studies[ids[1]].image_size == (40, 30)
    unprobed = by_id(list(get_source("vindr", tmp_path, probe_size=False).studies()))
    assert unprobed[ids[0]].image_size is None


def test_vindr_wrong_column(tmp_path):
    (tmp_path / "train.csv").write_text("image_id,class_name,rad_id\nx,No finding,R1\n")
    with pytest.raises(
        ValueError, match=r"vindr: .*train.csv has no column 'x_min', 'y_min', 'x_max', 'y_max'"
    ):
        get_source("vindr", tmp_path)


# -------------------------------------------------------------------------------------------- RSNA


def test_rsna_pneumonia_boxes_and_views(tmp_path):
    link(XRV / "kaggle_stage_2_train_labels.csv.zip", tmp_path / "stage_2_train_labels.csv.zip")
    link(
        XRV / "kaggle_stage_2_train_images_dicom_headers.csv.gz",
        tmp_path / "stage_2_train_images_dicom_headers.csv.gz",
    )
    source = get_source("rsna", tmp_path)
    studies = list(source.studies())
    raw = pd.read_csv(XRV / "kaggle_stage_2_train_labels.csv.zip")
    assert len(studies) == raw["patientId"].nunique() == 26684
    positives = [s for s in studies if s.positives]
    assert len(positives) == 6012 and all(s.boxes for s in positives)
    assert sum(len(s.boxes) for s in studies) == int(raw["Target"].sum()) == 9555
    assert all(s.negatives == ("Pneumonia",) and not s.boxes for s in studies if not s.positives)
    row = raw[raw["Target"] == 1].iloc[0]
    study = by_id(studies)[row.patientId]
    assert study.boxes[0] == Box("Pneumonia", row.x, row.y, row.x + row.width, row.y + row.height)
    assert study.images == (f"stage_2_train_images/{row.patientId}.dcm",) and study.image_size == (1024, 1024)
    assert Counter(s.view for s in studies) == {"PA": 14511, "AP": 12173}
    assert source.label_space == ("Pneumonia",)
    for study in studies[:1000]:
        check_study(study)


def test_rsna_plain_csv_without_headers(tmp_path):
    table = pd.read_csv(XRV / "kaggle_stage_2_train_labels.csv.zip", nrows=50)
    table.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    studies = list(get_source("rsna", tmp_path).studies())
    assert len(studies) == table["patientId"].nunique() and all(s.view is None for s in studies)
    table["Target"] = 2
    table.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    with pytest.raises(
        ValueError, match=r"rsna: .*csv: column 'Target' holds 2.0 \(row 0\); expected 0 or 1"
    ):
        list(get_source("rsna", tmp_path).studies())


# -------------------------------------------------------------------------------------------- SIIM


@pytest.fixture(scope="module")
def siim_table() -> pd.DataFrame:
    return pd.read_csv(XRV / "siim-pneumothorax-train-rle.csv.gz")


def test_siim_rle_boxes_match_torchxrayvision_masks(tmp_path, siim_table):
    link(XRV / "siim-pneumothorax-train-rle.csv.gz", tmp_path / "train-rle.csv.gz")
    studies = list(get_source("siim", tmp_path).studies())
    assert len(studies) == siim_table["ImageId"].nunique() == 12047
    positives = [s for s in studies if s.positives]
    assert len(positives) == 2669 and sum(len(s.boxes) for s in studies) == 3576
    assert studies[0].images == (f"dicom-images-train/{studies[0].study_id}.dcm",)
    dataset = xrv.datasets.SIIM_Pneumothorax_Dataset(imgpath=str(tmp_path / "no-images"))
    counts = siim_table.groupby("ImageId").size()
    single = [s for s in positives if counts[s.study_id] == 1][:6]
    several = [s for s in positives if counts[s.study_id] > 1][:3]
    for study in single + several:
        mask = dataset.get_pathology_mask_dict(study.study_id, 1024)[0][0]
        ys, xs = np.nonzero(mask)
        box = study.boxes[-1]  # torchxrayvision keeps only the last row's mask of an image
        assert (box.x0, box.y0, box.x1, box.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    rle = siim_table.loc[siim_table[" EncodedPixels"] != "-1", " EncodedPixels"].iloc[0]
    ys, xs = np.nonzero(rle_mask(rle))
    assert rle_extent(rle) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert rle_extent("5 3") == (0, 5, 1, 8) and rle_extent("1020 8") == (0, 0, 2, 1024)  # wraps a column
    with pytest.raises(ValueError, match="not a run-length encoding"):
        rle_extent("5 x 3")


def test_siim_indexes_the_nested_dicom_folders(tmp_path, siim_table):
    ids = siim_table["ImageId"].unique()[:3].tolist()
    siim_table[siim_table["ImageId"].isin(ids)].to_csv(tmp_path / "train-rle.csv", index=False)
    for n, image in enumerate(ids[:2]):
        folder = tmp_path / "dicom-images-train" / f"1.2.study{n}" / f"1.2.series{n}"
        folder.mkdir(parents=True)
        (folder / f"{image}.dcm").write_bytes(b"")
    source = get_source("siim", tmp_path)
    studies = list(source.studies())
    assert [s.images[0] for s in studies] == [
        f"dicom-images-train/1.2.study{n}/1.2.series{n}/{image}.dcm" for n, image in enumerate(ids[:2])
    ]
    assert source.skipped == {"image not found under dicom-images-train": 1}
    assert source.rejects == [(f"siim/{ids[2]}", "image not found under dicom-images-train", "")]


# ----------------------------------------------------------------------------------------- IU X-ray


@pytest.fixture(scope="module")
def iu_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("iu")
    link(XRV / "NLMCXR_reports.tgz", root / "NLMCXR_reports.tgz")
    link(XRV / "nlmcxr_dicom_metadata.csv.gz", root / "nlmcxr_dicom_metadata.csv.gz")
    return get_source("iu_xray", root)


def test_iu_xray_reports_images_and_labels(iu_source):
    studies = list(iu_source.studies())
    assert len(studies) == 3851 and iu_source.skipped == {"report without images": 104}
    first = by_id(studies)["CXR1"]
    assert first.patient_id == "CXR1"
    assert first.images == ("NLMCXR_png/CXR1_1_IM-0001-3001.png", "NLMCXR_png/CXR1_1_IM-0001-4001.png")
    assert first.report.indication == "Positive TB test"
    assert first.report.findings.startswith(
        "The cardiac silhouette and mediastinum size are within normal limits."
    )
    assert first.report.impression == "Normal chest x-XXXX."
    assert first.positives == () and first.negatives == CHEXPERT_13  # MeSH "normal"
    assert sum(1 for s in studies if s.negatives) == 1379
    assert sum(s.report is None for s in studies) == 25  # reports with empty sections
    assert all(s.report.findings or s.report.impression for s in studies if s.report is not None)
    cardiomegaly = [s for s in studies if "Cardiomegaly" in s.positives]
    assert len(cardiomegaly) == 345 and not any(s.negatives for s in cardiomegaly)
    assert iu_source.unmapped_labels["lung"] > 500 and "Atelectasis" in iu_source.label_space
    for study in studies:
        check_study(study)
        assert len(study.images) == len(set(study.images))


def test_iu_xray_puts_frontal_images_first(iu_source):
    studies = by_id(list(iu_source.studies()))
    views = pd.read_csv(XRV / "nlmcxr_dicom_metadata.csv.gz", usecols=["imageid", "View Position"])
    view = dict(zip(views["imageid"], views["View Position"], strict=True))
    swapped = [s for s in studies.values() if len(s.images) == 2 and view.get(Path(s.images[1]).stem) == "PA"]
    assert all(view.get(Path(s.images[0]).stem) in ("PA", "AP") for s in swapped)
    assert studies["CXR1000"].view == "PA" and studies["CXR1000"].images[0].endswith(
        "CXR1000_IM-0003-2001.png"
    )


def test_iu_xray_extracted_folder_and_keep_option(tmp_path, iu_source):
    import tarfile

    with tarfile.open(XRV / "NLMCXR_reports.tgz") as archive:
        wanted = ("/1.xml", "/2.xml", "/10.xml", "/100.xml")
        members = [m for m in archive.getmembers() if m.name.endswith(wanted)]
        archive.extractall(tmp_path, members=members, filter="data")
    keep = list(get_source("iu_xray", tmp_path, unmapped="keep").studies())
    assert [s.study_id for s in keep] == ["CXR1", "CXR2", "CXR10", "CXR100"]
    assert keep[0].report == by_id(list(iu_source.studies()))["CXR1"].report
    assert keep[1].positives == ("Cardiomegaly", "pulmonary artery")  # "Pulmonary Artery/enlarged"
    assert by_id(list(iu_source.studies()))["CXR2"].positives == ("Cardiomegaly",)  # dropped by default
    assert keep[2].positives == ("Granuloma",)  # "Calcified Granuloma/lung/upper lobe/right"
    parsed = parse_report_xml((tmp_path / "ecgen-radiology" / "10.xml").read_bytes())
    assert parsed.uid == "CXR10" and parsed.terms == ("Calcified Granuloma",)
    with pytest.raises(FileNotFoundError, match=r"iu_xray: .*NLMCXR_reports.tgz not found"):
        get_source("iu_xray", tmp_path / "ecgen-radiology")


# ------------------------------------------------------------------------------------------ MIMIC


def test_mimic_fixture_round_trip():
    source = get_source("mimic", MIMIC_FIXTURE)
    studies = by_id(list(source.studies()))
    assert list(studies) == ["50000012", "50000011", "50000021", "50000031", "50000032"]
    first = studies["50000011"]
    assert first.patient_id == "10000001" and first.order == 0 and studies["50000012"].order == 1
    assert first.images == (
        "files/p10/p10000001/s50000011/5d7e0c9b-2a1f8b44-c6e3d907-1f5a4b82-9e6d0a21.jpg",  # PA before lateral
        "files/p10/p10000001/s50000011/a9e4b1c0-4d2f7e88-19b6c3a5-e07d2f64-8b1a9c33.jpg",
    )
    assert first.view == "PA" and first.image_size == (2544, 3056) and first.split == "train"
    # No Finding = 1: the pathologies are negative and the study is normal; Support Devices stays blank
    pathologies = tuple(n for n in CHEXPERT_13 if n != "Support Devices")
    assert first.positives == () and first.negatives == pathologies
    assert first.normal and first.assumed_negatives == ()
    assert first.report.impression == "No acute cardiopulmonary process."
    assert first.report.indication.startswith("___ year old woman with two days of cough")
    assert first.report.findings.endswith("No acute osseous abnormality is seen.")
    effusion = studies["50000012"]
    assert (
        effusion.positives == ("Pleural Effusion", "Support Devices")
        and "Atelectasis" not in effusion.negatives
    )
    assert effusion.view == "AP" and effusion.image_size == (3050, 2539)
    assert studies["50000021"].split == "validation" and studies["50000021"].report.indication.startswith(
        "___ with"
    )
    assert (
        studies["50000031"].order == 1
        and studies["50000032"].order == 0
        and studies["50000031"].split == "test"
    )
    assert studies["50000031"].report.impression == "Small left apical pneumothorax."  # NOTIFICATION excluded
    assert studies["50000032"].report.indication.startswith("___ year old man with a pacemaker")
    assert studies["50000032"].positives == ("Support Devices",)
    for study in studies.values():
        check_study(study)
    ones = by_id(list(get_source("mimic", MIMIC_FIXTURE, uncertain="positive").studies()))
    assert ones["50000012"].positives == ("Atelectasis", "Pleural Effusion", "Support Devices")
    negbio = by_id(list(get_source("mimic", MIMIC_FIXTURE, labeler="negbio").studies()))
    assert negbio["50000021"].positives == ("Cardiomegaly", "Edema")
    assert studies["50000021"].positives == ("Cardiomegaly",) and "Edema" not in studies["50000021"].negatives


def test_mimic_gzipped_tables_and_missing_reports(tmp_path):
    for csv in MIMIC_FIXTURE.glob("*.csv"):
        with open(csv, "rb") as src, gzip.open(tmp_path / f"{csv.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    studies = list(get_source("mimic", tmp_path).studies())
    assert [s.study_id for s in studies] == [s.study_id for s in get_source("mimic", MIMIC_FIXTURE).studies()]
    assert all(s.report is None for s in studies)
    (tmp_path / "mimic-cxr-2.0.0-negbio.csv.gz").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"mimic: .*negbio.csv not found \(nor a .gz/.zip variant\); point --source mimic=<dir>",
    ):
        get_source("mimic", tmp_path, labeler="negbio")


def test_mimic_report_sections():
    report = parse_report(
        "FINAL REPORT\n EXAMINATION: CHEST\n CLINICAL HISTORY: fever.\n FINDINGS:\n\n Clear\n lungs.\n"
        " CONCLUSION: Normal.\n"
    )
    assert (report.findings, report.impression, report.indication) == ("Clear lungs.", "Normal.", "fever.")
    assert parse_report("No sections at all.") == parse_report("")


def test_mimic_wrong_label_values_are_reported(tmp_path):
    for csv in MIMIC_FIXTURE.glob("*.csv"):
        shutil.copy(csv, tmp_path / csv.name)
    labels = pd.read_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv")
    labels.loc[1, "Edema"] = 2.0
    labels.to_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    with pytest.raises(ValueError, match=r"mimic: .*chexpert.csv: column 'Edema' holds 2.0 \(row 1\)"):
        list(get_source("mimic", tmp_path).studies())
