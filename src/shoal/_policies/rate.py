"""Rate limiting: a token bucket whose decision is pure.

``TokenBucket.try_take(n, now)`` either grants ``n`` tokens (returns 0.0) or
returns how long to wait before asking again, consuming nothing. Because tokens
are consumed only when granted, any window of length ``T`` sees at most
``burst + rate * T`` grants, however many workers ask at once. The caller
passes ``now``, so the limiter is tested with a fake clock and never sleeps.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from shoal._core.errors import InvalidOptionError
from shoal._core.validators import MAX_SECONDS, real_number, whole_number


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_second`` items a second, allowing bursts of ``burst``.

    Raises:
        InvalidOptionError: a rate that is not a finite positive number (or
            so slow that one item waits longer than a thread can), or a burst
            that is not a whole number >= 1.
    """

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        rate = self.per_second
        what = "a positive number of items per second"
        if isinstance(rate, numbers.Real) and not isinstance(rate, bool) and rate == math.inf:
            raise InvalidOptionError(f"rate must be {what}, got inf; use rate=None for no limit")
        rate = real_number("rate", rate, what)
        if rate <= 0:
            raise InvalidOptionError(
                f"rate must be {what}, got {self.per_second!r}; use rate=None for no limit")
        if 1 / rate > MAX_SECONDS:  # the wait for one token must be one a thread can do
            raise InvalidOptionError(
                f"rate must be at least {1 / MAX_SECONDS:.3g} items per second (one item in "
                f"the longest wait a thread can do), got {self.per_second!r}")
        burst = whole_number("rate burst", self.burst, low=1, keyword="burst")
        object.__setattr__(self, "per_second", rate)
        object.__setattr__(self, "burst", burst)


def as_rate_limit(value: float | tuple[float, int] | RateLimit | None) -> RateLimit | None:
    """Normalize the ``rate=`` option: ``10``, ``(10, 5)`` or ``RateLimit(10, burst=5)``.

    Raises:
        InvalidOptionError: any other shape.
    """
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return RateLimit(value[0], value[1])  # it checks both
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return RateLimit(value)  # type: ignore[arg-type]  # it checks the number
    raise InvalidOptionError(
        f"rate must be items per second (10), a (rate, burst) pair such as (10, 5), or "
        f"shoal.RateLimit(10, burst=5), got {value!r} ({type(value).__name__})"
    )


class TokenBucket:
    """Token bucket state for one run. Not thread-safe: the engine's lock guards it."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = float(limit.per_second)
        self.capacity = float(limit.burst)
        # Start full so the first burst goes out at once, as users expect.
        self._tokens = self.capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def try_take(self, n: int, now: float) -> float:
        """Grant ``n`` tokens and return 0.0, or return seconds to wait (nothing taken)."""
        if n > self.capacity:
            raise InvalidOptionError(
                f"a chunk of {n} items needs more tokens than the rate burst "
                f"({int(self.capacity)}); lower chunk_size or raise the burst"
            )
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate
