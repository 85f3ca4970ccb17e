"""Spark's batch nodes: subclass, write ``process_item``, call ``await node.do(items)``.

The names are Spark's (``spark.nodes.nodes``), so Spark code runs with only its
imports changed. A node is a thin adapter over the engine: each node class
only chooses a backend and translates Spark's words into the engine's
(``max_workers`` -> ``workers``, ``failure_strategy`` -> ``on_error``); the
engine does everything else, so retries, timeouts, rate limits, crash
isolation, progress and checkpoints work the same for every node::

    class Translate(MultipleThreadNode):
        async def process_item(self, item):
            return await translate(item["text"], item["language"])

    out = await Translate(max_workers=8, retries=2).do(requests)
    out.content   # the translations, in input order
    out.report    # the engine's BatchReport (timings, failures, attempts)

============================ ============== ==========================================
class                        backend        use it for
============================ ============== ==========================================
``SequentialNode``           sequential     one item after another, in order
``MultipleThreadNode``       threads        blocking I/O (an ``async def`` runs on a
                                            loop of its worker thread)
``MultipleProcessNode``      processes      CPU-bound work; the node is cloudpickled,
                                            so classes from ``__main__`` work
``ParallelNode``             asyncio        ``async def`` I/O on the caller's loop
============================ ============== ==========================================

Failure strategies (``failure_strategy=``), as Spark defines them:
``"all_or_nothing"`` raises the first failure's own exception;
``"skip_failed"`` leaves failed items out of ``content``; ``"collect_errors"``
makes ``content`` a dict ``{"data": [values of the successes], "errors":
[entry, ...]}`` where each entry has Spark's keys: ``index``, ``item``,
``exception`` (the exception itself), ``error_type``, ``error_message``
(``str(exception)``, cut to 200 characters) and ``item_summary`` (the item's
type and size: ``{"type": "dict", "size": 2, "keys": [...]}``, ``{"type":
"list", "length": 3}``, ``{"type": "int", "repr": "7"}``...). Every entry is
made from the engine's ``ItemResult`` (``output.results``), the one shape of a
per-item outcome inside shoal.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from shoal._core.api import arun_batch
from shoal._core.errors import InvalidOptionError
from shoal._core.options import Options
from shoal._core.results import BatchReport, ItemResult
from shoal._policies.retry import RetryPolicy

__all__ = [
    "BatchProcessNode",
    "FailureStrategy",
    "MultipleProcessNode",
    "MultipleThreadNode",
    "NodeOutput",
    "ParallelNode",
    "SequentialNode",
]

FailureStrategy = Literal["all_or_nothing", "skip_failed", "collect_errors"]
_STRATEGIES: tuple[str, ...] = ("all_or_nothing", "skip_failed", "collect_errors")

# Options a node decides itself; the message names what to use instead.
_RESERVED = {
    "backend": "the node class chooses the backend (e.g. MultipleThreadNode for threads)",
    "workers": "use max_workers=",
    "on_error": "use failure_strategy=",
}


@dataclass
class NodeOutput:
    """What ``BatchProcessNode.do`` returns.

    Attributes:
        content: the values in input order; its shape depends on the
            failure strategy (see the module docstring).
        results: one ``ItemResult`` per item, in input order (failures too).
        report: the engine's ``BatchReport`` of the run.
    """

    content: Any
    results: list[ItemResult[Any]]
    report: BatchReport[Any]


@dataclass(frozen=True)
class _NodeConfig:
    """How a node runs; engine options stay here and never travel to workers."""

    failure_strategy: FailureStrategy = "all_or_nothing"
    engine_options: Mapping[str, Any] = field(default_factory=dict)


class BatchProcessNode(ABC):
    """Spark's base of the batch nodes: runs ``process_item`` on every item.

    Subclasses implement ``process_item`` (``async def`` or plain ``def``) and
    pick a backend with the ``backend_name`` class attribute. Keep no
    per-item state on the node (such as retry counters): items run
    concurrently, and in other processes for ``MultipleProcessNode``.

    Args:
        max_workers: the most items running at once (the engine's
            ``workers=``); None for the backend's default.
        failure_strategy: ``"all_or_nothing"`` (default), ``"skip_failed"``
            or ``"collect_errors"``.
        retries: extra attempts per failed item (an int or a ``RetryPolicy``).
        timeout: seconds one attempt of one item may take.
        **options: any other engine option (``progress``, ``checkpoint``,
            ``rate``, ``chunk_size``, ...), passed to the engine unchanged.

    Raises:
        InvalidOptionError: an unknown failure strategy, an option the node
            class decides itself (``backend``, ``workers``, ``on_error``), or
            an engine option the engine refuses.
    """

    backend_name: ClassVar[str] = "sequential"
    # A subclass whose __init__ forgets super().__init__() still runs, with
    # the defaults; __init__ replaces this with the instance's own config.
    _shoal_config: _NodeConfig = _NodeConfig()

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        failure_strategy: FailureStrategy = "all_or_nothing",
        retries: int | RetryPolicy = 0,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        if failure_strategy not in _STRATEGIES:
            raise InvalidOptionError(
                f"failure_strategy must be one of {', '.join(_STRATEGIES)}, "
                f"got {failure_strategy!r}"
            )
        for name, hint in _RESERVED.items():
            if name in options:
                raise InvalidOptionError(f"{type(self).__name__} does not take {name}=; {hint}")
        engine_options: dict[str, Any] = {**options, "retries": retries, "timeout": timeout}
        if max_workers is not None:
            engine_options["workers"] = max_workers
        config = _NodeConfig(failure_strategy, engine_options)
        Options.from_kwargs(failure_strategy, self._engine_options(config))  # fail now
        self._shoal_config = config

    @property
    def failure_strategy(self) -> FailureStrategy:
        """``"all_or_nothing"``, ``"skip_failed"`` or ``"collect_errors"``."""
        return self._shoal_config.failure_strategy

    @abstractmethod
    def process_item(self, item: Any) -> Any:
        """Process one item and return its result.

        Write it as ``async def`` (awaited by the backend) or as a plain
        ``def``; both are typed by this ``-> Any`` signature.

        Raises:
            Exception: any exception fails this item alone; the failure
                strategy decides what the batch does with it.
        """

    async def do(self, items: Iterable[Any]) -> NodeOutput:
        """Run ``process_item`` on every item through the engine.

        Raises:
            BaseException: under ``"all_or_nothing"``, the first failed item's
                own exception (the rest of the batch is stopped).
            InvalidItemsError: ``items`` is not iterable.
            KeyboardInterrupt, asyncio.CancelledError: passed on after the
                engine has stopped the run and cancelled what was running.
        """
        config = self._shoal_config
        report = await arun_batch(self._item_function(), items, **self._engine_options(config))
        return NodeOutput(_content(report, config.failure_strategy), report.results, report)

    def _engine_options(self, config: _NodeConfig) -> dict[str, Any]:
        return {**config.engine_options, "backend": self.backend_name,
                "on_error": config.failure_strategy}

    def _item_function(self) -> Callable[[Any], Any]:
        """What the engine runs per item: ``process_item`` bound to this node."""
        return self.process_item


def _content(report: BatchReport[Any], strategy: str) -> Any:
    values = [r.value for r in report.results if r.ok]
    if strategy != "collect_errors":
        return values
    return {"data": values, "errors": [_error_entry(r) for r in report.results if not r.ok]}


_MESSAGE_LIMIT = 200  # Spark cuts error messages and reprs to this many characters


def _cut(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _error_entry(r: ItemResult[Any]) -> dict[str, Any]:
    """Spark's ``collect_errors`` entry for one failed item."""
    return {
        "index": r.index,
        "item": r.item,
        "exception": r.error,
        "error_type": type(r.error).__name__,
        "error_message": _cut(str(r.error)),
        "item_summary": item_summary(r.item),
    }


