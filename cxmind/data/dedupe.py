"""One split per image and per report: duplicates across patients and sources share a split.

Public CXR datasets overlap: RSNA Pneumonia and SIIM Pneumothorax images are NIH ChestX-ray14
images under new ids, and report collections repeat the same templated report for many patients.
Splitting each source (or patient) on its own then puts copies of one image, or one report text,
in train and test. The build links every study to its copies and gives each linked group one split:

* **images**, when the files can be read: a 256-bit perceptual hash (``imagehash``'s pHash) per
  image; copies within :data:`PHASH_DISTANCE` bits are linked (resaved or resized copies differ by
  0-2 bits, distinct chest X-rays by far more). Near pairs are found with a pigeonhole index: two
  hashes that close agree exactly on at least one of ``distance + 1`` chunks;
* **report texts** of at least :data:`MIN_REPORT_WORDS` words, compared after normalising white
  space and case (shorter texts such as "Normal chest radiograph." are boilerplate, not copies);
* **aliases** a source declares (``Study.aliases``): e.g. RSNA studies carry their NIH image id when
  the published RSNA-to-NIH mapping file is given.

The audit (``cxmind data audit``) uses the same hash and the same report rule to count what is left.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxmind.data.schema import Study

__all__ = [
    "MIN_REPORT_WORDS",
    "PHASH_DISTANCE",
    "PHASH_SIZE",
    "DisjointSets",
    "align_duplicate_splits",
    "image_hash",
    "near_pairs",
    "report_key",
]

MIN_REPORT_WORDS = 6  # shorter report texts ("Normal chest radiograph.") are shared boilerplate
PHASH_SIZE = 16  # 16x16 = 256-bit pHash: chest X-rays look alike, 64 bits put distinct ones 4 bits apart
PHASH_DISTANCE = 8  # resaved/resized copies differ by 0-2 bits; distinct phantoms by 18 or more


def report_key(text: str | None, min_words: int = MIN_REPORT_WORDS) -> str | None:
    """The comparison key of a report text, or None for boilerplate (fewer than ``min_words`` words).

    >>> report_key("The heart is  normal in size.  Lungs clear.")
    'the heart is normal in size. lungs clear.'
    >>> report_key("Normal chest.") is None
    True
    """
    words = str(text or "").split()
    return " ".join(words).casefold() if len(words) >= min_words else None


def image_hash(image: Any) -> int:
    """The 256-bit pHash of a PIL image as an int (needs the ``imagehash`` package)."""
    import imagehash

    bits = imagehash.phash(image.convert("L"), hash_size=PHASH_SIZE).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def near_pairs(hashes: Sequence[int], distance: int = PHASH_DISTANCE) -> list[tuple[int, int, int]]:
    """``(i, j, bits)`` for every pair of hashes at most ``distance`` bits apart (i < j).

    >>> near_pairs([0b1111, 0b1110, 1 << 200], distance=1)
    [(0, 1, 1)]
    """
    bits = PHASH_SIZE * PHASH_SIZE
    chunks = distance + 1
    edges = [round(i * bits / chunks) for i in range(chunks + 1)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        for c in range(chunks):
            part = (value >> edges[c]) & ((1 << (edges[c + 1] - edges[c])) - 1)
            buckets[(c, part)].append(index)
    found: dict[tuple[int, int], int] = {}
    for members in buckets.values():
        for x, i in enumerate(members):
            for j in members[x + 1 :]:
                if (i, j) not in found and (d := (hashes[i] ^ hashes[j]).bit_count()) <= distance:
                    found[(i, j)] = d
    return sorted((i, j, d) for (i, j), d in found.items())


class DisjointSets:
    """Union-find over hashable items (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.size: dict[Hashable, int] = {}

    def find(self, item: Hashable) -> Hashable:
        parent = self.parent.setdefault(item, item)
        self.size.setdefault(item, 1)
        while parent != item:
            grand = self.parent[parent]
            self.parent[item] = grand
            item, parent = parent, grand
        return item

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def link_all(self, items: Iterable[Hashable]) -> None:
        items = list(items)
        for other in items[1:]:
            self.union(items[0], other)

    def groups(self) -> list[list[Hashable]]:
        out: dict[Hashable, list[Hashable]] = defaultdict(list)
        for item in self.parent:
            out[self.find(item)].append(item)
        return [members for members in out.values() if len(members) > 1]


#: Sources whose images are copies of another source's (RSNA and SIIM re-release NIH images).
IMAGE_ORIGINS = {"rsna": "nih", "siim": "nih"}
_HELD_OUT = {"test": 2, "validation": 1}


def align_duplicate_splits(
    studies: Mapping[str, Sequence[Study]],
    roots: Mapping[str, Path],
    splits: dict[str, dict[str, str]],
    *,
    images: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Give every group of linked patients (shared image, report text or alias) one split, in place.

    ``splits`` is ``{source: {patient_id: split}}``. A group takes the split of a member whose
    source holds it out officially (test before validation), else of a member drawn by hash, so a
    group's split does not depend on which copy was read first. Returns what was found, for the
    build summary and the dataset card.
    """
    sets = DisjointSets()
    own_key: dict[str, tuple[str, str]] = {}
    by_report: dict[str, tuple[str, str]] = {}
    official: dict[tuple[str, str], int] = {}
    for source, items in studies.items():
        for study in items:
            node = (source, study.patient_id)
            own_key.setdefault(f"{source}/{study.study_id}", node)
            if study.split in _HELD_OUT:
                official[node] = max(official.get(node, 0), _HELD_OUT[study.split])
            for text in (study.report.findings, study.report.impression) if study.report else ():
                key = report_key(text)
                if key is not None:
                    sets.union(node, by_report.setdefault(key, node))
    aliased = 0
    for source, items in studies.items():
        for study in items:
            for alias in study.aliases:
                if alias in own_key:
                    sets.union((source, study.patient_id), own_key[alias])
                    aliased += 1
    hashed = _link_images(studies, roots, sets, progress) if images else {}
    moved = 0
    groups = sets.groups()
    for members in groups:
        held = [m for m in members if m in official]
        pick = (
            max(held, key=lambda m: (official[m], _rank(seed, m)))
            if held
            else min(members, key=lambda m: _rank(seed, m))
        )
        split = splits[pick[0]][pick[1]]
        for source, patient in members:
            if splits[source][patient] != split:
                splits[source][patient] = split
                moved += 1
    unlinked = [
        f"{copy} (copies of {origin} images)"
        for copy, origin in IMAGE_ORIGINS.items()
        if copy in studies and origin in studies and not hashed.get(copy) and not aliased
    ]
    notes = []
    if unlinked:
        notes.append(
            f"{', '.join(unlinked)}: images unreadable and no id mapping given, so copies of one image may "
            "sit in different splits (give the image folders, or rsna.nih_mapping=<mapping file>)"
        )
    return {
        "groups": len(groups),
        "patients_moved": moved,
        "aliases_linked": aliased,
        "images_hashed": dict(hashed),
        "notes": notes,
    }


def _rank(seed: int, node: tuple[str, str]) -> bytes:
    return hashlib.blake2b(f"{seed}\x1fdedupe\x1f{node[0]}\x1f{node[1]}".encode(), digest_size=8).digest()


def _link_images(
    studies: Mapping[str, Sequence[Study]], roots: Mapping[str, Path], sets: DisjointSets, progress: bool
) -> dict[str, int]:
    """pHash the images of every source whose files are present; link near-identical ones."""
    from tqdm.auto import tqdm

    from cxmind.data.images import ImageBudget, ImageError, load_image

    budget = ImageBudget(min_pixels=28 * 28, max_pixels=256 * 256)  # pHash reads a 64x64 thumbnail
    nodes: list[tuple[str, str]] = []
    hashes: list[int] = []
    counts: dict[str, int] = {}
    for source, items in studies.items():
        files = [(s, rel) for s in items for rel in s.images]
        if not files or not (roots[source] / files[0][1]).is_file():
            continue  # a metadata-only source: nothing to hash
        counts[source] = 0
        for study, rel in tqdm(files, desc=f"{source}: image hashes", unit=" images", disable=not progress):
            try:
                image = load_image(roots[source], rel, budget)
            except ImageError:
                continue  # the build rejects it later, with the reason
            nodes.append((source, study.patient_id))
            hashes.append(image_hash(image))
            counts[source] += 1
    for i, j, _ in near_pairs(hashes):
        sets.union(nodes[i], nodes[j])
    return counts
