"""Worker processes for the data commands (build, audit): an ordered ``map`` over independent jobs.

Jobs are cut by the caller at sizes fixed by the data (studies per chunk, one shard, one source ×
task), never by the number of workers, so results are the same whatever ``workers`` is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker per CPU this process may use, at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def map_in_workers(
    fn: Callable[[Any], T], jobs: Sequence[Any], workers: int | None = None
) -> Generator[T, None, None]:
    """``map(fn, jobs)`` in order; in worker processes when there are several jobs and CPUs.

    ``fn`` must be a module-level function and each job picklable. With one worker (or one job) it
    runs in this process, which is also what tests and debuggers see.
    """
    workers = min(default_workers() if workers is None else workers, len(jobs))
    if workers <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork on Linux: works from notebooks and unguarded scripts (spawn re-imports ``__main__``);
    # the jobs only compute and write their own files, they touch no inherited thread or lock
    method = "fork" if sys.platform == "linux" else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        yield from pool.map(fn, jobs)
    except BaseException:  # Ctrl-C, SIGTERM, a failed job, the caller closing early: stop every job now
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: Any) -> None:
    """Cancel queued jobs and end the running ones, so none writes after the caller cleaned up
    (``ProcessPoolExecutor`` has no public way to end running jobs before Python 3.14)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
