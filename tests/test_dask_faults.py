"""The Dask backend when workers die, results are lost, the cluster empties,
Ctrl-C is pressed, or a script forgets its ``__main__`` guard.

Crash tests run on a two-worker LocalCluster of their own (loopback, one
thread per worker, ``allowed_failures=0`` as in the cluster shoal starts), since
they kill its workers. Items that must wait block on opening a named pipe
(``Gate``) until the test opens it; items that tell the test they started
write to another (``Signals``): no sleep is used to synchronize.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

import shoal
from shoal._backends._dask import client as _dask_client
from shoal._backends._dask import collector as _collector
from shoal._core.errors import WorkerCrashed

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Without a dashboard the port does not matter: do not warn that another
# cluster on this machine holds 8787.
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")


def dist() -> Any:
    return pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    local = dist().LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
        dashboard_address=None, silence_logs=50, scheduler_kwargs={"allowed_failures": 0},
    )
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with dist().Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture
def opts(cluster: Any, client: Any) -> dict[str, Any]:
    client.wait_for_workers(2, timeout=60)  # an earlier test's victim may still be restarting
    return {"backend": "dask", "address": cluster.scheduler_address}


# ------------------------------------------------------------ pipes as signals
class Gate:
    """Items call ``Gate.wait(path)``, which blocks until the test ``open``s it.

    A named pipe: opening it to read blocks while nobody holds it open to
    write; the test holds it open (read-write, which does not block) from
    ``open`` on, so every later wait passes at once.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "gate"
        os.mkfifo(self.path)
        self._fd: int | None = None

    def open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        self.open()  # never leave an item blocked
        assert self._fd is not None
        os.close(self._fd)

    @staticmethod
    def wait(path: str) -> None:
        os.close(os.open(path, os.O_RDONLY))


