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
    # hedges and negations of real reports (verbatim ones in IU_CASES below)
    ("Suspected pneumonia.", {PN: -1}),
    ("Pneumonia is suspected.", {PN: -1}),
    ("Question of left lower lobe pneumonia?", {PN: -1}),
    ("Pneumothorax?", {PX: -1}),
    ("Opacities favoring scar or atelectasis.", {LO: 1, AT: -1}),
    ("There is no suggestion of pneumothorax.", {NF: 1, PX: 0}),
    ("A superimposed pneumonia would be a consideration.", {PN: -1}),
    ("Heart size within the limits of normal.", {NF: 1, CM: 0}),
    ("The lungs are within normal limits.", {NF: 1}),
    ("Cardiomegaly and pulmonary vascularity within normal limits.", {CM: 1}),  # WNL negates its subject
    ("The effusions have cleared.", {NF: 1, PE: 0}),
    ("There is a right effusion, and the left effusion has resolved.", {PE: 1}),  # not a list
    ("Please note that nondisplaced fractures may not be demonstrated.", {FX: -1}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[t[:48] for t, _ in CASES])
def test_hand_checked_phrasing(text: str, expected: dict[str, int]) -> None:
    assert label_report(text) == expected


def test_likely_is_uncertain_unless_asked() -> None:
    assert label_report("Atelectasis is likely.") == {AT: -1}
    assert label_report("Likely atelectasis.") == {AT: -1}
    assert label_report("Likely atelectasis.", likely_positive=True) == {AT: 1}


