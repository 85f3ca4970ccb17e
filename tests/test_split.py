"""Tests of split / merge / iter_batches."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._core.errors import InvalidItemsError, InvalidOptionError
from shoal._split import iter_batches, merge, split

lists = st.lists(st.integers() | st.text(max_size=3) | st.none(), max_size=200)
positive = st.integers(min_value=1, max_value=250)


# --- known values -----------------------------------------------------------


def test_seed_example_28_items_into_5() -> None:
    batches = split(range(28), max_batches=5)
    assert [len(b) for b in batches] == [6, 6, 6, 6, 4]
    assert batches[0] == [0, 1, 2, 3, 4, 5]
    assert batches[-1] == [24, 25, 26, 27]


@pytest.mark.parametrize(
    ("n", "m", "sizes"),
    [
        (10, 4, [3, 3, 3, 1]),
        (9, 4, [3, 3, 3]),  # fewer batches than asked: documented rule
        (5, 3, [2, 2, 1]),
        (3, 10, [1, 1, 1]),
        (7, 1, [7]),
        (1, 1, [1]),
    ],
)
def test_max_batches_sizes(n: int, m: int, sizes: list[int]) -> None:
    assert [len(b) for b in split(list(range(n)), m)] == sizes


def test_batch_size_known() -> None:
    assert split("abcdefg", batch_size=3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert split([1, 2], batch_size=5) == [[1, 2]]


def test_empty_input_gives_no_batches() -> None:
    assert split([], max_batches=3) == []
    assert split([], batch_size=3) == []
    assert merge(split([], max_batches=3)) == []
    assert list(iter_batches([], 3)) == []


def test_accepts_generator_and_copies_list() -> None:
    assert split((i * i for i in range(5)), batch_size=2) == [[0, 1], [4, 9], [16]]
    data = [1, 2, 3]
    batches = split(data, batch_size=3)
    batches[0].append(99)
    assert data == [1, 2, 3]


def test_merge_flattens_one_level_only() -> None:
    assert merge([[[1], [2]], [[3]]]) == [[1], [2], [3]]
    assert merge([]) == []
    assert merge([[], [1], []]) == [1]
    assert merge(iter([(1, 2), range(3, 5)])) == [1, 2, 3, 4]


def test_iter_batches_on_endless_input() -> None:
    stream = iter_batches(itertools.count(), 4)
    assert next(stream) == [0, 1, 2, 3]
    assert next(stream) == [4, 5, 6, 7]


def test_iter_batches_reads_only_what_is_needed() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            pulled.append(i)
            yield i

    stream = iter_batches(source(), 3)
    assert pulled == []  # nothing read before the first batch is asked for
    assert next(stream) == [0, 1, 2]
    assert pulled == [0, 1, 2]


# --- errors -----------------------------------------------------------------


def test_both_or_neither_option() -> None:
    with pytest.raises(InvalidOptionError, match=r"exactly one.*got both"):
        split([1], 2, batch_size=2)
    with pytest.raises(InvalidOptionError, match=r"exactly one.*got neither"):
        split([1])


@pytest.mark.parametrize("bad", [0, -1])
def test_values_below_one(bad: int) -> None:
    with pytest.raises(InvalidOptionError, match="max_batches must be >= 1"):
        split([1], bad)
    with pytest.raises(InvalidOptionError, match="batch_size must be >= 1"):
        split([1], batch_size=bad)
    with pytest.raises(InvalidOptionError, match="batch_size must be >= 1"):
        iter_batches([1], bad)


@pytest.mark.parametrize("bad", [2.0, "3", True, None])
def test_non_int_options(bad: object) -> None:
    if bad is not None:
        with pytest.raises(InvalidOptionError, match="max_batches must be an int"):
            split([1], bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionError, match="batch_size must be an int"):
            split([1], batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="batch_size must be an int"):
        iter_batches([1], bad)  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    # InvalidOptionError subclasses ValueError, so generic handlers still work.
    with pytest.raises(ValueError):
        split([1], 0)


def test_not_iterable() -> None:
    with pytest.raises(InvalidItemsError, match="int"):
        split(5, 2)  # type: ignore[arg-type]
    with pytest.raises(InvalidItemsError):
        iter_batches(5, 2)  # type: ignore[arg-type]
    with pytest.raises(InvalidItemsError, match="batch 1 is int"):
        merge([[1], 2])  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------


@given(lists, positive)
def test_split_max_batches_properties(x: list[object], m: int) -> None:
    batches = split(x, max_batches=m)
    assert merge(batches) == x
    assert len(batches) <= m
    assert all(batches)  # every batch non-empty
    if x:
        size = math.ceil(len(x) / m)
        # The seed's rule: all batches full except the last, which holds the rest.
        assert all(len(b) == size for b in batches[:-1])
        assert 1 <= len(batches[-1]) <= size
        assert len(batches) == math.ceil(len(x) / size)
        assert max(map(len, batches)) - min(map(len, batches)) < size


@given(lists, positive)
def test_split_batch_size_properties(x: list[object], k: int) -> None:
    batches = split(x, batch_size=k)
    assert merge(batches) == x
    assert all(batches)
    assert all(len(b) == k for b in batches[:-1])
    if batches:
        assert 1 <= len(batches[-1]) <= k
    assert len(batches) == math.ceil(len(x) / k)


@given(lists, positive)
def test_iter_batches_equals_split(x: list[object], k: int) -> None:
    assert list(iter_batches(iter(x), k)) == split(x, batch_size=k)


@given(st.lists(st.lists(st.integers(), max_size=5), max_size=20))
def test_merge_is_concatenation(batches: list[list[int]]) -> None:
    assert merge(batches) == [v for b in batches for v in b]
