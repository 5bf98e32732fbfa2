"""Real report text for tests: the IU X-ray (OpenI) collection that torchxrayvision ships."""

from __future__ import annotations

import functools
import re
import tarfile
from pathlib import Path

_ABSTRACT = re.compile(r'<AbstractText Label="(FINDINGS|IMPRESSION)">(.*?)</AbstractText>', re.S)


@functools.lru_cache(maxsize=1)
def iu_xray_sentences(limit_reports: int = 4000) -> list[str]:
    """Findings and impression texts of the IU X-ray reports (real radiology wording)."""
    import torchxrayvision

    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    texts: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.name.endswith(".xml") or len(texts) >= 2 * limit_reports:
                continue
            xml = tar.extractfile(member).read().decode("utf-8", "replace")
            texts.extend(t.strip() for _, t in _ABSTRACT.findall(xml) if t.strip())
    return texts
