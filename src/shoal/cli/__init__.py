"""The ``shoal`` command line.

::

    shoal run                                   the demo job: word statistics of 197
                                                embedded lines -> shoal-demo/output.jsonl,
                                                checkpoint shoal-demo/checkpoint.db
    shoal run MODULE:FUNCTION --input FILE [--output FILE] [--checkpoint run.db] ...
    shoal compare N [WORKERS] [--workload io|text|numeric] [--latency S]
    shoal compare MODULE:FUNCTION --input FILE [--sample 50]
    shoal parallel N [WORKERS] [--workload ...] [--latency S]
    shoal benchmark [--workload ...] [--scale X]
    shoal report run.db [--failures] [--html report.html]

``MODULE`` is a dotted module importable from the current directory, or a path
to a .py file. Input is JSON lines, CSV (one dict per row) or plain lines,
chosen by extension or ``--format``; ``-`` reads stdin. Output is JSON lines,
one record per input record (see ``shoal.cli.io``), written to
``OUTPUT.partial`` and renamed to ``OUTPUT`` when complete. With
``--checkpoint``, an interrupted or killed run resumes when re-run: finished
items are restored from the checkpoint, not computed again (failed ones get
another try), and the output is rewritten whole, one record per item.

Exit status: 0 every item succeeded; 1 some items failed (see the records with
``"ok": false``); 2 a problem with the command (one line on stderr); 130
interrupted. ``SHOAL_DEBUG=1`` shows the traceback of an unexpected error.

Errors speak the command line's language: a Python option name in a message
from the library (``retries=0``, ``chunk_size``, ``None``) is shown as its flag
(``--retries 0``, ``--chunk-size``), and a .py job's internal module name as
the file the user named (``jobs.py:enrich``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

import shoal
from shoal._core.calling import is_async_callable
from shoal._core.errors import BatchInterrupted, ShoalError
from shoal._core.options import BACKENDS, ON_ERROR_CHOICES
from shoal.cli.io import (
    FORMATS,
    CliError,
    OutputWriter,
    Tally,
    checked_lines,
    count_records,
    display_names,
    input_format,
    job_call,
    load_function,
    one_line,
    open_input,
    read_records,
    result_line,
)

__all__ = ["DEMO_CHECKPOINT", "DEMO_DIR", "DEMO_OUTPUT", "main"]

# The demo writes into one folder of the current directory (git-ignored in
# shoal's own repository, so `make run` leaves a clone clean).
DEMO_DIR = "shoal-demo"
DEMO_OUTPUT = f"{DEMO_DIR}/output.jsonl"
DEMO_CHECKPOINT = f"{DEMO_DIR}/checkpoint.db"
EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps line breaks in descriptions and examples; never splits a path
    such as shoal-demo/output.jsonl at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, printed by ``main``),
    and descriptions and examples keep their line breaks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        for key in ("description", "epilog"):  # one paragraph: wrap it here
            text = kwargs.get(key)
            if text and "\n" not in text:
                kwargs[key] = textwrap.fill(text, 79, break_on_hyphens=False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        raise CliError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0: no retries), "
                                         f"got {value}")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of {what}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = _number(text, "seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def _timeout(text: str) -> float:
    value = _number(text, "seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text} (leave --timeout "
                                         "out for no time limit)")
    return value


def _per_second(text: str) -> float:
    value = _number(text, "items per second")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected items per second > 0, got {text} (leave "
                                         "--rate out for no limit)")
    return value


def _scale(text: str) -> float:
    value = _number(text, "times")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a factor > 0, got {text}")
    return value


def _chunk_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


_RUN_EXAMPLES = f"""\
examples:
  shoal run                                     the demo: 197 embedded lines -> {DEMO_DIR}/
  shoal run jobs.py:score -i rows.csv -o out.jsonl
  shoal run jobs:score -i rows.jsonl -o out.jsonl --workers 8 --retries 2 \\
            --timeout 30 --checkpoint run.db   (re-run the same to resume)
  cat lines.txt | shoal run mymodule:parse -i - --format lines > out.jsonl
  shoal run jobs.py:fetch -i urls.txt -o pages.jsonl --backend threads --workers 50 \\
            --rate 10 --burst 5 --on-error skip_failed
