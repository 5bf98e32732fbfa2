"""Patient-level, deterministic train/validation/test assignment.

A patient's split is a pure function of (seed, source, patient id), so rebuilding with more data or
in another order never moves a patient, and no patient's studies cross splits. A source's official
test or validation split is kept; its official training split (or no split) is divided by hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from cxmind.data.schema import SPLITS
from cxmind.errors import UserError

__all__ = ["DEFAULT_FRACTIONS", "assign_split", "patient_splits"]

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # train, validation, test


def _unit(seed: int, source: str, patient_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x1f{source}\x1f{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(
    source: str,
    patient_id: str,
    *,
    official: str | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> str:
    """The split of one patient.

    >>> assign_split("nih", "17", seed=0) == assign_split("nih", "17", seed=0)
    True
    >>> assign_split("chexpert", "patient64541", official="validation")
    'validation'
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise UserError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if official is not None and official not in SPLITS:
        raise UserError(f"{source}: official split must be one of {SPLITS}, got {official!r}")
    if official in ("validation", "test"):
        return official
    train, validation, test = fractions
    if official == "train":  # an official train split is divided into train and validation only
        train, validation, test = train / (train + validation), validation / (train + validation), 0.0
    u = _unit(seed, source, patient_id)
    if u < train:
        return "train"
    return "validation" if u < train + validation or test == 0 else "test"


def patient_splits(
    source: str,
    patients: Iterable[tuple[str, str | None]],
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, str]:
    """Splits for ``(patient_id, official_split)`` pairs; a patient's most held-out official split wins."""
    rank = {None: 0, "train": 1, "validation": 2, "test": 3}
    official: dict[str, str | None] = {}
    for patient_id, split in patients:
        if rank[split] >= rank[official.get(patient_id)]:
            official[patient_id] = split
    return {
        pid: assign_split(source, pid, official=split, fractions=fractions, seed=seed)
        for pid, split in official.items()
    }
