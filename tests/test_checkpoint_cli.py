"""``shoal run --checkpoint`` and ``shoal report`` on the cases of issue 12."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal._sinks.checkpoint import open_checkpoint

JOBS = '''
import time

def slow_square(x):
    time.sleep(0.01)  # the work itself, not synchronization
    return x * x

def pair(x):
    return (x, "pickled")  # a tuple: JSON cannot hold it, so the checkpoint pickles it

def padded(x):
    return {"x": x, "pad": "p" * 100}
'''


def shoal(cwd: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    return tmp_path


def _numbers(work: Path, n: int) -> None:
    (work / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(n)))


def test_an_interrupt_reports_the_records_written(work: Path) -> None:
    _numbers(work, 400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "run", "jobs:slow_square", "-i", "nums.jsonl",
         "-o", "out.jsonl", "--checkpoint", "run.db", "--backend", "threads", "--workers", "2",
         "--no-progress"], cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while _committed(work / "run.db") < 20 and proc.poll() is None:  # a file it writes
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    found = re.search(r"interrupted after (\d+) results", err)
    assert found, err
    written = len((work / "out.jsonl.partial").read_text().splitlines())
    assert int(found.group(1)) == written > 0


def test_trust_pickles_opens_a_checkpoint_made_with_another_key(work: Path) -> None:
    _numbers(work, 5)
    args = ["run", "jobs:pair", "-i", "nums.jsonl", "-o", "out.jsonl", "--checkpoint", "run.db",
            "--no-progress", "--backend", "sequential"]  # every backend: test_checkpoint_security
    assert shoal(work, *args, env={"SHOAL_CHECKPOINT_KEY": "a" * 32}).returncode == 0

    elsewhere = {"SHOAL_CHECKPOINT_KEY": "b" * 32}  # another machine, another key
    p = shoal(work, *args, env=elsewhere)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "row 0 holds a pickled value" in p.stderr and "--trust-pickles" in p.stderr

    p = shoal(work, *args, "--trust-pickles", env=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "5 restored from checkpoint" in p.stdout
    assert [r["value"] for r in records(work / "out.jsonl")] == [[i, "pickled"] for i in range(5)]


def test_report_names_damage_and_salvage_keeps_what_is_readable(work: Path) -> None:
    n = 1500
    _numbers(work, n)
    args = ["run", "jobs:padded", "-i", "nums.jsonl", "-o", "out.jsonl", "--no-progress"]
    assert shoal(work, *args, "--checkpoint", "run.db").returncode == 0
    conn = sqlite3.connect(work / "run.db")
    leaves = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'results' "
                                         "AND pagetype = 'leaf' ORDER BY pageno")]
    conn.close()
    with open(work / "run.db", "r+b") as f:
        f.seek((leaves[len(leaves) // 2] - 1) * 4096)
        f.write(random.Random(0).randbytes(4096))

    p = shoal(work, "report", "run.db")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "checkpoint run.db is damaged" in p.stderr
    assert "shoal report run.db --salvage run-salvaged.db" in p.stderr
    assert shoal(work, *args, "--checkpoint", "run.db").returncode == 2

    p = shoal(work, "report", "run.db", "--salvage", "run-salvaged.db")
    assert p.returncode == 0, p.stderr
    found = re.search(r"kept (\d+) results of run.db in run-salvaged.db; resume with "
                      r"--checkpoint run-salvaged.db", p.stdout)
    assert found, p.stdout
    kept = int(found.group(1))
    assert n - 60 < kept < n

    p = shoal(work, *args, "--checkpoint", "run-salvaged.db")
    assert p.returncode == 0, p.stderr
    assert f"{kept} restored from checkpoint" in p.stdout
    assert [r["index"] for r in records(work / "out.jsonl")] == list(range(n))


def test_a_checkpoint_in_use_is_one_line_naming_the_pid(work: Path) -> None:
    _numbers(work, 3)
    with open_checkpoint(work / "run.db", lambda x: x):  # held by this process
        p = shoal(work, "run", "jobs:slow_square", "-i", "nums.jsonl", "--checkpoint", "run.db",
                  "--no-progress")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert f"checkpoint run.db is in use by pid {os.getpid()}" in p.stderr
