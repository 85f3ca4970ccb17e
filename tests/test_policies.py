"""Pure decisions, tested without sleeping: retry, rate limit, auto choice."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shoal
from shoal._policies.auto import ProbeSample, choose_backend
from shoal._policies.rate import RateLimit, TokenBucket, as_rate_limit
from shoal._policies.retry import RetryPolicy, as_retry_policy


def test_retry_policy_counts_attempts() -> None:
    policy = RetryPolicy(retries=2, backoff=0.0)
    err = ValueError("x")
    assert policy.delay_before_retry(1, err) == 0.0
    assert policy.delay_before_retry(2, err) == 0.0
    assert policy.delay_before_retry(3, err) is None


def test_retry_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retries=10, backoff=0.5, factor=2.0, max_delay=3.0, jitter=0.0)
    assert [policy.delay(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=2**32))
def test_retry_jitter_stays_within_its_fraction(attempt: int, seed: int) -> None:
    policy = RetryPolicy(retries=30, backoff=0.1, factor=2, max_delay=5, jitter=0.25,
                         rng=random.Random(seed))
    base = min(0.1 * 2 ** (attempt - 1), 5)
    assert base <= policy.delay(attempt) <= base * 1.25


def test_retry_on_and_predicate_both_decide() -> None:
    policy = RetryPolicy(retries=3, backoff=0, retry_on=(OSError,),
                         predicate=lambda e: "again" in str(e))
    assert policy.delay_before_retry(1, OSError("try again")) == 0
    assert policy.delay_before_retry(1, OSError("fatal")) is None
    assert policy.delay_before_retry(1, ValueError("try again")) is None
    assert RetryPolicy(retries=1).delay_before_retry(1, KeyboardInterrupt()) is None


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_retry_option_rejects_bad_values(bad: object) -> None:
    with pytest.raises(shoal.InvalidOptionError):
        as_retry_policy(bad)  # type: ignore[arg-type]


def test_token_bucket_grants_burst_then_waits() -> None:
    bucket = TokenBucket(RateLimit(10, burst=3), now=0.0)
    assert [bucket.try_take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(1, 0.0) == pytest.approx(0.1)
    assert bucket.try_take(1, 0.05) == pytest.approx(0.05)  # nothing was taken meanwhile
    assert bucket.try_take(1, 0.1) == 0.0


@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=20),
    asks=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=300),
)
def test_token_bucket_holds_over_any_window(rate: float, burst: int, asks: list[float]) -> None:
    """Grants in any window [t, t+T] never exceed burst + rate * T."""
    bucket = TokenBucket(RateLimit(rate, burst), now=0.0)
    now = 0.0
    grants: list[float] = []
    for gap in asks:
        now += gap
        if bucket.try_take(1, now) == 0.0:
            grants.append(now)
    for i, start in enumerate(grants):
        for j in range(i, len(grants)):
            window = grants[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


def test_rate_option_forms() -> None:
    assert as_rate_limit(5) == RateLimit(5.0, 1)
    assert as_rate_limit((5, 2)) == RateLimit(5.0, 2)
    with pytest.raises(shoal.InvalidOptionError, match="rate"):
        as_rate_limit(-1)
    with pytest.raises(shoal.InvalidOptionError, match="burst"):
        RateLimit(1, burst=0)


def test_chunk_larger_than_burst_is_a_clear_error() -> None:
    bucket = TokenBucket(RateLimit(10, burst=2), now=0.0)
    with pytest.raises(shoal.InvalidOptionError, match="chunk_size"):
        bucket.try_take(5, 0.0)


def test_auto_prefers_asyncio_for_coroutines() -> None:
    assert choose_backend(True, None, 2)[0] == "asyncio"


def test_auto_runs_tiny_items_inline() -> None:
    name, why = choose_backend(False, ProbeSample(16, 16 * 1e-6, 16 * 1e-6), 2)
    assert name == "sequential" and "us each" in why


def test_auto_sends_waiting_work_to_threads() -> None:
    name, why = choose_backend(False, ProbeSample(4, 0.2, 0.001), 2)
    assert name == "threads" and "I/O-bound" in why


def test_auto_sends_cpu_work_to_processes_when_worth_it() -> None:
    assert choose_backend(False, ProbeSample(4, 0.04, 0.04), 2)[0] == "processes"
    assert choose_backend(False, ProbeSample(4, 0.04, 0.04), 1)[0] == "sequential"
    assert choose_backend(False, ProbeSample(4, 0.04, 0.04), 2, processes_available=False)[0] \
        == "sequential"
    little_left = ProbeSample(4, 0.04, 0.04, remaining=5)
    assert choose_backend(False, little_left, 2)[0] == "sequential"


def test_auto_reports_an_input_finished_during_the_probe() -> None:
    name, why = choose_backend(False, ProbeSample(3, 0.3, 0.3, exhausted=True), 2)
    assert name == "sequential" and "during the probe" in why


def test_retry_delay_never_overflows() -> None:
    """factor ** attempt outgrows a float after ~1000 attempts: the delay is
    then max_delay, not an OverflowError in the engine."""
    policy = RetryPolicy(retries=5000, backoff=0.1, factor=2.0, max_delay=7.0, jitter=0.0)
    assert policy.delay(2000) == 7.0
    assert RetryPolicy(retries=5000, backoff=0.0, factor=2.0, jitter=0.0).delay(2000) == 0.0


def test_retry_delay_stays_within_what_a_thread_can_wait() -> None:
    from shoal._core.validators import MAX_SECONDS

    policy = RetryPolicy(retries=3, backoff=MAX_SECONDS, max_delay=MAX_SECONDS, jitter=1e300)
    assert policy.delay(1) == MAX_SECONDS


def test_ctrl_c_and_exits_are_never_retried() -> None:
    policy = RetryPolicy(retries=3, backoff=0, retry_on=BaseException)
    assert policy.delay_before_retry(1, SystemExit(2)) is None
    assert policy.delay_before_retry(1, KeyboardInterrupt()) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 10**400, (10, "5"), ("10", 5),
                                 (10, 2.5), [10], True])
def test_rate_option_rejects_bad_values(bad: object) -> None:
    with pytest.raises(shoal.InvalidOptionError):
        as_rate_limit(bad)  # type: ignore[arg-type]
