"""The ``shoal`` command, run in subprocesses on temporary files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

JOBS = '''
import asyncio, os, time

def double(x):
    if x == 3:
        raise ValueError("three is bad")
    return x * 2

def as_set(x):
    return {x}

async def adouble(x):
    await asyncio.sleep(0)
    return x * 2

def add(row):
    return int(row["a"]) + int(row["b"])

def shout(line):
    return line.upper()

def slow_square(x):
    # Logs every call, so a test can tell which items ran in which run.
    with open("calls.log", "a") as f:
        f.write(f"{x}\\n")
    time.sleep(0.02)  # the work itself, not synchronization
    return x * x
'''


def shoal(cwd: Path, *args: str, stdin: str | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", *args], cwd=cwd, input=stdin, text=True,
        capture_output=True, timeout=timeout,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "in.jsonl").write_text("1\n2\n3\n{bad json\n\n5\n")
    return tmp_path


# --- shoal run: inputs and outputs ----------------------------------------------------


def test_run_jsonl_records_failures_and_bad_line_isolation(work: Path) -> None:
    p = shoal(work, "run", "jobs:double", "--input", "in.jsonl", "--output", "out.jsonl",
              "--no-progress")
    assert p.returncode == 1, p.stderr  # some items failed
    out = records(work / "out.jsonl")
    assert out[0] == {"index": 0, "ok": True, "value": 2}
    assert out[1] == {"index": 1, "ok": True, "value": 4}
    assert out[2] == {"index": 2, "ok": False, "item": 3,
                      "error": {"type": "ValueError", "message": "three is bad"}}
    assert out[3]["ok"] is False and out[3]["line"] == 4 and out[3]["item"] == "{bad json"
    assert out[3]["error"]["type"] == "InvalidRecord"
    assert out[3]["error"]["message"].startswith("line 4: invalid JSON")
    assert out[4] == {"index": 4, "ok": True, "value": 10}  # the blank line is no record
    assert "items: 5 (3 ok, 2 failed)" in p.stdout
    assert not (work / "out.jsonl.partial").exists()


def test_run_csv_rows_are_dicts_and_a_bad_row_fails_alone(work: Path) -> None:
    (work / "in.csv").write_text("a,b\n1,2\n3,4,5\n5,6\n")
    p = shoal(work, "run", "jobs:add", "-i", "in.csv", "-o", "out.jsonl", "--no-progress")
    out = records(work / "out.jsonl")
    assert [r["ok"] for r in out] == [True, False, True]
    assert out[0]["value"] == 3 and out[2]["value"] == 11
    assert out[1]["line"] == 3 and "header has 2" in out[1]["error"]["message"]
    assert p.returncode == 1


def test_run_plain_lines_from_a_py_file_path(work: Path) -> None:
    (work / "in.txt").write_text("abc\n\nxyz\n")
    p = shoal(work, "run", "./jobs.py:shout", "-i", "in.txt", "-o", "out.jsonl", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert [r["value"] for r in records(work / "out.jsonl")] == ["ABC", "", "XYZ"]


def test_run_stdin_to_stdout_with_an_async_function(work: Path) -> None:
    p = shoal(work, "run", "jobs:adouble", "-i", "-", "--no-progress", "--backend", "asyncio",
              stdin='7\n"a"\n')
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["value"] for line in p.stdout.splitlines()] == [14, "aa"]
    assert "items: 2 (2 ok, 0 failed)" in p.stderr  # the summary stays off the data stream


def test_run_unserializable_value_is_a_failed_record(work: Path) -> None:
    (work / "two.jsonl").write_text("1\n2\n")
    p = shoal(work, "run", "jobs:as_set", "-i", "two.jsonl", "-o", "out.jsonl", "--no-progress")
    out = records(work / "out.jsonl")
    assert p.returncode == 1
    assert [r["error"]["type"] for r in out] == ["NotSerializable"] * 2
    assert "It was: {1}" in out[0]["error"]["message"]


def test_run_options_reach_the_engine(work: Path) -> None:
    (work / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(20)))
    p = shoal(work, "run", "jobs:double", "-i", "nums.jsonl", "-o", "out.jsonl",
              "--backend", "threads", "--workers", "3", "--retries", "1", "--timeout", "30",
              "--rate", "10000", "--chunk-size", "1", "--no-ordered", "--progress")
    assert p.returncode == 1, p.stderr
    out = records(work / "out.jsonl")
    assert sorted(r["index"] for r in out) == list(range(20))
    assert "backend: threads x3" in p.stdout
    assert "shoal: 20/20 (100%)" in p.stderr  # the progress line of a non-terminal


# --- shoal run: the demo --------------------------------------------------------------


def test_run_without_arguments_runs_the_demo(tmp_path: Path) -> None:
    p = shoal(tmp_path, "run", "--no-progress")
    assert p.returncode == 0, p.stderr
    out = records(tmp_path / "shoal-demo-output.jsonl")
    assert len(out) == 197 and all(r["ok"] for r in out)
    assert out[0]["value"]["words"] == 13
    assert "items: 197 (197 ok, 0 failed)" in p.stdout
    assert "checkpoint: shoal-demo.db" in p.stdout

    report = shoal(tmp_path, "report", "shoal-demo.db")
    assert report.returncode == 0, report.stderr
    assert "job: shoal.demos.wordstats:word_stats" in report.stdout
    assert "items: 197 (197 ok = 100.0%, 0 failed)" in report.stdout


def test_run_demo_again_restores_everything(tmp_path: Path) -> None:
    first = shoal(tmp_path, "run", "--no-progress")
    assert first.returncode == 0, first.stderr
    computed = records(tmp_path / "shoal-demo-output.jsonl")
    again = shoal(tmp_path, "run", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "197 restored from checkpoint" in again.stdout
    assert records(tmp_path / "shoal-demo-output.jsonl") == computed


# --- command-line errors: one line, the right status, no traceback -------------------


@pytest.mark.parametrize(("args", "message"), [
    (["run", "nomodule:f", "-i", "in.jsonl"], "cannot import module 'nomodule'"),
    (["run", "jobs:nothere", "-i", "in.jsonl"], "has no function 'nothere'; it has: "),
    (["run", "jobs", "-i", "in.jsonl"], "expected MODULE:FUNCTION"),
    (["run", "missing.py:f", "-i", "in.jsonl"], "no such file"),
    (["run", "jobs:double", "-i", "missing.jsonl"], "cannot read input 'missing.jsonl'"),
    (["run", "jobs:double"], "--input FILE is required"),
    (["run", "jobs:double", "-i", "in.dat"], "pass --format"),
    (["run", "jobs:double", "-i", "in.jsonl", "-o", "no/such/dir/out.jsonl"],
     "cannot write output"),
    (["run", "jobs:double", "-i", "in.jsonl", "-o", "."], "it is a directory"),
    (["run", "jobs:double", "-i", "in.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "jobs:double", "-i", "in.jsonl", "--workers", "0"], "--workers"),
    (["run", "jobs:double", "-i", "in.jsonl", "--backend", "thread"], "invalid choice"),
    (["run", "jobs:double", "-i", "in.jsonl", "--timeout", "1", "--chunk-size", "4",
      "--backend", "threads"], "is per item"),
    ([], "choose a command"),
    (["report", "nothere.db"], "no checkpoint at nothere.db"),
    (["report", "in.jsonl"], "is not a shoal checkpoint"),
    (["parallel", "x"], "expected a whole number"),
    (["compare", "jobs:double"], "--input FILE is required"),
])
def test_command_errors_are_one_line(work: Path, args: list[str], message: str) -> None:
    p = shoal(work, *args)
    assert p.returncode == 2
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_checkpoint_of_another_job_is_refused(work: Path) -> None:
    assert shoal(work, "run", "jobs:double", "-i", "in.jsonl", "-o", "a.jsonl",
                 "--checkpoint", "run.db", "--no-progress").returncode == 1
    p = shoal(work, "run", "jobs:shout", "-i", "in.jsonl", "-o", "b.jsonl",
              "--checkpoint", "run.db", "--no-progress")
    assert p.returncode == 2 and "was made by jobs:double" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (work / "b.jsonl.partial").exists()


# --- resume after a kill ------------------------------------------------------------


def _committed(db: Path) -> list[int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return [row[0] for row in conn.execute("SELECT idx FROM results")]
    except sqlite3.Error:  # not created yet, or the schema is being written
        return []


def _start_and_stop_when_checkpointed(work: Path, args: list[str], sig: int) -> tuple[
        int, str, list[int]]:
    """Start ``shoal``, send ``sig`` once its checkpoint has rows; (status, stderr, rows)."""
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", *args], cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _committed(work / "run.db"):
                break
            time.sleep(0.02)  # polling a file another process writes
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err, _committed(work / "run.db")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_interruption_computes_only_what_was_missing(work: Path, sig: int) -> None:
    n = 300
    (work / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(n)))
    args = ["run", "jobs:slow_square", "-i", "nums.jsonl", "-o", "out.jsonl",
            "--checkpoint", "run.db", "--backend", "threads", "--workers", "2", "--no-progress"]
    status, err, done_before = _start_and_stop_when_checkpointed(work, args, sig)
    assert 0 < len(done_before) < n
    if sig == signal.SIGKILL:
        assert status == -signal.SIGKILL
    else:
        assert status == 130
        assert "interrupted after" in err and "re-run the same command to resume" in err
        assert "Traceback" not in err
    assert not (work / "out.jsonl").exists()  # only the partial file, named as such

    p = shoal(work, *args)
    assert p.returncode == 0, p.stderr
    out = records(work / "out.jsonl")
    assert [r["index"] for r in out] == list(range(n))  # exactly one record per item
    assert all(r["ok"] and r["value"] == r["index"] ** 2 for r in out)
    calls = Counter(int(x) for x in (work / "calls.log").read_text().split())
    assert set(calls) == set(range(n))
    assert all(calls[i] == 1 for i in done_before)  # checkpointed: never recomputed
    assert f"{len(done_before)} restored from checkpoint" in p.stdout


# --- workbook commands, backend comparison, report ---------------------------------


def test_compare_report_sections(tmp_path: Path) -> None:
    p = shoal(tmp_path, "compare", "20", "4", "--latency", "0.002")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    for line in ["Parallel Batch Processing Performance Report", "Data Summary:",
                 "- Total items: 20", "- Data type: numbers", "- Batch size: 5",
                 "- Number of batches: 4", "Performance Results:",
                 "- Sequential processing time:", "- Parallel processing time:", "- Speedup:",
                 "- Efficiency:", "Throughput:", "Correctness:", "- Results match: ✓",
                 "- Sequential errors: 1", "- Parallel errors: 1", "Conclusion:"]:
        assert line in text, line
    order = [text.index(s) for s in ("Data Summary", "Performance Results", "Throughput",
                                     "Correctness", "Conclusion")]
    assert order == sorted(order)


@pytest.mark.parametrize("workload", ["text", "numeric"])
def test_parallel_command(tmp_path: Path, workload: str) -> None:
    p = shoal(tmp_path, "parallel", "8", "2", "--workload", workload)
    assert p.returncode == 0, p.stderr
    assert "Parallel Batch Processing Report" in p.stdout
    assert f"- Data type: {'text' if workload == 'text' else 'numbers'}" in p.stdout
    assert "- Parallel errors: 1" in p.stdout  # item 7 fails on purpose


def test_benchmark_command(tmp_path: Path) -> None:
    p = shoal(tmp_path, "benchmark", "--workload", "io", "--scale", "0.05")
    assert p.returncode == 0, p.stderr
    assert "Small I/O-bound" in p.stdout and "Large I/O-bound" in p.stdout
    assert "Optimal batch size (I/O-bound" in p.stdout
    assert "Worker recommendation (I/O-bound)" in p.stdout


def test_compare_function_across_backends(work: Path) -> None:
    p = shoal(work, "compare", "jobs:adouble", "-i", "in.jsonl", "--sample", "3")
    assert p.returncode == 0, p.stderr
    for name in ("sequential", "threads", "asyncio"):
        assert f"\n{name} " in p.stdout
    assert "auto would choose: asyncio" in p.stdout
    assert "Recommendation: --backend " in p.stdout


def test_report_counts_failures(work: Path) -> None:
    shoal(work, "run", "jobs:double", "-i", "in.jsonl", "-o", "out.jsonl",
          "--checkpoint", "run.db", "--no-progress")
    p = shoal(work, "report", "run.db")
    assert p.returncode == 0, p.stderr
    assert "job: jobs:double" in p.stdout
    assert "items: 5 (3 ok = 60.0%, 2 failed)" in p.stdout
    assert "failures by type: InvalidRecord: 1, ValueError: 1" in p.stdout
