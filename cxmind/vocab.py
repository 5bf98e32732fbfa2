"""The canonical chest X-ray finding vocabulary, shared by data builders, rewards and evaluation.

One table maps every label spelling used by the public datasets (CheXpert, NIH ChestX-ray14,
PadChest, VinDr-CXR, RSNA, SIIM) and common report wording onto one canonical name, so that
"effusion", "Pleural_Thickening" and "enlarged heart" compare equal wherever they appear.

>>> canonical("effusion")
'Pleural Effusion'
>>> canonical("Pleural_Thickening ✅")
'Pleural Thickening'
>>> canonical("Enlarged heart.")
'Cardiomegaly'
>>> canonical("Something Unheard Of")
'something unheard of'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

__all__ = [
    "CHEXPERT_14",
    "FINDINGS",
    "NIH_14",
    "NO_FINDING",
    "PARENT",
    "RELATED",
    "Finding",
    "ancestors",
    "canonical",
    "descendants",
    "implied",
    "is_known",
    "lookup_key",
    "not_absent",
    "resolve_labels",
    "synonyms_of",
]

NO_FINDING = "No Finding"


@dataclass(frozen=True)
class Finding:
    """A canonical finding, the datasets that label it, and the spellings that mean it."""

    name: str
    sources: tuple[str, ...]
    synonyms: tuple[str, ...] = ()


FINDINGS: tuple[Finding, ...] = (
    # --- CheXpert 14 (the reference set for clinical-efficacy metrics) ---
    Finding(
        NO_FINDING,
        ("chexpert", "nih", "vindr", "padchest"),
        ("no findings", "normal", "no abnormality", "no abnormalities", "normal study", "unremarkable"),
    ),
    Finding(
        "Enlarged Cardiomediastinum",
        ("chexpert",),
        (
            "widened mediastinum",
            "mediastinal widening",
            "enlarged mediastinum",
            "enlarged cardiomediastinal silhouette",
            "widened cardiomediastinal silhouette",
        ),
    ),
    Finding(
        "Cardiomegaly",
        ("chexpert", "nih", "vindr", "padchest"),
        (
            "enlarged heart",
            "heart enlargement",
            "cardiac enlargement",
            "enlarged cardiac silhouette",
            "enlarged heart size",
            "increased heart size",
            "cardiomegalia",
        ),
    ),
    Finding(
        "Lung Opacity",
        ("chexpert", "vindr", "rsna"),
        (
            "opacity",
            "opacities",
            "lung opacities",
            "pulmonary opacity",
            "pulmonary opacities",
            "airspace opacity",
            "airspace opacities",
            "airspace disease",
        ),
    ),
    Finding("Lung Lesion", ("chexpert",), ("lesion", "lesions", "lung lesions", "pulmonary lesion")),
    Finding(
        "Edema",
        ("chexpert", "nih", "vindr"),
        (
            "pulmonary edema",
            "oedema",
            "pulmonary oedema",
            "vascular congestion",
            "pulmonary vascular congestion",
            "interstitial edema",
        ),
    ),
    Finding(
        "Consolidation",
        ("chexpert", "nih", "vindr", "padchest"),
        ("consolidations", "airspace consolidation", "lobar consolidation"),
    ),
    Finding(
        "Pneumonia",
        ("chexpert", "nih", "vindr", "padchest", "rsna"),
        ("pneumonias", "bronchopneumonia", "pneumonic infiltrate"),
    ),
    Finding(
        "Atelectasis",
        ("chexpert", "nih", "vindr", "padchest"),
        (
            "atelectases",
            "atelectatic changes",
            "laminar atelectasis",
            "plate atelectasis",
            "subsegmental atelectasis",
            "lobar atelectasis",
            "lung collapse",
            "collapse",
        ),
    ),
    Finding("Pneumothorax", ("chexpert", "nih", "vindr", "padchest", "siim"), ("pneumothoraces", "ptx")),
    Finding(
        "Pleural Effusion",
        ("chexpert", "nih", "vindr", "padchest"),
        ("effusion", "effusions", "pleural effusions", "pleural fluid", "hydrothorax"),
    ),
    Finding("Pleural Other", ("chexpert",), ("other pleural abnormality",)),
    Finding(
        "Fracture",
        ("chexpert", "vindr", "padchest"),
        (
            "fractures",
            "bone fracture",
            "rib fracture",
            "rib fractures",
            "clavicle fracture",
            "clavicular fracture",
            "vertebral fracture",
        ),
    ),
    Finding(
        "Support Devices",
        ("chexpert", "padchest"),
        (
            "support device",
            "devices",
            "medical devices",
            "pacemaker",
            "endotracheal tube",
            "ett",
            "central line",
            "central venous catheter",
            "picc line",
            "nasogastric tube",
            "ng tube",
            "chest tube",
            "tracheostomy tube",
            "lines and tubes",
        ),
    ),
    # --- NIH ChestX-ray14 beyond CheXpert ---
    Finding(
        "Infiltration",
        ("nih", "vindr", "padchest"),
        ("infiltrate", "infiltrates", "infiltrations", "pulmonary infiltrate", "pulmonary infiltrates"),
    ),
    Finding("Mass", ("nih", "padchest"), ("masses", "lung mass", "pulmonary mass")),
    Finding(
        "Nodule",
        ("nih", "padchest"),
        ("nodules", "lung nodule", "lung nodules", "pulmonary nodule", "pulmonary nodules"),
    ),
    Finding("Emphysema", ("nih", "vindr", "padchest"), ("emphysematous changes",)),
    Finding(
        "Fibrosis",
        ("nih", "vindr", "padchest"),
        ("pulmonary fibrosis", "fibrotic changes", "fibrotic band", "fibrotic bands"),
    ),
    Finding(
        "Pleural Thickening",
        ("nih", "vindr", "padchest"),
        ("pleural thickenings", "apical pleural thickening", "pleural plaque", "pleural plaques"),
    ),
    Finding("Hernia", ("nih", "padchest"), ("hiatal hernia", "hiatus hernia", "hernias")),
    # --- VinDr-CXR local and global labels ---
    Finding("Aortic Enlargement", ("vindr",), ("enlarged aorta", "dilated aorta", "aortic dilatation")),
    Finding("Calcification", ("vindr", "padchest"), ("calcifications", "calcified")),
    Finding("Enlarged Pulmonary Artery", ("vindr",), ("enlarged pa", "pulmonary artery enlargement")),
    Finding("Interstitial Lung Disease", ("vindr",), ("ild",)),
    Finding("Lung Cavity", ("vindr",), ("cavity", "cavitation", "cavitary lesion")),
    Finding("Lung Cyst", ("vindr",), ("cyst", "pulmonary cyst")),
    Finding("Mediastinal Shift", ("vindr",), ()),
    Finding("Nodule/Mass", ("vindr",), ("nodule mass",)),
    Finding("Other Lesion", ("vindr",), ()),
    Finding("Lung Tumor", ("vindr",), ("lung tumour", "tumor", "tumour", "lung cancer")),
    Finding("Tuberculosis", ("vindr", "padchest"), ("tb", "pulmonary tuberculosis")),
    Finding("COPD", ("vindr", "padchest"), ("chronic obstructive pulmonary disease", "copd signs")),
    # --- frequent PadChest labels ---
    Finding("Aortic Elongation", ("padchest",), ("elongated aorta", "tortuous aorta")),
    Finding("Aortic Atheromatosis", ("padchest",), ("aortic atherosclerosis",)),
    Finding("Scoliosis", ("padchest",), ()),
    Finding("Kyphosis", ("padchest",), ()),
    Finding("Vertebral Degenerative Changes", ("padchest",), ("degenerative spine changes",)),
    Finding("Hilar Enlargement", ("padchest",), ("enlarged hilum", "hilar prominence", "hilar enlargements")),
    Finding("Interstitial Pattern", ("padchest",), ()),
    Finding("Alveolar Pattern", ("padchest",), ()),
    Finding(
        "Costophrenic Angle Blunting", ("padchest",), ("blunted costophrenic angle", "costophrenic blunting")
    ),
    Finding("Air Trapping", ("padchest",), ()),
    Finding("Granuloma", ("padchest",), ("granulomas", "calcified granuloma", "calcified granulomas")),
    Finding("Bronchiectasis", ("padchest",), ()),
)

CHEXPERT_14: tuple[str, ...] = tuple(f.name for f in FINDINGS if "chexpert" in f.sources)
NIH_14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Pleural Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
)

_MARKS = "✅❌"
_PREFIX = re.compile(r"^\s*differential\s+diagnos[ie]s\s*:\s*", re.IGNORECASE)
# Brackets, quotes and marks around a name; trailing sentence punctuation.
_EDGE_CHARS = "[](){}<>\"'`*" + _MARKS
_TRAILING = ".,;:!?" + _EDGE_CHARS
_SEPARATORS = re.compile(r"[\s_\-]+")


def lookup_key(name: str) -> str:
    """Normalised text of a name: prefix, marks, brackets and trailing punctuation stripped, lowercased.

    >>> lookup_key("  [Pleural_Thickening ✅]. ")
    'pleural thickening'
    """
    text = _PREFIX.sub("", name)
    for mark in _MARKS:
        text = text.replace(mark, " ")
    text = text.strip().strip(_EDGE_CHARS).strip().rstrip(_TRAILING).strip()
    return _SEPARATORS.sub(" ", text).casefold().strip()


def _build_index() -> MappingProxyType[str, str]:
    index: dict[str, str] = {}
    for finding in FINDINGS:
        for spelling in (finding.name, *finding.synonyms):
            key = lookup_key(spelling)
            if index.setdefault(key, finding.name) != finding.name:
                raise ValueError(f"vocabulary spelling {spelling!r} maps to two findings")
    return MappingProxyType(index)


_INDEX = _build_index()


# Words that qualify a finding without changing which finding it is: laterality, location, size,
# severity and age. Hedges ("possible") and negations ("no") are not among them: they change the claim.
_MODIFIERS = frozenset(
    """left right bilateral both unilateral sided bibasilar bibasal basilar basal base bases apical apex
    upper lower middle mid lobe lobar lobes zone zones lingular perihilar retrocardiac segmental
    subsegmental mild mildly moderate moderately severe severely minimal small large tiny trace massive
    marked slight new old chronic acute stable residual focal diffuse patchy""".split()  # noqa: SIM905
)
# A trailing location phrase: "effusion on the left", "atelectasis in the left lower lobe".
_LOCATION_TAIL = re.compile(r"\s(?:in|at|on|of|within|involving|along|at)\s.*$")
_PARENTHETICAL = re.compile(r"\s*\([^()]*(?:\)|$)")


def _lookup(key: str) -> str | None:
    found = _INDEX.get(key)
    if found is None and key.endswith("s"):
        found = _INDEX.get(key[:-1])  # simple plural ("nodules" without a listed plural)
    return found


def _without_modifiers(key: str) -> str | None:
    """The finding named once modifiers, a parenthetical and a trailing location phrase are dropped."""
    core = _LOCATION_TAIL.sub("", _PARENTHETICAL.sub("", key)).strip()
    words = core.split()
    while words:
        found = _lookup(" ".join(words))
        if found is not None or words[0] not in _MODIFIERS:
            return found
        words = words[1:]
    return None


@lru_cache(maxsize=1 << 16)  # names repeat endlessly in data building and reward scoring
def canonical(name: str) -> str:
    """Canonical finding name for ``name``, or its normalised lowercase text when unknown.

    Modifiers that do not change the finding are ignored: laterality, location, size, severity
    ("left pleural effusion", "mild cardiomegaly", "Atelectasis (left lower lobe)").

    >>> canonical("small bilateral pleural effusions"), canonical("Atelectasis (left lower lobe)")
    ('Pleural Effusion', 'Atelectasis')
    >>> canonical("possible pneumonia")  # a hedge is not a modifier
    'possible pneumonia'
    """
    key = lookup_key(name)
    found = _lookup(key)
    if found is None:
        found = _without_modifiers(key)
    return found if found is not None else key


def is_known(name: str) -> bool:
    """Whether ``name`` maps onto a finding of the vocabulary."""
    return canonical(name) in _BY_NAME


def synonyms_of(name: str) -> tuple[str, ...]:
    """All known spellings of the finding ``name`` (canonical name first)."""
    finding = _BY_NAME[canonical(name)]
    return (finding.name, *finding.synonyms)


_BY_NAME = MappingProxyType({f.name: f for f in FINDINGS})


# ---------------------------------------------------------------------------------------------
# Hierarchy: which findings imply which (one home for data builders, traces, audit and metrics)
# ---------------------------------------------------------------------------------------------

#: ``child -> parent``: a present child means its parent is present too. CheXpert's label hierarchy
#: (Irvin et al. 2019, Fig. 2: Lung Opacity over Edema, Consolidation, Pneumonia, Atelectasis and Lung
#: Lesion; Enlarged Cardiomediastinum over Cardiomegaly), extended to the other sources' names for the
#: same things (an infiltrate is an opacity; a nodule, mass, cavity or cyst is a lung lesion).
PARENT: MappingProxyType[str, str] = MappingProxyType(
    {
        "Edema": "Lung Opacity",
        "Consolidation": "Lung Opacity",
        "Pneumonia": "Lung Opacity",
        "Atelectasis": "Lung Opacity",
        "Lung Lesion": "Lung Opacity",
        "Infiltration": "Lung Opacity",
        "Alveolar Pattern": "Lung Opacity",
        "Mass": "Lung Lesion",
        "Nodule": "Lung Lesion",
        "Nodule/Mass": "Lung Lesion",
        "Lung Tumor": "Lung Lesion",
        "Lung Cavity": "Lung Lesion",
        "Lung Cyst": "Lung Lesion",
        "Cardiomegaly": "Enlarged Cardiomediastinum",
    }
)

#: Findings that often stand for each other without one implying the other: when one is present the
#: other is *unknown*, never a safe "absent" (PadChest labels a blunted costophrenic angle where a
#: small effusion is not named; pneumonia is read as consolidation, infiltrate or opacity by turns).
RELATED: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (
        ("Costophrenic Angle Blunting", "Pleural Effusion"),
        ("Pleural Thickening", "Pleural Effusion"),
        ("Pleural Other", "Pleural Thickening"),
        ("Pneumonia", "Infiltration"),
        ("Pneumonia", "Consolidation"),  # CheXpert draws pneumonia under consolidation; NIH labels both apart
        ("Consolidation", "Infiltration"),
        ("Interstitial Pattern", "Interstitial Lung Disease"),
        ("Interstitial Pattern", "Edema"),
        ("Fibrosis", "Interstitial Lung Disease"),
        ("Granuloma", "Calcification"),
        ("Granuloma", "Nodule"),
        ("Aortic Elongation", "Aortic Enlargement"),
        ("Enlarged Pulmonary Artery", "Hilar Enlargement"),
        ("Emphysema", "COPD"),
        ("Air Trapping", "COPD"),
        ("Tuberculosis", "Pneumonia"),
        ("Nodule/Mass", "Mass"),
        ("Nodule/Mass", "Nodule"),
        ("Other Lesion", "Lung Lesion"),
    )
)


@lru_cache(maxsize=4096)
def ancestors(name: str) -> tuple[str, ...]:
    """The findings a present ``name`` implies, nearest first.

    >>> ancestors("Nodule")
    ('Lung Lesion', 'Lung Opacity')
    """
    out: list[str] = []
    current = PARENT.get(canonical(name))
    while current is not None and current not in out:
        out.append(current)
        current = PARENT.get(current)
    return tuple(out)


def implied(positives: Iterable[str]) -> set[str]:
    """``positives`` with every finding they imply (canonical names).

    >>> sorted(implied(["Cardiomegaly", "Nodule"]))
    ['Cardiomegaly', 'Enlarged Cardiomediastinum', 'Lung Lesion', 'Lung Opacity', 'Nodule']
    """
    out: set[str] = set()
    for name in positives:
        key = canonical(name)
        out.add(key)
        out.update(ancestors(key))
    return out


def not_absent(positives: Iterable[str]) -> set[str]:
    """Findings that cannot be called absent given ``positives``: the positives, what they imply, and
    every finding related to one of those (:data:`RELATED`).

    A distractor or a ❌ verdict must never come from this set.

    >>> sorted(not_absent(["Pleural Effusion"]))
    ['Costophrenic Angle Blunting', 'Pleural Effusion', 'Pleural Thickening']
    """
    return set(_not_absent(frozenset(positives)))


@lru_cache(maxsize=1 << 14)  # positive sets repeat across studies and records
def _not_absent(positives: frozenset[str]) -> frozenset[str]:
    present = implied(positives)
    return frozenset(present | {other for pair in RELATED if pair & present for other in pair})


@lru_cache(maxsize=4096)
def descendants(name: str) -> tuple[str, ...]:
    """The findings ``name`` covers: an absent parent means each of them is absent too.

    >>> descendants("Lung Lesion")
    ('Mass', 'Nodule', 'Nodule/Mass', 'Lung Tumor', 'Lung Cavity', 'Lung Cyst')
    """
    key = canonical(name)
    return tuple(child for child in PARENT if key in ancestors(child))


def resolve_labels(
    positives: Iterable[str], negatives: Iterable[str], label_space: Iterable[str] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Positives and negatives made consistent with the hierarchy, within what the source labels.

    A present finding makes its parents present (those in ``label_space``; a source that does not
    label a parent does not get it) and is never negated, nor is any finding related to it; an
    explicitly absent parent makes its labelled children absent. Order follows the inputs.

    >>> resolve_labels(["Edema"], ["Lung Opacity", "Pneumothorax"], ["Edema", "Lung Opacity", "Pneumothorax"])
    (('Edema', 'Lung Opacity'), ('Pneumothorax',))
    >>> resolve_labels([], ["Lung Opacity"], ["Edema", "Lung Opacity"])
    ((), ('Lung Opacity', 'Edema'))
    """
    return _resolve_labels(tuple(positives), tuple(negatives), tuple(label_space))


@lru_cache(maxsize=1 << 16)  # label vectors repeat across hundreds of thousands of studies
def _resolve_labels(
    positives: tuple[str, ...], negatives: tuple[str, ...], label_space: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pos = list(dict.fromkeys(canonical(p) for p in positives))
    space = {canonical(x) for x in label_space} | set(pos) | {canonical(n) for n in negatives}
    pos += [p for p in sorted(implied(pos) - set(pos), key=list(PARENT.values()).index) if p in space]
    blocked = not_absent(pos)
    neg = {n: None for n in (canonical(n) for n in negatives) if n not in blocked}
    for n in list(neg):
        neg.update((c, None) for c in descendants(n) if c in space and c not in blocked)
    return tuple(pos), tuple(neg)