class Signals:
    """Lines items write (``Signals.send``) and the test reads (``read``)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "signals"
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR)  # a reader from now on: sends never block
        self._buffer = b""

    def read(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._fd], [], [], left)[0], "no signal came"
            self._buffer += os.read(self._fd, 4096)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def send(path: str, line: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # the test stopped listening
        try:
            os.write(fd, f"{line}\n".encode())  # one write of < PIPE_BUF: never interleaved
        finally:
            os.close(fd)


@pytest.fixture
def pipes(tmp_path: Path) -> Iterator[tuple[Gate, Signals]]:
    gate, signals = Gate(tmp_path), Signals(tmp_path)
    try:
        yield gate, signals
    finally:
        gate.close()
        signals.close()


# --------------------------------------------------------------- item functions
def crash_on_17(arg: tuple[str, int]) -> int:
    how, x = arg
    if x == 17:
        if how == "exit":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        ctypes.string_at(0)  # a segfault
    return x


def die_once_on_5(arg: tuple[str, int]) -> int:
    folder, x = arg
    marker = Path(folder) / "died"
    if x == 5 and not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return x


def gated(arg: tuple[str, str, int]) -> int:
    """Say it started (and where), then wait for the gate."""
    gate, signals, x = arg
    Signals.send(signals, f"{x} {os.getpid()}")
    Gate.wait(gate)
    return x


def counted(arg: tuple[str, int]) -> int:
    """Count each run of an item in a file of its own (runs can be in any process)."""
    folder, x = arg
    with open(Path(folder, f"ran-{x}"), "a") as runs:
        runs.write("1")
    return x * x


def runs_of(folder: Path, x: int) -> int:
    return len(Path(folder, f"ran-{x}").read_text())


# --------------------------------------------------------------- worker deaths
@pytest.mark.parametrize(("how", "exitcode"), [
    ("exit", 3), ("sigkill", -signal.SIGKILL), ("segfault", -signal.SIGSEGV)])
def test_a_worker_death_fails_only_the_item_that_causes_it(
    opts: dict[str, Any], how: str, exitcode: int,
) -> None:
    # Default options: chunks of several items, two tasks queued per worker:
    # the chunk with item 17 and the one queued behind it are lost together.
    report = shoal.run(crash_on_17, [(how, x) for x in range(60)], **opts)
    [failure] = report.failures
    assert failure.index == 17
    assert isinstance(failure.error, WorkerCrashed) and failure.error.exitcode == exitcode
    assert "item 17" in str(failure.error) and "Dask worker tcp://127.0.0.1:" in str(failure.error)
    assert report.values == [x for x in range(60) if x != 17]
    assert all(r.attempts == 1 for r in report.results)


def test_a_lost_chunk_is_rerun_item_by_item(opts: dict[str, Any], tmp_path: Path) -> None:
    # Item 5 kills its worker once. Every item lost with that worker runs
    # again alone, without using up a retry, and now succeeds.
    items = [(str(tmp_path), x) for x in range(16)]
    report = shoal.run(die_once_on_5, items, chunk_size=4, **opts)
    assert report.values == list(range(16))
    assert (tmp_path / "died").exists()
    assert all(r.attempts == 1 for r in report.results)


def test_a_worker_killed_mid_run_costs_no_item(
    opts: dict[str, Any], pipes: tuple[Gate, Signals],
) -> None:
    gate, signals = pipes
    items = [(str(gate.path), str(signals.path), x) for x in range(12)]
    results: list[Any] = []

    def kill_one_worker_then_open_the_gate() -> None:
        try:
            pids = {int(signals.read().split()[1]) for _ in range(2)}
            assert len(pids) == 2  # an item runs on each worker
            os.kill(min(pids), signal.SIGKILL)
        finally:
            gate.open()

    killer = threading.Thread(target=kill_one_worker_then_open_the_gate)
    killer.start()
    try:
        results = list(shoal.imap(gated, items, chunk_size=1,
                                  backend_options={"tasks_per_thread": 1}, **opts))
    finally:
        killer.join(30)
        gate.open()
    assert [r.value for r in results] == list(range(12))
    assert all(r.ok and r.attempts == 1 for r in results)


def test_results_lost_with_their_worker_run_again_without_an_attempt(
    opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # The first fetch finds the worker that computed the results killed:
    # Dask computes them again, and the collector fetches them then.
    killed: list[int] = []
    real_gather = _dask_client.gather  # what the collector calls

    def gather_after_a_death(client: Any, futures: list[Any], direct: Any,
                             timeout: float) -> dict[str, Any]:
        if not killed:
            holder = client.who_has(futures[:1])[futures[0].key][0]
            pid = client.run(os.getpid, workers=[holder])[holder]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return real_gather(client, futures, direct, timeout)

    monkeypatch.setattr(_collector, "gather", gather_after_a_death)
    monkeypatch.setattr(_collector, "GATHER_TIMEOUT", 2.0)
    items = [(str(tmp_path), x) for x in range(8)]
    report = shoal.run(counted, items, chunk_size=4, **opts)
    assert killed
    assert report.values == [x * x for x in range(8)]
    assert all(r.attempts == 1 for r in report.results)
    assert max(runs_of(tmp_path, x) for x in range(8)) == 2  # the lost part ran again


def test_a_cluster_left_without_workers_fails_the_run_instead_of_waiting_forever(
    monkeypatch: pytest.MonkeyPatch, pipes: tuple[Gate, Signals],
) -> None:
    gate, signals = pipes
    monkeypatch.setattr(_dask_client, "WATCH_SECONDS", 0.2)
    monkeypatch.setattr(_dask_client, "NO_WORKERS_TIMEOUT", 1.0)
    lonely = dist().LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                 host="127.0.0.1", dashboard_address=None, silence_logs=50)
    try:
        with dist().Client(lonely, set_as_default=False) as client:
            done = client.submit(pow, 2, 10)
            assert done.result(timeout=30) == 1024
            items = [(str(gate.path), str(signals.path), x) for x in range(4)]
            run = shoal.imap(gated, items, backend="dask", address=lonely.scheduler_address,
                             chunk_size=1)
            def stop_the_workers() -> None:
                signals.read()  # an item runs
                lonely.scale(0)

            stopper = threading.Thread(target=stop_the_workers)
            stopper.start()
            began = time.monotonic()
            with pytest.raises(shoal.BrokenBackend, match="has had no workers for 1 s"):
                list(run)
            stopper.join(30)
            assert time.monotonic() - began < 30
            # Fetching what was lost with every worker gives up within its bound
            # (Client.gather would wait for a worker to compute it again).
            began = time.monotonic()
            assert _dask_client.gather(client, [done], True, 1.0) == {}
            assert time.monotonic() - began < 10
    finally:
        lonely.close()


# ----------------------------------------------------------------- the caller
CTRL_C_SCRIPT = """
    import json, os, signal, sys, time
    import psutil
    import shoal

    # Ctrl-C raises KeyboardInterrupt even if the test run was started with
    # SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def item(x):
        if x >= 10:
            time.sleep(600)  # never finishes: still running at Ctrl-C
        return x * 2

    class Watch:
        def on_start(self, info): pass
        def on_finish(self, report): pass
        def on_results(self, results):
            self.done = getattr(self, "done", 0) + len(results)
            if self.done == 10:  # items 0-9 are in: the test presses Ctrl-C now
                pids = [p.pid for p in psutil.Process().children(recursive=True)]
                print(json.dumps(pids), flush=True)

    if __name__ == "__main__":
        try:
            shoal.run(item, range(14), backend="dask", chunk_size=1, progress=Watch(),
                      backend_options={"tasks_per_thread": 1})
        except shoal.BatchInterrupted as stop:
            report = stop.report
            print(json.dumps([[r.index, r.value] for r in report.results]), flush=True)
"""


@pytest.mark.timeout(90)
def test_ctrl_c_keeps_every_finished_result_and_leaves_no_process(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        descendants = [psutil.Process(pid) for pid in json.loads(proc.stdout.readline())]
        assert descendants  # the LocalCluster's workers (and their nannies' helpers)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert json.loads(out) == [[x, x * 2] for x in range(10)]  # every one that finished
    _, alive = psutil.wait_procs(descendants, timeout=20)
    assert alive == []


def test_a_script_without_a_main_guard_is_told_so_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text("import shoal\n\n"
                      "def square(x):\n    return x * x\n\n"
                      "print(shoal.map(square, range(4), backend='dask'))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("shoal._core.errors.BrokenBackend: ")
    assert f"{script}:6" in last and 'if __name__ == "__main__":' in last
    assert "Traceback" not in done.stderr.split("Traceback", 1)[1]  # one traceback: ours
    assert "Nanny" not in done.stderr  # no cluster was started


def test_a_guarded_script_runs(tmp_path: Path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text("import shoal\n\n"
                      "def square(x):\n    return x * x\n\n"
                      "if __name__ == '__main__':\n"
                      "    print(shoal.map(square, range(4), backend='dask', workers=1))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9]"
