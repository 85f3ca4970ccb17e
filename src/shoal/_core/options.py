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

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shoal._core.errors import InvalidOptionError
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

        Raises:
            InvalidOptionError: an unknown option (with the closest known name)
                or a value out of range, naming the fix.
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
        opts._validate()
        return opts

    def _validate(self) -> None:
        if self.backend not in BACKENDS:
            close = difflib.get_close_matches(str(self.backend), BACKENDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidOptionError(
                f"unknown backend {self.backend!r}{hint}; choose one of {', '.join(BACKENDS)}"
            )
        _positive_int("workers", self.workers)
        _positive_int("max_in_flight", self.max_in_flight)
        _positive_int("total", self.total, allow_zero=True)
        _positive_int("max_items_per_worker", self.max_items_per_worker)
        if self.chunk_size != "auto":
            _positive_int("chunk_size", self.chunk_size, hint='or "auto"')
        if self.on_error not in ON_ERROR_CHOICES:
            raise InvalidOptionError(
                f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {self.on_error!r}"
            )
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
                raise InvalidOptionError(
                    f"timeout must be seconds (a number), got {self.timeout!r}"
                )
            if not self.timeout > 0:
                raise InvalidOptionError(
                    f"timeout must be > 0 seconds, got {self.timeout!r}; use None for no timeout"
                )
        if self.initializer is not None and not callable(self.initializer):
            raise InvalidOptionError(f"initializer must be callable, got {self.initializer!r}")
        if not isinstance(self.ordered, bool):
            raise InvalidOptionError(f"ordered must be True or False, got {self.ordered!r}")


def _positive_int(name: str, value: object, *, allow_zero: bool = False, hint: str = "") -> None:
    if value is None:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = f" {hint}" if hint else ""
        raise InvalidOptionError(
            f"{name} must be a whole number >= {low}{extra}, got {value!r}"
            + ("; use workers=1 to run one at a time" if name == "workers" else "")
        )