def test_uncertain_as_maps_only_uncertain_labels() -> None:
    text = "Cannot exclude a small left pleural effusion. No pneumothorax, mild cardiomegaly."
    assert label_report(text) == {CM: 1, PX: 0, PE: -1}
    assert label_report(text, uncertain_as=-1) == label_report(text)
    assert label_report(text, uncertain_as=1) == {CM: 1, PX: 0, PE: 1}  # U-Ones
    assert label_report(text, uncertain_as=0) == {CM: 1, PX: 0, PE: 0}  # U-Zeros
    # as in CheXpert the policy maps labels after labeling: an uncertain finding still withholds No Finding
    assert label_report("Possible early pneumonia.", uncertain_as=0) == {PN: 0}
    assert label_report("No pneumothorax.", uncertain_as=1) == {NF: 1, PX: 0}
    assert label_reports(["Possible early pneumonia.", ""], uncertain_as=1) == [{PN: 1}, {}]
    assert label_report("Likely atelectasis.", likely_positive=True, uncertain_as=0) == {AT: 1}
    for bad in (2, -2, None):
        with pytest.raises(ValueError, match="uncertain_as"):
            label_report("Cardiomegaly.", uncertain_as=bad)  # type: ignore[arg-type]


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
    # hedges: a question, "favored to represent", post-nominal "suspected", "another consideration",
    # "in the differential", "suggestion of", "maybe", "difficult to exclude", "correlate clinically
    # for", "in the appropriate clinical setting", "evaluation for"
    (
        "Increased interstitial opacities non-specific. Question edema or atypical infection?",
        {LO: 1, ED: -1, PN: -1},
    ),
    (
        "Question mild pulmonary vascular congestion in a patient with prosthetic aortic valve.",
        {ED: -1, SD: 1},
    ),
    (
        "1. Right basilar opacities favored to represent atelectasis. 2. Stigmata of XXXX cell disease. "
        "3. Cholelithiasis.",
        {LO: 1, AT: -1},
    ),
    (
        "There is cardiomegaly. Lateral view somewhat limited however small bilateral pleural effusions "
        "suspected. There is central vascular congestion.",
        {CM: 1, ED: 1, PE: -1},
    ),
    (
        "1. Cardiomegaly with diffuse interstitial opacities. Findings may be secondary to pulmonary edema. "
        "Atypical infection is another consideration.",
        {CM: 1, LO: 1, ED: -1, PN: -1},
    ),
    (
        "Patchy airspace disease in the lingula without evidence of effusion. Pneumonia is in the "
        "differential. A followup exam in 4 to 6 weeks should be considered to ensure resolution of this "
        "process.",
        {LO: 1, PN: -1, PE: 0},
    ),
    (
        "Mild cardiomegaly. No overt edema. Lateral image is degraded by motion but there suggestion of "
        "minimal bibasilar airspace disease/atelectasis. No appreciable pleural effusion or pneumothorax.",
        {CM: 1, LO: -1, ED: 0, AT: -1, PX: 0, PE: 0},
    ),
    (
        "Nonspecific interstitial prominence and basilar patchy airspace disease. Maybe due to pulmonary "
        "fibrosis, scarring and/or atelectasis. Comparison with outside previous films may be useful.",
        {LO: 1, AT: -1},
    ),
    (
        "Underinflated lungs with elevation of the left diaphragm and patchy airspace disease in the left "
        "base, probably mostly atelectasis. It would be difficult to completely exclude a superimposed "
        "pneumonia. No pleural effusion.",
        {LO: 1, PN: -1, AT: -1, PE: 0},
    ),
    ("Right upper lobe airspace consolidation Please correlate clinically for pneumonia.", {CO: 1, PN: -1}),
    (
        "Right lower lobe infiltrate. In the appropriate clinical setting this appearance is compatible with "
        "pneumonia. Consider followup PA and lateral chest x-XXXX in 4-6 weeks to ensure resolution and "
        "exclude an underlying mass.",
        {LO: 1, LL: -1, PN: -1},
    ),
    (
        "Evaluation for pneumothorax is limited due to exclusion of the superior-most pulmonary apices. No "
        "visible pleural XXXX. No focal air space opacities or pleural effusion. Cardiomediastinal "
        "silhouette is within normal limits. No free subdiaphragmatic air. Mild degenerative changes of the "
        "thoracic spine. Included osseous structures are grossly intact.",
        {EC: 0, LO: 0, PX: -1, PE: 0},
    ),
    # negations: "within limits of normal" (its own subject only), "have cleared" over a whole list
    (
        "Heart size and pulmonary vascular engorgement appear within limits of normal. Mediastinal contour "
        "is unremarkable. No focal consolidation, pleural effusion, or pneumothorax identified. No acute "
        "bony changes.",
        {NF: 1, EC: 0, CM: 0, ED: 0, CO: 0, PX: 0, PE: 0},
    ),
    (
        "Consolidation, atelectasis, and costophrenic XXXX blunting in the left lower lobe have cleared in "
        "the interval. A persistent patchy infiltrate is present in the right middle lobe. No XXXX "
        "infiltrates. Heart is slightly large. Pulmonary XXXX are normal. Aorta remains tortuous.",
        {CM: 1, LO: 1, CO: 0, AT: 0, PE: 0},
    ),
    ("Cleared left lower lobe airspace disease with persistent right middle lobe airspace disease.", {LO: 1}),
    # signs the report denies or explains, and volume loss: uncertain, not positive
    ("Cardiomegaly with central pulmonary vascular congestion. No XXXX edema.", {CM: 1, ED: -1}),
    (
        "Cardiomegaly with central pulmonary vascular congestion and no acute cardiopulmonary findings.",
        {CM: 1, ED: 1},
    ),
    (
        "Prior sternotomy. Midline sternotomy XXXX. Normal heart size. Vascular congestion. No overt edema "
        "or lobar pneumonia. No pleural effusion.",
        {CM: 0, ED: -1, PN: 0, PE: 0},
    ),
    (
        "Normal heart size and mediastinal contours. Minimal blunting of the costophrenic XXXX. No focal "
        "airspace consolidation. No pneumothorax or pleural effusion.",
        {EC: 0, CM: 0, CO: 0, PX: 0, PE: -1},
    ),
    (
        "Mild blunting left costophrenic recess, possibly mild atelectasis or scarring.",
        {LO: -1, AT: -1, PE: -1},
    ),
    (
        "The heart is normal in size and contour. There is no mediastinal widening. No focal airspace "
        "disease. Left upper lobe granuloma. No evidence of active tuberculosis. Stable chronic blunting of "
        "the right costophrenic XXXX. No pneumothorax. The XXXX are intact.",
        {EC: 0, CM: 0, LO: 0, PX: 0, PE: -1},
    ),
    ("Stable left thoracotomy changes with left-sided volume loss. No acute interval change.", {AT: -1}),
    # phrases: "pleural air collection" (pneumothorax), "pneumonitis" (MeSH: pneumonia)
    (
        "Heart size is normal. Left upper lobe atelectasis / infiltrate in the left perihilar region, "
        "unchanged. Two venous catheter tips overlie the mid SVC. Small medial left upper lobe pleural air "
        "collection.",
        {CM: 0, LO: 1, AT: 1, PX: 1, SD: 1},
    ),
    (
        "Developing left upper lobe consolidation and focal atelectasis, consistent with pneumonitis.",
        {CO: 1, PN: 1, AT: 1},
    ),
]


