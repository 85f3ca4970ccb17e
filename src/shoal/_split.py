"""Splitting a list of items into batches, and merging the batches back.

A workflow engine that starts one task per item pays the start-up cost of a
task for every item, and may start more tasks than the cluster can run at
once. The usual remedy is to group the items into batches, run one task per
batch, and flatten the processed batches at the end::

    batches = split(items, max_batches=5)           # one task per batch
    processed = [[f(x) for x in b] for b in batches]
    results = merge(processed)                       # back to one flat list

Invariant of every function here: concatenating the batches, in order, gives
back the input exactly (no item dropped, duplicated or reordered), so
``merge(split(x, ...)) == list(x)``. Every batch is non-empty.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

from shoal._core.errors import InvalidItemsError, InvalidOptionError

__all__ = ["iter_batches", "merge", "split"]

T = TypeVar("T")


def _positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1.

    Raises:
        InvalidOptionError: ``value`` is not an int (bools are refused too) or is < 1.
    """
    # bool is a subclass of int, but split(x, True) is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(
            f"{name} must be an int >= 1, got {value!r} ({type(value).__name__}); "
            f"pass a whole number such as {name}=4"
        )
    if value < 1:
        raise InvalidOptionError(f"{name} must be >= 1, got {value}; pass {name}=1 or more")
    return value


def _materialize(items: Iterable[T]) -> list[T]:
    """Return ``items`` as a list (a copy when it already is one).

    Raises:
        InvalidItemsError: ``items`` is not iterable.
    """
    try:
        iterator = iter(items)
    except TypeError as exc:
        raise InvalidItemsError(
            f"items must be an iterable, got {type(items).__name__}; "
            "pass a list, tuple, range or generator"
        ) from exc
    return list(iterator)


def split(
    items: Iterable[T],
    max_batches: int | None = None,
    *,
    batch_size: int | None = None,
) -> list[list[T]]:
    """Split ``items`` into contiguous batches.

    Give exactly one of the two options:

    * ``max_batches=m``: near-equal batches of ``ceil(n / m)`` items each, the
      last one holding the remainder. With 28 items and ``m=5`` the sizes are
      6, 6, 6, 6, 4. Because every batch but the last is full, this rule can
      give *fewer* than ``m`` batches: 10 items into 4 gives 3, 3, 3, 1
      (four batches), but 9 items into 4 gives 3, 3, 3 (three batches), and
      ``m > n`` gives ``n`` batches of one item. The number of batches is
      therefore at most ``m``, never more; that is what a limit on
      concurrently running tasks needs.
    * ``batch_size=k``: consecutive batches of ``k`` items; the last one may
      be shorter.

    Empty input gives an empty list, not ``[[]]``: there is nothing to run,
    so no (empty) task should be scheduled, and ``merge(split([])) == []``
    holds like for any other input.

    Args:
        items: any iterable; it is read completely into a list first. Use
            ``iter_batches`` for endless or very large inputs.
        max_batches: the largest number of batches to make.
        batch_size: the number of items per batch.

    Returns:
        The batches, in input order; each is a new, non-empty list.

    Raises:
        InvalidOptionError: both or neither of ``max_batches`` and
            ``batch_size`` given, or the one given is not an int >= 1.
        InvalidItemsError: ``items`` is not iterable.
    """
    if (max_batches is None) == (batch_size is None):
        given = "both" if max_batches is not None else "neither"
        raise InvalidOptionError(
            f"split() needs exactly one of max_batches= and batch_size=, got {given}; "
            "pass max_batches=m for at most m near-equal batches, "
            "or batch_size=k for batches of k items"
        )
    if max_batches is not None:
        m = _positive_int("max_batches", max_batches)
        values = _materialize(items)
        # ceil(n / m) without floats, so it is exact for any n.
        size = -(-len(values) // m)
    else:
        size = _positive_int("batch_size", batch_size)
        values = _materialize(items)
    if not values:  # also keeps size >= 1 below
        return []
    return [values[i : i + size] for i in range(0, len(values), size)]


def iter_batches(iterable: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Yield consecutive batches of ``batch_size`` items, reading lazily.

    Unlike ``split`` this never holds more than one batch: it works on
    generators, files and endless streams. The batches are the same as
    ``split(iterable, batch_size=batch_size)``; the last may be shorter, and
    an empty input yields nothing.

    The arguments are checked when ``iter_batches`` is called, not when the
    first batch is requested.

    Args:
        iterable: any iterable, possibly endless.
        batch_size: the number of items per batch.

    Returns:
        An iterator of non-empty lists.

    Raises:
        InvalidOptionError: ``batch_size`` is not an int >= 1.
        InvalidItemsError: ``iterable`` is not iterable.
    """
    size = _positive_int("batch_size", batch_size)
    try:
        iterator = iter(iterable)
    except TypeError as exc:
        raise InvalidItemsError(
            f"iter_batches() needs an iterable, got {type(iterable).__name__}; "
            "pass a list, generator, file or other iterable"
        ) from exc
    return _batched(iterator, size)


def _batched(iterator: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def merge(batches: Iterable[Iterable[T]]) -> list[T]:
    """Flatten one level of nesting: the inverse of ``split``.

    Only one level is removed, so items that are themselves lists stay
    intact: ``merge([[[1], [2]], [[3]]]) == [[1], [2], [3]]``.

    Args:
        batches: an iterable of batches (each an iterable of items).

    Returns:
        All items of all batches, in order.

    Raises:
        InvalidItemsError: ``batches`` or one of its batches is not iterable.
    """
    out: list[T] = []
    try:
        iterator = iter(batches)
    except TypeError as exc:
        raise InvalidItemsError(
            f"merge() needs an iterable of batches, got {type(batches).__name__}"
        ) from exc
    for position, batch in enumerate(iterator):
        try:
            batch_iter = iter(batch)
        except TypeError as exc:
            raise InvalidItemsError(
                f"merge() needs an iterable of batches, but batch {position} is "
                f"{type(batch).__name__}; wrap single items in a list"
            ) from exc
        out.extend(batch_iter)
    return out