def item_summary(item: Any) -> dict[str, Any]:
    """What Spark reports about a failed item: its type, and its size or a short repr.

    Dicts give ``size`` and up to 10 sorted ``keys``; lists, tuples, sets,
    strings and bytes give ``length``; None gives ``value``; anything else a
    ``repr`` cut to 200 characters (``"<unavailable>"`` if ``repr`` raises).
    """
    summary: dict[str, Any] = {"type": type(item).__name__}
    try:
        if isinstance(item, dict):
            summary["size"] = len(item)
            summary["keys"] = sorted(str(k) for k in item)[:10]
        elif isinstance(item, (list, tuple, set, str, bytes, bytearray)):
            summary["length"] = len(item)
        elif item is None:
            summary["value"] = None
        else:
            summary["repr"] = _cut(repr(item))
    except Exception:  # a broken __repr__ or __len__ must not hide the item's own error
        summary["repr"] = "<unavailable>"
    return summary


class SequentialNode(BatchProcessNode):
    """Items one after another, in order, on the caller's thread.

    ``max_workers`` may only be 1 here: a sequential node never overlaps items.

    Raises:
        InvalidOptionError: ``max_workers`` other than None or 1.
    """

    backend_name: ClassVar[str] = "sequential"

    def __init__(self, *, max_workers: int | None = None, **kwargs: Any) -> None:
        if max_workers not in (None, 1):
            raise InvalidOptionError(
                f"SequentialNode runs one item at a time, got max_workers={max_workers!r}; "
                "use MultipleThreadNode or ParallelNode for concurrency"
            )
        super().__init__(**kwargs)


class MultipleThreadNode(BatchProcessNode):
    """Items on a pool of threads: for blocking I/O (API calls, files).

    An ``async def process_item`` runs on an event loop owned by its worker
    thread, so many such items overlap up to ``max_workers``.
    """

    backend_name: ClassVar[str] = "threads"


class MultipleProcessNode(BatchProcessNode):
    """Items in worker processes: for CPU-bound work.

    ``self.process_item`` is sent bound to the node, which is serialized with
    cloudpickle, so a node class defined in ``__main__`` or a notebook works.
    Items and results must be picklable; changes a worker makes to the node's
    attributes stay in that worker.
    """

    backend_name: ClassVar[str] = "processes"

    def _item_function(self) -> Callable[[Any], Any]:
        # The bound method is cloudpickled with its node. Send a shallow copy
        # without the run's options: workers need the node's attributes, not
        # a progress callback or checkpoint store (which may not even pickle).
        shipped = copy.copy(self)
        shipped.__dict__.pop("_shoal_config", None)
        return shipped.process_item


class ParallelNode(BatchProcessNode):
    """``async def process_item`` coroutines, concurrent on the caller's event loop.

    Spark's ``ParallelNode``: items overlap in one thread, at most
    ``max_workers`` at a time (None: the asyncio backend's default, 100).

    A plain ``def process_item`` would block the loop while it runs; use
    ``MultipleThreadNode`` for blocking code.
    """

    backend_name: ClassVar[str] = "asyncio"
