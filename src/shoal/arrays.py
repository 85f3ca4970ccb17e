"""Array batches: many equal-shaped items computed as one stacked array per chunk.

A vectorized function over a ``(n, ...)`` array is usually far faster than
``n`` calls over single items, on a CPU (NumPy) and much more on a GPU
(CuPy). ``map_arrays`` does the batching::

    from shoal.arrays import fft_peak_frequencies, map_arrays

    def peaks(xp, batch):                   # batch: (n, samples), on the device
        return fft_peak_frequencies(batch, sample_rate=1000.0, xp=xp)

    freq_amp = map_arrays(peaks, signals, chunk_size=256)   # one (freq, amp) per signal

How a call runs:

1. ``items`` (equal-shaped arrays, or numbers) are read lazily in chunks of
   ``chunk_size`` and each chunk is stacked along a new first axis, so row
   ``i`` of the batch is item ``i`` (1-D signals make one 2-D array).
2. Each chunk is one task of the engine (``shoal.imap`` over the chunks), so
   ``backend=``, ``retries=``, ``timeout=``, ``progress=`` and
   ``checkpoint=`` work as everywhere, per chunk.
3. ``fn(xp, batch)`` gets the array module ``xp`` (``cupy`` or ``numpy``)
   and must return one row per input row: an array of shape ``(n, ...)``, or
   a tuple of such arrays. Write it with ``xp.*`` calls only and the same
   code runs on both.
4. Rows are copied back to host memory and split per item, in input order: a
   1-D result gives one Python number per item, an ``(n, k)`` result one
   NumPy row, a tuple result one tuple per item.

Where it runs (``select_array_module``): on the GPU through CuPy when CuPy
imports and ``cupy.cuda.runtime.getDeviceCount() > 0``, on NumPy otherwise.
A CuPy that is installed but fails (at import, when counting devices, or on
the first chunk, which then runs again on NumPy) makes the process fall back
to NumPy and say so once with ``warnings.warn``. ``SHOAL_FORCE_CPU=1`` in
the environment forces NumPy. ``device="cpu"`` / ``"gpu"`` choose
explicitly; ``"gpu"`` raises when no GPU can be used. With process or Dask
workers the choice is made in each worker process.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Literal, NamedTuple

from shoal._core.api import imap
from shoal._core.errors import BackendUnavailable, InvalidOptionError
from shoal._split import iter_batches

__all__ = [
    "ArrayModule",
    "Device",
    "fft_peak_frequencies",
    "map_arrays",
    "select_array_module",
]

Device = Literal["auto", "cpu", "gpu"]
#: ``fn(xp, batch) -> rows``: one row per row of ``batch``, as an array or a tuple of arrays
ArrayFn = Callable[[Any, Any], Any]
FORCE_CPU_ENV = "SHOAL_FORCE_CPU"
_TRUE = ("1", "true", "yes", "on")


class ArrayModule(NamedTuple):
    """The array module chosen for a device, and why (shown to users as is)."""

    xp: Any
    name: str  # "cupy" or "numpy"
    reason: str

# --------------------------------------------------------------- device choice
_warned: set[str] = set()  # fallback messages already shown by this process
_warn_lock = threading.Lock()


def _warn_once(message: str) -> None:
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _numpy(reason: str) -> ArrayModule:
    try:
        import numpy
    except ImportError as exc:
        raise BackendUnavailable('shoal.arrays needs NumPy: pip install "shoal[numpy]"') from exc
    return ArrayModule(numpy, "numpy", reason)


def select_array_module(device: Device = "auto") -> ArrayModule:
    """Choose CuPy (GPU) or NumPy (CPU) for ``device``; see the module docstring.

    Looks at the environment and ``sys.modules`` each time (no caching), so
    it is tested with a fake ``cupy`` module and a monkeypatched environment.

    Returns:
        ``(xp, name, reason)``: the module, ``"cupy"`` or ``"numpy"``, and
        a sentence saying why.

    Raises:
        InvalidOptionError: ``device`` is not "auto", "cpu" or "gpu".
        BackendUnavailable: ``device="gpu"`` but no GPU can be used, or
            NumPy is needed and not installed.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise InvalidOptionError(f'device must be "auto", "cpu" or "gpu", got {device!r}')
    if os.environ.get(FORCE_CPU_ENV, "").strip().lower() in _TRUE:
        return _numpy(f"{FORCE_CPU_ENV}={os.environ[FORCE_CPU_ENV]} forces the CPU")
    if device == "cpu":
        return _numpy('device="cpu"')
    cupy, problem, warn = _probe_cupy()
    if cupy is not None:
        return cupy
    if device == "gpu":
        raise BackendUnavailable(
            f'device="gpu" cannot run: {problem}; install CuPy for your CUDA version '
            '(pip install "shoal[gpu]") on a machine with an NVIDIA GPU, or use device="auto"'
        )
    if warn:
        _warn_once(f"shoal.arrays: {problem}; running on NumPy (CPU) instead")
    return _numpy(f"{problem}: running on NumPy")


