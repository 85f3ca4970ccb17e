"""shoal.worker_local: an object built once per worker, reached from fn, on every backend.

Builds are counted in a file (a process or a Dask worker shares no memory
with the test); each result carries the id of the object that served it.
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import shoal
import workfns


@pytest.fixture
def handle(tmp_path: Path) -> Any:
    return workfns.make_state(str(tmp_path))


def test_built_once_per_worker_on_every_backend(backend_opts: dict[str, Any], handle: Any,
                                                tmp_path: Path) -> None:
    fn = functools.partial(workfns.use_state, handle)
    results = shoal.map(fn, range(200), workers=2, **backend_opts)
    assert [x for x, _, _ in results] == list(range(200))
    objects = {(pid, oid) for _, pid, oid in results}
    builds = workfns.builds(tmp_path)
    assert len(builds) == len(objects)  # every object used was built once, and kept
    assert len(builds) < 200  # reused across items
    limit = {"sequential": 1, "asyncio": 1, "dask": 4}.get(backend_opts["backend"], 2)
    assert 1 <= len(builds) <= limit  # one per worker (dask: its workers' threads)


def test_async_fn_shares_its_loop_threads_object(handle: Any, tmp_path: Path) -> None:
    fn = functools.partial(workfns.ause_state, handle)
    results = shoal.map(fn, range(50), backend="asyncio", workers=10)
    assert len({oid for _, _, oid in results}) == 1 and len(workfns.builds(tmp_path)) == 1


def test_a_module_level_handle_in_worker_processes() -> None:
    pairs = shoal.map(workfns.use_module_state, range(100), backend="processes", workers=2)
    per_pid: dict[int, set[int]] = {}
    for pid, oid in pairs:
        per_pid.setdefault(pid, set()).add(oid)
    assert pid != os.getpid() and all(len(ids) == 1 for ids in per_pid.values())


def test_a_pool_keeps_the_objects_between_calls(handle: Any, tmp_path: Path) -> None:
    fn = functools.partial(workfns.use_state, handle)
    with shoal.Pool(backend="threads", workers=2) as pool:
        first = {oid for _, _, oid in pool.map(fn, range(50))}
        second = {oid for _, _, oid in pool.map(fn, range(50))}
    # no thread built a second object in the second call
    assert len(workfns.builds(tmp_path)) == len(first | second) <= 2


def test_the_initializer_can_build_it_up_front(handle: Any, tmp_path: Path) -> None:
    started: list[str] = []

    def init() -> None:
        started.append(threading.current_thread().name)
        handle()

    with shoal.Pool(backend="threads", workers=2, initializer=init) as pool:
        assert pool.map(workfns.square, [3]) == [9]  # fn never touches the handle
        assert len(workfns.builds(tmp_path)) == len(started) >= 1  # built up front
        pool.map(functools.partial(workfns.use_state, handle), range(50))
    assert len(workfns.builds(tmp_path)) == len(started)  # items found theirs built


def test_a_recycled_worker_builds_a_fresh_one(handle: Any, tmp_path: Path) -> None:
    fn = functools.partial(workfns.use_state, handle)
    shoal.map(fn, range(9), backend="threads", workers=1, max_items_per_worker=3, chunk_size=1)
    assert len(workfns.builds(tmp_path)) == 3


def test_threads_each_get_their_own(handle: Any) -> None:
    seen: list[Any] = []  # the objects themselves: an id may be reused once one is freed
    lock = threading.Lock()

    def grab() -> None:
        with lock:
            seen.append(handle())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(obj) for obj in seen}) == 3


def test_clear_drops_this_workers_object(handle: Any) -> None:
    first = handle()
    assert handle() is first
    handle.clear()
    assert handle() is not first


def test_copies_in_one_process_are_one_handle(handle: Any) -> None:
    assert pickle.loads(pickle.dumps(handle)) is handle
    assert cloudpickle.loads(cloudpickle.dumps(handle)) is handle


def test_a_forked_child_builds_its_own(handle: Any, tmp_path: Path) -> None:
    parent = handle()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        child = handle()
        os.write(w, b"1" if child is not parent and child["pid"] == os.getpid() else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)


def test_a_factory_must_be_callable() -> None:
    with pytest.raises(shoal.InvalidOptionError, match="needs a factory"):
        shoal.worker_local(42)  # type: ignore[arg-type]


def test_a_failing_factory_fails_the_item_and_runs_again() -> None:
    calls: list[int] = []

    def factory() -> int:
        calls.append(1)
        raise ConnectionError("no database")

    conn = shoal.worker_local(factory)
    report = shoal.run(lambda x: conn(), [1, 2], backend="sequential")
    assert report.failed == 2 and len(calls) == 2
    assert all(isinstance(r.error, ConnectionError) for r in report.failures)
