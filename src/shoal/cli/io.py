"""What ``shoal run`` reads and writes: the job function, input records, output records.

Input is streamed: a record is parsed only when the engine pulls it, so a huge
file runs in bounded memory. A record that cannot be parsed (a bad JSON line,
a CSV row with extra fields) does not stop the run: it goes to the engine as a
``BadRecord``, whose call raises ``InvalidRecord``, so it becomes a failed
output record, with its line number, in its place among the others.

Output is one JSON object per line, written to ``OUTPUT.partial`` as results
arrive and renamed to ``OUTPUT`` only once every record is written, so a run
that crashes never leaves a file that looks complete::

    {"index": 0, "ok": true, "value": ...}
    {"index": 1, "ok": false, "error": {"type": "ValueError", "message": "..."}, "item": ...}

A value JSON cannot hold (a set, an object) is written as a *failed* record
with error type ``NotSerializable`` (its ``repr`` is in the message), never
silently as text; numpy scalars and arrays are written with ``tolist()``.
"""

from __future__ import annotations

import csv
import functools
import importlib
import importlib.util
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from shoal._core.calling import is_async_callable
from shoal._core.errors import ShoalError
from shoal._core.results import (
    BatchReport,
    ItemResult,
    error_type_name,
    format_seconds,
    format_throughput,
)
from shoal._sinks.base import RunInfo, RunObserver
from shoal._sinks.progress import ProgressEvent

FORMATS = ("jsonl", "csv", "lines")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
               ".txt": "lines", ".text": "lines", ".log": "lines"}


