"""Every bad option value is refused when the call is made, on every backend.

The refusal is ``shoal.InvalidOptionError``, naming the option, what is
wrong and the fix; it comes before any item runs (the job logs every call,
so a call made in a worker process or on a Dask worker would show).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import conformance_kit as kit
import shoal
from shoal import InvalidOptionError, RateLimit, RetryPolicy
from shoal._core.validators import MAX_SECONDS

if TYPE_CHECKING:
    from shoal._core.signatures import BackendName

NAN, INF = float("nan"), float("inf")
HUGE = 10**400  # more than a float holds

#: (options, what the message must say)
BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    # rate
    ({"rate": NAN}, r"rate must be a positive number .*got nan: it must be finite"),
    ({"rate": INF}, r"rate must be .*got inf; use rate=None for no limit"),
    ({"rate": -INF}, r"rate must be .*got -inf"),
    ({"rate": 0}, r"rate must be a positive number .*; use rate=None for no limit"),
    ({"rate": -2.5}, r"rate must be a positive number"),
    ({"rate": HUGE}, r"rate must be .*too large"),
    ({"rate": 1e-300}, r"rate must be at least 1.08e-10 items per second"),
    ({"rate": "10"}, r"rate must be items per second \(10\), a \(rate, burst\) pair"),
    ({"rate": True}, r"rate must be items per second"),
    ({"rate": (10,)}, r"rate must be .*pair such as \(10, 5\).*got \(10,\)"),
    ({"rate": (10, 5, 1)}, r"rate must be .*got \(10, 5, 1\)"),
    ({"rate": (10, "5")}, r"rate burst must be a whole number >= 1, got '5' \(str\)"),
    ({"rate": (10, 2.5)}, r"rate burst must be .*got 2.5; use burst=2 or burst=3"),
    ({"rate": (10, 0)}, r"rate burst must be a whole number >= 1, got 0"),
    ({"rate": ("10", 5)}, r"rate must be a positive number of items per second, got '10'"),
    ({"rate": (NAN, 5)}, r"rate must be .*nan"),
    ({"rate": (10, HUGE)}, r"rate burst must be at most \d+ \(sys.maxsize\)"),
    ({"rate": {"per_second": 10}}, r"rate must be items per second .*\(dict\)"),
    # timeout
    ({"timeout": NAN}, r"timeout must be seconds \(a number\), got nan; use None for no"),
    ({"timeout": INF}, r"timeout must be at most \d+ seconds .*got inf; use None for no"),
    ({"timeout": HUGE}, r"timeout must be at most \d+ seconds"),
    ({"timeout": 1e300}, r"timeout must be at most \d+ seconds"),
    ({"timeout": 0}, r"timeout must be > 0 seconds, got 0; use None for no timeout"),
    ({"timeout": -1}, r"timeout must be > 0 seconds"),
    ({"timeout": "soon"}, r"timeout must be seconds \(a number\), got 'soon' \(str\)"),
    ({"timeout": True}, r"timeout must be seconds"),
    # counts
    ({"workers": 2.5}, r"workers must be a whole number >= 1, got 2.5; use workers=2 or "
                       r"workers=3"),
    ({"workers": 0.5}, r"got 0.5; use workers=1$"),
    ({"workers": 0}, r"workers must be a whole number >= 1, got 0; use workers=1 to run"),
    ({"workers": "4"}, r"workers must be a whole number >= 1, got '4' \(str\)"),
    ({"workers": True}, r"workers must be a whole number >= 1, got True \(bool\)"),
    ({"workers": NAN}, r"workers must be a whole number >= 1, got nan"),
    ({"workers": HUGE}, r"workers must be at most \d+ \(sys.maxsize\), got 1000.*000$"),
    ({"max_in_flight": 0}, r"max_in_flight must be a whole number >= 1, got 0"),
    ({"max_in_flight": 1.5}, r"use max_in_flight=1 or max_in_flight=2"),
    ({"max_in_flight": [8]}, r"max_in_flight must be a whole number >= 1, got \[8\] \(list\)"),
    ({"max_in_flight": HUGE}, r"max_in_flight must be at most"),
    ({"chunk_size": 0}, r'chunk_size must be a whole number >= 1, got 0; or use chunk_size="auto"'),
    ({"chunk_size": 2.5}, r"use chunk_size=2 or chunk_size=3"),
    ({"chunk_size": "big"}, r"chunk_size must be a whole number >= 1, got 'big' \(str\)"),
    ({"chunk_size": None}, r"chunk_size must be a whole number >= 1, got None"),
    ({"chunk_size": HUGE}, r"chunk_size must be at most"),
    ({"total": -1}, r"total must be a whole number >= 0, got -1"),
    ({"total": "3"}, r"total must be a whole number >= 0, got '3' \(str\)"),
    ({"total": 2.5}, r"use total=2 or total=3"),
    ({"max_items_per_worker": 0}, r"max_items_per_worker must be a whole number >= 1, got 0; "
                                  r"use None to never recycle"),
    ({"max_items_per_worker": 1.5}, r"use max_items_per_worker=1 or max_items_per_worker=2"),
    # retries
    ({"retries": -1}, r"retries must be a whole number >= 0, got -1; use retries=0 to disable"),
    ({"retries": 1.5}, r"retries must be a whole number >= 0, got 1.5; use retries=1 or "
                       r"retries=2"),
    ({"retries": "3"}, r"retries must be an int or a shoal.RetryPolicy, got '3' \(str\)"),
    ({"retries": True}, r"retries must be an int or a shoal.RetryPolicy, got True"),
    ({"retries": HUGE}, r"retries must be at most"),
    ({"retries": [ValueError]}, r"retries must be an int or a shoal.RetryPolicy"),
    # choices
    ({"on_error": "skip"}, r"on_error must be one of .*got 'skip' "
                           r"\(did you mean 'skip_failed'\?\)"),
    ({"on_error": "collect"}, r"did you mean 'collect_errors'"),
    ({"on_error": "all-or-nothing"}, r"did you mean 'all_or_nothing'"),
    ({"on_error": "ignore"}, r"on_error must be one of all_or_nothing, skip_failed, "
                             r"collect_errors, got 'ignore'$"),
    ({"on_error": 3}, r"on_error must be one of .*got 3"),
    ({"ordered": "yes"}, r"ordered must be True or False, got 'yes'"),
    ({"ordered": None}, r"ordered must be True or False, got None"),
    # checkpoint, progress, initializer
    ({"checkpoint": 123}, r"checkpoint must be the path of a SQLite file .*got 123 \(int\)"),
    ({"checkpoint": True}, r"checkpoint must be the path of a SQLite file .*got True"),
    ({"checkpoint": ""}, r"checkpoint must be the path of a SQLite file .*got ''"),
    ({"checkpoint": ["run.db"]}, r"checkpoint must be the path .*\(list\)"),
    ({"progress": "yes"}, r"progress must be True, False, a callable .*got 'yes'"),
    ({"progress": 1}, r"progress must be True, False, a callable .*got 1"),
    ({"progress": shoal.ProgressEvent}, r"progress=ProgressEvent is a class; pass an instance"),
    ({"initializer": 5}, r"initializer must be callable, got 5"),
    ({"initializer": print, "initargs": 5}, r"initargs must be a tuple of the initializer's "
                                            r"arguments, got 5; for one argument write "
                                            r"initargs=\(5,\)"),
    ({"initializer": print, "initargs": "abc"}, r"initargs must be a tuple .*initargs=\('abc',\)"),
    ({"initializer": print, "initargs": {"a": 1}}, r"initargs must be a tuple"),
    ({"initargs": (1,)}, r"initargs are the arguments of initializer=, but no initializer was "
                         r"given; pass initializer= too, or drop initargs"),
    # backend settings
    ({"backend_options": 5}, r"backend_options must be a dict of settings .*got 5 \(int\)"),
    ({"backend_options": ["client"]}, r"backend_options must be a dict"),
    ({"address": 5}, r"address must be a Dask scheduler address such as 'tcp://host:8786', "
                     r"got 5"),
    ({"address": ""}, r"address must be a Dask scheduler address"),
    # names
    ({"worker": 4}, r"unknown option 'worker'; did you mean 'workers'\?"),
    ({"retry": 2}, r"unknown option 'retry'; did you mean 'retries'\?"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "job"
    d.mkdir()
    yield d
    kit.release(d)


def _refused_before_any_item(folder: Path, call: Any, match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        call()
    assert kit.started(folder) == [], "an item ran before the options were refused"


@pytest.mark.parametrize("backend", kit.BACKENDS)
@pytest.mark.parametrize(("bad", "match"), BAD_OPTIONS,
                         ids=[repr(o)[:60] for o, _ in BAD_OPTIONS])
def test_a_bad_value_is_refused_before_any_item_runs(
    backend: str, bad: dict[str, Any], match: str, folder: Path, request: pytest.FixtureRequest
) -> None:
    opts = {**kit.backend_opts(request, backend), **bad}
    job = kit.job_for(backend, folder)
    _refused_before_any_item(folder, lambda: shoal.map(job, range(4), **opts), match)
    _refused_before_any_item(folder, lambda: shoal.imap(job, range(4), **opts), match)


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "processes"])
def test_address_needs_the_dask_backend(backend: BackendName, folder: Path) -> None:
    job = kit.job_for(backend, folder)
    _refused_before_any_item(
        folder, lambda: shoal.run(job, range(3), backend=backend, address="tcp://127.0.0.1:1"),
        f'address is the Dask scheduler to run on, but backend="{backend}"; use '
        'backend="dask"')


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "processes", "auto"])
def test_backend_options_need_the_dask_backend(backend: BackendName, folder: Path) -> None:
    job = kit.job_for(backend, folder)
    _refused_before_any_item(
        folder, lambda: shoal.run(job, range(3), backend=backend,
                                  backend_options={"tasks_per_thread": 2}),
        f'backend_options are read by backend="dask" only, and this run uses '
        f'backend="{backend}"')


def test_a_bad_backend_name_is_refused(folder: Path) -> None:
    job = kit.Job(str(folder))
    for bad, match in [("thread", "did you mean 'threads'"), ("gpu", "unknown backend 'gpu'"),
                       ("Dask", "did you mean 'dask'"), (None, "unknown backend None")]:
        _refused_before_any_item(folder, lambda b=bad: shoal.map(job, [1], backend=b), match)


#: RetryPolicy arguments that are refused when the policy is made
BAD_RETRY_POLICIES: list[tuple[dict[str, Any], str]] = [
    ({"retries": "3"}, r"retries must be a whole number >= 0, got '3' \(str\)"),
    ({"retries": -1}, r"retries must be a whole number >= 0, got -1; use retries=0"),
    ({"retries": 2.5}, r"use retries=2 or retries=3"),
    ({"retries": True}, r"retries must be a whole number >= 0, got True"),
    ({"backoff": -1}, r"RetryPolicy backoff must be >= 0 seconds, got -1"),
    ({"backoff": NAN}, r"RetryPolicy backoff must be seconds \(a number\), got nan"),
    ({"backoff": INF}, r"RetryPolicy backoff must be at most \d+ seconds"),
    ({"backoff": "1s"}, r"RetryPolicy backoff must be seconds \(a number\), got '1s'"),
    ({"backoff": True}, r"RetryPolicy backoff must be seconds"),
    ({"max_delay": -0.5}, r"RetryPolicy max_delay must be >= 0 seconds"),
    ({"max_delay": NAN}, r"RetryPolicy max_delay must be seconds \(a number\), got nan"),
    ({"max_delay": HUGE}, r"RetryPolicy max_delay must be at most \d+ seconds"),
    ({"factor": 0.5}, r"RetryPolicy factor must be >= 1 \(1 = constant delay\), got 0.5"),
    ({"factor": NAN}, r"RetryPolicy factor must be a number >= 1, got nan: it must be finite"),
    ({"factor": INF}, r"RetryPolicy factor must be a number >= 1, got inf"),
    ({"factor": "2"}, r"RetryPolicy factor must be a number >= 1, got '2'"),
    ({"jitter": -0.1}, r"RetryPolicy jitter must be a fraction >= 0"),
    ({"jitter": NAN}, r"RetryPolicy jitter must be a fraction >= 0 .*nan"),
    ({"jitter": HUGE}, r"RetryPolicy jitter must be .*too large"),
    ({"retry_on": ValueError("x")}, r"retry_on must be an exception class or a tuple of them"),
    ({"retry_on": "ValueError"}, r"retry_on must be an exception class or a tuple of them"),
    ({"retry_on": None}, r"retry_on must be an exception class or a tuple of them"),
    ({"retry_on": {ValueError}}, r"retry_on must be an exception class or a tuple of them"),
    ({"retry_on": int}, r"retry_on must hold exception classes, got <class 'int'>;"),
    ({"retry_on": [ValueError, "KeyError"]}, r"retry_on must hold exception classes, got "
                                             r"'KeyError' in \["),
    ({"retry_on": (ValueError, ValueError("x"))}, r"retry_on must hold exception classes"),
    ({"predicate": 3}, r"RetryPolicy predicate must be a function of the exception .*got 3"),
    ({"predicate": "transient"}, r"RetryPolicy predicate must be a function"),
    ({"rng": 42}, r"RetryPolicy rng must be a random.Random, got 42"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_RETRY_POLICIES,
                         ids=[repr(k)[:50] for k, _ in BAD_RETRY_POLICIES])
def test_a_malformed_retry_policy_is_refused_when_made(kwargs: dict[str, Any], match: str
                                                       ) -> None:
    args = {"retries": 2, **kwargs}
    with pytest.raises(InvalidOptionError, match=match):
        RetryPolicy(**args)


@pytest.mark.parametrize(("args", "match"), [
    ((0,), r"rate must be a positive number"),
    ((NAN,), r"rate must be .*nan"),
    ((INF,), r"rate=None for no limit"),
    ((True,), r"rate must be a positive number of items per second, got True \(bool\)"),
    (("5",), r"rate must be a positive number of items per second, got '5'"),
    ((10, 0), r"rate burst must be a whole number >= 1, got 0"),
    ((10, 1.5), r"use burst=1 or burst=2"),
    ((10, "2"), r"rate burst must be a whole number >= 1, got '2'"),
    ((10, None), r"rate burst must be a whole number >= 1, got None"),
])
def test_a_malformed_rate_limit_is_refused_when_made(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        RateLimit(*args)


def test_retry_on_takes_a_class_a_tuple_or_a_list() -> None:
    assert RetryPolicy(1, retry_on=ValueError).retry_on == (ValueError,)
    assert RetryPolicy(1, retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)
    assert RetryPolicy(1, retry_on=(OSError,)).retry_on == (OSError,)
    policy = RetryPolicy(1, backoff=0, retry_on=[ValueError])
    assert policy.delay_before_retry(1, ValueError()) == 0
    assert policy.delay_before_retry(1, KeyError()) is None


def test_valid_values_are_stored_as_plain_numbers() -> None:
    """numpy numbers, and ints where floats are meant, are fine and stored as
    the engine uses them; a list of two is a (rate, burst) pair."""
    from shoal._core.options import Options

    opts = Options.from_kwargs("collect_errors", {
        "workers": np.int64(3), "max_in_flight": np.int32(9), "chunk_size": np.int16(2),
        "timeout": np.float32(1.5), "rate": [np.float64(2.0), np.int8(4)], "total": np.uint8(7),
        "initializer": print, "initargs": ["a"]})
    assert (type(opts.workers), opts.workers) == (int, 3)
    assert (type(opts.max_in_flight), type(opts.chunk_size), type(opts.total)) == (int, int, int)
    assert (type(opts.timeout), opts.timeout) == (float, 1.5)
    assert opts.rate == RateLimit(2.0, 4) and type(opts.rate.burst) is int
    assert opts.initargs == ("a",)
    assert RetryPolicy(np.int64(2), backoff=1, factor=3).factor == 3.0
    assert type(RetryPolicy(np.int64(2)).retries) is int


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio", "auto"])
def test_the_largest_counts_run(backend: BackendName, folder: Path) -> None:
    """sys.maxsize is the bound of every count: at it, a run still works
    (workers start as work needs them; nothing is sized by the bound)."""
    job = kit.job_for(backend, folder)
    big = sys.maxsize
    report = shoal.run(job, iter(range(5)), backend=backend, workers=big, max_in_flight=big,
                       total=big, retries=RetryPolicy(big, backoff=0), rate=(1e9, big))
    assert report.values == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("backend", ["sequential", "threads", "asyncio"])
def test_the_longest_timeout_and_delays_run(backend: BackendName, folder: Path) -> None:
    job = kit.job_for(backend, folder, flaky={1})
    longest = MAX_SECONDS
    policy = RetryPolicy(1, backoff=0, max_delay=longest, jitter=random.random())
    report = shoal.run(job, range(3), backend=backend, timeout=longest, retries=policy)
    assert report.values == [0, 10, 20] and report.results[1].attempts == 2
