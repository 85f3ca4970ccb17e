"""The options as types and as signatures: what a type checker, an IDE and ``help()`` see.

At run time every option goes through ``Options.from_kwargs``, which
validates it. The ``TypedDict``\\ s here say the same to a type checker, for
``**options: Unpack[...]`` in the public calls' overloads, so ``worker=4``,
``workers="4"`` and ``on_error="skip"`` are errors in an editor too, and an
IDE completes the names. ``documented`` gives each public call the runtime
signature ``inspect.signature``, ``help()`` and a notebook's tooltip show:
every option as a keyword-only parameter with its default, and the options'
meanings (``Options``' docstring) appended to its docstring.

Options are split by who owns them: ``WorkerOptions`` belong to a
``shoal.Pool``'s workers (set once on the pool), the rest to each call.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from shoal._core.options import OnError, Options

if TYPE_CHECKING:  # types only: the annotations below are never evaluated
    import os

    from shoal._policies.rate import RateLimit
    from shoal._policies.retry import RetryPolicy
    from shoal._sinks.base import ResultStore, RunObserver
    from shoal._sinks.progress import ProgressEvent

    BackendName = Literal["auto", "sequential", "threads", "asyncio", "processes", "dask"]
    Retries = int | RetryPolicy
    Rate = float | tuple[float, int] | RateLimit | None
    Progress = bool | Callable[[ProgressEvent], object] | RunObserver
    Checkpoint = str | os.PathLike[str] | ResultStore | None

#: options that belong to the workers: a pool sets them once, for its life
WORKER_OPTIONS: tuple[str, ...] = ("backend", "workers", "initializer", "initargs",
                                   "max_items_per_worker", "address", "backend_options")


class CallOptions(TypedDict, total=False):
    """Options of one call (not the workers'), without ``ordered``/``on_error``."""

    retries: Retries
    timeout: float | None
    rate: Rate
    max_in_flight: int | None
    chunk_size: int | Literal["auto"]
    progress: Progress
    total: int | None
    checkpoint: Checkpoint


class WorkerOptions(TypedDict, total=False):
    """Options of the workers: per call for the module functions, per pool for a Pool."""

    backend: BackendName
    workers: int | None
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_items_per_worker: int | None
    address: str | None
    backend_options: Mapping[str, Any]


class MapOptions(CallOptions, WorkerOptions, total=False):
    """``map``/``amap``/``starmap``: ``on_error`` is a parameter of their overloads."""

    ordered: bool


class StreamOptions(CallOptions, WorkerOptions, total=False):
    """``imap``/``aimap``: ``ordered`` is a parameter of theirs."""

    on_error: OnError


class RunOptions(MapOptions, total=False):
    """``run``/``arun_batch``: every option."""

    on_error: OnError


class PoolCallOptions(CallOptions, total=False):
    """A pool's call: ``backend`` only on a pool made with ``backend="auto"``."""

    backend: BackendName


class PoolMapOptions(PoolCallOptions, total=False):
    """``Pool.map``/``amap``/``starmap`` per call."""

    ordered: bool


class PoolStreamOptions(PoolCallOptions, total=False):
    """``Pool.imap``/``aimap`` per call."""

    on_error: OnError


class PoolRunOptions(PoolMapOptions, total=False):
    """``Pool.run``/``arun_batch`` per call."""

    on_error: OnError


class PoolDefaults(CallOptions, total=False):
    """A pool's defaults for its calls (its workers' options are parameters)."""

    ordered: bool
    on_error: OnError


# ------------------------------------------------------------ runtime signatures
F = TypeVar("F", bound=Callable[..., Any])

#: defaults shown where the dataclass's differ from what a caller writes
_SHOWN_DEFAULTS: dict[str, Any] = {"retries": 0}


def option_help() -> dict[str, str]:
    """Each option's meaning, from the ``Attributes:`` section of ``Options``' docstring."""
    doc = inspect.cleandoc(Options.__doc__ or "")
    section = doc.split("Attributes:", 1)[1]
    meanings: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if line.startswith("    ") and not line.startswith("        "):
            name, _, text = line.strip().partition(":")
            meanings[name] = text.strip()
        elif name and line.strip():
            meanings[name] += " " + line.strip()
    return meanings


def option_defaults() -> dict[str, Any]:
    """Each option's default as a caller writes it."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Options):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        else:
            out[f.name] = f.default_factory()  # type: ignore[misc,operator]
    out.update(_SHOWN_DEFAULTS)
    return out


def documented(*, on_error: OnError | None = None,
               without: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a public call every option as a keyword-only parameter in its
    runtime signature, and the options' meanings in its docstring.

    ``on_error``: the call's default; ``without``: options it does not take
    (a pool's methods: the workers' options). Parameters the function names
    itself (``fn``, ``items``, ``ordered``) keep their place and default.
    """

    def decorate(fn: F) -> F:
        own = inspect.signature(fn)
        params = [p for p in own.parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.KEYWORD_ONLY)]
        named = {p.name for p in own.parameters.values()}
        defaults = option_defaults()
        if on_error is not None:
            defaults["on_error"] = on_error
        meanings = option_help()
        shown = [n for n in meanings if n not in without and n not in named - {"on_error"}]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n])
                   for n in shown]
        fn.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        lines = [f"    {n}: {meanings[n]}" for n in shown]
        if without:
            lines.append(f"    ({', '.join(without)}: the pool's own, set on shoal.Pool; "
                         "backend= also per call on a pool made with backend='auto')")
        lines = [textwrap.fill(line, 79, subsequent_indent=" " * 8) for line in lines]
        fn.__doc__ = (inspect.cleandoc(fn.__doc__ or "") + "\n\nOptions (keyword-only, "
                      "the same on every backend; see shoal.Options):\n" + "\n".join(lines))
        return fn

    return decorate
