"""Retry policy: a pure decision, ``delay_before_retry(attempt, error)``.

The engine asks the policy after each failed attempt; the policy answers with
the seconds to wait before the next attempt, or None to give up. It never
sleeps: the waiting happens in the engine (retry heap), so the policy is tested
without sleeping and retries never hold a worker while they back off.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal._core.errors import InvalidOptionError

RetryPredicate = Callable[[BaseException], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failed item is tried again.

    Args:
        retries: extra attempts after the first (``retries=3`` runs at most 4 times).
        backoff: seconds before the first retry.
        factor: each further retry waits ``factor`` times longer (exponential).
        max_delay: upper bound of one wait, before jitter.
        jitter: fraction of the delay added at random (0.1 = up to +10%), so
            workers that failed together do not retry in lockstep.
        retry_on: exception classes that are worth retrying (default: any
            ``Exception``; ``KeyboardInterrupt`` and ``SystemExit`` never are).
        predicate: optional extra test on the exception; both must agree.

    Raises:
        InvalidOptionError: a negative count or delay, or a factor below 1.
    """

    retries: int = 0
    backoff: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    predicate: RetryPredicate | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise InvalidOptionError(
                f"retries must be a whole number >= 0, got {self.retries!r}; "
                "use retries=0 to disable retrying"
            )
        for name in ("backoff", "max_delay", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InvalidOptionError(f"RetryPolicy {name} must be a number >= 0, got {value!r}")
        if self.factor < 1:
            raise InvalidOptionError(
                f"RetryPolicy factor must be >= 1 (1 = constant delay), got {self.factor!r}"
            )
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether attempt number ``attempt`` (1-based) failing with ``error`` earns another."""
        if attempt >= self.max_attempts:
            return False
        if not isinstance(error, self.retry_on):
            return False
        return self.predicate is None or bool(self.predicate(error))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.backoff * self.factor ** (attempt - 1), self.max_delay)
        if self.jitter and base:
            base += base * self.jitter * self.rng.random()
        return base

    def delay_before_retry(self, attempt: int, error: BaseException) -> float | None:
        """The decision: seconds before the next attempt, or None to give up."""
        if not self.should_retry(attempt, error):
            return None
        return self.delay(attempt)


NO_RETRY = RetryPolicy(retries=0)


def as_retry_policy(value: int | RetryPolicy | None) -> RetryPolicy:
    """Normalize the ``retries=`` option.

    Raises:
        InvalidOptionError: the value is neither an int nor a RetryPolicy.
    """
    if value is None:
        return NO_RETRY
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(retries=value)
    raise InvalidOptionError(
        f"retries must be an int or a shoal.RetryPolicy, got {value!r} ({type(value).__name__})"
    )