"""

_COMPARE_USAGE = """\
shoal compare N [WORKERS] [--workload {io,text,numeric}] [--latency SECONDS] [--progress]
       shoal compare MODULE:FUNCTION -i FILE [--format FORMAT] [--sample N] [--workers N]"""

_COMPARE_DESCRIPTION = """\
Two different commands share this name; the first argument says which:

  compare N [WORKERS]
      The demo report. Makes N simulated items of a demo workload, runs them
      sequentially and then in parallel, and prints both timings, the speed-up,
      the throughput and a check that both runs gave the same results.
      Options: --workload, --latency, --progress.

  compare MODULE:FUNCTION -i FILE
      Your function under each backend. Runs it on the first --sample records
      of FILE with each local backend (sequential, threads, processes; asyncio
      for an async function), prints a table of the timings and recommends a
      --backend for 'shoal run'. Options: -i, --format, --sample, --workers."""

_COMPARE_EXAMPLES = """\
examples:
  shoal compare 100                         the demo report: 100 simulated I/O calls
  shoal compare 200 8 --workload numeric    ... CPU-bound items, 8 workers
  shoal compare jobs.py:score -i rows.csv   your function under each backend
  shoal compare jobs:score -i rows.jsonl --sample 200 --workers 4
"""

_PARALLEL_EXAMPLES = """\
examples:
  shoal parallel 1000 32                    1000 simulated I/O calls on 32 threads
  shoal parallel 200 --workload text        the text workload, default workers
"""

_BENCHMARK_EXAMPLES = """\
examples:
  shoal benchmark                           all four scenarios, then tuning
  shoal benchmark --workload io --scale 0.1 only the I/O scenarios, a tenth the items
"""

_REPORT_EXAMPLES = """\
examples:
  shoal report run.db                       what a checkpointed run holds
  shoal report run.db --failures            ... and every failed item with its error
  shoal report run.db --html report.html    ... and its HTML run report, with charts
