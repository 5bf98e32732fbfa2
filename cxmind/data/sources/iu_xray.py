"""IU X-ray (Indiana University / OpenI): one ``Study`` per radiology report with all its images.

Layout under ``root``::

    NLMCXR_reports.tgz                 the official report archive (ecgen-radiology/<n>.xml), or
    ecgen-radiology/<n>.xml            the same, extracted
    NLMCXR_png/<image id>.png          the images (ids from the reports' <parentImage id=...>)
    nlmcxr_dicom_metadata.csv(.gz)     optional: DICOM headers per image id (torchxrayvision ships
                                       it), whose ``View Position`` puts frontal images first

Each XML report gives ``Report(findings, impression, indication)`` from its FINDINGS, IMPRESSION
and INDICATION ``AbstractText`` (whitespace collapsed; the de-identification token ``XXXX`` is
left in the text; COMPARISON is not used; ``report`` is None when all three are empty, as in 25
reports), and labels from its MeSH ``<major>`` terms: the
heading before the first "/" ("Cardiomegaly/mild" -> Cardiomegaly) is mapped through
``IU_TERMS`` (MeSH headings such as "Pulmonary Atelectasis", "Hernia, Hiatal") then
``cxmind.vocab``. Unknown headings are counted per report in ``unmapped_labels``.

Labels: a report whose only term is "normal" is a normal study: empty positives and the 13
CheXpert findings as negatives. Other reports have the mapped findings as positives and no
negatives (MeSH indexing lists what is present; absence is not asserted and explicit negations
are not mined). "normal" next to other terms is ignored, and "No Indexing" gives no labels.
``label_space`` is the 13 CheXpert findings plus the vocabulary findings the reports use.

Other fields: ``study_id`` and ``patient_id`` are the report id (``CXR1``; IU has no patient ids,
so each report is its own patient); ``images`` are ``NLMCXR_png/<id>.png``, frontal first when the
metadata is present, then in report order; ``view`` is that of the first image (PA/AP/LATERAL)
or None; ``image_size`` is None (the PNGs are downscaled from the DICOMs whose sizes the metadata
holds); ``order`` and ``split`` are None. Reports without images (104) are skipped.

Options:

``unmapped`` (``"drop"`` default | ``"keep"``)
    leave unknown headings out of ``positives`` (the default: many are anatomy, e.g. "Lung",
    "Spine"), or keep them as their normalised text; a report whose terms are all unmapped gets
    no labels with ``"drop"`` (calling it normal would be wrong).
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxmind.data.schema import Report, Study
from cxmind.data.sources._common import (
    CHEXPERT_FINDINGS,
    BaseSource,
    canon,
    check_choice,
    per_row,
    view_name,
    view_rank,
)
from cxmind.errors import UserError
from cxmind.vocab import FINDINGS, NO_FINDING

__all__ = ["IU_TERMS", "IUXray", "parse_report_xml"]

ARCHIVE = "NLMCXR_reports.tgz"
FOLDER = "ecgen-radiology"
METADATA = "nlmcxr_dicom_metadata.csv"
NO_INDEXING = "no indexing"

#: MeSH headings used by the IU reports -> vocabulary findings (lookup keys).
IU_TERMS: dict[str, str] = {
    "pulmonary atelectasis": "Atelectasis",
    "pulmonary emphysema": "Emphysema",
    "bullous emphysema": "Emphysema",
    "hernia, hiatal": "Hernia",
    "pulmonary disease, chronic obstructive": "COPD",
    "fractures, bone": "Fracture",
    "lung diseases, interstitial": "Interstitial Lung Disease",
    "pulmonary congestion": "Edema",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "tube, inserted": "Support Devices",
}

_SPACE = re.compile(r"\s+")
EMPTY = Report()


@dataclass(frozen=True)
class _Parsed:
    uid: str
    images: tuple[str, ...]
    report: Report
    terms: tuple[str, ...]  # MeSH major headings (text before the first "/")


def _text(node: ET.Element | None) -> str:
    return _SPACE.sub(" ", "".join(node.itertext())).strip() if node is not None else ""


def parse_report_xml(data: bytes | str) -> _Parsed:
    """Report id, image ids, report sections and MeSH major headings of one ecgen-radiology XML."""
    root = ET.fromstring(data)
    uid_node = root.find("uId")
    uid = uid_node.get("id", "") if uid_node is not None else ""
    sections = {node.get("Label", "").upper(): _text(node) for node in root.iter("AbstractText")}
    report = Report(
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        indication=sections.get("INDICATION", ""),
    )
    images = tuple(node.get("id", "") for node in root.iter("parentImage") if node.get("id"))
    terms = tuple(
        (node.text or "").split("/")[0].strip()
        for node in root.findall("MeSH/major")
        if (node.text or "").strip()
    )
    return _Parsed(uid, images, report, terms)


def _file_key(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (int(stem) if stem.isdigit() else 1 << 62, name)


class IUXray(BaseSource):
    """IU X-ray (see the module docstring for the layout, options and conventions)."""

    name = "iu_xray"
    layout = f"the folder holding {ARCHIVE} (or {FOLDER}/) and NLMCXR_png/"

    def __init__(self, root: str | Path, *, unmapped: str = "drop") -> None:
        super().__init__(root)
        self.unmapped = check_choice(self.name, "unmapped", unmapped, ("drop", "keep"))
        folder = self.root / FOLDER
        self.reports_path: Path = folder if folder.is_dir() else self.locate(ARCHIVE)
        self.metadata_path = self.find(METADATA)
        if self.metadata_path is not None:
            self.header(self.metadata_path, ("imageid", "View Position"))
        self._parsed: list[_Parsed] | None = None

    def _reports(self) -> list[_Parsed]:
        """Every report, parsed once per source object (a few thousand small XML files)."""
        if self._parsed is None:
            try:
                self._parsed = [parse_report_xml(data) for _, data in self._xml_files()]
            except ET.ParseError as exc:
                raise UserError(
                    f"{self.name}: a report in {self.reports_path} is not valid XML ({exc})"
                ) from exc
        return self._parsed

    def _xml_files(self) -> Iterator[tuple[str, bytes]]:
        if self.reports_path.is_dir():
            for path in sorted(self.reports_path.glob("*.xml"), key=lambda p: _file_key(p.name)):
                yield path.name, path.read_bytes()
            return
        try:
            with tarfile.open(self.reports_path, "r:*") as archive:
                members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")]
                for member in sorted(members, key=lambda m: _file_key(m.name)):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
        except tarfile.TarError as exc:
            raise UserError(f"{self.name}: cannot read {self.reports_path} as a tar archive ({exc})") from exc

    @staticmethod
    def _map(term: str) -> tuple[str, bool]:
        key = term.strip().lower()
        return (IU_TERMS[key], True) if key in IU_TERMS else canon(term)

    @property
    def label_space(self) -> tuple[str, ...]:
        """The 13 CheXpert findings plus the vocabulary findings the reports use, in vocabulary order."""
        used = {name for p in self._reports() for name, known in map(self._map, p.terms) if known}
        used.update(CHEXPERT_FINDINGS)
        used.discard(NO_FINDING)
        return tuple(f.name for f in FINDINGS if f.name in used)

    def _labels(self, terms: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(positives, negatives, unmapped) of a report's MeSH headings."""
        known: dict[str, None] = {}
        unmapped: dict[str, None] = {}
        normal = False
        for term in terms:
            if term.strip().lower() == NO_INDEXING:
                continue
            name, is_known = self._map(term)
            if not is_known:
                unmapped[name] = None
            elif name == NO_FINDING:
                normal = True
            else:
                known[name] = None
        if normal and not known and not unmapped:
            return (), CHEXPERT_FINDINGS, ()
        if self.unmapped == "drop":
            return tuple(known), (), tuple(unmapped)
        return tuple(known) + tuple(unmapped), (), tuple(unmapped)

    def _views(self) -> dict[str, str | None]:
        if self.metadata_path is None:
            return {}
        table = self.read(self.metadata_path, ("imageid", "View Position"), text=("imageid",))
        return dict(zip(table["imageid"].tolist(), per_row(table["View Position"], view_name), strict=True))

    def studies(self) -> Iterator[Study]:
        self.reset()
        views = self._views()
        space = self.label_space
        for parsed in self._reports():
            if not parsed.images:
                self.skip(parsed.uid, "report without images")
                continue
            images = sorted(parsed.images, key=lambda i: view_rank(views.get(i)))
            positives, negatives, unmapped = self._labels(parsed.terms)
            self.unmapped_labels.update(unmapped)
            yield Study(
                source="iu_xray",
                study_id=parsed.uid,
                patient_id=parsed.uid,
                images=tuple(f"NLMCXR_png/{i}.png" for i in images),
                positives=positives,
                negatives=negatives,
                view=views.get(images[0]),
                report=parsed.report if parsed.report != EMPTY else None,
                normal=not positives and bool(negatives),  # only the indexers' "normal" sets negatives
                label_space=(*space, NO_FINDING),  # labels whole studies
            )
