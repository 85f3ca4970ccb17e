"""Synthetic signal captures and the per-file measurement the signal examples share.

A capture is a ``.npy`` file: a noisy sine of about 2 V at about 1 kHz, sampled
at 100 kHz. ``measure`` loads one file and returns its amplitude, RMS, DC
offset, dominant frequency and SNR; it is an ordinary function of a path, so
any shoal backend can run it (processes included: it lives in an importable
module).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 100_000.0  # Hz
SAMPLES = 1 << 17  # 1.3 s of signal, 1 MiB per file


def make_signal_files(directory: Path, n: int, *, seed: int = 0,
                      amplitudes: Mapping[int, float] | None = None,
                      corrupt: Iterable[int] = ()) -> list[Path]:
    """Write ``n`` captures to ``directory``; return their paths in order.

    ``amplitudes`` overrides the amplitude of some files (to plant outliers);
    the files at the ``corrupt`` positions hold text instead of an array.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / SAMPLE_RATE
    overrides = dict(amplitudes or {})
    bad = set(corrupt)
    paths = []
    for i in range(n):
        path = directory / f"capture_{i:03d}.npy"
        amplitude = overrides.get(i, rng.normal(2.0, 0.02))
        frequency = rng.normal(1000.0, 5.0)
        if i in bad:
            path.write_text("this capture was cut short\n")
        else:
            wave = amplitude * np.sin(2 * np.pi * frequency * t)
            np.save(path, wave + rng.normal(0.0, 0.05, SAMPLES) + 0.01)
        paths.append(path)
    return paths


def measure(path: Path) -> dict[str, Any]:
    """Measure one capture.

    Raises:
        ValueError: the file is not a saved numpy array.
    """
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path.name} is not a numpy capture (bad header)")
    x = np.load(path, allow_pickle=False)
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    peak = int(spectrum.argmax())
    return {
        "file": path.name,
        "amplitude": float(np.sqrt(2) * x.std()),  # of a sine: sqrt(2) x its AC RMS
        "rms": float(np.sqrt(np.mean(x**2))),
        "dc_offset": float(x.mean()),
        "frequency": float(peak * SAMPLE_RATE / x.size),
        # The median bin is the noise floor: the tone occupies a handful of 65,537 bins.
        "snr_db": float(20 * np.log10(spectrum[peak] / np.median(spectrum))),
    }


def files_argument(description: str, default: int = 20) -> argparse.Namespace:
    """Parse the common ``--files N`` option."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--files", type=int, default=default, help=f"captures (default {default})")
    args = parser.parse_args()
    if args.files < 4:
        parser.error("--files must be at least 4")
    return args


def measure_stack(paths: list[Path]) -> list[dict[str, Any]]:
    """``measure`` for many captures at once: one vectorized FFT over the stacked signals.

    Raises:
        ValueError: a file is not a saved numpy array, or the captures differ in length.
    """
    for path in paths:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ValueError(f"{path.name} is not a numpy capture (bad header)")
    x = np.stack([np.load(p, allow_pickle=False) for p in paths])
    means = x.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(x - means[:, None], axis=1))
    peaks = spectrum.argmax(axis=1)
    snr = 20 * np.log10(spectrum.max(axis=1) / np.median(spectrum, axis=1))
    amplitude = np.sqrt(2) * x.std(axis=1)
    rms = np.sqrt(np.mean(x**2, axis=1))
    return [
        {"file": p.name, "amplitude": float(amplitude[k]), "rms": float(rms[k]),
         "dc_offset": float(means[k]), "frequency": float(peaks[k] * SAMPLE_RATE / x.shape[1]),
         "snr_db": float(snr[k])}
        for k, p in enumerate(paths)
    ]