"""

_WORKERS_DEFAULT = ("per backend: threads min(32, CPUs + 4), asyncio 100, processes one per "
                    "CPU, sequential 1")


def _build_parser() -> _Parser:
    parser = _Parser(prog="shoal", description="Batch processing that survives.",
                     epilog="'shoal COMMAND --help' shows each command's options and examples; "
                            "'shoal run' alone runs a demo.")
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a function over every record of a file",
                         description="Run MODULE:FUNCTION over every input record and write "
                         "one JSON line per record. With no function, run the built-in demo "
                         f"job (output and checkpoint in ./{DEMO_DIR}/).",
                         epilog=_RUN_EXAMPLES)
    run.add_argument("function", nargs="?", metavar="MODULE:FUNCTION",
                     help="e.g. mymodule:process or jobs.py:process (default: none, which "
                          "runs the demo)")
    run.add_argument("-i", "--input", metavar="FILE",
                     help="input file, - for stdin (default: none; required with "
                          "MODULE:FUNCTION)")
    run.add_argument("-o", "--output", metavar="FILE",
                     help=f"output JSON lines (default: stdout; the demo: {DEMO_OUTPUT})")
    run.add_argument("--format", choices=FORMATS,
                     help="input format (default: by extension: .jsonl .ndjson .json -> jsonl, "
                          ".csv -> csv, .txt .text .log -> lines; stdin: jsonl)")
    run.add_argument("--backend", choices=BACKENDS, default="auto",
                     help="where items run (default: auto: probes the first items and picks "
                          "sequential, threads or processes; asyncio for an async function)")
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help=f"how many items run at once (default: {_WORKERS_DEFAULT})")
    run.add_argument("--retries", type=_retries, default=0, metavar="N",
                     help="extra attempts for a failed item, with backoff (default: 0)")
    run.add_argument("--timeout", type=_timeout, metavar="SECONDS",
                     help="time limit per attempt of one item (default: none)")
    run.add_argument("--rate", type=_per_second, metavar="N",
                     help="start at most N items per second (default: no limit)")
    run.add_argument("--burst", type=_positive_int, metavar="N",
                     help="with --rate: up to N items may start at once after a pause "
                          "(default: 1)")
    run.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="collect_errors",
                     help="collect_errors: keep going, write every failure as a record; "
                          "skip_failed: keep going, leave failures out of the output; "
                          "all_or_nothing: stop at the first failure (default: "
                          "collect_errors)")
    run.add_argument("--checkpoint", metavar="FILE",
                     help="SQLite file recording finished items; re-run the same command to "
                          f"resume (default: none; the demo: {DEMO_CHECKPOINT})")
    run.add_argument("--trust-pickles", action="store_true",
                     help="load the pickled values of a --checkpoint made elsewhere, whose "
                          "tags your checkpoint key does not verify: loading a pickle can run "
                          "code (default: off)")
    run.add_argument("--chunk-size", type=_chunk_size, default="auto", metavar="N|auto",
                     help="items sent to a worker at once (default: auto: grows for tiny "
                          "items)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="progress on stderr: a bar on a terminal, else a line every 5 s "
                          "(default: on; --no-progress turns it off)")
    run.add_argument("--ordered", action=argparse.BooleanOptionalAction, default=True,
                     help="write records in input order, or as they finish with --no-ordered "
                          "(default: in input order)")
    run.set_defaults(handler=_cmd_run)

    cmp = sub.add_parser("compare", usage=_COMPARE_USAGE, description=_COMPARE_DESCRIPTION,
                         epilog=_COMPARE_EXAMPLES,
                         help="'compare N': the demo report, sequential vs parallel; "
                              "'compare MODULE:FUNCTION -i FILE': your function under each "
                              "backend")
    cmp.add_argument("target", metavar="N|MODULE:FUNCTION",
                     help="N: how many simulated items for the demo report; MODULE:FUNCTION: "
                          "your function (default: none, required)")
    cmp.add_argument("workers_pos", nargs="?", type=_positive_int, metavar="WORKERS",
                     help="compare N: parallel workers (default: 4 per CPU, 8 to 32, for io; "
                          "one per CPU otherwise)")
    _workload_args(cmp, "compare N: ")
    cmp.add_argument("-i", "--input", metavar="FILE",
                     help="compare MODULE:FUNCTION: the records to sample, - for stdin "
                          "(default: none, required)")
    cmp.add_argument("--format", choices=FORMATS,
                     help="compare MODULE:FUNCTION: input format (default: by extension)")
    cmp.add_argument("--sample", type=_positive_int, default=50, metavar="N",
                     help="compare MODULE:FUNCTION: how many records to run per backend "
                          "(default: 50)")
    cmp.add_argument("--workers", type=_positive_int, metavar="N",
                     help="compare MODULE:FUNCTION: workers on each backend (default: "
                          f"{_WORKERS_DEFAULT}); compare N: the same as WORKERS")
    cmp.set_defaults(handler=_cmd_compare)

    par = sub.add_parser("parallel", help="the demo report's parallel run alone",
                         description="Make N simulated items of a demo workload and run them "
                         "in parallel only; print the timing, throughput and errors (one item "
                         "in 20 fails on purpose).", epilog=_PARALLEL_EXAMPLES)
    par.add_argument("n", type=_positive_int, metavar="N",
                     help="how many simulated items (default: none, required)")
    par.add_argument("workers_pos", nargs="?", type=_positive_int, metavar="WORKERS",
                     help="parallel workers (default: 4 per CPU, 8 to 32, for io; one per "
                          "CPU otherwise)")
    _workload_args(par, "")
    par.set_defaults(handler=_cmd_parallel)

    bench = sub.add_parser("benchmark", help="the demo workloads in four scenarios, and tuning",
                           description="Run the demo report on four scenarios (small and large "
                           "I/O-bound, text, numeric), then sweep worker counts and batch sizes "
                           "and say which were fastest on this machine.",
                           epilog=_BENCHMARK_EXAMPLES)
    bench.add_argument("--workload", choices=_workloads(),
                       help="only this workload's scenarios (default: all four scenarios)")
    bench.add_argument("--scale", type=_scale, default=1.0, metavar="X",
                       help="multiply every scenario's item count (default: 1.0)")
    bench.set_defaults(handler=_cmd_benchmark)

    rep = sub.add_parser("report", help="summarize a checkpoint file",
                         description="Summarize what a checkpoint file holds: the job, when it "
                         "ran, how many items succeeded and failed, and the failures by type.",
                         epilog=_REPORT_EXAMPLES)
    rep.add_argument("checkpoint", metavar="CHECKPOINT",
                     help="the --checkpoint file of a run (default: none, required)")
    rep.add_argument("--failures", action="store_true",
                     help="also list every failed item: its position in the input, its error "
                          "and attempts (default: off)")
    rep.add_argument("--html", metavar="OUT.html",
                     help='also write an HTML run report with charts to OUT.html (needs '
                          'pip install "shoal[report]"; default: none)')
    rep.add_argument("--salvage", metavar="NEW",
                     help="copy the readable results of a damaged checkpoint into the new "
                          "checkpoint NEW, and resume with it (default: none)")
    rep.set_defaults(handler=_cmd_report)
    return parser


def _workloads() -> Sequence[str]:
    from shoal.demos.workbook import WORKLOADS

    return WORKLOADS


def _workload_args(p: argparse.ArgumentParser, scope: str) -> None:
    p.add_argument("--workload", choices=_workloads(), default="io",
                   help=f"{scope}io: simulated network calls; text: word counts; numeric: "
                        "prime factors, CPU-bound (default: io)")
    p.add_argument("--latency", type=_seconds, default=None, metavar="SECONDS",
                   help=f"{scope}seconds per simulated I/O call (default: 0.02)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help=f"{scope}progress on stderr (default: off)")


# Library option names as the command line spells them, for messages that
# come from the library (a ShoalError) rather than from argparse.
_FLAG_OF = {"workers": "--workers", "retries": "--retries", "timeout": "--timeout",
            "rate": "--rate", "chunk_size": "--chunk-size", "on_error": "--on-error",
            "backend": "--backend"}
_NAMES = "|".join(_FLAG_OF)


def cli_wording(message: str) -> str:
    """A library message in the command line's words: ``use retries=0`` reads
    ``use --retries 0``, ``chunk_size="auto"`` reads ``--chunk-size auto``,
    ``timeout=None`` reads ``no --timeout``, ``use None`` reads ``leave it
    out``, and a message that starts with an option's name starts with its flag."""
    def assignment(m: re.Match[str]) -> str:
        flag, value = _FLAG_OF[m[1]], m[2].strip("'\"")
        return f"no {flag}" if value == "None" else f"{flag} {value}"

    message = re.sub(rf"\b({_NAMES})=('[^']*'|\"[^\"]*\"|[\w.+-]+)", assignment, message)
    message = re.sub(rf"^({_NAMES})\b", lambda m: _FLAG_OF[m[1]], message)
    message = message.replace("use None", "leave it out")
    # Names with an underscore are never English words: translate them anywhere.
    return re.sub(r"(?<![-\w])(chunk_size|on_error)\b", lambda m: _FLAG_OF[m[1]], message)


