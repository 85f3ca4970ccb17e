"""Retry policy: a pure decision, ``delay_before_retry(attempt, error)``.

The engine asks the policy after each failed attempt; the policy answers with
the seconds to wait before the next attempt, or None to give up. It never
sleeps: the waiting happens in the engine (retry heap), so the policy is tested
without sleeping and retries never hold a worker while they back off.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from shoal._core.errors import InvalidOptionError
from shoal._core.validators import MAX_SECONDS, real_number, seconds, whole_number

RetryPredicate = Callable[[BaseException], bool]
RetryOn = (type[BaseException] | tuple[type[BaseException], ...]
           | list[type[BaseException]])


#: Ctrl-C and an exit are never worth another attempt, whatever retry_on says
_NEVER_RETRIED = (KeyboardInterrupt, SystemExit)


def _exception_classes(value: object) -> tuple[type[BaseException], ...]:
    """``retry_on`` as a tuple of exception classes (one class, a list or a tuple).

    Raises:
        InvalidOptionError: anything else, or a member that is not an exception class.
    """
    members = (value,) if isinstance(value, type) else value
    if not isinstance(members, (tuple, list)):
        raise InvalidOptionError(
            f"RetryPolicy retry_on must be an exception class or a tuple of them, "
            f"got {value!r}; e.g. retry_on=(ConnectionError, TimeoutError)"
        )
    for member in members:
        if not (isinstance(member, type) and issubclass(member, BaseException)):
            where = "" if member is value else f" in {value!r}"
            raise InvalidOptionError(
                f"RetryPolicy retry_on must hold exception classes, got {member!r}{where}; "
                "e.g. retry_on=(ConnectionError, TimeoutError)"
            )
    return tuple(members)


def as_retry_policy(value: int | RetryPolicy | None) -> RetryPolicy:
    """Normalize the ``retries=`` option.

    Raises:
        InvalidOptionError: the value is neither an int nor a RetryPolicy.
    """
    if value is None:
        return NO_RETRY
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return RetryPolicy(retries=value)  # type: ignore[arg-type]  # it checks the number
    raise InvalidOptionError(
        f"retries must be an int or a shoal.RetryPolicy, got {value!r} ({type(value).__name__})"
    )


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
        retry_on: exception classes that are worth retrying, one class or a
            tuple (or list) of them (default: any ``Exception``;
            ``KeyboardInterrupt`` and ``SystemExit`` never are).
        predicate: optional extra test on the exception; both must agree. If
            it raises, the item fails with the predicate's exception.

    Raises:
        InvalidOptionError: a count that is not a whole number >= 0; a delay
            that is not a finite number of seconds >= 0 a thread can wait;
            a jitter below 0 or a factor below 1 (or either not finite); a
            ``retry_on`` member that is not an exception class; a
            ``predicate`` that is not callable.
    """

    retries: int = 0
    backoff: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    # Given as one class, a tuple or a list; always a tuple once made.
    retry_on: RetryOn = (Exception,)
    predicate: RetryPredicate | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here, when the policy is made: a malformed policy used to
        # fail only when the engine consulted it after a failed attempt, on a
        # worker's thread, mid-run.
        retries = whole_number("retries", self.retries, low=0,
                               fix="use retries=0 to disable retrying")
        clean: dict[str, object] = {"retries": retries}
        for name in ("backoff", "max_delay"):
            clean[name] = seconds(f"RetryPolicy {name}", getattr(self, name), allow_zero=True)
        jitter = real_number("RetryPolicy jitter", self.jitter, "a fraction >= 0 (0.1 = +10%)")
        if jitter < 0:
            raise InvalidOptionError(
                f"RetryPolicy jitter must be a fraction >= 0 (0.1 = +10%), got {self.jitter!r}")
        factor = real_number("RetryPolicy factor", self.factor, "a number >= 1")
        if factor < 1:
            raise InvalidOptionError(
                f"RetryPolicy factor must be >= 1 (1 = constant delay), got {self.factor!r}"
            )
        clean.update(jitter=jitter, factor=factor, retry_on=_exception_classes(self.retry_on))
        if self.predicate is not None and not callable(self.predicate):
            raise InvalidOptionError(
                f"RetryPolicy predicate must be a function of the exception returning True to "
                f"retry, or None, got {self.predicate!r}"
            )
        if not callable(getattr(self.rng, "random", None)):
            raise InvalidOptionError(f"RetryPolicy rng must be a random.Random, got {self.rng!r}")
        for name, value in clean.items():
            object.__setattr__(self, name, value)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether attempt number ``attempt`` (1-based) failing with ``error`` earns another."""
        if attempt >= self.max_attempts:
            return False
        classes = cast(tuple[type[BaseException], ...], self.retry_on)  # made a tuple
        if not isinstance(error, classes) or isinstance(error, _NEVER_RETRIED):
            return False
        return self.predicate is None or bool(self.predicate(error))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            grown = self.backoff * self.factor ** (attempt - 1)
        except OverflowError:  # factor ** 1100 and the like: far past any max_delay
            grown = math.inf if self.backoff else 0.0
        base = min(grown, self.max_delay)
        if self.jitter and base:
            base += base * self.jitter * self.rng.random()
        # A large jitter could push it past what a worker's wait accepts.
        return min(base, MAX_SECONDS)

    def delay_before_retry(self, attempt: int, error: BaseException) -> float | None:
        """The decision: seconds before the next attempt, or None to give up."""
        if not self.should_retry(attempt, error):
            return None
        return self.delay(attempt)


NO_RETRY = RetryPolicy(retries=0)
