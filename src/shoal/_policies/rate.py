"""Rate limiting: a token bucket whose decision is pure.

``TokenBucket.try_take(n, now)`` either grants ``n`` tokens (returns 0.0) or
returns how long to wait before asking again, consuming nothing. Because tokens
are consumed only when granted, any window of length ``T`` sees at most
``burst + rate * T`` grants, however many workers ask at once. The caller
passes ``now``, so the limiter is tested with a fake clock and never sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal._core.errors import InvalidOptionError


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_second`` items a second, allowing bursts of ``burst``.

    Raises:
        InvalidOptionError: a non-positive rate or a burst below 1.
    """

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.per_second, (int, float)) or self.per_second <= 0:
            raise InvalidOptionError(
                f"rate must be a positive number of items per second, got {self.per_second!r}"
            )
        if not isinstance(self.burst, int) or self.burst < 1:
            raise InvalidOptionError(f"rate burst must be a whole number >= 1, got {self.burst!r}")


def as_rate_limit(value: float | tuple[float, int] | RateLimit | None) -> RateLimit | None:
    """Normalize the ``rate=`` option: ``10``, ``(10, 5)`` or ``RateLimit(10, burst=5)``.

    Raises:
        InvalidOptionError: any other shape.
    """
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return RateLimit(float(value[0]), int(value[1]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return RateLimit(float(value))
    raise InvalidOptionError(
        f"rate must be items per second (10), a (rate, burst) pair or shoal.RateLimit, "
        f"got {value!r}"
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
