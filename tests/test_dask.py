"""The Dask backend on the session's LocalCluster (conftest: two workers of two
threads, loopback), and its pure parts: chunk sizes, transport, client choice,
warm workers. Tests that kill workers are in test_dask_faults.py, on a cluster
of their own. Items that must wait are held by a ``distributed.Event`` the test
sets, never by a sleep.
"""

from __future__ import annotations

import enum
import importlib
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest

import shoal
import workfns
from shoal import RetryPolicy
from shoal._backends import warm_class
from shoal._backends._dask import backend as _dask
from shoal._backends._dask import client as _dask_client
from shoal._backends._dask import settings as _settings
from shoal._core import planner
from shoal._core.errors import (
    BackendUnavailable,
    InvalidOptionError,
    NotPicklable,
    RemoteTraceback,
)
from shoal._core.options import Options
from shoal._policies.chunking import ChunkPolicy

if TYPE_CHECKING:
    from shoal._core.signatures import BackendName

# Dask workers cannot import the tests folder: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def dist() -> Any:
    """dask.distributed, imported only by the tests that use it.

    Importing it has a global side effect (tblib makes more exceptions
    picklable), so the test modules collected with this one must not see it.
    """
    return pytest.importorskip("distributed")


@pytest.fixture
def cluster(dask_cluster: Any) -> Any:
    return dask_cluster


@pytest.fixture(scope="module")
def client(dask_cluster: Any) -> Iterator[Any]:
    with dist().Client(dask_cluster, set_as_default=False) as c:
        yield c


@pytest.fixture
def opts(cluster: Any) -> dict[str, Any]:
    return {"backend": "dask", "address": cluster.scheduler_address}



def threads_of(cluster: Any) -> int:
    return sum(w["nthreads"] for w in cluster.scheduler_info["workers"].values())


# --------------------------------------------------------------- item functions
def fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd item {x}")
    return x


def wait_for_event(arg: tuple[str, Any]) -> Any:
    """Item "wait" blocks until the test sets the event (30 s at most)."""
    name, x = arg
    if x == "wait":
        distributed: Any = importlib.import_module("distributed")  # on the worker; untyped
        distributed.Event(name).wait(timeout=30)
    return x


def fail_if_flag(arg: tuple[str, int]) -> int:
    flag, x = arg
    if x == 3 and os.path.exists(flag):
        raise RuntimeError("flagged")
    return x


def pid_of(_: Any) -> int:
    return os.getpid()


def write_init_marker(folder: str) -> None:
    Path(folder, f"init-{os.getpid()}").write_text("1")


def broken_initializer() -> None:
    raise OSError("no database")


# ------------------------------------------------------------------- behaviour
def test_map_keeps_input_order(opts: dict[str, Any]) -> None:
    assert shoal.map(workfns.square, range(200), **opts) == [x * x for x in range(200)]


