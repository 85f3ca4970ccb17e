"""The ``shoal`` command, run in subprocesses on temporary files."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import shoal as shoal_lib
from shoal.cli import _build_parser, cli_wording, main
from shoal.cli.io import display_names

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
    out = records(tmp_path / "shoal-demo" / "output.jsonl")
    assert len(out) == 197 and all(r["ok"] for r in out)
    assert out[0]["value"]["words"] == 13
    assert "items: 197 (197 ok, 0 failed)" in p.stdout
    assert "checkpoint: shoal-demo/checkpoint.db" in p.stdout
    assert sorted(f.name for f in tmp_path.iterdir()) == ["shoal-demo"]  # one folder, no more

    report = shoal(tmp_path, "report", "shoal-demo/checkpoint.db")
    assert report.returncode == 0, report.stderr
    assert "job: shoal.demos.wordstats:word_stats" in report.stdout
    assert "items: 197 (197 ok = 100.0%, 0 failed)" in report.stdout


def test_run_demo_again_restores_everything(tmp_path: Path) -> None:
    first = shoal(tmp_path, "run", "--no-progress")
    assert first.returncode == 0, first.stderr
    computed = records(tmp_path / "shoal-demo" / "output.jsonl")
    again = shoal(tmp_path, "run", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "197 restored from checkpoint" in again.stdout
    assert records(tmp_path / "shoal-demo" / "output.jsonl") == computed


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


# --- help: defaults, examples, the two compares -------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_subcommand_shows_its_default() -> None:
    subs = _subparsers()
    assert set(subs) == {"run", "compare", "parallel", "benchmark", "report"}
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"shoal {name} {action.option_strings or action.metavar}"
            assert action.help, label
            assert "(default: " in action.help or "; default: " in action.help, label


@pytest.mark.parametrize("command", ["run", "compare", "parallel", "benchmark", "report"])
def test_every_subcommand_has_examples(command: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    examples = text[text.index("\nexamples:\n"):].splitlines()[2:]
    assert len(examples) >= 2
    assert all(f"shoal {command}" in line for line in examples if not line.startswith(" " * 6))


def test_progress_is_said_to_be_on_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    progress = next(a for a in _subparsers()["run"]._actions if "--progress" in a.option_strings)
    assert progress.default is True
    assert progress.help is not None and "(default: on;" in progress.help


def test_the_two_compares_read_as_two_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    usage = text[:text.index("\n\n")]
    assert "shoal compare N [WORKERS]" in usage
    assert "shoal compare MODULE:FUNCTION -i FILE" in usage
    assert "The demo report." in text and "Your function under each backend." in text
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "'compare N': the demo report" in top
    assert "'compare MODULE:FUNCTION -i FILE': your function under each backend" in top


def test_run_help_lists_burst_and_on_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--burst N" in text and "--on-error {all_or_nothing,skip_failed,collect_errors}" in text


# --- the command line's own words ---------------------------------------------------


_API_WORDING = re.compile(r"\b[a-z_]+=|\bNone\b")


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "abc"], "argument --rate: expected a number of items per second, got 'abc'"),
    (["--rate", "0"], "expected items per second > 0, got 0 (leave --rate out for no limit)"),
    (["--rate", "-2"], "expected items per second > 0"),
    (["--retries", "-1"], "argument --retries: expected a whole number >= 0"),
    (["--retries", "x"], "argument --retries: expected a whole number, got 'x'"),
    (["--timeout", "0"], "leave --timeout out for no time limit"),
    (["--timeout", "nan"], "argument --timeout: expected a finite number of seconds"),
    (["--burst", "3"], "--burst needs --rate"),
    (["--rate", "5", "--burst", "0"], "argument --burst: expected a whole number >= 1"),
    (["--workers", "0"], "argument --workers: expected a whole number >= 1"),
    (["--on-error", "skip"], "argument --on-error: invalid choice: 'skip'"),
    (["--timeout", "1", "--chunk-size", "4", "--backend", "threads"],
     "--timeout is per item, and --backend threads runs a chunk as one unit, so it needs "
     "--chunk-size 1 (got --chunk-size 4); drop --chunk-size or use --chunk-size auto"),
])
def test_option_errors_name_the_flag_never_the_python_option(
        work: Path, args: list[str], message: str) -> None:
    p = shoal(work, "run", "jobs:double", "-i", "in.jsonl", "--no-progress", *args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not _API_WORDING.search(p.stderr), p.stderr


@pytest.mark.parametrize(("library", "cli"), [
    ("retries must be a whole number >= 0, got -1; use retries=0 to disable retrying",
     "--retries must be a whole number >= 0, got -1; use --retries 0 to disable retrying"),
    ("timeout must be > 0 seconds, got 0; use None for no timeout",
     "--timeout must be > 0 seconds, got 0; leave it out for no timeout"),
    ('timeout is per item and needs chunk_size=1 on this backend; drop chunk_size or use '
     'chunk_size="auto"',
     "--timeout is per item and needs --chunk-size 1 on this backend; drop --chunk-size or "
     "use --chunk-size auto"),
    ("workers must be a whole number >= 1, got 0; use workers=1 to run one at a time",
     "--workers must be a whole number >= 1, got 0; use --workers 1 to run one at a time"),
    ("shoal: on_error='all_or_nothing' stopped the batch; timeout=None",
     "shoal: --on-error all_or_nothing stopped the batch; no --timeout"),
    ("a rate limit of 5 items per second", "a rate limit of 5 items per second"),
    ('backend="processes" needs a POSIX system (os.fork); use backend="threads"',
     "--backend processes needs a POSIX system (os.fork); use --backend threads"),
    ("checkpoint run.db was made by jobs:double", "checkpoint run.db was made by jobs:double"),
])
def test_library_messages_are_reworded_for_the_command_line(library: str, cli: str) -> None:
    assert cli_wording(library) == cli


# --- --burst and --on-error ---------------------------------------------------------


def test_burst_and_on_error_reach_the_engine(work: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    real = shoal_lib.imap

    def spy(fn: Any, items: Any, ordered: bool = True, **options: Any) -> Any:
        seen.update(options)
        return real(fn, items, ordered, **options)

    monkeypatch.setattr(shoal_lib, "imap", spy)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [*sys.path])  # load_function adds the job's folder
    try:
        status = main(["run", "jobs.py:double", "-i", "in.jsonl", "-o", "out.jsonl",
                       "--no-progress", "--rate", "1000", "--burst", "8",
                       "--on-error", "skip_failed"])
    finally:
        sys.modules.pop("_shoal_job_jobs", None)
    assert status == 1  # items failed, even if they are not written
    assert seen["rate"] == (1000.0, 8) and seen["on_error"] == "skip_failed"
    out = records(work / "out.jsonl")
    assert [r["index"] for r in out] == [0, 1, 4]  # item 2 (raises) and the bad line left out
    assert "items: 5 (3 ok, 2 failed), failed ones not written" in capsys.readouterr().out


def test_on_error_all_or_nothing_stops_with_one_line(work: Path) -> None:
    (work / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(1, 200)))
    p = shoal(work, "run", "jobs.py:double", "-i", "nums.jsonl", "-o", "out.jsonl",
              "--on-error", "all_or_nothing", "--backend", "sequential", "--chunk-size", "1",
              "--no-progress")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("shoal: stopped at the first failure (--on-error "
                               "all_or_nothing): item 2 raised ValueError: three is bad; ")
    assert "out.jsonl.partial" in p.stderr and "Traceback" not in p.stderr
    assert not (work / "out.jsonl").exists()
    written = records(work / "out.jsonl.partial")
    assert written[:3] == [{"index": 0, "ok": True, "value": 2},
                           {"index": 1, "ok": True, "value": 4},
                           {"index": 2, "ok": False, "item": 3,
                            "error": {"type": "ValueError", "message": "three is bad"}}]
    assert len(written) < 199  # it stopped scheduling


# --- --format csv on JSON lines -----------------------------------------------------


@pytest.mark.parametrize("content", ['{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n', "\n[1, 2]\n", "7\n"])
def test_csv_format_on_json_lines_is_a_usage_error(work: Path, content: str) -> None:
    (work / "rows.jsonl").write_text(content)
    p = shoal(work, "run", "jobs:add", "-i", "rows.jsonl", "--format", "csv", "-o", "out.jsonl")
    assert p.returncode == 2
    assert p.stderr.startswith("shoal: error: 'rows.jsonl' looks like JSON lines, not CSV")
    assert p.stderr.strip().endswith("pass --format jsonl")
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (work / "out.jsonl").exists() and not (work / "out.jsonl.partial").exists()
    piped = shoal(work, "run", "jobs:add", "-i", "-", "--format", "csv", stdin=content)
    assert piped.returncode == 2 and "stdin looks like JSON lines" in piped.stderr
    assert piped.stdout == ""


def test_real_csv_with_a_quoted_header_still_runs(work: Path) -> None:
    (work / "q.csv").write_text('"a","b"\n1,2\n')
    p = shoal(work, "run", "jobs:add", "-i", "q.csv", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[0])["value"] == 3


# --- shoal report: failures and names as typed ------------------------------------------


def test_report_failures_lists_each_failed_item_with_its_error(work: Path) -> None:
    shoal(work, "run", "./jobs.py:double", "-i", "in.jsonl", "-o", "out.jsonl",
          "--checkpoint", "run.db", "--no-progress", "--retries", "1")
    p = shoal(work, "report", "run.db", "--failures")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    start = lines.index("failed items (position in the input, from 0; the run's output holds "
                        "each item):")
    assert lines[start + 1] == "  2  ValueError: three is bad (2 attempts)"
    assert lines[start + 2].startswith("  3  InvalidRecord: line 4: invalid JSON")
    assert len(lines) == start + 3
    assert "failed items" not in shoal(work, "report", "run.db").stdout  # only when asked


def test_report_failures_of_a_clean_run(tmp_path: Path) -> None:
    shoal(tmp_path, "run", "--no-progress")
    p = shoal(tmp_path, "report", "shoal-demo/checkpoint.db", "--failures")
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == "failed items: none"


def test_report_and_errors_show_the_job_as_typed_not_its_module_name(work: Path) -> None:
    shoal(work, "run", "jobs.py:double", "-i", "in.jsonl", "-o", "out.jsonl",
          "--checkpoint", "run.db", "--no-progress")
    report = shoal(work, "report", "run.db")
    assert "job: jobs.py:double (Python" in report.stdout
    mismatch = shoal(work, "run", "jobs.py:shout", "-i", "in.jsonl", "--checkpoint", "run.db")
    assert mismatch.returncode == 2
    assert "was made by jobs.py:double" in mismatch.stderr
    assert "not by jobs.py:shout" in mismatch.stderr
    for text in (report.stdout, mismatch.stderr):
        assert "_shoal_job_" not in text


def test_display_names() -> None:
    assert display_names("_shoal_job_jobs:enrich") == "jobs.py:enrich"
    assert display_names("made by _shoal_job_my_jobs:f, not by pkg.mod:g") == (
        "made by my_jobs.py:f, not by pkg.mod:g")


# --- one wall time, one format ------------------------------------------------------------


def test_progress_final_line_and_summary_show_the_same_time(work: Path) -> None:
    (work / "nums.jsonl").write_text("".join(f"{i}\n" for i in range(50)))
    p = shoal(work, "run", "jobs:double", "-i", "nums.jsonl", "-o", "out.jsonl", "--progress")
    final = p.stderr.strip().splitlines()[-1]
    done = re.search(r"done in (.+), throughput (.+) items/s$", final)
    wall = re.search(r"^wall time: (.+), throughput: (.+) items/s$", p.stdout, re.M)
    assert done and wall, (p.stderr, p.stdout)
    assert done.groups() == wall.groups()
    assert "0:00:01" not in final  # a run of milliseconds is not shown as a second


def test_demo_folder_is_git_ignored() -> None:
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("shoal-demo/output.jsonl", "shoal-demo/checkpoint.db"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 0


def test_the_summary_names_the_backend_auto_chose(tmp_path: Path) -> None:
    """The summary's observer heard "auto" at the start; it is told the choice."""
    done = shoal(tmp_path, "run", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "backend: sequential x1" in done.stdout  # tiny items: inline
    assert "backend: auto" not in done.stdout
