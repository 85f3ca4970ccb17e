"""A pull that finds nothing while ``input_ready()`` runs must not starve the run.

The input (a reader thread, ``shoal.Executor``'s queue of calls) may get an
item and call ``input_ready()`` after a pull has looked and found nothing
but before the engine records that the input is starved; the wake-up has then
come and gone, so the engine must pull again instead of waiting forever.
"""

from __future__ import annotations

from shoal._core.engine import WAIT_FOR_SIGNAL, Engine, Work
from shoal._core.options import Options
from shoal._core.source import Pulled, Source
from shoal._policies.chunking import ChunkPolicy


class RacingSource(Source):
    """Empty on the first pull, during which an item arrives; then that item."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.pulls = 0

    def pull(self, n: int) -> Pulled:
        self.pulls += 1
        if self.pulls == 1:
            assert self.engine is not None
            self.engine.input_ready()  # the item arrives while this pull returns empty
            return Pulled([], False)
        return Pulled(["item"], True)


def make(source: Source) -> Engine:
    options = Options.from_kwargs("collect_errors", {})
    return Engine(source, options, chunks=ChunkPolicy(None, workers=1, fixed=1),
                  window=lambda c: 64)


def test_input_ready_during_an_empty_pull_is_not_lost() -> None:
    source = RacingSource()
    engine = source.engine = make(source)
    got = engine.acquire()  # not starved: it pulls again at once and finds the item
    assert isinstance(got, Work) and list(got.task.items) == ["item"]
    assert source.pulls == 2


class EmptySource(Source):
    def __init__(self) -> None:
        self.pulls = 0

    def pull(self, n: int) -> Pulled:
        self.pulls += 1
        return Pulled([], False)


def test_an_empty_pull_without_input_ready_waits_for_it() -> None:
    source = EmptySource()
    engine = make(source)
    assert engine.acquire() is WAIT_FOR_SIGNAL
    assert engine.acquire() is WAIT_FOR_SIGNAL
    assert source.pulls == 1  # starved: no busy pulling until input_ready()
    engine.input_ready()
    engine.acquire()
    assert source.pulls == 2