def _probe_cupy() -> tuple[ArrayModule | None, str, bool]:
    """CuPy if it can be used, else why not and whether that deserves a warning.

    CuPy not installed, or no GPU, is the ordinary CPU machine: no warning.
    CuPy installed but broken is a surprise worth one.
    """
    try:
        import cupy
    except ImportError as exc:
        if _installed("cupy"):
            return None, f"CuPy failed to import ({exc!r})", True
        return None, "CuPy is not installed", False
    except Exception as exc:  # CUDA libraries missing and the like
        return None, f"CuPy failed to import ({exc!r})", True
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, a driver too old, ...
        return None, f"CuPy cannot query CUDA devices ({exc!r})", True
    if count <= 0:
        return None, "no CUDA device is visible", False
    return ArrayModule(cupy, "cupy", f"CuPy with {count} CUDA device(s)"), "", False


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec: set to None to hide it
        return False


# ----------------------------------------------------------------- the chunks
class _ChunkRunner:
    """Runs ``fn`` on one chunk in a worker; picklable for process and Dask workers."""

    def __init__(self, fn: ArrayFn, device: Device) -> None:
        self.fn = fn
        self.device = device

    def __call__(self, chunk: tuple[int, int, list[Any]]) -> list[Any]:
        number, start, items = chunk
        module = _module_for(self.device)
        first = _first_use(self.device)
        try:
            return _run_on(module, self.fn, number, start, items)
        except Exception as exc:
            if module.name != "cupy" or not first:
                raise
            # The first chunk failed on the GPU. If NumPy can run it, CuPy is
            # what is broken here: use NumPy from now on, and say so once. If
            # NumPy fails too, fn itself is wrong, and that failure is raised.
            fallback = _numpy(f"CuPy failed on the first chunk ({exc!r}): running on NumPy")
            values = _run_on(fallback, self.fn, number, start, items)
            with _module_lock:
                _chosen[self.device] = fallback
            _warn_once(f"shoal.arrays: {fallback.reason}")
            return values


# Per process: the module chosen per device, and the devices whose first
# chunk has started (a fallback is only tried on the first). The lock guards
# both; a worker process may run chunks on several threads.
_module_lock = threading.Lock()
_chosen: dict[str, ArrayModule] = {}
_started: set[str] = set()


def _module_for(device: Device) -> ArrayModule:
    with _module_lock:
        module = _chosen.get(device)
        if module is None:
            module = _chosen[device] = select_array_module(device)
        return module


def _first_use(device: str) -> bool:
    with _module_lock:
        first = device not in _started
        _started.add(device)
        return first


def _run_on(module: ArrayModule, fn: ArrayFn, number: int, start: int,
            items: list[Any]) -> list[Any]:
    """Stack, call, check the row count, bring back to the host and split.

    Raises:
        ValueError: the items differ in shape, or fn returned another number
            of rows than it was given.
    """
    import numpy

    where = f"chunk {number} (items {start}..{start + len(items) - 1})"
    try:
        # Stacked in host memory, then copied to the device in one transfer.
        batch = module.xp.asarray(numpy.stack(items))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{where}: the items cannot be stacked into one array ({exc}); map_arrays needs "
            "host arrays (or numbers) of one shape: pad them, or group them by shape"
        ) from exc
    out = fn(module.xp, batch)
    parts = out if isinstance(out, tuple) else (out,)
    host = [_to_host(module, part, len(items), where) for part in parts]
    return list(zip(*host, strict=True)) if isinstance(out, tuple) else host[0]


def _to_host(module: ArrayModule, part: Any, n: int, where: str) -> list[Any]:
    shape = getattr(part, "shape", None)
    if shape is None or tuple(shape[:1]) != (n,):
        got = (f"a {type(part).__name__}" if shape is None else
               "a scalar" if not shape else f"{shape[0]} rows (shape {tuple(shape)})")
        raise ValueError(
            f"{where}: fn returned {got} for {n} items; fn(xp, batch) must return one row per "
            f"input row, shape ({n}, ...): reduce over the other axes (e.g. axis=1), not axis 0"
        )
    if module.name == "cupy":
        part = module.xp.asnumpy(part)
    if part.ndim == 1:
        return list(part.tolist())  # plain Python numbers, one per item
    return list(part)