# --- shoal run ------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop like Ctrl-C, so the checkpoint is committed


def _cmd_run(args: argparse.Namespace) -> int:
    stream = None
    total: int | None
    if args.burst is not None and args.rate is None:
        raise CliError("--burst needs --rate: it is how many items may start at once "
                       "within the rate")
    if args.function is None:
        if args.input is not None:
            raise CliError("--input needs MODULE:FUNCTION (without one, 'shoal run' runs the "
                           "demo on its embedded sample)")
        from shoal.demos.wordstats import SAMPLE_LINES, word_stats

        fn: Callable[[Any], Any] = word_stats
        source: Iterable[Any] = SAMPLE_LINES
        total, output = len(SAMPLE_LINES), args.output or DEMO_OUTPUT
        checkpoint = args.checkpoint or DEMO_CHECKPOINT
        if DEMO_DIR in (os.path.dirname(output), os.path.dirname(checkpoint)):
            os.makedirs(DEMO_DIR, exist_ok=True)
        print(f"shoal demo: shoal.demos.wordstats:word_stats over {total} embedded lines",
              file=sys.stderr if output == "-" else sys.stdout)
    else:
        fn, _ = load_function(args.function)
        if args.input is None:
            raise CliError("--input FILE is required with MODULE:FUNCTION (- reads stdin)")
        fmt = input_format(args.input, args.format)
        stream = open_input(args.input)
        try:
            source = read_records(checked_lines(stream, fmt, args.input), fmt)
        except BaseException:
            stream.close()
            raise
        total = count_records(args.input, fmt) if args.progress else None
        output, checkpoint = args.output or "-", args.checkpoint
    store = None
    try:
        if checkpoint is not None:
            from shoal._sinks.checkpoint import open_checkpoint

            # fingerprints fn, not our wrapper
            store = open_checkpoint(checkpoint, fn, trust_pickles=args.trust_pickles)
        writer = OutputWriter(output)
        return _stream_results(args, fn, source, total, writer, store, checkpoint)
    finally:
        if store is not None:
            store.close()
        if stream is not None:
            stream.close()


