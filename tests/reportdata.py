"""BatchReports built by hand for the report tests: what a real run of this shape records.

Until the engine fills ``ItemResult.started`` (issue 11) a real run has no
start times, so the report's timelines are tested on these: items run back to
back on each worker with idle gaps, some retried, some restored from a
checkpoint, failures of three types including a crashed worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from shoal import BatchReport, ItemResult, RemoteTraceback, WorkerCrashed

STARTED_AT = 1_790_000_000.0  # a fixed epoch, so pages are comparable


@dataclass(frozen=True)
class Expected:
    """The counts a page of ``realistic_report`` must show."""

    total: int
    ok: int
    failed: int
    restored: int
    retried: int
    retries: int
    by_type: dict[str, int]
    workers: int


def _fail(index: int, kind: int) -> BaseException:
    if kind == 0:
        err: BaseException = ValueError(f"bad record {index}: field 'price' is not a number")
        try:  # a real traceback, as a local failure has
            raise err
        except ValueError as exc:
            return exc
    if kind == 1:
        return TimeoutError(f"item {index} took longer than 2.0 s")
    crash = WorkerCrashed("worker pid:4242 died (exit code -9, SIGKILL) while running the item",
                          exitcode=-9)
    crash.__cause__ = RemoteTraceback(
        "Traceback (most recent call last):\n  File \"job.py\", line 12, in score\n"
        "    native_call(row)\nSystemError: segfault in native_call\n")
    return crash


def realistic_report(
    n: int = 400, *, workers: int = 4, timed: bool = True, seed: int = 0,
) -> tuple[BatchReport[Any], Expected]:
    """A run of ``n`` items on ``workers`` threads; every 10th item is restored.

    Failures: every 37th item a ValueError (retried twice), every 53rd a
    TimeoutError, item 101 a WorkerCrashed; every 7th item succeeds after one retry.
    """
    rng = random.Random(seed)
    clock = [STARTED_AT + 0.01] * workers
    results: list[ItemResult[Any]] = []
    by_type: dict[str, int] = {}
    for i in range(n):
        item = {"id": i, "text": f"row {i} " + "x" * (i % 50)}
        if i % 10 == 9:  # from the checkpoint of an earlier run: no time in this one
            results.append(ItemResult(i, item, ok=True, value=i, duration=0.5, worker="old",
                                      restored=True, started=STARTED_AT - 3600.0))
            continue
        w = i % workers
        duration = rng.expovariate(1 / 0.02) + (0.4 if i == 77 else 0.0)
        started = clock[w] + rng.expovariate(1 / 0.002)
        clock[w] = started + duration
        kind = 0 if i % 37 == 0 else 1 if i % 53 == 0 else 2 if i == 101 else -1
        attempts = 3 if kind == 0 else 2 if i % 7 == 0 and kind < 0 else 1
        r: ItemResult[Any] = ItemResult(
            i, item, ok=kind < 0, value=i * 2 if kind < 0 else None,
            error=_fail(i, kind) if kind >= 0 else None, attempts=attempts,
            duration=duration, worker=f"ThreadPoolExecutor-0_{w}",
            started=started if timed else 0.0)
        if kind >= 0:
            name = type(r.error).__name__
            by_type[name] = by_type.get(name, 0) + 1
        results.append(r)
    report: BatchReport[Any] = BatchReport(
        results, backend="threads", backend_reason="auto: I/O-bound: CPU time is 3% of wall time",
        workers=workers, wall_time=max(clock) - STARTED_AT, started_at=STARTED_AT if timed else 0.0,
        settings={"backend": "auto", "retries": 2, "timeout": 2.0, "checkpoint": "run.db"})
    ran = [r for r in results if not r.restored]
    expected = Expected(
        total=n, ok=sum(r.ok for r in results), failed=sum(not r.ok for r in results),
        restored=n - len(ran), retried=sum(r.attempts > 1 for r in ran),
        retries=sum(r.attempts - 1 for r in ran), by_type=by_type, workers=workers)
    return report, expected