def map_arrays(
    fn: ArrayFn,
    items: Iterable[Any],
    *,
    chunk_size: int = 256,
    device: Device = "auto",
    **options: Any,
) -> list[Any]:
    """Run ``fn(xp, batch)`` over stacked chunks of ``items``; one result per item.

    Args:
        fn: ``fn(xp, batch) -> rows``; ``batch`` stacks up to ``chunk_size``
            items along a new first axis, on the device of ``xp``. Returns an
            array with one row per item, or a tuple of such arrays.
        items: equal-shaped arrays (or numbers); any iterable, read lazily.
        chunk_size: items per stacked array (one engine task each).
        device: "auto" (GPU if usable, else CPU), "cpu" or "gpu".
        **options: any option of ``shoal.map`` (backend, workers, retries,
            timeout, progress, checkpoint, on_error, ...), applied per chunk.
            Progress counts chunks. With ``on_error="collect_errors"`` every
            item of a failed chunk holds the chunk's exception;
            ``"skip_failed"`` leaves those items out.

    Returns:
        The per-item results, in input order (see the module docstring).

    Raises:
        InvalidOptionError: a bad ``chunk_size``/``device``, or ``ordered=``.
        BackendUnavailable: NumPy missing, or ``device="gpu"`` without a GPU.
        ValueError: (under the default all_or_nothing) a chunk whose items
            differ in shape or whose result has the wrong number of rows.
        BaseException: the first chunk's exception under all_or_nothing.
    """
    if "ordered" in options:
        raise InvalidOptionError("map_arrays always returns results in input order; drop ordered=")
    select_array_module(device)  # fail here, not in a worker, on a bad device
    chunks = _numbered(iter_batches(items, chunk_size), chunk_size)  # checks chunk_size
    on_error = options.pop("on_error", "all_or_nothing")
    if "total" not in options and isinstance(items, Sized):
        options["total"] = math.ceil(len(items) / chunk_size)  # progress counts chunks
    out: list[Any] = []
    for r in imap(_ChunkRunner(fn, device), chunks, chunk_size=1, on_error=on_error, **options):
        if r.ok:
            out.extend(r.unwrap())
        elif on_error == "collect_errors":
            out.extend([r.error] * len(r.item[2]))
    return out


def _numbered(chunks: Iterable[list[Any]], size: int) -> Iterator[tuple[int, int, list[Any]]]:
    for number, chunk in enumerate(chunks):
        yield number, number * size, chunk


# ------------------------------------------------------------------- signals
def fft_peak_frequencies(signals: Any, sample_rate: float, xp: Any = None) -> tuple[Any, Any]:
    """Dominant frequency and its amplitude for each row of ``signals``.

    Each row is a real signal sampled at ``sample_rate`` Hz. Its mean is
    removed (so a DC offset is never the peak), the one-sided spectrum is
    taken with ``xp.fft.rfft``, and the strongest bin gives the frequency
    (``bin * sample_rate / samples``) and the amplitude of a sine at that
    frequency (``2 * |X| / samples``; exact when the tone falls on a bin).

    Args:
        signals: shape ``(n, samples)`` (or ``(samples,)`` for one signal).
        sample_rate: samples per second.
        xp: the array module of ``signals`` (numpy or cupy); numpy if None.

    Returns:
        ``(frequencies, amplitudes)``, two arrays of shape ``(n,)`` on the
        same device as ``signals``.

    Raises:
        InvalidOptionError: ``sample_rate`` is not > 0, or a signal is
            shorter than 2 samples.
    """
    if xp is None:
        xp = _numpy("fft_peak_frequencies called without xp").xp
    if not sample_rate > 0:
        raise InvalidOptionError(f"sample_rate must be > 0 Hz, got {sample_rate!r}")
    x = xp.asarray(signals, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    samples = x.shape[-1]
    if samples < 2:
        raise InvalidOptionError(f"signals need at least 2 samples, got {samples}")
    spectrum = xp.abs(xp.fft.rfft(x - x.mean(axis=-1, keepdims=True), axis=-1))
    peak = spectrum.argmax(axis=-1)
    magnitude = xp.take_along_axis(spectrum, peak[:, None], axis=-1)[:, 0]
    # The DC and Nyquist bins have no mirror image in a one-sided spectrum.
    edge = (peak == 0) | ((samples % 2 == 0) & (peak == spectrum.shape[-1] - 1))
    amplitude = xp.where(edge, 1.0, 2.0) * magnitude / samples
    return peak * (sample_rate / samples), amplitude
