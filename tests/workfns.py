"""Functions the behavioural tests run on every backend.

They keep no state in memory (a process or a Dask worker would not share it):
behaviour is chosen by the item, and anything that must be counted across
workers goes through files. conftest registers this module to be pickled by
value, so worker processes need not import it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


async def asquare(x: int) -> int:
    await asyncio.sleep(0.001)
    return x * x


def fail_on_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative item {x}")
    return x * 10


def sleep_then_return(x: float) -> float:
    time.sleep(x)
    return x


async def asleep_then_return(x: float) -> float:
    await asyncio.sleep(x)
    return x


def hang_on(x: Any) -> Any:
    """Hangs (10 s) for the item "hang", returns it otherwise."""
    if x == "hang":
        time.sleep(10)
    return x


async def ahang_on(x: Any) -> Any:
    if x == "hang":
        await asyncio.sleep(10)
    return x


def flaky(arg: tuple[str, int]) -> int:
    """Fails the first attempt of every item (a marker file remembers it)."""
    folder, x = arg
    marker = Path(folder) / f"seen-{x}"
    if not marker.exists():
        marker.write_text("1")
        raise ConnectionError(f"transient failure of {x}")
    return x


def count_calls(arg: tuple[str, int]) -> int:
    """Appends one line per call to a file, so tests count real runs."""
    folder, x = arg
    with open(Path(folder) / "calls.txt", "a") as f:
        f.write(f"{x}\n")
    return x + 1


def calls(folder: str | Path) -> list[int]:
    path = Path(folder) / "calls.txt"
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def pid_of(_: Any) -> int:
    return os.getpid()


# --- several arguments (starmap, Executor) --------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


async def aadd(a: int, b: int) -> int:
    await asyncio.sleep(0.001)
    return a + b


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def sleep_and_raise(t: float) -> None:
    time.sleep(t)
    raise RuntimeError("this is an exception")


def exit_now(code: int = 1) -> None:
    """Kills its worker (a process) at once."""
    os._exit(code)


def env_init(value: str) -> None:
    """An initializer whose effect survives pickling: the worker's environment."""
    os.environ["SHOAL_TEST_INIT"] = value


def env_status(_: Any = None) -> str:
    return os.environ.get("SHOAL_TEST_INIT", "uninitialized")


def failing_init() -> None:
    raise ValueError("error in initializer")


class ExitAtUnpickle:
    """Unpickling it in a worker kills the worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os._exit, (1,)


class ErrorAtPickle:
    def __reduce__(self) -> tuple[Any, ...]:
        import pickle

        raise pickle.PicklingError("error in pickle")


def _unpickle_error() -> None:
    raise ValueError("error at unpickle")


class ErrorAtUnpickle:
    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickle_error, ()


def return_instance(cls: type) -> Any:
    return cls()


# --- per-worker state ------------------------------------------------------------------
def build_state(folder: str | None = None) -> dict[str, Any]:
    """A stand-in for an expensive object; each build is recorded in ``folder``."""
    if folder is not None:
        with open(Path(folder) / "builds.txt", "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid(), "uses": 0}


def make_state(folder: str) -> Any:
    import functools

    import shoal

    return shoal.worker_local(functools.partial(build_state, folder))


def use_state(handle: Any, x: int) -> tuple[int, int, int]:
    """(item, pid, id of this worker's object): ``functools.partial(use_state, handle)``."""
    obj = handle()
    obj["uses"] += 1
    return x, os.getpid(), id(obj)


async def ause_state(handle: Any, x: int) -> tuple[int, int, int]:
    await asyncio.sleep(0)
    return use_state(handle, x)


def builds(folder: str | Path) -> list[int]:
    """The pids of the processes that built an object, one per build."""
    path = Path(folder) / "builds.txt"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _module_state() -> dict[str, Any]:
    return build_state()


import shoal  # noqa: E402 - the handle below is the documented, module-level use

MODULE_STATE = shoal.worker_local(_module_state)


def use_module_state(x: int) -> tuple[int, int]:
    """(pid, id of this worker's object) through a module-level handle."""
    return os.getpid(), id(MODULE_STATE())


class Dummy:
    """A result object whose lifetime a test watches (weakref)."""

    def method(self) -> None:
        return None


def make_dummy(_: Any) -> Dummy:
    return Dummy()


def sleep_and_print(t: float, msg: str) -> None:
    time.sleep(t)
    print(msg, flush=True)


def pid_then_sleep(folder: str, seconds: float) -> None:
    """Records its worker's pid, then sleeps (a hung call)."""
    (Path(folder) / "pid").write_text(str(os.getpid()))
    time.sleep(seconds)
