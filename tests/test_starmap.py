"""Functions of several arguments: shoal.starmap, Pool.starmap, Executor.map(fn, *iterables)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest

import shoal
import workfns
from shoal._core.arguments import ASpread, Spread, spread

if TYPE_CHECKING:
    from shoal._core.signatures import BackendName


def test_starmap_on_every_backend(backend_opts: dict[str, Any]) -> None:
    pairs = [(i, 10 * i) for i in range(30)]
    assert shoal.starmap(workfns.add, pairs, **backend_opts) == [11 * i for i in range(30)]


def test_async_starmap_on_every_backend(backend_opts: dict[str, Any]) -> None:
    assert shoal.starmap(workfns.aadd, [(1, 2), (3, 4)], **backend_opts) == [3, 7]


def test_map_of_a_two_argument_function_still_needs_starmap() -> None:
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        shoal.map(workfns.add, [(1, 2)], backend="sequential")  # type: ignore[call-overload]
    assert shoal.starmap(workfns.add, [(1, 2)], backend="sequential") == [3]


def test_several_iterables_are_zipped() -> None:
    assert shoal.starmap(pow, zip(range(5), [2] * 5, strict=True)) == [0, 1, 4, 9, 16]


def test_a_bad_tuple_fails_its_item_only() -> None:
    values = shoal.starmap(workfns.add, [(1, 2), (1,), (3, 4)], on_error="collect_errors",
                           backend="threads")
    assert values[0] == 3 and values[2] == 7
    assert isinstance(values[1], TypeError)


def test_the_item_of_a_result_is_the_tuple() -> None:
    report = shoal.run(spread(workfns.add), [(1, 2)])
    assert report.results[0].item == (1, 2) and report.values == [3]


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio"])
def test_lambdas_and_closures(backend: BackendName) -> None:
    k = 3
    assert shoal.starmap(lambda a, b: (a + b) * k, [(1, 1)], backend=backend) == [6]


def test_lambdas_cross_to_processes() -> None:
    k = 3
    assert shoal.starmap(lambda a, b: (a + b) * k, [(1, 1), (2, 2)],
                         backend="processes") == [6, 12]


def test_the_wrappers_pickle_by_reference_and_keep_their_function() -> None:
    wrapped = pickle.loads(pickle.dumps(Spread(workfns.add)))  # C pickle: no cloudpickle
    assert isinstance(wrapped, Spread) and wrapped((2, 3)) == 5
    k = 2
    lam = cloudpickle.loads(cloudpickle.dumps(Spread(lambda a, b: a * b * k)))
    assert lam((2, 3)) == 12
    assert isinstance(pickle.loads(pickle.dumps(spread(workfns.aadd))), ASpread)


def test_a_checkpoint_knows_a_starmap_job_by_its_function(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    assert shoal.starmap(workfns.add, [(1, 2), (3, 4)], checkpoint=db) == [3, 7]
    again = shoal.run(spread(workfns.add), [(1, 2), (3, 4)], checkpoint=db)
    assert again.restored == 2  # the same job: nothing ran twice
    with pytest.raises(shoal.CheckpointMismatch):
        shoal.starmap(workfns.mul, [(1, 2)], checkpoint=db)
    with pytest.raises(shoal.CheckpointMismatch):  # map of the same function is another job
        shoal.map(workfns.add, [(1, 2)], checkpoint=db)  # type: ignore[arg-type]


def test_pool_starmap_and_executor_map() -> None:
    with shoal.Pool(backend="threads", workers=2) as pool:
        assert pool.starmap(workfns.add, [(1, 2)]) == [3]
    with shoal.Executor(2) as ex:
        assert list(ex.map(workfns.add, [1, 2], [10, 20])) == [11, 22]