@pytest.mark.parametrize(("text", "expected"), IU_CASES, ids=[t[:48] for t, _ in IU_CASES])
def test_real_iu_xray_reports(text: str, expected: dict[str, int]) -> None:
    assert text in set(iu_xray_sentences()), "IU cases must be quoted verbatim from the collection"
    assert label_report(text) == expected


_ABSTRACT = re.compile(r'<AbstractText Label="(?:FINDINGS|IMPRESSION)">(.*?)</AbstractText>', re.S)
_MESH_MAJOR = re.compile(r"<major>(.*?)</major>", re.S)


@lru_cache(maxsize=1)
def _iu_indexed() -> tuple[tuple[str, frozenset[str]], ...]:
    """Whole IU X-ray reports (findings and impression joined, as a generated report would read), each
    with the MeSH headings its human indexers gave it ("Pulmonary Atelectasis/base/left" -> the
    heading "Pulmonary Atelectasis")."""
    import torchxrayvision

    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    reports: list[tuple[str, frozenset[str]]] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.endswith(".xml"):
                xml = tar.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                parts = [t.strip() for t in _ABSTRACT.findall(xml) if t.strip()]
                if parts:
                    headings = frozenset(m.split("/")[0].strip() for m in _MESH_MAJOR.findall(xml))
                    reports.append((" ".join(parts), headings))
    return tuple(reports)


def _iu_reports() -> tuple[str, ...]:
    return tuple(report for report, _ in _iu_indexed())


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


# CheXpert findings and the MeSH heading IU X-ray's human indexers use for the same finding. Other
# findings map less cleanly (Lung Opacity is split over Opacity / Airspace Disease / Density /
# Infiltrate; "vascular congestion", Edema for CheXpert, is its own heading, Pulmonary Congestion).
MESH_HEADING = {
    CM: "Cardiomegaly",
    PE: "Pleural Effusion",
    AT: "Pulmonary Atelectasis",
    PX: "Pneumothorax",
    ED: "Pulmonary Edema",
    CO: "Consolidation",
    PN: "Pneumonia",
}


def test_agrees_with_human_mesh_indexing_of_iu_reports() -> None:
    """Micro-F1 of the labeler's positives (label 1) against the human MeSH indexing of all 3,927 IU
    X-ray reports over the seven findings above: 0.907 (0.871 before the hedge, negation and sign rules
    of the module docstring). Per finding: Cardiomegaly 0.912, Pleural Effusion 0.901, Atelectasis
    0.945, Pneumothorax 0.875, Edema 0.729, Consolidation 0.935, Pneumonia 0.831. Most remaining
    disagreements are conventions rather than phrasing: MeSH indexes "borderline cardiomegaly" and
    "atelectasis versus scarring" as present (the labeler: uncertain) and "enlarged cardiac silhouette"
    apart from Cardiomegaly."""
    tp = fp = fn = 0
    for report, headings in _iu_indexed():
        labels = label_report(report)
        for finding, heading in MESH_HEADING.items():
            predicted, indexed = labels.get(finding) == 1, heading in headings
            tp += predicted and indexed
            fp += predicted and not indexed
            fn += indexed and not predicted
    micro_f1 = 2 * tp / (2 * tp + fp + fn)
    assert tp > 800, tp
    assert micro_f1 >= 0.90, f"micro-F1 {micro_f1:.3f} (tp {tp}, fp {fp}, fn {fn})"
