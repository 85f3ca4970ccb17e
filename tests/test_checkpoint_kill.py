"""SIGKILL the driver of a checkpointed run at random moments, then resume (issue 12).

The driver is ``shoal run`` (the CLI) on the local backends, and a script
writing the CLI's output format on dask (the CLI cannot reach the test
cluster). Every item logs ``start``/``end`` lines with a timestamp to a file,
so the test knows what ran in which run. After each resume:

* every item has exactly one result in the checkpoint, and the output file
  holds exactly one record per item;
* no item committed before a kill runs again;
* no item that *finished* before a kill (more than ``GRACE`` seconds before
  it, the commit interval and some slack) runs again, even when a slow item
  holds it back from ordered delivery: the engine records items as they finish.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

N = 80
GRACE = 1.0  # commit_interval (0.5 s) + delivery and commit slack

JOBS = '''
import asyncio, os, time

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log")


def _log(kind, x):
    # One write() per line on an O_APPEND descriptor: lines from threads and
    # processes never interleave.
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {x} {time.monotonic():.6f}\\n".encode())
    finally:
        os.close(fd)


def _cost(x, slow):
    if slow and x in (3, 43):
        return 1.5  # a slow item: ordered delivery waits for it
    return 0.01 + (x * 7919 % 11) / 1000


def work(x, slow=False):
    _log("start", x)
    time.sleep(_cost(x, slow))  # the work itself, not synchronization
    _log("end", x)
    return {"x": x, "sq": x * x}


async def awork(x, slow=False):
    _log("start", x)
    await asyncio.sleep(_cost(x, slow))
    _log("end", x)
    return {"x": x, "sq": x * x}


def stall(x):
    return work(x, True)


async def astall(x):
    return await awork(x, True)
'''

# The dask driver: the CLI's output format (OutputWriter, result_line) over
# shoal.imap on the test's cluster.
DASK_DRIVER = '''
import sys
sys.path.insert(0, sys.argv[1])
import cloudpickle, jobs
cloudpickle.register_pickle_by_value(jobs)  # the dask workers cannot import it
import shoal
from shoal.cli.io import OutputWriter, result_line
from shoal._sinks.checkpoint import open_checkpoint

fn = getattr(jobs, sys.argv[2])
writer = OutputWriter(sys.argv[1] + "/out.jsonl")
with open_checkpoint(sys.argv[1] + "/run.db", fn) as store:
    for r in shoal.imap(fn, range(int(sys.argv[4])), checkpoint=store, backend="dask",
                        address=sys.argv[3], chunk_size=1):
        writer.write(result_line(r)[0])
writer.commit()
'''

BACKENDS: dict[str, tuple[str, list[str]]] = {  # name -> (job suffix, options)
    "sequential": ("", ["--backend", "sequential"]),
    "threads": ("", ["--backend", "threads", "--workers", "3"]),
    "asyncio": ("a", ["--backend", "asyncio", "--workers", "3"]),
    "processes": ("", ["--backend", "processes", "--workers", "2"]),
}


@dataclass
class Line:
    kind: str  # "start" | "end"
    item: int
    at: float  # time.monotonic(), the same clock in every process of this machine


class Job:
    """One job directory: input, output, checkpoint, call log, and its runs."""

    def __init__(self, where: Path, backend: str, fn: str, dask_address: str | None) -> None:
        self.dir = where
        where.mkdir()
        (where / "jobs.py").write_text(JOBS)
        (where / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(N)))
        self.backend = backend
        if dask_address is not None:
            self.argv = [sys.executable, "-c", DASK_DRIVER, str(where), fn, dask_address,
                         str(N)]
        else:
            prefix, options = BACKENDS[backend]
            self.argv = [sys.executable, "-m", "shoal.cli", "run", f"jobs:{prefix}{fn}",
                         "-i", "nums.jsonl", "-o", "out.jsonl", "--checkpoint", "run.db",
                         "--no-progress", "--chunk-size", "1", *options]

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv, cwd=self.dir, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def log(self) -> list[Line]:
        path = self.dir / "calls.log"
        if not path.exists():
            return []
        lines = []
        for text in path.read_text().splitlines():
            kind, item, at = text.split()
            lines.append(Line(kind, int(item), float(at)))
        return lines

    def committed(self) -> dict[int, Any]:
        try:
            with sqlite3.connect(f"file:{self.dir / 'run.db'}?mode=ro", uri=True) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                return {i: json.loads(v) for i, v in conn.execute("SELECT idx, value FROM results")}
        except sqlite3.OperationalError:  # killed before the schema was written
            return {}

    def kill_when(self, ready: Callable[[list[Line]], bool], extra: float) -> float | None:
        """Run until ``ready(log)`` (then ``extra`` seconds more), SIGKILL the
        driver, wait for every process it started to be gone; return when.
        None: the run had finished by then (the moment fell after its end)."""
        proc = self.start()
        try:
            deadline = time.monotonic() + 60
            while not ready(self.log()) and proc.poll() is None:  # watching the job's log
                assert time.monotonic() < deadline, "the run never reached the kill point"
                time.sleep(0.005)
            time.sleep(extra)  # a random moment after that point: the test's input
            if proc.poll() is not None:
                assert proc.stderr is not None
                assert proc.returncode == 0, proc.stderr.read()
                return None
            family = psutil.Process(proc.pid).children(recursive=True)
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            _, alive = psutil.wait_procs(family, timeout=30)  # workers die with the driver
            assert not alive, f"processes outlived the killed driver: {alive}"
            return killed_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()

    def finish(self) -> None:
        proc = self.start()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    def check_complete(self) -> None:
        """Exactly one result per item, in the checkpoint and in the output file."""
        expected = {i: {"x": i, "sq": i * i} for i in range(N)}
        assert self.committed() == expected
        out = [json.loads(line) for line in (self.dir / "out.jsonl").read_text().splitlines()]
        assert [r["index"] for r in out] == list(range(N))
        assert all(r["ok"] and r["value"] == expected[r["index"]] for r in out)


def _started_after(log: list[Line], at: float) -> set[int]:
    return {line.item for line in log if line.kind == "start" and line.at > at}


def _kill_and_resume_at_random_moments(job: Job, seed: str, rounds: int) -> None:
    rng = random.Random(seed)
    kills_done = 0
    for _ in range(rounds):
        kills = []
        for _ in range(rng.choice([1, 2])):
            # Kill once a random number of items has started (0: during start-up).
            started = rng.randrange(0, N)

            def ready(log: list[Line], k: int = started) -> bool:
                return sum(1 for x in log if x.kind == "start") >= k

            killed_at = job.kill_when(ready, rng.uniform(0, 0.05))
            committed = job.committed()
            assert all(v == {"x": i, "sq": i * i} for i, v in committed.items())
            if killed_at is not None:
                kills.append((killed_at, set(committed)))
        job.finish()
        job.check_complete()
        log = job.log()
        for killed_at, committed_before in kills:
            assert not committed_before & _started_after(log, killed_at), (
                "an item committed before the kill ran again")
        kills_done += len(kills)
        # Start the next round afresh, deleting the checkpoint as a user would:
        # the .db file only (its -wal and -shm files may stay behind).
        for name in ("run.db", "out.jsonl", "calls.log"):
            (job.dir / name).unlink()
    assert kills_done, "every kill moment fell after the end of its run"


def _finished_work_behind_a_slow_item(log: list[Line], ordered_backlog: bool) -> bool:
    """The kill point of the record-on-finish test: an item finished GRACE
    seconds ago (+0.2 s) and, on a concurrent backend, a slow item before it
    in input order has not finished (so ordered delivery holds it back)."""
    now = time.monotonic()
    ended = {x.item: x.at for x in log if x.kind == "end"}
    started = {x.item for x in log if x.kind == "start"}
    old = [i for i, at in ended.items() if at <= now - GRACE - 0.2]
    if not ordered_backlog:
        return bool(old)
    running = started - ended.keys()
    return any(r < i for r in running for i in old)


def _no_finished_item_runs_again(job: Job) -> None:
    killed_at = job.kill_when(
        lambda log: _finished_work_behind_a_slow_item(log, job.backend != "sequential"),
        random.Random(job.backend).uniform(0, 0.1))
    assert killed_at is not None
    job.finish()
    job.check_complete()
    log = job.log()
    finished_before = {x.item for x in log if x.kind == "end" and x.at <= killed_at - GRACE}
    rerun = finished_before & _started_after(log, killed_at)
    assert not rerun, f"items that finished before the kill ran again: {sorted(rerun)}"


# -- the local backends, through the CLI ----------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_kill_at_random_moments_then_resume(tmp_path: Path, backend: str) -> None:
    job = Job(tmp_path / "job", backend, "work", None)
    _kill_and_resume_at_random_moments(job, f"kill-{backend}", rounds=2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_no_item_finished_before_a_kill_runs_again(tmp_path: Path, backend: str) -> None:
    _no_finished_item_runs_again(Job(tmp_path / "job", backend, "stall", None))


# -- dask, on the test cluster ----------------------------------------------------------


@pytest.mark.timeout(240)
def test_kill_at_random_moments_then_resume_on_dask(tmp_path: Path, dask_cluster: Any) -> None:
    job = Job(tmp_path / "job", "dask", "work", dask_cluster.scheduler_address)
    _kill_and_resume_at_random_moments(job, "kill-dask", rounds=1)


@pytest.mark.timeout(120)
def test_no_item_finished_before_a_kill_runs_again_on_dask(
        tmp_path: Path, dask_cluster: Any) -> None:
    _no_finished_item_runs_again(Job(tmp_path / "job", "dask", "stall",
                                     dask_cluster.scheduler_address))

