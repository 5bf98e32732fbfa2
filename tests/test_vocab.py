"""The shared finding vocabulary (docs/rewards.md §2)."""

import pytest

from cxmind.vocab import (
    CHEXPERT_14,
    FINDINGS,
    NIH_14,
    NO_FINDING,
    canonical,
    is_known,
    lookup_key,
    resolve_labels,
    synonyms_of,
)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("effusion", "Pleural Effusion"),
        ("Effusion", "Pleural Effusion"),
        ("enlarged heart", "Cardiomegaly"),
        ("Pleural_Thickening", "Pleural Thickening"),
        ("Differential Diagnoses: [Atelectasis", "Atelectasis"),
        ("Lung Opacity]", "Lung Opacity"),
        ("Atelectasis ✅", "Atelectasis"),
        ("pneumothorax.", "Pneumothorax"),
        ("NODULES", "Nodule"),
        ("no finding", NO_FINDING),
        ("Infiltrate", "Infiltration"),
        ("pleural-effusion", "Pleural Effusion"),
        ("Support Devices", "Support Devices"),
        ("Enlarged Cardiomediastinum", "Enlarged Cardiomediastinum"),
    ],
)
def test_synonyms_map_to_canonical_names(spelling, name):
    assert canonical(spelling) == name
    assert is_known(spelling)


def test_unknown_names_keep_their_normalised_text():
    assert canonical("  Weird Shadow. ") == "weird shadow"
    assert not is_known("weird shadow")
    assert canonical("") == ""


def test_label_sets_are_complete():
    assert len(CHEXPERT_14) == 14 and NO_FINDING in CHEXPERT_14
    assert len(NIH_14) == 14 and all(is_known(n) for n in NIH_14)


def test_every_spelling_is_unique_and_round_trips():
    seen = {}
    for finding in FINDINGS:
        for spelling in (finding.name, *finding.synonyms):
            key = lookup_key(spelling)
            assert seen.setdefault(key, finding.name) == finding.name, spelling
            assert canonical(spelling) == finding.name
    assert synonyms_of("effusion")[0] == "Pleural Effusion"


def test_torchxrayvision_label_names_are_known():
    """The pathology names of the real dataset tables map onto the vocabulary."""
    xrv = pytest.importorskip("torchxrayvision")
    names = set(xrv.datasets.default_pathologies)
    unknown = sorted(n for n in names if not is_known(n))
    assert unknown == []


def test_resolve_labels_follows_the_hierarchy_within_the_label_space():
    space = [
        "Lung Opacity",
        "Lung Lesion",
        "Mass",
        "Nodule",
        "Edema",
        "Cardiomegaly",
        "Enlarged Cardiomediastinum",
    ]
    # a present child makes its labelled parents present and never negated
    pos, neg = resolve_labels(["Mass"], ["Lung Opacity", "Lung Lesion", "Edema"], space)
    assert pos[0] == "Mass" and set(pos) == {"Mass", "Lung Lesion", "Lung Opacity"} and neg == ("Edema",)
    # an absent parent makes its labelled children absent, each once
    pos, neg = resolve_labels([], ["Lung Opacity", "Lung Lesion"], space)
    assert pos == () and sorted(neg) == ["Edema", "Lung Lesion", "Lung Opacity", "Mass", "Nodule"]
    # a parent the source does not label is not added
    assert resolve_labels(["Cardiomegaly"], [], ["Cardiomegaly"])[0] == ("Cardiomegaly",)
    # related findings are unknown, never absent, next to a positive
    assert resolve_labels(["Pleural Effusion"], ["Costophrenic Angle Blunting"], [])[1] == ()
