"""Tests of shoal.arrays on NumPy; the GPU path through a fake ``cupy`` module.

The fake CuPy delegates to NumPy, so the code that selects and drives CuPy
(device counting, host transfers, fallback) runs without a GPU.
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal import arrays
from shoal._core.errors import BackendUnavailable, InvalidOptionError
from shoal.arrays import fft_peak_frequencies, map_arrays, select_array_module

RATE = 1000.0
T = np.arange(1000) / RATE


def sine(freq: float, amp: float, offset: float = 0.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * T) + offset


class FakeCupy(types.ModuleType):
    """Looks like CuPy to shoal.arrays; computes with NumPy."""

    def __init__(self, devices: int | Exception = 1, broken: bool = False) -> None:
        super().__init__("cupy")
        self.transfers = 0
        self.broken = broken

        def count() -> int:
            if isinstance(devices, Exception):
                raise devices
            return devices

        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))

    def asarray(self, x: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise RuntimeError("cudaErrorMemoryAllocation: out of memory")
        return np.asarray(x, **kwargs)

    def asnumpy(self, x: Any) -> np.ndarray:
        self.transfers += 1
        return np.asarray(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no module chosen and no warning shown yet."""
    monkeypatch.setattr(arrays, "_chosen", {})
    monkeypatch.setattr(arrays, "_started", set())
    monkeypatch.setattr(arrays, "_warned", set())
    monkeypatch.delenv(arrays.FORCE_CPU_ENV, raising=False)


def use_cupy(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake)


# ----------------------------------------------------------- select_array_module
def test_numpy_when_cupy_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ordinary CPU machine: no warning
        xp, name, reason = select_array_module()
    assert xp is np and name == "numpy" and "not installed" in reason


def test_cupy_when_a_device_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCupy(devices=2)
    use_cupy(monkeypatch, fake)
    xp, name, reason = select_array_module("auto")
    assert xp is fake and name == "cupy" and "2 CUDA device" in reason
    assert select_array_module("gpu").xp is fake


def test_numpy_without_a_device_and_gpu_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_array_module().name == "numpy"
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        select_array_module("gpu")


def test_broken_cuda_falls_back_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=RuntimeError("CUDA driver version is insufficient")))
    with pytest.warns(RuntimeWarning, match="CUDA driver version") as caught:
        assert select_array_module().name == "numpy"
        assert select_array_module().name == "numpy"
    assert len(caught) == 1


def test_force_cpu_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=4))
    monkeypatch.setenv("SHOAL_FORCE_CPU", "1")
    for device in ("auto", "gpu"):  # the environment beats an explicit "gpu" too
        module = select_array_module(device)
        assert module.name == "numpy" and "SHOAL_FORCE_CPU=1" in module.reason


def test_explicit_cpu_and_bad_device(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=1))
    assert select_array_module("cpu").name == "numpy"
    with pytest.raises(InvalidOptionError, match='"auto", "cpu" or "gpu"'):
        select_array_module("tpu")  # type: ignore[arg-type]


# ------------------------------------------------------------------ map_arrays
def test_results_in_input_order_from_a_generator() -> None:
    def gen() -> Iterator[np.ndarray]:
        for k in range(10):
            yield np.full(3, float(k))

    sums = map_arrays(lambda xp, b: b.sum(axis=1), gen(), chunk_size=4, backend="sequential")
    assert sums == [3.0 * k for k in range(10)]
    assert all(type(v) is float for v in sums)


def test_numbers_tuples_and_rows() -> None:
    assert map_arrays(lambda xp, b: b * b, [1, 2, 3], chunk_size=2) == [1, 4, 9]
    pairs = map_arrays(lambda xp, b: (b + 1, b - 1), [5, 6], chunk_size=1)
    assert pairs == [(6, 4), (7, 5)]
    rows = map_arrays(lambda xp, b: b[:, ::-1], [np.arange(3), np.arange(3) + 10])
    np.testing.assert_array_equal(rows[1], [12, 11, 10])


def test_chunks_run_on_the_engine_threads_with_retries() -> None:
    attempts: dict[int, int] = {}

    def flaky(xp: Any, batch: Any) -> Any:
        first = int(batch[0])
        attempts[first] = attempts.get(first, 0) + 1
        if attempts[first] == 1:
            raise ConnectionError("transient")
        return batch * 10

    out = map_arrays(flaky, range(7), chunk_size=3, backend="threads", retries=1)
    assert out == [x * 10 for x in range(7)]
    assert attempts == {0: 2, 3: 2, 6: 2}


def test_progress_counts_chunks() -> None:
    events: list[Any] = []
    map_arrays(lambda xp, b: b, list(range(10)), chunk_size=4, progress=events.append)
    assert events and events[-1].done == 3 and events[-1].total == 3


