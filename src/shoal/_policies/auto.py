"""``backend="auto"``: pure decisions from a probe of the first items.

The probe runs the first item on a worker thread and measures its wall time
and the CPU time of the thread; ``probe_further_in_a_process`` says whether
the next items should be probed in a worker process (work that may go to
processes is isolated like them), and ``choose_backend`` turns all that was
measured into a backend and a sentence saying why. The probe items are real:
their results are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

#: below this many seconds per item, handing items to workers costs more than the work
TINY_ITEM_SECONDS = 200e-6
#: CPU time below this share of wall time means the item mostly waits (I/O)
IO_BOUND_CPU_SHARE = 0.5
#: parallel start-up is not worth it when the remaining work is shorter than this
#: (a process pool forks its workers in ~10 ms; threads start in less)
MIN_PARALLEL_WORK_SECONDS = 0.1
PROBE_MAX_ITEMS = 16
PROBE_MAX_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """What the probe measured over the first ``items`` items."""

    items: int
    wall: float
    cpu: float
    exhausted: bool = False  # the input ran out during the probe
    remaining: int | None = None  # items left, when the input has a length
    waited: float = 0.0  # of ``wall``: ready to run while another had the CPU

    @property
    def per_item(self) -> float:
        return self.wall / self.items if self.items else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time over the time the work could use a CPU: on a busy machine
        a CPU-bound item waits for one, which is not waiting on I/O."""
        usable = self.wall - self.waited
        return min(1.0, self.cpu / usable) if usable > 0 else 1.0


def choose_backend(
    is_async: bool, sample: ProbeSample | None, cpus: int, processes_available: bool = True
) -> tuple[str, str]:
    """Pick a backend: (name, reason). ``sample`` is None when no probe ran."""
    if is_async:
        return "asyncio", "fn is a coroutine function: run natively on asyncio"
    if sample is None or sample.items == 0:
        return "threads", "no probe possible: threads are the safe default"
    if sample.exhausted:
        return "sequential", f"all {sample.items} item(s) finished during the probe"
    per_us = sample.per_item * 1e6
    share = sample.cpu_share
    if sample.per_item < TINY_ITEM_SECONDS:
        return "sequential", (
            f"items take {per_us:.0f} us each: inline is faster than any pool"
        )
    left = None if sample.remaining is None else sample.per_item * sample.remaining
    if left is not None and left < MIN_PARALLEL_WORK_SECONDS:
        return "sequential", (
            f"about {left:.2f} s of work left: "
            "not worth starting workers"
        )
    if share < IO_BOUND_CPU_SHARE:
        return "threads", f"I/O-bound: CPU time is {share:.0%} of wall time ({per_us:.0f} us/item)"
    if cpus > 1 and processes_available:
        return "processes", (
            f"CPU-bound: CPU time is {share:.0%} of wall time ({per_us:.0f} us/item), {cpus} CPUs"
        )
    return "sequential", f"CPU-bound on {cpus} CPU: no parallel speed-up possible"


def probe_further_in_a_process(first: ProbeSample) -> bool:
    """After the first item: is this work that processes may take?

    Tiny items stay inline and work that mostly waits goes to threads, so
    neither needs a process; CPU-bound work of some size may, and is then
    probed in one, where a crash costs one item.
    """
    return (first.items > 0 and first.per_item >= TINY_ITEM_SECONDS
            and first.cpu_share >= IO_BOUND_CPU_SHARE)
