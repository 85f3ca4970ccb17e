"""Calling a function with several arguments, where the engine hands one item.

The engine runs ``fn(item)``. ``starmap`` items are argument tuples and the
executor's items are whole calls ``(fn, args, kwargs)``; the wrappers here
turn them back into ``fn(*args)`` and ``fn(*args, **kwargs)``. They are
module-level classes and functions, so they pickle by reference to a worker
process or a Dask worker, carrying ``fn`` (by reference, or by value through
cloudpickle for a lambda or a function of ``__main__``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal._core.calling import is_async_callable, run_awaitable

#: what the executor sends as one item: the function, its arguments, its keywords
Call = tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]


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


def spread(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """The one-argument function that runs ``fn`` on an argument tuple.

    Raises:
        InvalidOptionError: ``fn`` is not callable (checked by the run).
    """
    if not callable(fn):
        return fn  # the run refuses it with the usual message
    return ASpread(fn) if is_async_callable(fn) else Spread(fn)


def invoke(call: Call) -> Any:
    """Run one executor call; an awaitable result is awaited on this thread's loop
    (so ``submit(async_fn, x)`` gives the value, as ``shoal.map`` does)."""
    fn, args, kwargs = call
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return run_awaitable(value)
    return value


async def ainvoke(call: Call) -> Any:
    """``invoke`` on the asyncio backend: awaited on the run's loop."""
    fn, args, kwargs = call
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value
