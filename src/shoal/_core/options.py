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
    """Validated options of one run. Build with ``Options.from_kwargs``."""

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
