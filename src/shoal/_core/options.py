"""The options every call accepts, validated once into a frozen ``Options``.

Defaults (documented in the README):

============== ============================ =========================================
option         default                      meaning
============== ============================ =========================================
backend        ``"auto"``                   sequential, threads, asyncio, processes,
                                            dask, or auto (probe and choose)
workers        per backend                  threads: min(32, cpus + 4); asyncio: 100;
                                            processes: cpus; sequential: 1
ordered        True                         results in input order (imap/aimap)
on_error       per call                     map/amap: "all_or_nothing";
                                            run/imap/aimap: "collect_errors"
retries        0                            int or RetryPolicy
timeout        None                         seconds per item (attempt)
rate           None                         items/s, (rate, burst) or RateLimit
max_in_flight  4 x workers x chunk (>=64)   items pulled but not yet delivered
                                            (asyncio: 4 x workers + chunk)
chunk_size     ``"auto"``                   items sent to a worker at once (asyncio:
                                            items pulled at once, still run one per
                                            worker; auto: min(1024, workers))
============== ============================ =========================================
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shoal._core.errors import InvalidOptionError
from shoal._core.validators import did_you_mean, seconds, whole_number
from shoal._policies.rate import RateLimit, as_rate_limit
from shoal._policies.retry import RetryPolicy, as_retry_policy

OnError = Literal["all_or_nothing", "skip_failed", "collect_errors"]
ON_ERROR_CHOICES: tuple[str, ...] = ("all_or_nothing", "skip_failed", "collect_errors")
BACKENDS: tuple[str, ...] = ("auto", "sequential", "threads", "asyncio", "processes", "dask")


@dataclass(frozen=True)
class Options:
    """The options of one run, validated: ``Options.from_kwargs(on_error, kwargs)``.

    Every public call (``shoal.map``, ``run``, ``imap``, ``amap``, ``aimap``,
    ``arun_batch``, ``starmap``, ``shoal.Pool`` and its methods) takes these
    as keyword arguments, the same on every backend. An unknown name or a bad
    value raises ``InvalidOptionError`` naming the fix (``unknown option
    'worker'; did you mean 'workers'?``).

    Attributes:
        backend: where items run: "sequential" (the caller's thread),
            "threads", "asyncio" (coroutines on one event loop), "processes",
            "dask", or "auto" (run the first items, measure, choose).
            Default "auto".
        workers: how many workers run items at once. Default per backend:
            threads min(32, CPUs + 4) as ThreadPoolExecutor; asyncio 100;
            processes one per CPU; sequential 1.
        ordered: deliver results in input order (default True); False: as
            they finish.
        on_error: what a failed item does. "all_or_nothing" (the default of
            map, amap, starmap): stop scheduling and raise the first failed
            item's own exception; "skip_failed": leave failures out of the
            values; "collect_errors" (the default of run, imap, aimap,
            arun_batch): keep going and keep every failure with its item (in
            map, the exception stands in the failed item's place).
        retries: attempts after the first: an int (default 0) or
            RetryPolicy(retries, backoff=0.1, factor=2, max_delay=30,
            jitter=0.1, retry_on=(Exception,), predicate=None).
        timeout: seconds per attempt of one item (default None: no limit).
            A timed-out process is killed, a thread abandoned and replaced,
            a coroutine cancelled; the item fails with TimeoutError.
        rate: at most this many items per second, over any window: 10,
            (10, burst) or RateLimit(10, burst=5). Default None.
        max_in_flight: items pulled from the input and not yet delivered,
            the memory bound. Default max(64, 4 x workers x chunk); asyncio
            4 x workers + chunk.
        chunk_size: items handed to a worker at once; "auto" (default) grows
            chunks for tiny items. On asyncio: items pulled at once, still
            run one per worker.
        progress: True (a widget in a notebook, records of the "shoal"
            logger when logging shows them, a bar on a terminal, else a line
            on stderr every 5 s), a callback receiving ProgressEvents, or an
            observer. Default False.
        total: how many items there are, for progress when items has no
            len(). Default None.
        checkpoint: path of a SQLite file: finished items are recorded and
            skipped when the same job runs again. Default None.
        initializer: called once per worker before its first item, with
            initargs (load a model, open a connection). Default None.
        initargs: the initializer's arguments. Default ().
        max_items_per_worker: replace a worker after it ran this many items
            (leaky code). Default None.
        address: the Dask scheduler to run on ("tcp://host:8786"); without
            it, backend="dask" starts a LocalCluster. Default None.
        backend_options: settings of one backend (dask: client=, an open
            distributed.Client to run on). Default {}.
    """

    backend: str = "auto"
    workers: int | None = None
    ordered: bool = True
    on_error: OnError = "collect_errors"
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    rate: RateLimit | None = None
    max_in_flight: int | None = None
    chunk_size: int | Literal["auto"] = "auto"
    progress: Any = False
    total: int | None = None
    checkpoint: Any = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    max_items_per_worker: int | None = None
    address: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, on_error_default: OnError, kwargs: Mapping[str, Any]) -> Options:
        """Validate user keyword arguments.

        Every value is checked here, before the run starts a worker or pulls
        an item, and stored in the form the engine uses (a plain int or
        float, a tuple, a ``RetryPolicy``, a ``RateLimit``).

        Raises:
            InvalidOptionError: an unknown option (with the closest known name)
                or a bad value, naming the problem and the fix.
        """
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise InvalidOptionError(
                    f"unknown option {name!r}{hint} Known options: {', '.join(sorted(known))}"
                )
        values = dict(kwargs)
        values.setdefault("on_error", on_error_default)
        values["retries"] = as_retry_policy(values.get("retries"))
        values["rate"] = as_rate_limit(values.get("rate"))
        opts = cls(**values)
        return dataclasses.replace(opts, **opts._validated())

    def _validated(self) -> dict[str, Any]:
        """Check every value; return the ones to store in another form."""
        clean: dict[str, Any] = {}
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise InvalidOptionError(
                f"unknown backend {self.backend!r}{did_you_mean(self.backend, BACKENDS)}; "
                f"choose one of {', '.join(BACKENDS)}"
            )
        for name, low, fix in _COUNTS:
            value = getattr(self, name)
            if value is not None:
                clean[name] = whole_number(name, value, low=low, fix=fix)
        if self.chunk_size != "auto":
            clean["chunk_size"] = whole_number("chunk_size", self.chunk_size, low=1,
                                               fix='or use chunk_size="auto"')
        if not isinstance(self.on_error, str) or self.on_error not in ON_ERROR_CHOICES:
            raise InvalidOptionError(
                f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {self.on_error!r}"
                f"{did_you_mean(self.on_error, ON_ERROR_CHOICES)}"
            )
        if self.timeout is not None:
            clean["timeout"] = seconds("timeout", self.timeout, allow_zero=False,
                                       fix="use None for no timeout")
        if not isinstance(self.ordered, bool):
            raise InvalidOptionError(f"ordered must be True or False, got {self.ordered!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise InvalidOptionError(f"initializer must be callable, got {self.initializer!r}")
        clean["initargs"] = self._initargs()
        _check_checkpoint(self.checkpoint)
        _check_progress(self.progress)
        self._check_backend_settings()
        return clean

    def _initargs(self) -> tuple[Any, ...]:
        args = self.initargs
        if isinstance(args, (str, bytes)) or not isinstance(args, (tuple, list)):
            raise InvalidOptionError(
                f"initargs must be a tuple of the initializer's arguments, got {args!r}; "
                f"for one argument write initargs=({args!r},)"
            )
        if args and self.initializer is None:
            raise InvalidOptionError(
                "initargs are the arguments of initializer=, but no initializer was given; "
                "pass initializer= too, or drop initargs"
            )
        return tuple(args)

    def _check_backend_settings(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise InvalidOptionError(
                f"address must be a Dask scheduler address such as 'tcp://host:8786', "
                f"got {self.address!r}"
            )
        if not isinstance(self.backend_options, Mapping):
            raise InvalidOptionError(
                f"backend_options must be a dict of settings for the backend, "
                f"got {self.backend_options!r} ({type(self.backend_options).__name__})"
            )
        reaches_dask = self.backend == "dask" or (self.backend == "auto" and self.address)
        if self.backend_options and not reaches_dask:
            raise InvalidOptionError(
                f'backend_options are read by backend="dask" only, and this run uses '
                f'backend="{self.backend}" (auto picks dask only with address=); '
                'use backend="dask", or drop backend_options'
            )


#: options that are counts: (name, lowest value, the fix for a value below it)
_COUNTS: tuple[tuple[str, int, str], ...] = (
    ("workers", 1, "use workers=1 to run one at a time"),
    ("max_in_flight", 1, ""),
    ("total", 0, ""),
    ("max_items_per_worker", 1, "use None to never recycle a worker"),
)


def _check_checkpoint(spec: object) -> None:
    # Imported here: the checkpoint store's protocol module imports the
    # results, which import nothing of this module; at module level it
    # would still load the sinks package for every import of shoal.
    from shoal._sinks.base import ResultStore

    if spec is None or spec is False or isinstance(spec, ResultStore):
        return
    if isinstance(spec, (str, os.PathLike)) and os.fspath(spec) not in ("", b""):
        return
    raise InvalidOptionError(
        f"checkpoint must be the path of a SQLite file (a str or pathlib.Path), "
        f"got {spec!r} ({type(spec).__name__}); e.g. checkpoint=\"run.db\", or None for none"
    )


def _check_progress(progress: object) -> None:
    # make_progress (in the sinks) tells an observer from a callback and
    # checks them; here only values that can be neither are refused, so the
    # error comes with the others, before the run is set up.
    if progress is None or isinstance(progress, bool) or callable(progress):
        return
    if all(hasattr(progress, m) for m in ("on_start", "on_results", "on_finish")):
        return
    raise InvalidOptionError(
        f"progress must be True, False, a callable taking a shoal.ProgressEvent, or an "
        f"observer (on_start, on_results, on_finish), got {progress!r}"
    )
