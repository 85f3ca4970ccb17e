"""Checks of single option values, shared by ``Options``, ``RetryPolicy`` and ``RateLimit``.

Each check returns the value in the form the engine uses (a plain ``int`` or
``float``) or raises ``InvalidOptionError`` naming the option, what was wrong
and the fix. They exist so that a bad value is refused when the call is made,
never as a raw ``TypeError``/``OverflowError`` from deep inside a worker,
after items have run.

The bounds are those of the machinery the values end up in: a count is
sliced and compared as a C ``Py_ssize_t`` (``sys.maxsize``); a number of
seconds becomes a wait on a lock or a condition, which refuses anything
longer than ``threading.TIMEOUT_MAX`` (about 292 years on Linux).
"""

from __future__ import annotations

import difflib
import math
import numbers
import sys
import threading
from collections.abc import Sequence

from shoal._core.errors import InvalidOptionError

#: the longest wait a thread can be asked for: any longer timeout or delay
#: raises OverflowError inside the wait
MAX_SECONDS: float = threading.TIMEOUT_MAX
#: the largest count: an index, a slice bound or an ``islice`` stop
MAX_COUNT: int = sys.maxsize


def whole_number(name: str, value: object, *, low: int, fix: str = "",
                 keyword: str | None = None) -> int:
    """``value`` as an ``int`` in ``low .. MAX_COUNT``.

    ``fix`` is appended to the message of a value below ``low``; ``keyword``
    is how the caller spells it (``name`` by default), for the fix of a float.

    Raises:
        InvalidOptionError: not an integer (a float gets the nearest whole
            numbers as the fix), a bool, or out of range.
    """
    base = f"{name} must be a whole number >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value):
            lower, upper = max(low, math.floor(float(value))), max(low, math.ceil(float(value)))
            kw = keyword or name
            choices = f"{kw}={lower}" if lower == upper else f"{kw}={lower} or {kw}={upper}"
            raise InvalidOptionError(f"{base}, got {value!r}; use {choices}")
        raise InvalidOptionError(f"{base}, got {shown(value)} ({type(value).__name__})")
    number = int(value)
    if number < low:
        raise InvalidOptionError(f"{base}, got {number!r}" + (f"; {fix}" if fix else ""))
    if number > MAX_COUNT:
        raise InvalidOptionError(
            f"{name} must be at most {MAX_COUNT} (sys.maxsize), got {shown(number)}")
    return number


def real_number(name: str, value: object, what: str = "a number") -> float:
    """``value`` as a finite ``float``.

    Raises:
        InvalidOptionError: not a real number, a bool, NaN, infinite, or too
            large for a float.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(
            f"{name} must be {what}, got {shown(value)} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidOptionError(f"{name} must be {what}, got {shown(value)}: too large") from None
    if not math.isfinite(number):
        raise InvalidOptionError(f"{name} must be {what}, got {value!r}: it must be finite")
    return number


def seconds(name: str, value: object, *, allow_zero: bool, fix: str = "") -> float:
    """``value`` as seconds: a finite ``float`` in ``0 .. MAX_SECONDS``
    (``> 0`` unless ``allow_zero``).

    Raises:
        InvalidOptionError: not a number, NaN, negative (or zero), or longer
            than a thread can wait; ``fix`` is appended to the message.
    """
    tail = f"; {fix}" if fix else ""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if real and value != value:  # NaN (math.isnan would overflow on a huge int)
        raise InvalidOptionError(f"{name} must be seconds (a number), got nan{tail}")
    if real and value > MAX_SECONDS:  # type: ignore[operator]  # a Real
        raise InvalidOptionError(
            f"{name} must be at most {MAX_SECONDS:.0f} seconds (the longest a thread can "
            f"wait), got {shown(value)}{tail}")
    number = real_number(name, value, "seconds (a number)")
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidOptionError(f"{name} must be {bound} seconds, got {value!r}{tail}")
    return number


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 400-digit number reads badly)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-3:]}"


def did_you_mean(value: object, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice ``value`` most likely meant, or ``""``.

    A prefix counts (``"skip"`` for ``"skip_failed"``), then spelling.
    """
    if not isinstance(value, str) or len(value) < 2:
        return ""
    lowered = value.lower().replace("-", "_")
    starts = [c for c in choices if c.startswith(lowered) or lowered.startswith(c)]
    close = starts or difflib.get_close_matches(lowered, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