def test_tiny_items_are_chunked_and_stay_in_order(
    opts: dict[str, Any], cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks: list[int] = []
    submit = _dask.DaskBackend._submit

    def counting(self: Any, record: Any, offset: int, count: int) -> None:
        tasks.append(count)
        submit(self, record, offset, count)

    monkeypatch.setattr(_dask.DaskBackend, "_submit", counting)
    n = 30_000
    report = shoal.run(workfns.square, range(n), **opts)
    assert report.values == [x * x for x in range(n)]
    threads = threads_of(cluster)
    probe = _settings.PROBE_ITEMS
    assert tasks[:threads] == [probe] * threads  # one probe per worker thread, run in full
    assert sum(tasks) == n and len(tasks) < 30  # then chunks grew
    assert all(r.worker.startswith("tcp://127.0.0.1:") for r in report.results)


def slow_once(arg: tuple[str, int]) -> int:
    """An item of about 5 ms that fails if it ever runs a second time."""
    folder, x = arg
    Path(folder, str(x)).open("x").close()
    time.sleep(0.005)  # longer than a probe's budget: a probe runs one item
    return x


def test_a_probe_stops_at_its_budget_and_the_rest_runs_once_in_order(
    opts: dict[str, Any], cluster: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    replies: list[tuple[int, int]] = []
    received = _dask.DaskBackend._received

    def recording(self: Any, part: Any, reply: Any, nbytes: int) -> None:
        replies.append((part.count, len(reply.values)))
        received(self, part, reply, nbytes)

    monkeypatch.setattr(_dask.DaskBackend, "_received", recording)
    items = [(str(tmp_path), x) for x in range(80)]
    report = shoal.run(slow_once, items, **opts)
    assert report.values == list(range(80)) and not report.failures
    params = _settings.TRAITS.chunking
    assert params is not None
    share = 80 // (params.chunks_per_worker * threads_of(cluster))
    assert (share, 1) in replies  # a probe of several items came back after its first
    assert sum(ran for _, ran in replies) == 80


def return_lock_on_3(x: int) -> Any:
    return threading.Lock() if x == 3 else x


def test_a_value_that_cannot_be_pickled_fails_its_item_alone(opts: dict[str, Any]) -> None:
    report = shoal.run(return_lock_on_3, range(6), chunk_size=3, **opts)
    assert [r.index for r in report.failures] == [3]
    assert isinstance(report.failures[0].error, NotPicklable)
    assert report.values == [0, 1, 2, 4, 5]


def test_an_item_that_cannot_be_pickled_fails_alone(opts: dict[str, Any]) -> None:
    items: list[Any] = [0, 1, threading.Lock(), 3, 4]
    report = shoal.run(same, items, chunk_size=5, **opts)
    assert [r.index for r in report.failures] == [2]
    assert isinstance(report.failures[0].error, NotPicklable)
    assert report.values == [0, 1, 3, 4]


class LockedError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked_on_1(x: int) -> int:
    if x == 1:
        raise LockedError("cannot travel")
    return x


@pytest.mark.parametrize("backend", ["processes", "dask"])
def test_an_exception_that_cannot_be_pickled_arrives_as_remote_error(
    backend: BackendName, cluster: Any,
) -> None:
    address = {"address": cluster.scheduler_address} if backend == "dask" else {}
    report = shoal.run(raise_locked_on_1, range(3), backend=backend, workers=2, **address)
    [failure] = report.failures
    error = failure.error
    assert isinstance(error, shoal.RemoteError)  # the one type, on every backend
    assert error.type_name.endswith("LockedError") and "cannot travel" in error.message
    assert "raise_locked_on_1" in error.traceback
    assert report.values == [0, 2]


def _only_in(pid: int) -> str:
    if os.getpid() != pid:
        raise RuntimeError(f"this object unpickles only in process {pid}")
    return f"rebuilt in {pid}"


class OnlyIn:
    """Pickles anywhere, unpickles only in process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return _only_in, (self.pid,)


def value_that_unpickles_only_here_on_3(x: int) -> Any:
    return OnlyIn(os.getpid()) if x == 3 else x


def same(x: Any) -> Any:
    return x


def test_a_value_that_cannot_be_unpickled_in_the_driver_fails_its_item_alone(
    opts: dict[str, Any],
) -> None:
    report = shoal.run(value_that_unpickles_only_here_on_3, range(6), chunk_size=3, **opts)
    assert [r.index for r in report.failures] == [3]
    assert isinstance(report.failures[0].error, NotPicklable)
    assert "unpickled in the driver" in str(report.failures[0].error)
    assert report.values == [0, 1, 2, 4, 5]
    assert all(r.attempts == 1 for r in report.results)  # its chunk ran again, uncounted


def test_an_item_that_cannot_be_unpickled_on_the_worker_fails_alone(
    opts: dict[str, Any],
) -> None:
    items: list[Any] = [0, 1, 2, OnlyIn(os.getpid()), 4, 5]  # unpickles only in the driver
    report = shoal.run(same, items, chunk_size=3, **opts)
    assert [r.index for r in report.failures] == [3]
    assert isinstance(report.failures[0].error, NotPicklable)
    assert "unpickled on the Dask worker" in str(report.failures[0].error)
    assert report.values == [0, 1, 2, 4, 5]


def test_all_or_nothing_raises_the_item_error(opts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="odd item"):
        shoal.map(fail_on_odd, range(10), **opts)


def test_skip_failed_drops_failures(opts: dict[str, Any]) -> None:
    assert shoal.map(fail_on_odd, range(10), on_error="skip_failed", **opts) == [0, 2, 4, 6, 8]


def test_collect_errors_carries_the_worker_traceback(opts: dict[str, Any]) -> None:
    report = shoal.run(fail_on_odd, range(6), **opts)
    assert [r.ok for r in report.results] == [True, False] * 3
    failure = report.failures[0]
    assert isinstance(failure.error, ValueError)
    assert isinstance(failure.error.__cause__, RemoteTraceback)
    assert "fail_on_odd" in failure.error.__cause__.tb
    assert failure.worker.startswith("tcp://127.0.0.1:")
    values = shoal.map(fail_on_odd, range(4), on_error="collect_errors", **opts)
    assert values[0] == 0 and isinstance(values[1], ValueError)


def test_retries_rerun_failed_items(opts: dict[str, Any], tmp_path: Path) -> None:
    report = shoal.run(workfns.flaky, [(str(tmp_path), x) for x in range(4)],
                       retries=RetryPolicy(retries=1, backoff=0.0), **opts)
    assert report.values == [0, 1, 2, 3]
    assert [r.attempts for r in report.results] == [2, 2, 2, 2]


def test_timeout_fails_only_the_hung_item(opts: dict[str, Any], client: Any) -> None:
    name = f"release-{uuid.uuid4().hex}"
    items = [(name, x) for x in (0, 1, "wait", 3, 4)]
    try:
        report = shoal.run(wait_for_event, items, timeout=3.0, **opts)
    finally:
        dist().Event(name, client=client).set()  # free the worker thread
    assert [r.item[1] for r in report.failures] == ["wait"]
    assert isinstance(report.failures[0].error, TimeoutError)
    assert report.values == [0, 1, 3, 4]


def test_imap_ordered_yields_in_input_order(opts: dict[str, Any]) -> None:
    indices = [r.index for r in shoal.imap(workfns.square, range(50), chunk_size=3, **opts)]
    assert indices == list(range(50))


def test_imap_unordered_does_not_wait_for_a_slow_item(opts: dict[str, Any], client: Any) -> None:
    name = f"slow-{uuid.uuid4().hex}"
    items = [(name, "wait")] + [(name, x) for x in range(1, 8)]
    seen: list[Any] = []
    try:
        for r in shoal.imap(wait_for_event, items, ordered=False, chunk_size=1, **opts):
            seen.append(r.item[1])
            if len(seen) == 7:
                dist().Event(name, client=client).set()
    finally:
        dist().Event(name, client=client).set()
    assert sorted(seen[:7]) == list(range(1, 8))
    assert seen[7] == "wait"


def test_generator_input_streams_in_bounded_memory(opts: dict[str, Any]) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    got = 0
    for _ in shoal.imap(workfns.square, endless(), chunk_size=1, max_in_flight=8, **opts):
        got += 1
        if got == 20:
            break
    assert 20 <= pulled <= 20 + 8


def test_checkpoint_resume_runs_only_what_failed(opts: dict[str, Any], tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.write_text("1")
    items = [(str(flag), x) for x in range(10)]
    db = tmp_path / "run.db"
    first = shoal.run(fail_if_flag, items, checkpoint=db, **opts)
    assert first.failed == 1
    flag.unlink()
    second = shoal.run(fail_if_flag, items, checkpoint=db, **opts)
    assert second.values == list(range(10))
    assert second.restored == 9 and not second.results[3].restored


def test_amap_from_a_running_loop(opts: dict[str, Any]) -> None:
    import asyncio

    assert asyncio.run(shoal.amap(workfns.square, range(20), **opts)) == [x * x for x in range(20)]


def test_initializer_runs_once_per_worker(opts: dict[str, Any], tmp_path: Path) -> None:
    pids = shoal.map(pid_of, range(40), initializer=write_init_marker,
                     initargs=(str(tmp_path),), chunk_size=1, **opts)
    inits = {int(p.name.split("-")[1]) for p in tmp_path.glob("init-*")}
    assert set(pids) <= inits


def test_failing_initializer_stops_the_run(opts: dict[str, Any]) -> None:
    with pytest.raises(OSError, match="no database"):
        shoal.map(workfns.square, range(5), initializer=broken_initializer, **opts)


# ------------------------------------------------------------ chunk sizes
def dask_policy(threads: int, total: int | None, **kw: Any) -> ChunkPolicy:
    """The chunk policy a run plans for a cluster of ``threads``, started at the probe's size."""
    plan = planner.plan(Options.from_kwargs("collect_errors", kw), _settings.TRAITS, total,
                        threads)
    plan.chunks.size = _settings.probe_size(plan.chunks, total, threads)
    return plan.chunks


def policy_run(policy: ChunkPolicy, total: int, per_item: float,
               item_bytes: float = 5.0) -> list[int]:
    """Items each task of a run of ``total`` runs, each item taking ``per_item`` s,
    as the engine feeds the policy. First one probe per thread, all sent
    before any reply, each run as the worker runs it: the first item, then
    more while its budget lasts (the items it did not reach count as not yet
    pulled); then chunks of the size the policy gives."""
    sizes: list[int] = []
    pulled = 0
    for _ in range(policy.workers):
        budgeted = max(1, math.ceil(_settings.PROBE_SECONDS / per_item))
        sizes.append(min(policy.size, budgeted, total - pulled))
        pulled += sizes[-1]
    for size in sizes:
        policy.observe(size, size * per_item + 2e-6, pulled, item_bytes)  # a few us per task
    while pulled < total:
        size = min(policy.size, total - pulled)
        sizes.append(size)
        pulled += size
        policy.observe(size, size * per_item + 2e-6, pulled, item_bytes)
    return sizes


def test_probes_are_time_boxed_tasks_of_a_share_of_a_short_input() -> None:
    assert dask_policy(2, 1000).size == _settings.PROBE_ITEMS
    assert dask_policy(2, 10).size == 1
    assert dask_policy(2, 100).size == 12  # 100 / (4 chunks x 2 threads)
    assert dask_policy(2, None).size == _settings.PROBE_ITEMS
    assert dask_policy(2, 1000, rate=(100, 5)).size == 5  # within the rate's burst
    assert not dask_policy(2, 1000, timeout=1).adaptive  # a timeout: one item per task
    policy = dask_policy(2, 1000)
    policy.observe(1, 0.5, pulled=2)  # the probe ran one item of half a second
    assert policy.size == 1  # no point in chunking


def test_tiny_items_pay_the_per_task_cost_a_handful_of_times() -> None:
    sizes = policy_run(dask_policy(2, 1_000_000), 1_000_000, 60e-9)
    assert sizes[:2] == [_settings.PROBE_ITEMS] * 2  # one probe per thread
    assert sizes[2:] == sorted(sizes[2:], reverse=True)  # cut from what remains: never growing
    assert max(sizes) == 250_000 and len(sizes) <= 6  # 500,000 items shared by two threads


def test_the_last_chunks_are_short_so_the_threads_finish_together() -> None:
    for total, per_item in [(400, 0.005), (1000, 0.001), (20_000, 1e-4)]:
        sizes = policy_run(dask_policy(2, total), total, per_item)
        assert sizes[2:] == sorted(sizes[2:], reverse=True)
        tail = sizes[-2:]  # one per thread, at the end
        assert max(tail) * per_item <= 0.06  # about min_seconds: little to wait for


def test_long_items_stay_near_the_target_time() -> None:
    sizes = policy_run(dask_policy(2, 400), 400, 0.005)
    assert sizes[0] == 1 and max(sizes) * 0.005 <= 0.1 + 1e-9
    assert len(sizes) >= 4 * 2  # several tasks per thread, so they balance


def test_without_a_length_chunks_compute_for_the_target_time_within_the_caps() -> None:
    sizes = policy_run(dask_policy(2, None), 2_000_000, 10e-9)
    assert max(sizes) == 250_000
    sizes = policy_run(dask_policy(2, None), 20_000, 1e-6, item_bytes=10_000)
    assert max(sizes) == 4_000_000 // 10_000  # 10 kB per item: 4 MB of pickle


def test_chunks_are_cut_again_when_item_time_drifts() -> None:
    policy = dask_policy(1, None)
    for _ in range(3):
        policy.observe(1000, 0.01, pulled=0)
    before = policy.size
    assert before == 10_000  # 0.1 s of 10 us items
    policy.observe(1000, 0.01 * 1.1, pulled=0)
    assert policy.size == before  # small drift: the same cut
    for _ in range(3):
        policy.observe(1000, 0.1, pulled=0)
    assert policy.size < before / 4


# ------------------------------------------------------------ transport
def test_pickled_blobs_travel_out_of_band() -> None:
    import pickle

    from shoal._backends._dask.worker import Pickled

    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(Pickled(b"x" * 1000, "t"), protocol=5, buffer_callback=buffers.append)
    assert len(data) < 200 and len(buffers) == 1  # the blob is not in the stream
    back = pickle.loads(data, buffers=buffers)
    assert bytes(back.blob) == b"x" * 1000 and back.token == "t"
    old = pickle.loads(pickle.dumps(Pickled(b"y", "u"), protocol=4))
    assert old.blob == b"y" and old.token == "u"


class Color(enum.IntEnum):
    RED = 1


def test_builtin_values_travel_marshalled_and_others_pickled_with_their_types() -> None:
    import pickle

    from shoal._backends._dask.worker import Reply, _pack, unpack

    plain = [None, 1.5, "x", (1, [2]), {3: {4}}] * 20
    blob = _pack(Reply(list(plain), None, 0.1, "w")).blob
    assert pickle.loads(blob).marshalled is not None  # the fast way
    assert unpack(blob).values == plain and unpack(blob).marshalled is None
    mixed = [*range(99), Color.RED]  # an int subclass: marshal would lose it
    back = unpack(_pack(Reply(list(mixed), None, 0.1, "w")).blob).values
    assert back == mixed and type(back[-1]) is Color


def test_where_no_child_can_be_watched_isolated_items_run_in_the_worker_one_by_one() -> None:
    from shoal._backends._dask import quarantine
    from shoal._backends._dask.worker import Pickled, dumps

    job = Pickled(_settings.pickle_job(same, None, (), "t"), "t-job")
    blobs = [dumps(1), dumps(OnlyIn(os.getpid() + 1)), dumps("three")]
    reply = quarantine.run_here(job, blobs, "w")
    assert reply.started and reply.exitcode is None and reply.init_error is None
    outcomes = [pickle.loads(blob) for blob in reply.outcomes]
    assert [value for value, _, _ in outcomes] == [1, None, "three"]
    assert [type(error) for _, error, _ in outcomes] == [type(None), NotPicklable, type(None)]


class FakeClient:
    def __init__(self, address: str, direct: bool | None = None) -> None:
        self.direct_to_workers = direct
        self.scheduler = type("Rpc", (), {"address": address})()


@pytest.mark.parametrize(("address", "own", "direct", "expected"), [
    ("tcp://127.0.0.1:8786", False, None, True),
    ("tcp://localhost:8786", False, None, True),
    ("tcp://[::1]:8786", False, None, True),
    ("inproc://10.0.0.1/1/2", False, None, True),
    ("tcp://10.0.0.5:8786", False, None, None),  # Dask's default: through the scheduler
    ("tls://scheduler.example:8786", False, None, None),
    ("tcp://10.0.0.5:8786", True, None, True),  # the LocalCluster shoal started
    ("tcp://127.0.0.1:8786", False, False, None),  # the client's own choice stands
])
def test_results_come_straight_from_workers_only_when_they_are_reachable(
    address: str, own: bool, direct: bool | None, expected: bool | None,
) -> None:
    assert _dask_client.gather_direct(FakeClient(address, direct), own) is expected


# ------------------------------------------------------ own cluster and errors
# The scheduler's HTTP server (no dashboard) falls back from port 8787 when the
# module's cluster holds it, and says so.
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_without_address_starts_and_stops_its_own_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[Any] = []
    distributed = dist()
    base: Any = distributed.LocalCluster

    class RecordingCluster(base):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            started.append(kwargs)
            super().__init__(**kwargs)
            started.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", RecordingCluster)
    report = shoal.run(workfns.square, range(10), backend="dask", workers=1)
    assert report.values == [x * x for x in range(10)]
    kwargs, own = started
    assert kwargs["n_workers"] == 1 and kwargs["host"] == "127.0.0.1"
    # A worker's death reaches shoal at once: shoal, not Dask, runs its items again.
    assert kwargs["scheduler_kwargs"] == {"allowed_failures": 0}
    assert own.status.name == "closed"
    assert report.workers == 1
    assert threading.active_count() >= 1


def test_the_client_of_an_address_is_closed_after_the_run(
    opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = record_clients(monkeypatch)
    assert shoal.map(workfns.square, range(10), **opts) == [x * x for x in range(10)]
    [(backend, client)] = seen
    assert backend.closer is not None and not backend.closer.daemon  # waited for at exit
    backend.closer.join(30)
    assert client.status == "closed"


def record_clients(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """(backend, client) of each run, seen as the run lets go of its client."""
    seen: list[tuple[Any, Any]] = []
    disconnect = _dask.DaskBackend._disconnect

    def recording(self: Any) -> None:
        seen.append((self, self._client))
        disconnect(self)

    monkeypatch.setattr(_dask.DaskBackend, "_disconnect", recording)
    return seen


def test_the_current_client_of_the_address_is_used_and_left_open(
    opts: dict[str, Any], client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = record_clients(monkeypatch)
    with client.as_current():  # what distributed.get_client(address) would return
        assert shoal.map(workfns.square, range(10), **opts) == [x * x for x in range(10)]
    [(backend, used)] = seen
    assert used is client and backend.closer is None and client.status == "running"
    assert shoal.map(workfns.square, range(3), **opts) == [0, 1, 4]  # not current: its own
    assert seen[1][1] is not client and seen[1][0].closer is not None


class FakeDistributed:
    """Just what current_client and same_scheduler use of dask.distributed."""

    def __init__(self, current: Any) -> None:
        self.Client = type("Client", (), {"current": staticmethod(lambda: current)})
        self.comm = dist().comm


def test_a_client_serves_a_run_only_if_it_is_running_blocking_and_on_that_scheduler() -> None:
    running = FakeClient("tcp://127.0.0.1:8786")
    running.asynchronous, running.status = False, "running"  # type: ignore[attr-defined]
    assert _dask_client.current_client(FakeDistributed(running)) is running
    asynchronous = FakeClient("tcp://127.0.0.1:8786")
    asynchronous.asynchronous, asynchronous.status = True, "running"  # type: ignore[attr-defined]
    assert _dask_client.current_client(FakeDistributed(asynchronous)) is None
    d = FakeDistributed(None)
    assert _dask_client.same_scheduler(d, running, "tcp://localhost:8786")
    assert _dask_client.same_scheduler(d, running, "127.0.0.1:8786")
    assert not _dask_client.same_scheduler(d, running, "tcp://127.0.0.1:8787")
    assert not _dask_client.same_scheduler(d, running, "tcp://no-such-host.invalid:8786")
    assert not _dask_client.same_scheduler(d, None, "tcp://127.0.0.1:8786")


def test_the_main_guard_is_checked_only_where_workers_would_import_the_script(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dask

    monkeypatch.setattr(_settings, "unguarded_main_call", lambda: "job.py:7")
    own = Options.from_kwargs("collect_errors", {"backend": "dask"})
    with pytest.raises(shoal.BrokenBackend, match=r'\(job.py:7\); put that code under '
                                                  r'`if __name__ == "__main__":`'):
        _settings.check_main_guard(own, None, {})
    _settings.check_main_guard(own, None, {"processes": False})  # threads: nothing imports it
    _settings.check_main_guard(own, object(), {})  # the caller's client: no cluster to start
    address = Options.from_kwargs("collect_errors", {"backend": "dask", "address": "tcp://h:1"})
    _settings.check_main_guard(address, None, {})
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        _settings.check_main_guard(own, None, {})  # forked workers do not import it


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(BackendUnavailable, match=r'pip install "shoal\[dask\]"'):
        shoal.map(workfns.square, [1], backend="dask", address="tcp://127.0.0.1:1")


def test_unpicklable_function_is_refused_before_connecting() -> None:
    lock = threading.Lock()
    with pytest.raises(NotPicklable, match="cannot be pickled"):
        shoal.map(lambda x: (lock, x), [1], backend="dask", address="tcp://127.0.0.1:1")


def test_unknown_backend_option_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="tasks_per_thread"):
        shoal.map(workfns.square, [1], backend="dask", backend_options={"tasks_per_thred": 2})


def test_unreachable_scheduler_is_a_clear_error() -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(shoal.BrokenBackend, match="cannot connect"):
        shoal.map(workfns.square, [1], backend="dask", address="tcp://127.0.0.1:1")


# ------------------------------------------------------------ warm workers
def run_on(warm: Any, fn: Any, items: Any, **kw: Any) -> shoal.BatchReport[Any]:
    """``shoal.run`` on warm workers, as a ``shoal.Pool`` runs it."""
    from shoal._core.consumer import segments
    from shoal._core.run import Run

    batch = Run(fn, items, Options.from_kwargs("collect_errors", {"backend": "dask", **kw}),
                warm=lambda name: warm if name == "dask" else None)
    for segs in segments(batch):
        batch.deliver(segs, keep=True)
    report = batch.report()
    batch.close(report)
    return report


def write_init_marker_once(folder: str) -> None:
    Path(folder, f"init-{os.getpid()}-{uuid.uuid4().hex}").write_text("1")


def test_warm_workers_keep_one_client_and_initialize_each_worker_once(
    cluster: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    cls: Any = warm_class("dask")  # constructed as cls(options, workers)
    assert cls is not None
    options = Options.from_kwargs("collect_errors", {
        "backend": "dask", "address": cluster.scheduler_address,
        "initializer": write_init_marker_once, "initargs": (str(tmp_path),)})
    warm = cls(options, 2)
    seen = record_clients(monkeypatch)
    try:
        for _ in range(2):
            report = run_on(warm, pid_of, range(40), address=cluster.scheduler_address,
                            chunk_size=1)
            assert not report.failures
        (_, first), (_, second) = seen
        assert first is second and first.status == "running"  # one client for both runs
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("init-*")]
        assert sorted(pids) == sorted(set(pids))  # once per worker, not once per run
    finally:
        warm.close(cancel=False)
    assert first.status == "closed"  # the pool opened it: the pool closes it


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_warm_workers_keep_their_own_cluster_until_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[Any] = []
    distributed = dist()
    base: Any = distributed.LocalCluster

    class RecordingCluster(base):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            started.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", RecordingCluster)
    cls: Any = warm_class("dask")
    assert cls is not None
    warm = cls(Options.from_kwargs("collect_errors", {"backend": "dask"}), 1)
    try:
        assert not started  # nothing starts before a run needs it
        assert run_on(warm, workfns.square, range(10)).values == [x * x for x in range(10)]
        assert run_on(warm, workfns.square, range(5)).values == [x * x for x in range(5)]
        [own] = started  # one cluster for both runs
        assert own.status.name == "running"
    finally:
        warm.close(cancel=False)
    assert own.status.name == "closed"
    with pytest.raises(shoal.BrokenBackend, match="closed"):
        run_on(warm, workfns.square, range(3))


# ---------------------------------------------------------------------- example
def test_split_merge_example_prints_the_seed_lines(cluster: Any) -> None:
    script = Path(__file__).resolve().parent.parent / "examples" / "dask" / "split_merge.py"
    done = subprocess.run(
        [sys.executable, str(script), "--address", cluster.scheduler_address],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == f"Generated items: {list(range(28))}"
    assert lines[1] == ("Item batches: [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], "
                        "[12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23], [24, 25, 26, 27]]")
    assert lines[-1] == f"Processed items: {[i / 42 for i in range(28)]}"


def test_a_pool_on_dask_keeps_one_client_for_its_calls(
    cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = record_clients(monkeypatch)
    with shoal.Pool(backend="dask", address=cluster.scheduler_address) as pool:
        assert pool.map(workfns.square, range(20)) == [x * x for x in range(20)]
        assert pool.run(workfns.square, range(5)).values == [0, 1, 4, 9, 16]
    (_, first), (_, second) = seen
    assert first is second  # the pool's warm workers: one client for both calls
    assert first.status == "closed"  # the pool opened it; closing the pool closed it
