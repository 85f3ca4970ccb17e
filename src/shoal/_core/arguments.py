"""Calling a function with several arguments, where the engine hands one item.

The engine runs ``fn(item)``; a ``starmap`` item is a tuple of arguments, and
the wrappers here turn it back into ``fn(*args)``. They are module-level
classes, so they pickle by reference to a worker process or a Dask worker,
carrying ``fn`` (by reference, or by value through cloudpickle for a lambda
or a function of ``__main__``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from shoal._core.calling import is_async_callable


class _Spread:
    """Base of the starmap wrappers: ``fn`` and the names a checkpoint reads.

    A checkpoint identifies its job by the function's module, qualified name
    and code (``_sinks/checkpoint.py``); the wrapper carries ``fn``'s, marked
    ``(*args)``, so that a starmap job is known by its function and told
    apart from a ``map`` of the same function.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        owner = fn if hasattr(fn, "__qualname__") else type(fn)
        self.__module__ = getattr(owner, "__module__", None) or "builtins"
        self.__qualname__ = f"{owner.__qualname__}(*args)"
        code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
        if code is not None:
            self.__code__ = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.fn,))

    def __repr__(self) -> str:
        return f"starmap({self.fn!r})"


class Spread(_Spread):
    """``fn(*args)``: a starmap item is a tuple of arguments."""

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)


class ASpread(_Spread):
    """``await fn(*args)``, for an ``async def`` ``fn``."""

    async def __call__(self, args: Iterable[Any]) -> Any:
        return await self.fn(*args)


def unwrap_spread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function a starmap wrapper calls (a wrapper is new per call, its
    function is not); any other callable itself."""
    return fn.fn if isinstance(fn, _Spread) else fn


def spread(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """The one-argument function that runs ``fn`` on an argument tuple.

    Raises:
        InvalidOptionError: ``fn`` is not callable (checked by the run).
    """
    if not callable(fn):
        return fn  # the run refuses it with the usual message
    return ASpread(fn) if is_async_callable(fn) else Spread(fn)
