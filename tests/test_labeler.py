"""The rule-based CheXpert-14 report labeler: hand-checked phrasing, real IU X-ray reports, speed."""

from __future__ import annotations

import re
import tarfile
import time
from functools import lru_cache
from pathlib import Path

import pytest
from _corpus import iu_xray_sentences

from cxmind.eval.labeler import label_report, label_reports
from cxmind.vocab import CHEXPERT_14

NF, EC, CM, LO, LL, ED, CO, PN, AT, PX, PE, PO, FX, SD = CHEXPERT_14

# Hand-checked phrasing: negation scope, uncertainty, pseudo-negation, devices, look-alikes.
CASES: list[tuple[str, dict[str, int]]] = [
    ("No pleural effusion or pneumothorax.", {NF: 1, PX: 0, PE: 0}),
    ("Cannot exclude a small left pleural effusion.", {PE: -1}),
    ("A small left pleural effusion cannot be excluded.", {PE: -1}),
    ("Possible early pneumonia.", {PN: -1}),
    ("The heart is enlarged.", {CM: 1}),
    ("Unchanged cardiomegaly.", {CM: 1}),
    ("Heart size is normal.", {NF: 1, CM: 0}),
    ("The heart is not enlarged.", {NF: 1, CM: 0}),
    ("Borderline heart size.", {CM: -1}),
    ("Heart size is at the upper limits of normal.", {CM: -1}),
    ("Right PICC line tip in the SVC.", {NF: 1, SD: 1}),
    ("No acute cardiopulmonary abnormality.", {NF: 1}),
    ("Left basilar opacity may represent atelectasis or pneumonia.", {LO: 1, AT: -1, PN: -1}),
    ("There is no evidence of pneumothorax, but there is a right effusion.", {PX: 0, PE: 1}),
    ("There is no focal airspace opacity to suggest pneumonia.", {NF: 1, LO: 0, PN: 0}),
    ("Pneumothorax is not seen.", {NF: 1, PX: 0}),
    ("No change in the small left pleural effusion.", {PE: 1}),
    ("Widened mediastinum.", {EC: 1}),
    ("The cardiomediastinal silhouette is within normal limits.", {NF: 1, EC: 0}),
    ("Lungs are free of consolidation or edema.", {NF: 1, CO: 0, ED: 0}),
    ("Negative for pneumothorax.", {NF: 1, PX: 0}),
    ("Atelectasis rather than pneumonia.", {AT: 1, PN: 0}),
    ("Interval resolution of the right pleural effusion.", {NF: 1, PE: 0}),
    ("The right chest tube has been removed.", {NF: 1, SD: 0}),
    ("Findings concerning for pneumonia.", {PN: -1}),
    ("Pleural effusion versus pleural thickening.", {PE: -1, PO: -1}),
    ("Healed right rib fractures.", {FX: 1}),
    ("Mild pulmonary vascular congestion.", {ED: 1}),
    ("Small pericardial effusion.", {NF: 1}),  # not a pleural effusion
    ("The trachea is midline. Sternotomy wires.", {NF: 1, SD: 1}),  # "midline" is no line
    ("Calcified granuloma in the right upper lobe.", {NF: 1}),
    ("No pneumothorax, mild cardiomegaly.", {CM: 1, PX: 0}),
    ("Right lower lobe consolidation; no effusion.", {CO: 1, PE: 0}),
    ("4 mm nodule in the left upper lobe.", {LL: 1}),
    ("No XXXX focal airspace consolidation.", {NF: 1, CO: 0}),
    ("Small right pleural effusion. No left pleural effusion.", {PE: 1}),
    ("Possible right effusion. Definite left effusion.", {PE: 1}),
    (
        "Blunting of the right costophrenic sulcus could be secondary to effusion versus scarring.",
        {LO: -1, PE: -1},
    ),
    ("Enlarged heart with small bilateral effusions, possibly edema.", {CM: 1, ED: -1, PE: 1}),
    ("Resolved interstitial edema.", {NF: 1, ED: 0}),
    ("Pacemaker leads in the right ventricle. No acute disease.", {NF: 1, SD: 1}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[t[:48] for t, _ in CASES])
def test_hand_checked_phrasing(text: str, expected: dict[str, int]) -> None:
    assert label_report(text) == expected


def test_likely_is_uncertain_unless_asked() -> None:
    assert label_report("Atelectasis is likely.") == {AT: -1}
    assert label_report("Likely atelectasis.") == {AT: -1}
    assert label_report("Likely atelectasis.", likely_positive=True) == {AT: 1}


def test_blank_report_has_no_labels() -> None:
    assert label_report("") == {}
    assert label_report("  \n ") == {}
    assert label_reports(["Cardiomegaly.", ""]) == [{CM: 1}, {}]


def test_keys_follow_chexpert_order() -> None:
    labels = label_report("Right effusion. Cardiomegaly. Chest tube. Possible pneumonia.")
    assert list(labels) == [name for name in CHEXPERT_14 if name in labels]


# Verbatim IU X-ray report texts (findings or impression) with hand-checked labels.
IU_CASES: list[tuple[str, dict[str, int]]] = [
    (
        "The heart, pulmonary XXXX and mediastinum are within normal limits. There is no pleural effusion "
        "or pneumothorax. There is no focal air space opacity to suggest a pneumonia. There are mild "
        "degenerative changes of the spine.",
        {NF: 1, EC: 0, CM: 0, LO: 0, PN: 0, PX: 0, PE: 0},
    ),
    ("Cardiomegaly with mild bibasilar infiltrates versus atelectasis.", {CM: 1, LO: -1, AT: -1}),
    ("1. Mild cardiomegaly. 2. Otherwise, no acute cardiopulmonary abnormalities.", {CM: 1}),
    (
        "Round density within the anterior segment of the right upper lobe. This may represent XXXX "
        "pulmonary nodule. The primordial XXXX was employed to notify the referring physicians of this "
        "critical finding. .",
        {LO: 1, LL: -1},
    ),
    (
        "There is a moderate right-sided pneumothorax measuring approximately 3.3 cm in the right apex. "
        "There is a minimally displaced right lateral 8th rib fracture and probable nondisplaced right "
        "lateral 7th rib fracture. Cardiomediastinal silhouette is within normal limits. Left lung is clear.",
        {EC: 0, PX: 1, FX: 1},
    ),
    (
        "Stable cardiomediastinal silhouette with borderline heart size and aortic ectasia/tortuosity. "
        "Stable hyperinflation without focal alveolar consolidation. No definite pleural effusion seen. "
        "No typical findings of pulmonary edema. Healed left rib fractures again noted.",
        {CM: -1, ED: 0, CO: 0, PE: 0, FX: 1},
    ),
    (
        "The cardiac silhouette measures near upper limits of normal in size. Pulmonary vasculature is "
        "normal in caliber. There is stable eventration of the anterior right hemidiaphragm. The lungs are "
        "clear of focal airspace disease, pneumothorax, pleural effusion. There are no acute bony findings.",
        {CM: -1, LO: 0, PX: 0, PE: 0},
    ),
    (
        "Cardiomediastinal contours within normal limits. Pulmonary vascularity is normal. There are "
        "scattered calcified testes bilaterally, consistent with prior granulomatous infection, stable. "
        "No XXXX focal airspace consolidation. No pleural effusion, no pneumothorax. Bony structures "
        "unremarkable.",
        {NF: 1, EC: 0, CO: 0, PX: 0, PE: 0},
    ),
    ("No acute cardiopulmonary abnormality.", {NF: 1}),
    (
        "There is stable left costophrenic XXXX blunting. The patient has undergone prior left lobectomy. "
        "There are chronic appearing right basilar interstitial markings. Heart size normal. No visualized "
        "pneumothorax. There is stable appearing left upper and right upper lobe bullous disease.",
        {CM: 0, LO: 1, PX: 0, PE: 1},
    ),
    (
        "1. Moderate increase in size of the cardiac silhouette. Unclear whether this is secondary to "
        "cardiomegaly or pericardial effusion. 2. Pulmonary vascular congestion. 3. Widened mediastinum. "
        "Maybe secondary to prominent mediastinal fat or tortuous XXXX. However, adenopathy, or mass is not "
        "excluded. CT of the chest with contrast is recommended for further evaluation of these findings.",
        {EC: 1, CM: 1, LL: -1, ED: 1},
    ),
    (
        "Mediastinal contours are normal. Unchanged XXXX opacity in the left lung base, XXXX scarring. "
        "Lungs are clear. There is no pneumothorax or large pleural effusion.",
        {EC: 0, LO: 1, PX: 0, PE: 0},
    ),
    ("Cardiomegaly without acute cardiopulmonary abnormality.", {CM: 1}),
    (
        "The previously seen right-sided PICC has been removed. The heart size is normal. Lungs are clear. "
        "There is no pneumothorax or large pleural effusion. Bony structures are within normal limits.",
        {NF: 1, CM: 0, PX: 0, PE: 0, SD: 0},
    ),
    (
        "Stable pacemaker generator within the left chest with 2 distal leads terminating in the right "
        "atrium and right ventricle, also in stable position. No pneumothorax.",
        {NF: 1, PX: 0, SD: 1},
    ),
    (
        "Persistent cardiomegaly. No abnormal airspace consolidation. Resolved interstitial edema. No "
        "pneumothorax or pleural effusion.",
        {CM: 1, ED: 0, CO: 0, PX: 0, PE: 0},
    ),
    ("1. Left lower lobe airspace disease suspicious for pneumonia.", {LO: 1, PN: -1}),
    (
        "Heart is within normal limits. Negative for focal pulmonary consolidation, pleural effusion, or "
        "pneumothorax. Mild streaky opacity lateral right lung, atelectasis versus scarring.",
        {CM: 0, LO: 1, CO: 0, AT: -1, PX: 0, PE: 0},
    ),
    (
        "Further fibrosis and collapse of the left upper lobe with left apical pleural thickening. No "
        "evidence of recurrence. Heart size normal. No effusion.",
        {CM: 0, AT: 1, PE: 0, PO: 1},
    ),
]


@pytest.mark.parametrize(("text", "expected"), IU_CASES, ids=[t[:48] for t, _ in IU_CASES])
def test_real_iu_xray_reports(text: str, expected: dict[str, int]) -> None:
    assert text in set(iu_xray_sentences()), "IU cases must be quoted verbatim from the collection"
    assert label_report(text) == expected


_ABSTRACT = re.compile(r'<AbstractText Label="(?:FINDINGS|IMPRESSION)">(.*?)</AbstractText>', re.S)


@lru_cache(maxsize=1)
def _iu_reports() -> tuple[str, ...]:
    """Whole IU X-ray reports: findings and impression joined, as a generated report would read."""
    import torchxrayvision

    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    reports: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.endswith(".xml"):
                xml = tar.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                parts = [t.strip() for t in _ABSTRACT.findall(xml) if t.strip()]
                if parts:
                    reports.append(" ".join(parts))
    return tuple(reports)


def test_every_iu_report_gets_valid_labels() -> None:
    reports = _iu_reports()
    assert len(reports) > 3500
    allowed = set(CHEXPERT_14)
    for report in reports:
        labels = label_report(report)
        assert set(labels) <= allowed
        assert set(labels.values()) <= {-1, 0, 1}
        others_clear = all(v == 0 for k, v in labels.items() if k not in (NF, SD))
        assert (labels.get(NF) == 1) == others_clear, report
    # the collection is mostly normal studies, with every finding still labeled somewhere
    labeled = [label_report(r) for r in reports]
    assert sum(NF in labels for labels in labeled) > len(reports) / 2
    for name in CHEXPERT_14:
        assert any(labels.get(name) == 1 for labels in labeled), name


def test_labels_thousands_of_reports_per_second() -> None:
    reports = _iu_reports()
    label_reports(reports[:50])  # warm caches
    start = time.perf_counter()
    label_reports(reports)
    rate = len(reports) / (time.perf_counter() - start)
    assert rate >= 300, f"{rate:.0f} reports/s"
