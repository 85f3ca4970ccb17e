"""What a process pool keeps between runs: its fork server, its workers, its stop flag.

``PoolState`` holds them; ``Worker`` is the driver's view of one worker
process. During a run the run's hub thread (``hub.py``) owns both; between
runs nothing touches them but ``ProcessWorkers.serve`` and ``close``, which
runs use one at a time. Only what is written to the control socket is shared
with other threads while a hub runs (``control_lock``).

``PoolState`` holds no reference to the ``ProcessWorkers`` that owns it, so
that a pool nobody refers to any more is collected, and its finalizer
(``close``) leaves no process behind.
"""

from __future__ import annotations

import itertools
import os
import selectors
import socket
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shoal._backends._processes.forkserver import ForkServerHandle, kill_group, start_fork_server
from shoal._backends._processes.protocol import (
    OP_KILL,
    OP_QUIT,
    OP_SPAWN,
    RECORD,
    ControlReader,
    FrameReader,
    FrameWriter,
    StopFlag,
)

if TYPE_CHECKING:
    from shoal._core.engine import Task

#: how long closing a pool waits for the fork server to exit before it kills it
GRACEFUL_EXIT_SECONDS = 5.0
CANCEL_EXIT_SECONDS = 1.0

WorkerState = Literal["live", "retiring", "killed"]


@dataclass(slots=True, eq=False)
class Sent:
    """Items of one task sent to a worker in one frame."""

    task: Task
    ticket: int  # its number on the worker, in the claim pipe until the worker starts it
    count: int  # items sent (from task.done at sending time) and not yet reported
    stream: bool  # the worker reports each item as it finishes
    release_rest: bool  # after these items, give the task's unsent items back


class Worker:
    """The driver's view of one worker process (see the module docstring for its owner)."""

    __slots__ = ("claim_r", "claim_w", "claimed", "events", "job", "label", "out", "pid",
                 "reader", "ready", "sends", "served", "sock", "state", "tickets")

    def __init__(self, pid: int, sock: socket.socket, claim: tuple[int, int]) -> None:
        self.pid = pid
        self.label = f"pid:{pid}"
        self.sock: socket.socket | None = sock
        self.claim_r, self.claim_w = claim  # both ends of its claim pipe (see protocol.py)
        self.tickets = 0  # the last ticket issued
        self.claimed = 0  # every ticket up to this one is known to be taken by the worker
        self.reader = FrameReader()
        self.out = FrameWriter()  # frames not yet written
        self.events = selectors.EVENT_READ
        self.sends: deque[Sent] = deque()  # in the order the worker runs them
        self.ready = False  # its initializer ran (READY)
        self.state: WorkerState = "live"
        self.served = 0  # items sent to it in its life (max_items_per_worker)
        self.job = 0  # the job whose fn it holds (0: none yet)

    def detach(self) -> None:
        """Stop talking to it (it is dead, killed or retiring): closing its
        socket is what tells a live worker to exit."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            os.close(self.claim_r)
            os.close(self.claim_w)
        self.out.clear()

    def fds(self) -> list[int]:
        return [] if self.sock is None else [self.sock.fileno(), self.claim_r, self.claim_w]


#: every pool not closed yet: a fork server forked from the driver closes their fds
_LIVE: weakref.WeakSet[PoolState] = weakref.WeakSet()


def _fds_of_other_pools(this: PoolState) -> list[int]:
    return [fd for pool in list(_LIVE) if pool is not this for fd in pool.fds()]


class PoolState:
    """The fork server, the workers and the stop flag of one pool (see the module docstring)."""

    def __init__(self, init_blob: bytes | None) -> None:
        self.init_blob = init_blob
        self.flag = StopFlag.create()
        self.server: ForkServerHandle | None = None
        self.server_job = 0  # the job the fork server was started for
        self.control = ControlReader()
        self.workers: dict[int, Worker] = {}  # pid -> worker, from SPAWNED until EXITED
        self.starting = 0  # spawns asked for whose worker is not ready yet
        self.startup_deaths = 0  # workers in a row that died before they were ready
        self.tokens = itertools.count(1)
        self.jobs = itertools.count(1)
        # _control_lock guards writes to the control socket (the hub: spawn,
        # kill; shutdown and close from other threads: kill, quit) and
        # ``closed``. Only the hub reads the socket.
        self._control_lock = threading.Lock()
        self.closed = False
        self.broken: str | None = None  # why no run can use the pool any more
        _LIVE.add(self)

    def start(self, job: int) -> ForkServerHandle:
        """The fork server, started now if it is not running yet.

        Raises:
            BrokenBackend: it could not be started.
        """
        if self.server is None:
            self.server = start_fork_server(self.init_blob, self.flag.fd,
                                            lambda: _fds_of_other_pools(self))
            self.server_job = job
        return self.server

    def fds(self) -> list[int]:
        """The driver's fds of this pool (see ``start_fork_server``)."""
        out = [self.flag.fd]
        if self.server is not None:
            out.append(self.server.control.fileno())
        for w in self.workers.values():
            out.extend(w.fds())
        return [fd for fd in out if fd >= 0]

    # ------------------------------------------------------------ control
    def send_control(self, op: int, a: int, b: int = 0) -> None:
        with self._control_lock:
            if self.server is None or self.closed:
                return
            try:
                self.server.control.sendall(RECORD.pack(op, a, b))
            except OSError:
                pass  # the fork server is gone; the hub reports it when it reads EOF

    def spawn(self) -> None:
        """Ask the fork server for a worker; it counts as starting until READY."""
        self.starting += 1
        self.send_control(OP_SPAWN, next(self.tokens))

    def kill(self, w: Worker) -> None:
        """SIGKILL ``w`` and every process in its group; it is no longer used
        (the hub detaches it: its socket is in the hub's selector)."""
        w.state = "killed"
        self.send_control(OP_KILL, w.pid)

    # ------------------------------------------------------------ closing
    def close(self, cancel: bool) -> None:
        """Stop every process of the pool and reap the fork server; once.

        ``cancel``: SIGKILL the workers (and their groups) at once; otherwise
        closing their sockets ends idle workers, and the fork server kills
        what their items left behind as it reaps them.
        """
        with self._control_lock:
            if self.closed:
                return
            self.closed = True
            server = self.server
            if server is not None:
                try:
                    server.control.sendall(RECORD.pack(OP_QUIT, int(cancel), 0))
                except OSError:
                    pass
            # Closing the control socket also closes the sockets of workers
            # whose SPAWNED record is still unread in it, so that they exit
            # too; the fork server reads the QUIT before the end of the stream.
            if server is not None:
                server.control.close()
        _LIVE.discard(self)
        self.control.discard()
        pids = list(self.workers)
        for w in self.workers.values():
            w.detach()  # a worker whose socket closes exits
        self.workers.clear()
        if server is not None:
            limit = CANCEL_EXIT_SECONDS if cancel else GRACEFUL_EXIT_SECONDS
            if not server.wait(limit):
                # A fork server that does not exit is stuck and has most likely
                # reaped none of them, so their groups' ids are still theirs:
                # kill the groups (the parent-death signal would spare what the
                # items started), then the server.
                for pid in pids:
                    kill_group(pid)
                server.kill()
                server.wait(limit)
        self.flag.close()
