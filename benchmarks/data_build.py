"""Record building speed and memory on the real NIH, CheXpert, PadChest and VinDr label tables.

Builds every task's records from the metadata tables torchxrayvision ships (no images needed:
grounding boxes use the sizes in the metadata) and, in the same run, times a plain
``pandas.read_csv`` of the same files as the baseline. Last line:
``build/read: <ratio>, records: <N>, peak_rss_gb: <M>`` (target: ratio <= 30, peak RSS <= 4 GB; the
line before gives the largest worker process's peak RSS).

    python benchmarks/data_build.py [--limit N] [--workers W] [--keep OUT]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torchxrayvision

from cxmind.data.build import BuildConfig, SourceSpec, build
from cxmind.data.tasks import TaskConfig
from cxmind.testing import TORCHXRAYVISION_TABLES, link_torchxrayvision_tables

XRV = Path(torchxrayvision.__file__).parent / "data"
SOURCES = ("nih", "chexpert", "padchest", "vindr")


def peak_rss_gb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="studies per source (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.add_argument("--keep", type=Path, default=None, help="write the records here and keep them")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxmind-bench-"))
    try:
        roots = link_torchxrayvision_tables(work / "raw", SOURCES)
        specs = [SourceSpec(name, root) for name, root in roots.items()]

        start = time.perf_counter()
        for source in SOURCES:
            for shipped in TORCHXRAYVISION_TABLES[source].values():
                pd.read_csv(XRV / shipped, low_memory=False)
        read_s = time.perf_counter() - start

        out = args.keep or work / "records"
        config = BuildConfig(
            sources=specs, out=out, task=TaskConfig(), limit=args.limit, overwrite=True, workers=args.workers
        )
        start = time.perf_counter()
        summary = build(config, progress=False)
        build_s = time.perf_counter() - start

        print(summary.table())
        print(f"pandas read_csv of the same tables: {read_s:.2f}s; cxmind build: {build_s:.2f}s")
        ratio, records = build_s / read_s, summary.total_records
        print(f"largest worker peak RSS: {peak_rss_gb(resource.RUSAGE_CHILDREN):.2f} GB")
        print(f"build/read: {ratio:.2f}, records: {records}, peak_rss_gb: {peak_rss_gb():.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
