"""Static checks of shoal's public signatures (mypy --strict runs this file: ``make test``).

Nothing here runs: each ``assert_type`` states what a type checker must infer.
The negative cases (calls mypy must refuse) are in test_typing.py.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncGenerator, Iterator

from typing_extensions import assert_type

import shoal


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


async def aadd(a: int, b: int) -> int:
    return a + b


def check_sync_calls() -> None:
    assert_type(shoal.map(square, [1]), list[int])
    assert_type(shoal.map(asquare, [1]), list[int])  # the awaited values, not coroutines
    assert_type(shoal.map(square, [1], on_error="skip_failed"), list[int])
    assert_type(shoal.map(square, [1], on_error="collect_errors"), list[int | BaseException])
    assert_type(shoal.map(asquare, [1], on_error="collect_errors"), list[int | BaseException])
    assert_type(shoal.map(square, range(3), backend="threads", workers=4, retries=2,
                          timeout=1.5, rate=(10, 2), chunk_size="auto", progress=print),
                list[int])
    assert_type(shoal.run(square, [1]), shoal.BatchReport[int])
    assert_type(shoal.run(asquare, [1], on_error="all_or_nothing"), shoal.BatchReport[int])
    assert_type(shoal.imap(square, [1]), Iterator[shoal.ItemResult[int]])
    assert_type(shoal.imap(asquare, [1], ordered=False), Iterator[shoal.ItemResult[int]])
    assert_type(shoal.starmap(add, [(1, 2)]), list[int])
    assert_type(shoal.starmap(aadd, [(1, 2)]), list[int])
    assert_type(shoal.starmap(add, [(1, 2)], on_error="collect_errors"),
                list[int | BaseException])


async def check_async_calls() -> None:
    assert_type(await shoal.amap(square, [1]), list[int])
    assert_type(await shoal.amap(asquare, [1]), list[int])
    assert_type(await shoal.amap(asquare, [1], on_error="collect_errors"),
                list[int | BaseException])
    assert_type(await shoal.arun_batch(asquare, [1]), shoal.BatchReport[int])
    assert_type(await shoal.arun_batch(square, [1]), shoal.BatchReport[int])
    assert_type(shoal.aimap(asquare, [1]), AsyncGenerator[shoal.ItemResult[int], None])
    assert_type(shoal.aimap(square, [1], ordered=False),
                AsyncGenerator[shoal.ItemResult[int], None])


async def check_pool() -> None:
    with shoal.Pool(backend="threads", workers=4, initializer=print, retries=1) as pool:
        assert_type(pool.map(square, [1]), list[int])
        assert_type(pool.map(asquare, [1]), list[int])
        assert_type(pool.map(square, [1], on_error="collect_errors"), list[int | BaseException])
        assert_type(pool.starmap(add, [(1, 2)]), list[int])
        assert_type(pool.run(asquare, [1]), shoal.BatchReport[int])
        assert_type(pool.imap(square, [1]), Iterator[shoal.ItemResult[int]])
        assert_type(await pool.amap(asquare, [1]), list[int])
        assert_type(await pool.arun_batch(square, [1]), shoal.BatchReport[int])
        assert_type(pool.aimap(square, [1]), AsyncGenerator[shoal.ItemResult[int], None])


def check_executor() -> None:
    with shoal.Executor(2, backend="processes", timeout=5, retries=1) as ex:
        assert_type(ex.submit(add, 1, 2), concurrent.futures.Future[int])
        assert_type(ex.map(add, [1], [2]), Iterator[int])


def check_worker_local() -> None:
    @shoal.worker_local
    def table() -> dict[str, int]:
        return {}

    assert_type(table, shoal.WorkerLocal[dict[str, int]])
    assert_type(table(), dict[str, int])
