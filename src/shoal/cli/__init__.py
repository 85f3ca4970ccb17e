"""The ``shoal`` command line.

::

    shoal run                                   the demo job: word statistics of 197
                                                embedded lines -> shoal-demo-output.jsonl,
                                                checkpoint shoal-demo.db
    shoal run MODULE:FUNCTION --input FILE [--output FILE] [--checkpoint run.db] ...
    shoal compare N [WORKERS] [--workload io|text|numeric] [--latency S]
    shoal compare MODULE:FUNCTION --input FILE [--sample 50]
    shoal parallel N [WORKERS] [--workload ...] [--latency S]
    shoal benchmark [--workload ...] [--scale X]
    shoal report run.db [--html report.html]

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
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any

import shoal
from shoal._core.calling import is_async_callable
from shoal._core.errors import BatchInterrupted, ShoalError
from shoal._core.options import BACKENDS
from shoal.cli.io import (
    FORMATS,
    CliError,
    OutputWriter,
    Tally,
    count_records,
    input_format,
    job_call,
    load_function,
    open_input,
    read_records,
    result_line,
)

__all__ = ["DEMO_CHECKPOINT", "DEMO_OUTPUT", "main"]

DEMO_OUTPUT = "shoal-demo-output.jsonl"
DEMO_CHECKPOINT = "shoal-demo.db"
EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, printed by ``main``)."""

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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def _chunk_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _build_parser() -> _Parser:
    parser = _Parser(prog="shoal", description="Batch processing that survives.")
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a function over every record of a file",
                         description="Run MODULE:FUNCTION over every input record. With no "
                         "function, run the built-in demo job.")
    run.add_argument("function", nargs="?", metavar="MODULE:FUNCTION",
                     help="e.g. mymodule:process or jobs.py:process (default: the demo)")
    run.add_argument("-i", "--input", metavar="FILE", help="input file, - for stdin")
    run.add_argument("-o", "--output", metavar="FILE",
                     help="output JSON lines (default: stdout; the demo: " + DEMO_OUTPUT + ")")
    run.add_argument("--format", choices=FORMATS, help="input format (default: by extension)")
    run.add_argument("--backend", choices=BACKENDS, default="auto")
    run.add_argument("--workers", type=_positive_int)
    run.add_argument("--retries", type=int, default=0, help="extra attempts per item")
    run.add_argument("--timeout", type=_seconds, help="seconds per item attempt")
    run.add_argument("--rate", type=_seconds, help="at most this many items per second")
    run.add_argument("--checkpoint", metavar="FILE", help="SQLite file to resume from")
    run.add_argument("--chunk-size", type=_chunk_size, default="auto")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--ordered", action=argparse.BooleanOptionalAction, default=True,
                     help="write records in input order (default) or as they finish")
    run.set_defaults(handler=_cmd_run)

    cmp = sub.add_parser("compare", help="sequential vs parallel (workbook), or backends",
                         description="'compare N [WORKERS]': the workbook's sequential vs "
                         "parallel report. 'compare MODULE:FUNCTION --input FILE': run a sample "
                         "of your function on every local backend and recommend one.")
    cmp.add_argument("target", metavar="N|MODULE:FUNCTION")
    cmp.add_argument("workers_pos", nargs="?", type=_positive_int, metavar="WORKERS")
    _workload_args(cmp)
    cmp.add_argument("-i", "--input", metavar="FILE")
    cmp.add_argument("--format", choices=FORMATS)
    cmp.add_argument("--sample", type=_positive_int, default=50)
    cmp.add_argument("--workers", type=_positive_int)
    cmp.set_defaults(handler=_cmd_compare)

    par = sub.add_parser("parallel", help="the workbook's parallel-only run")
    par.add_argument("n", type=_positive_int, metavar="N")
    par.add_argument("workers_pos", nargs="?", type=_positive_int, metavar="WORKERS")
    _workload_args(par)
    par.set_defaults(handler=_cmd_parallel)

    bench = sub.add_parser("benchmark", help="the workbook's four scenarios and tuning")
    bench.add_argument("--workload", choices=_workloads())
    bench.add_argument("--scale", type=float, default=1.0, help="multiply the item counts")
    bench.set_defaults(handler=_cmd_benchmark)

    rep = sub.add_parser("report", help="summarize a checkpoint file")
    rep.add_argument("checkpoint", metavar="CHECKPOINT")
    rep.add_argument("--html", metavar="OUT.html",
                     help='also write an HTML report with charts (pip install "shoal[report]")')
    rep.set_defaults(handler=_cmd_report)
    return parser