def _stream_results(args: argparse.Namespace, fn: Callable[[Any], Any], source: Iterable[Any],
                    total: int | None, writer: OutputWriter, store: Any,
                    checkpoint: str | None) -> int:
    from shoal._sinks.progress import make_progress

    stop_at_first = args.on_error == "all_or_nothing"
    tally = Tally(make_progress(args.progress, total), keep_failures=stop_at_first)
    rate = args.rate if args.burst is None else (args.rate, args.burst)
    options: dict[str, Any] = {
        "backend": args.backend, "workers": args.workers, "retries": args.retries,
        "timeout": args.timeout, "rate": rate, "chunk_size": args.chunk_size,
        "on_error": args.on_error, "progress": tally, "checkpoint": store, "total": total,
    }
    previous = signal.signal(signal.SIGTERM, _interrupt)
    start = time.perf_counter()
    try:
        for r in shoal.imap(job_call(fn), source, ordered=args.ordered, **options):
            line, error_type = result_line(r)
            writer.write(line)
            if r.ok and error_type is not None:
                tally.unwritable()
        writer.commit()
    except BatchInterrupted:
        writer.abandon()
        where = (f"the checkpoint {checkpoint} keeps them: re-run the same command to resume"
                 if checkpoint else "no --checkpoint, so a re-run starts over")
        partial = f"; partial output in {writer.partial}" if writer.partial else ""
        # writer.written, not the report's total: imap's report holds only the
        # results not yet yielded, none of those written.
        print(f"shoal: interrupted after {writer.written} results; {where}{partial}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        writer.abandon()
        failed = tally.failure_of(exc) if stop_at_first else None
        if failed is None:
            raise
        # The item's own exception, raised because --on-error all_or_nothing
        # stops at the first failure: expected, so one line, not a crash report.
        kept = f"; {writer.written} records in {writer.partial}" if writer.partial else ""
        print(f"shoal: stopped at the first failure (--on-error all_or_nothing): item "
              f"{failed.index} raised {one_line(exc)}{kept}", file=sys.stderr)
        return EXIT_ITEMS_FAILED
    except BaseException:
        writer.abandon()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = tally.wall_time(time.perf_counter() - start)
    summary = tally.summary(seconds, writer.path, checkpoint,
                            skipped=args.on_error == "skip_failed")
    print(summary, file=sys.stderr if writer.path == "-" else sys.stdout)
    return EXIT_ITEMS_FAILED if tally.failed else EXIT_OK


# --- shoal compare / parallel / benchmark / report -----------------------------------


def _workbook_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from shoal.demos.workbook import DEFAULT_LATENCY

    latency = DEFAULT_LATENCY if args.latency is None else args.latency
    return {"workload": args.workload, "latency": latency, "progress": args.progress}


def _cmd_compare(args: argparse.Namespace) -> int:
    try:
        n = int(args.target)
    except ValueError:
        return _compare_backends(args)
    if n < 1:
        raise CliError(f"N must be a whole number >= 1, got {n}")
    from shoal.demos import workbook

    print(workbook.compare(n, args.workers_pos or args.workers, **_workbook_kwargs(args))
          .render())
    return EXIT_OK


def _cmd_parallel(args: argparse.Namespace) -> int:
    from shoal.demos import workbook

    print(workbook.parallel(args.n, args.workers_pos, **_workbook_kwargs(args)).render())
    return EXIT_OK


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from shoal.demos import workbook

    print(workbook.benchmark(args.workload, scale=args.scale).render())
    return EXIT_OK


def _local_backends(fn: Callable[[Any], Any]) -> list[str]:
    names = ["sequential", "threads"]
    if importlib.util.find_spec("shoal._backends._processes.pool") is not None:
        names.append("processes")
    if is_async_callable(fn):
        names.append("asyncio")
    return names


def _compare_backends(args: argparse.Namespace) -> int:
    """Run a sample of the user's function on every local backend and recommend one."""
    if args.workers_pos is not None:
        raise CliError("WORKERS goes with 'compare N'; with MODULE:FUNCTION use --workers")
    fn, label = load_function(args.target)
    if args.input is None:
        raise CliError("--input FILE is required with 'compare MODULE:FUNCTION'")
    stream = open_input(args.input)
    try:
        fmt = input_format(args.input, args.format)
        items = list(itertools.islice(read_records(checked_lines(stream, fmt, args.input), fmt),
                                      args.sample))
    finally:
        stream.close()
    if not items:
        raise CliError(f"no records in {args.input!r} to sample")
    call = job_call(fn)
    print(f"Backend comparison: {label} on {len(items)} records of {args.input}")
    print(f"{'backend':<12}{'workers':>8}{'time (s)':>10}{'items/s':>10}{'speedup':>9}"
          f"{'failed':>8}")
    times: dict[str, float] = {}
    for name in _local_backends(fn):
        try:
            rep = shoal.run(call, items, backend=name, workers=args.workers)
        except (Exception, BatchInterrupted) as exc:
            if isinstance(exc, BatchInterrupted):
                raise
            print(f"{name:<12}  failed: {type(exc).__name__}: {' '.join(str(exc).split())}")
            continue
        times[name] = rep.wall_time
        base = times.get("sequential", rep.wall_time)
        speedup = base / rep.wall_time if rep.wall_time > 0 else math.inf
        print(f"{name:<12}{rep.workers:>8}{rep.wall_time:>10.3f}{rep.throughput:>10.1f}"
              f"{speedup:>8.2f}x{rep.failed:>8}")
    auto = shoal.run(call, items, backend="auto", workers=args.workers)
    print(f"auto would choose: {auto.backend} ({auto.backend_reason})")
    if not times:
        raise CliError("every backend failed on the sample; see the lines above", code=1)
    best = min(times, key=times.__getitem__)
    seq = times.get("sequential", times[best])
    print(f"Recommendation: --backend {best} (fastest on this sample, "
          f"{seq / times[best] if times[best] > 0 else math.inf:.2f}x sequential)")
    return EXIT_OK


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch).isoformat(" ", "seconds")


