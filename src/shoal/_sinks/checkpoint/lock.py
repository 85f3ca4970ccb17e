"""One run at a time on a checkpoint: a lock file beside it, holding its owner's pid.

Two runs on one checkpoint would compute the same items twice and interleave
their rows; two that create it at the same moment would race to write its
schema. So ``open_checkpoint`` takes ``FILE.lock`` first, and the second run
gets ``CheckpointInUse`` naming the first one's pid, at once (waiting could
mean waiting for hours).

The lock is a POSIX record lock (``fcntl.lockf``): the kernel drops it when
its process dies, SIGKILL included, so a killed run never leaves a stale
lock; and unlike ``flock`` it is not inherited by forked children (the
process backend forks workers, which may outlive a killed driver briefly).
Record locks belong to the process, not to the file descriptor, so this module
also refuses a second open of the same checkpoint inside one process.

Platforms without ``fcntl`` (Windows) get the in-process check only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from shoal._core.errors import CheckpointInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Checkpoints this process holds, by real path; the lock guards the set.
_held: set[str] = set()
_held_lock = threading.Lock()

# How long to wait for a new owner to write its pid into the lock file (it does
# so right after locking) before reporting "another process" without one.
_OWNER_WAIT = 0.5


def _owner(fd: int) -> tuple[int, str] | None:
    """(pid, host) written in the lock file, or None while it is being written."""
    text = os.pread(fd, 256, 0).decode("utf-8", "replace")
    if not text.endswith("\n"):
        return None
    pid, _, host = text.strip().partition(" ")
    return (int(pid), host) if pid.isdigit() else None


def _in_use(db: Path, owner: tuple[int, str] | None) -> CheckpointInUse:
    if owner is None:
        who, pid = "another process", None
    else:
        pid, host = owner
        who = f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")
    return CheckpointInUse(
        f"checkpoint {db} is in use by {who} (another run of it is going on); wait for "
        "that run to finish, or pass another checkpoint path", db, pid)


def _lock_file(db: Path, lock_path: Path) -> int:
    """Open and lock ``lock_path``; return its descriptor.

    Raises:
        CheckpointInUse: another process holds it.
        OSError: the lock file cannot be created.
    """
    give_up = time.monotonic() + _OWNER_WAIT
    while True:
        # O_NOFOLLOW: a planted symlink must not make us truncate another file.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _owner(fd)
            os.close(fd)
            if owner is None and time.monotonic() < give_up:
                time.sleep(0.005)  # the owner locked the file and is writing its pid
                continue
            raise _in_use(db, owner) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        # The previous owner removed the file between our open and our lock
        # (see release): we locked an orphan, so start over on the new one.
        os.close(fd)


class CheckpointLock:
    """The lock of one open checkpoint; ``release`` it when the store closes."""

    def __init__(self, db: Path) -> None:
        """Take the lock of checkpoint ``db``.

        Raises:
            CheckpointInUse: another run, in this process or another, holds it.
            OSError: the lock file cannot be created.
        """
        self._key = os.path.realpath(db)
        self._path = db.with_name(db.name + ".lock")
        self._fd: int | None = None
        self._released = False
        with _held_lock:
            if self._key in _held:
                raise CheckpointInUse(
                    f"checkpoint {db} is already open in this process (pid {os.getpid()}); "
                    "close the other store first, or pass another checkpoint path",
                    db, os.getpid())
            _held.add(self._key)
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            self._fd = _lock_file(db, self._path)
        except BaseException:
            with _held_lock:
                _held.discard(self._key)
            raise

    def release(self) -> None:
        """Remove the lock file and release the lock; releasing twice is harmless."""
        if self._released:  # the path may be another store's by now
            return
        self._released = True
        fd, self._fd = self._fd, None
        if fd is not None:
            # Unlinked while still locked: a process that opened the old file
            # meanwhile finds it gone after locking it, and retries.
            try:
                os.unlink(self._path)
            except OSError:
                pass
            os.close(fd)
        with _held_lock:
            _held.discard(self._key)