class CliError(ShoalError):
    """A problem with the command line: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class InvalidRecord(ShoalError, ValueError):
    """An input record could not be parsed; its output record says which line."""


@dataclass(frozen=True)
class BadRecord:
    """Stands in for an unparsable input record; its call raises ``InvalidRecord``."""

    line: int
    text: str
    reason: str


# --- the job function -----------------------------------------------------------------


def load_function(spec: str) -> tuple[Callable[[Any], Any], str]:
    """Import ``MODULE:FUNCTION`` (a dotted module, or a path to a .py file).

    The current directory is put on ``sys.path`` first. A .py file is loaded
    as module ``_shoal_job_<stem>`` with its own directory on ``sys.path``.

    Raises:
        CliError: a malformed spec, a module that cannot be imported, or no
            callable of that name in it.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:FUNCTION (e.g. mymodule:process or jobs.py:process), "
                       f"got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = _load_file(Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                raise CliError(f"cannot import module {module_name!r}: no such module in "
                               f"{os.getcwd()} or on sys.path; check the name, or pass a path "
                               "to a .py file") from None
            raise CliError(f"cannot import module {module_name!r}: {one_line(exc)}") from None
        except Exception as exc:
            raise CliError(f"cannot import module {module_name!r}: {one_line(exc)}") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            hint = f"; it has: {', '.join(names)}" if names else ""
            raise CliError(f"module {module_name!r} has no function {attr!r}{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise CliError(f"{spec!r} is a {type(fn).__name__}, not a function")
    return fn, spec


# A .py file given as MODULE is imported under this prefix, so that it cannot
# shadow a real module of the same name (a local json.py, say).
_FILE_MODULE_PREFIX = "_shoal_job_"


def display_names(text: str) -> str:
    """``text`` with the internal module names of .py jobs as the user wrote
    them: ``_shoal_job_jobs:enrich`` reads ``jobs.py:enrich``."""
    return re.sub(rf"\b{_FILE_MODULE_PREFIX}(\w+)", r"\1.py", text)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise CliError(f"cannot import {str(path)!r}: no such file")
    name = _FILE_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CliError(f"cannot import {str(path)!r}: {one_line(exc)}") from None
    # Worker processes cannot import this module by name: send its code along.
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (whitespace collapsed)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    if isinstance(item, BadRecord):
        raise InvalidRecord(f"line {item.line}: {item.reason}")
    return fn(item)


async def _apply_async(fn: Callable[[Any], Any], item: Any) -> Any:
    if isinstance(item, BadRecord):
        raise InvalidRecord(f"line {item.line}: {item.reason}")
    return await fn(item)


def job_call(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` wrapped so that a ``BadRecord`` fails; async stays async (for the engine)."""
    if is_async_callable(fn):
        return functools.partial(_apply_async, fn)
    return functools.partial(_apply, fn)


# --- input ----------------------------------------------------------------------------


def input_format(path: str, fmt: str | None) -> str:
    """The format of ``path``: ``fmt`` if given, else by extension (stdin: jsonl).

    Raises:
        CliError: the extension is not one shoal knows and ``fmt`` is None.
    """
    if fmt is not None:
        return fmt
    if path == "-":
        return "jsonl"
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise CliError(f"cannot tell the format of {path!r} from its extension; "
                       f"pass --format {'|'.join(FORMATS)}")
    return found


def open_input(path: str) -> TextIO:
    """Open ``path`` (``-``: stdin) as UTF-8 text.

    Raises:
        CliError: the file cannot be opened.
    """
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    try:
        return open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise CliError(f"cannot read input {path!r}: {exc.strerror or exc}") from None


def checked_lines(stream: TextIO, fmt: str, path: str) -> Iterable[str]:
    """The lines of ``stream``, once its first record is known to fit ``fmt``.

    Only one mistake is caught this way, the one that would otherwise fail
    every record alike: JSON lines read as CSV (the first line would become a
    header of JSON fragments, and every row a dict with the wrong keys).

    Raises:
        CliError: ``fmt`` is csv and the first non-blank line is a JSON object
            or array.
    """
    head: list[str] = []
    for raw in stream:
        head.append(raw)
        if raw.strip():
            break
    first = head[-1].strip() if head else ""
    if fmt == "csv" and first:
        try:
            value = json.loads(first)
        except ValueError:
            value = None
        # A CSV header is names; one JSON object, array or number is not (a
        # quoted string, true or null could be a one-column header).
        kinds = {dict: "an object", list: "an array", int: "a number", float: "a number"}
        kind = kinds.get(type(value))
        if kind is not None:
            where = "stdin" if path == "-" else repr(path)
            raise CliError(f"{where} looks like JSON lines, not CSV (line {len(head)} is "
                           f"{kind}); pass --format jsonl")
    return itertools.chain(head, stream)


def read_records(lines: Iterable[str], fmt: str) -> Iterator[Any]:
    """Yield the records of ``lines`` lazily; unparsable ones as ``BadRecord``."""
    if fmt == "csv":
        yield from _csv_records(lines)
        return
    for line_no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if fmt == "lines":
            yield line
        elif line.strip():  # jsonl: blank lines are not records
            try:
                yield json.loads(line)
            except ValueError as exc:
                yield BadRecord(line_no, line, f"invalid JSON ({exc})")


def _csv_records(lines: Iterable[str]) -> Iterator[Any]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadRecord(line, "", f"malformed CSV ({exc})")
            continue
        if not row:
            continue
        if len(row) > len(header):
            yield BadRecord(line, ",".join(row), f"{len(row)} fields, but the header has "
                            f"{len(header)}")
            continue
        yield dict(zip(header, [*row, *[""] * (len(header) - len(row))], strict=True))


def count_records(path: str, fmt: str) -> int | None:
    """How many records a regular jsonl/lines file holds (for ETAs); None if unknown."""
    if path == "-" or fmt == "csv" or not os.path.isfile(path):
        return None
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            n += fmt == "lines" or bool(raw.strip())
    return n


# --- output ---------------------------------------------------------------------------


def _to_json(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _item_json(item: Any) -> Any:
    if isinstance(item, BadRecord):
        return item.text
    return item


def result_line(r: ItemResult[Any]) -> tuple[str, str | None]:
    """The output line of one result, and its error type (None when it is ok)."""
    if r.ok:
        try:
            rec = json.dumps({"index": r.index, "ok": True, "value": r.value},
                             ensure_ascii=False, default=_to_json)
            return rec, None
        except (TypeError, ValueError) as exc:
            shown = repr(r.value)
            shown = shown if len(shown) <= 200 else shown[:197] + "..."
            error = {"type": "NotSerializable",
                     "message": f"the value cannot be written as JSON ({exc}); return dicts, "
                                f"lists, strings, numbers, booleans or None. It was: {shown}"}
    else:
        error = {"type": type(r.error).__name__, "message": str(r.error)}
    failed: dict[str, Any] = {"index": r.index, "ok": False, "error": error,
                              "item": _item_json(r.item)}
    if isinstance(r.item, BadRecord):
        failed["line"] = r.item.line
    return json.dumps(failed, ensure_ascii=False, default=repr), error["type"]


class OutputWriter:
    """Writes records to ``OUTPUT.partial`` and renames it to ``OUTPUT`` on ``commit``.

    ``-`` writes to stdout (no rename: a pipe is complete when it closes).
    """

    def __init__(self, path: str) -> None:
        """Open the partial file now, so an unwritable output fails before any work.

        Raises:
            CliError: the output (or its partial file) cannot be written.
        """
        self.path = path
        self.written = 0
        self._stream: IO[str]
        if path == "-":
            self.partial = None
            self._stream = sys.stdout
            return
        target = Path(path)
        if target.is_dir():
            raise CliError(f"cannot write output {path!r}: it is a directory; pass a file name")
        self.partial = target.with_name(target.name + ".partial")
        try:
            self._stream = open(self.partial, "w", encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write output {path!r}: {exc.strerror or exc}") from None

    def write(self, line: str) -> None:
        self.written += 1
        self._stream.write(line + "\n")
        if self.partial is None:
            self._stream.flush()  # someone may be reading the pipe as we go

    def commit(self) -> None:
        """Make the output complete: flush, fsync and rename the partial file into place."""
        if self.partial is None:
            self._stream.flush()
            return
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        """Stop writing; the partial file stays, named as partial (removed if empty)."""
        if self.partial is None or self._stream.closed:
            return
        self._stream.close()
        if not self.written:
            self.partial.unlink(missing_ok=True)


# --- counting -------------------------------------------------------------------------


class Tally:
    """A ``RunObserver`` that counts results and forwards to a progress display.

    Failures are counted as the engine delivers them, so a failed item counts
    even when it is not written (``--on-error skip_failed``).
    """

    def __init__(self, display: RunObserver | None, *, keep_failures: bool = False) -> None:
        """Count for ``display``; ``keep_failures`` keeps each failed result, to
        name the one that stopped an ``all_or_nothing`` run (which has few)."""
        self.display = display
        self.info: RunInfo | None = None
        self.done = self.failed = self.restored = 0
        self.errors: dict[str, int] = {}
        self._kept: list[ItemResult[Any]] | None = [] if keep_failures else None

    def on_start(self, info: RunInfo) -> None:
        self.info = info
        if self.display is not None:
            self.display.on_start(info)

    def on_backend(self, info: RunInfo) -> None:
        self.info = info  # the backend auto chose, for the summary

    def on_results(self, results: Sequence[ItemResult[Any]]) -> None:
        for r in results:
            self.done += 1
            self.restored += r.restored
            if not r.ok:
                self._count_failure(error_type_name(r.error))
                if self._kept is not None:
                    self._kept.append(r)
        if self.display is not None:
            self.display.on_results(results)

    def on_finish(self, report: BatchReport[Any] | None) -> None:
        if self.display is not None:
            self.display.on_finish(report)

    def unwritable(self) -> None:
        """Count an item that succeeded but was written as failed (``NotSerializable``)."""
        self._count_failure("NotSerializable")

    def _count_failure(self, error_type: str) -> None:
        self.failed += 1
        self.errors[error_type] = self.errors.get(error_type, 0) + 1

    def failure_of(self, error: BaseException) -> ItemResult[Any] | None:
        """The kept failed result whose exception is ``error``, if any."""
        return next((r for r in self._kept or () if r.error is error), None)

    def wall_time(self, measured: float) -> float:
        """The run's wall time: the one the progress display showed, so the
        summary repeats it, else ``measured``."""
        final = getattr(self.display, "final", None)
        return final.elapsed if isinstance(final, ProgressEvent) else measured

    def summary(self, seconds: float, output: str, checkpoint: str | None,
                skipped: bool = False) -> str:
        """The lines printed at the end of ``shoal run``; ``skipped``: failed
        records were left out of the output."""
        ok = self.done - self.failed
        restored = f", {self.restored} restored from checkpoint" if self.restored else ""
        unwritten = ", failed ones not written" if skipped and self.failed else ""
        lines = [f"items: {self.done} ({ok} ok, {self.failed} failed{restored}){unwritten}",
                 f"wall time: {format_seconds(seconds)}, throughput: "
                 + format_throughput(self.done, self.restored, seconds)]
        if self.info is not None:
            lines.append(f"backend: {self.info.backend} x{self.info.workers}")
        if self.errors:
            by_type = sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append("failures by type: " + ", ".join(f"{k}: {v}" for k, v in by_type))
        lines.append(f"output: {'stdout' if output == '-' else output}")
        if checkpoint is not None:
            lines.append(f"checkpoint: {checkpoint} (re-run the same command to resume)")
        return "\n".join(lines)