def _cmd_report(args: argparse.Namespace) -> int:
    from shoal._sinks.checkpoint import salvage_checkpoint, stored_failures, summarize

    if args.salvage is not None:
        kept = salvage_checkpoint(args.checkpoint, args.salvage)
        print(f"kept {kept} results of {args.checkpoint} in {args.salvage}; resume with "
              f"--checkpoint {args.salvage}")
        return EXIT_OK

    s = summarize(args.checkpoint)
    share = f" = {s['ok'] / s['total']:.1%}" if s["total"] else ""
    lines = [f"checkpoint: {s['path']}",
             f"job: {display_names(s['job'])} (Python {s['python']})",
             f"created: {_when(s['created'])}, last update: {_when(s['last_update'])}",
             f"items: {s['total']} ({s['ok']} ok{share}, {s['failed']} failed)"]
    if s["errors_by_type"]:
        lines.append("failures by type: "
                     + ", ".join(f"{k}: {v}" for k, v in s["errors_by_type"].items()))
    if args.failures:
        failures = stored_failures(args.checkpoint)
        if failures:
            lines.append("failed items (position in the input, from 0; the run's output "
                         "holds each item):")
            width = len(str(failures[-1].index))
            for f in failures:
                message = " ".join(f.message.split())
                tries = f"{f.attempts} attempt{'s' * (f.attempts != 1)}"
                lines.append(f"  {f.index:>{width}}  {f.error_type}: {message} ({tries})"
                             if message else f"  {f.index:>{width}}  {f.error_type} ({tries})")
        else:
            lines.append("failed items: none")
    print("\n".join(lines))
    if args.html:
        from shoal._report import write_html
        from shoal._report.checkpoint import read_report

        print(f"html report: {write_html(read_report(args.checkpoint), args.html)}")
    return EXIT_OK


# --- entry point ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shoal`` command; return its exit status.

    Raises:
        BaseException: only with ``SHOAL_DEBUG=1``, any unexpected error.
    """
    try:
        args = _build_parser().parse_args(argv)
        if args.command is None:
            raise CliError("choose a command: run, compare, parallel, benchmark or report "
                           "(see 'shoal --help'; 'shoal run' runs a demo)")
        code: int = args.handler(args)
        return code
    except CliError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return exc.code
    except ShoalError as exc:  # bad option values, checkpoint mismatch, missing extra
        text = cli_wording(display_names(" ".join(str(exc).split())))
        print(f"shoal: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ITEMS_FAILED
    except Exception as exc:
        if os.environ.get("SHOAL_DEBUG"):
            raise
        print(f"shoal: error: {display_names(one_line(exc))} "
              "(set SHOAL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ITEMS_FAILED