def _workloads() -> Sequence[str]:
    from shoal._workbook import WORKLOADS

    return WORKLOADS


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", choices=_workloads(), default="io")
    p.add_argument("--latency", type=_seconds, default=None,
                   help="seconds per simulated I/O call (default 0.02)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)


# --- shoal run ------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop like Ctrl-C, so the checkpoint is committed


def _cmd_run(args: argparse.Namespace) -> int:
    stream = None
    total: int | None
    if args.function is None:
        if args.input is not None:
            raise CliError("--input needs MODULE:FUNCTION (without one, 'shoal run' runs the "
                           "demo on its embedded sample)")
        from shoal.demo import SAMPLE_LINES, word_stats

        fn: Callable[[Any], Any] = word_stats
        source: Iterable[Any] = SAMPLE_LINES
        total, output = len(SAMPLE_LINES), args.output or DEMO_OUTPUT
        checkpoint = args.checkpoint or DEMO_CHECKPOINT
        print(f"shoal demo: shoal.demo:word_stats over {total} embedded lines",
              file=sys.stderr if output == "-" else sys.stdout)
    else:
        fn, _ = load_function(args.function)
        if args.input is None:
            raise CliError("--input FILE is required with MODULE:FUNCTION (- reads stdin)")
        fmt = input_format(args.input, args.format)
        stream = open_input(args.input)
        source = read_records(stream, fmt)
        total = count_records(args.input, fmt) if args.progress else None
        output, checkpoint = args.output or "-", args.checkpoint
    store = None
    try:
        if checkpoint is not None:
            from shoal._sinks.checkpoint import open_checkpoint

            store = open_checkpoint(checkpoint, fn)  # fingerprints fn, not our wrapper
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

    tally = Tally(make_progress(args.progress, total))
    options: dict[str, Any] = {
        "backend": args.backend, "workers": args.workers, "retries": args.retries,
        "timeout": args.timeout, "rate": args.rate, "chunk_size": args.chunk_size,
        "progress": tally, "checkpoint": store, "total": total,
    }
    previous = signal.signal(signal.SIGTERM, _interrupt)
    start = time.perf_counter()
    try:
        for r in shoal.imap(job_call(fn), source, ordered=args.ordered, **options):
            line, error_type = result_line(r)
            writer.write(line)
            if error_type is not None:
                tally.fail(error_type)
        writer.commit()
    except BatchInterrupted as exc:
        writer.abandon()
        where = (f"the checkpoint {checkpoint} keeps them: re-run the same command to resume"
                 if checkpoint else "no --checkpoint, so a re-run starts over")
        partial = f"; partial output in {writer.partial}" if writer.partial else ""
        print(f"shoal: interrupted after {exc.report.total} results; {where}{partial}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        writer.abandon()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = tally.summary(time.perf_counter() - start, writer.path, checkpoint)
    print(summary, file=sys.stderr if writer.path == "-" else sys.stdout)
    return EXIT_ITEMS_FAILED if tally.failed else EXIT_OK


# --- shoal compare / parallel / benchmark / report -----------------------------------


def _workbook_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from shoal._workbook import DEFAULT_LATENCY

    latency = DEFAULT_LATENCY if args.latency is None else args.latency
    return {"workload": args.workload, "latency": latency, "progress": args.progress}


def _cmd_compare(args: argparse.Namespace) -> int:
    try:
        n = int(args.target)
    except ValueError:
        return _compare_backends(args)
    if n < 1:
        raise CliError(f"N must be a whole number >= 1, got {n}")
    from shoal import _workbook

    print(_workbook.compare(n, args.workers_pos or args.workers, **_workbook_kwargs(args))
          .render())
    return EXIT_OK


def _cmd_parallel(args: argparse.Namespace) -> int:
    from shoal import _workbook

    print(_workbook.parallel(args.n, args.workers_pos, **_workbook_kwargs(args)).render())
    return EXIT_OK


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from shoal import _workbook

    print(_workbook.benchmark(args.workload, scale=args.scale).render())
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
        items = list(itertools.islice(read_records(stream, input_format(args.input,
                                                                          args.format)),
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
    from shoal._sinks.checkpoint import summarize

    s = summarize(args.checkpoint)
    share = f" = {s['ok'] / s['total']:.1%}" if s["total"] else ""
    lines = [f"checkpoint: {s['path']}", f"job: {s['job']} (Python {s['python']})",
             f"created: {_when(s['created'])}, last update: {_when(s['last_update'])}",
             f"items: {s['total']} ({s['ok']} ok{share}, {s['failed']} failed)"]
    if s["errors_by_type"]:
        lines.append("failures by type: "
                     + ", ".join(f"{k}: {v}" for k, v in s["errors_by_type"].items()))
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
        print(f"shoal: error: {' '.join(str(exc).split())}", file=sys.stderr)
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
        print(f"shoal: error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set SHOAL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ITEMS_FAILED