def test_failed_chunk_under_each_strategy() -> None:
    def no_sevens(xp: Any, batch: Any) -> Any:
        if (batch == 7).any():
            raise ValueError("seven")
        return batch

    items = list(range(9))
    with pytest.raises(ValueError, match="seven"):
        map_arrays(no_sevens, items, chunk_size=3)
    assert map_arrays(no_sevens, items, chunk_size=3, on_error="skip_failed") == [0, 1, 2, 3, 4, 5]
    collected = map_arrays(no_sevens, items, chunk_size=3, on_error="collect_errors")
    assert collected[:6] == [0, 1, 2, 3, 4, 5]
    assert all(isinstance(e, ValueError) for e in collected[6:]) and len(collected) == 9


def test_checkpoint_restores_finished_chunks(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    first = map_arrays(double, list(range(6)), chunk_size=2, checkpoint=db)
    second = map_arrays(double, list(range(6)), chunk_size=2, checkpoint=db)
    assert first == second == [0, 2, 4, 6, 8, 10]


def double(xp: Any, batch: Any) -> Any:
    return batch * 2


def test_wrong_row_count_names_the_chunk_and_the_fix() -> None:
    def sums(xp: Any, batch: Any) -> Any:
        return batch.sum(axis=0 if batch[0, 0] > 1 else 1)  # the second chunk is wrong

    items = [np.ones(4), np.ones(4), np.full(4, 2.0), np.full(4, 2.0)]
    with pytest.raises(ValueError, match=r"chunk 1 \(items 2\.\.3\).*4 rows.*2 items.*axis=1"):
        map_arrays(sums, items, chunk_size=2)


def test_items_of_different_shapes_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one shape"):
        map_arrays(lambda xp, b: b, [np.ones(3), np.ones(4)], chunk_size=2)


def test_gpu_path_moves_results_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCupy(devices=1)
    use_cupy(monkeypatch, fake)
    seen: list[str] = []

    def fn(xp: Any, batch: Any) -> Any:
        seen.append(xp.__name__)
        return batch + 1

    assert map_arrays(fn, [1, 2, 3], chunk_size=2, backend="sequential") == [2, 3, 4]
    assert seen == ["cupy", "cupy"] and fake.transfers == 2


def test_cupy_failing_on_first_use_falls_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=1, broken=True))
    seen: list[str] = []

    def fn(xp: Any, batch: Any) -> Any:
        seen.append(xp.__name__)
        return batch * 3

    with pytest.warns(RuntimeWarning, match="CuPy failed on the first chunk") as caught:
        out = map_arrays(fn, range(6), chunk_size=2, backend="sequential")
    assert out == [0, 3, 6, 9, 12, 15]
    assert seen == ["numpy"] * 3 and len(caught) == 1


def test_a_later_gpu_failure_is_the_chunks_error(monkeypatch: pytest.MonkeyPatch) -> None:
    use_cupy(monkeypatch, FakeCupy(devices=1))

    def fn(xp: Any, batch: Any) -> Any:
        if batch[0] >= 2:
            raise RuntimeError("out of memory on chunk 1")
        return batch

    with pytest.raises(RuntimeError, match="chunk 1"):
        map_arrays(fn, range(4), chunk_size=2, backend="sequential")
    assert arrays._chosen["auto"].name == "cupy"  # no fallback after the first chunk


def test_bad_arguments() -> None:
    with pytest.raises(InvalidOptionError, match="ordered"):
        map_arrays(double, [1], ordered=False)
    with pytest.raises(InvalidOptionError, match="batch_size"):
        map_arrays(double, [1], chunk_size=0)


# --------------------------------------------------------------------- FFT
def test_fft_peaks_of_known_sines() -> None:
    signals = np.stack([sine(50, 2.0, offset=0.7), sine(120, 0.5), sine(333, 1.25)])
    freqs, amps = fft_peak_frequencies(signals, RATE, np)
    np.testing.assert_allclose(freqs, [50.0, 120.0, 333.0])
    np.testing.assert_allclose(amps, [2.0, 0.5, 1.25], rtol=1e-9)


def test_fft_peak_of_one_signal_between_bins_and_with_noise() -> None:
    rng = np.random.default_rng(0)
    noisy = sine(60.3, 1.0) + rng.normal(0, 0.1, T.size)
    freqs, amps = fft_peak_frequencies(noisy, RATE)  # 1-D input, numpy by default
    assert freqs.shape == (1,) and abs(freqs[0] - 60.3) <= RATE / T.size
    assert 0.6 < amps[0] <= 1.05  # leakage lowers the peak between bins


def test_fft_through_map_arrays() -> None:
    signals = [sine(f, 1.0) for f in (5, 10, 20, 40, 80)]
    out = map_arrays(lambda xp, b: fft_peak_frequencies(b, RATE, xp), signals, chunk_size=2)
    assert [round(f) for f, _ in out] == [5, 10, 20, 40, 80]


def test_fft_rejects_bad_input() -> None:
    with pytest.raises(InvalidOptionError, match="sample_rate"):
        fft_peak_frequencies(np.ones((1, 8)), 0.0)
    with pytest.raises(InvalidOptionError, match="2 samples"):
        fft_peak_frequencies(np.ones((1, 1)), 10.0)
