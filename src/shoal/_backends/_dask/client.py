"""The Dask backend's client: which one a run uses, whose it is, how results come back.

A run uses, in this order:

1. ``backend_options["client"]``: the caller's, left open;
2. with ``address``, the process's current client when it is connected to
   that scheduler (what ``distributed.get_client(address)`` returns: the
   default client, or one made current with ``client.as_current()``): the
   caller's too, left open;
3. otherwise a client shoal connects to ``address``, or to a ``LocalCluster``
   it starts without one; shoal closes both after the run.

A client shoal opened is never kept for a later run: a client that outlives
its scheduler (a ``LocalCluster`` closed after the run) tries to reconnect
and logs errors, and only the caller knows how long the cluster lives. To
connect once for many runs, make a client yourself, or use warm workers
(``DaskWorkers``, a ``shoal.Pool``'s), which keep theirs until closed.

The ``LocalCluster`` shoal starts hands a worker's death to shoal at once
(``allowed_failures=0``: shoal isolates the items itself, see
``quarantine``), and is kept at its size (``heal``). Every wait on the
network here is bounded (``gather``, ``wait_for_threads``).
"""

from __future__ import annotations

import ipaddress
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal._core.errors import BackendUnavailable, BrokenBackend


def import_distributed() -> Any:
    """Import ``dask.distributed``, on first use of the backend only.

    Raises:
        BackendUnavailable: dask.distributed is not installed.
    """
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailable(
            'backend="dask" needs dask.distributed: pip install "shoal[dask]"'
        ) from exc
    return distributed


def current_client(distributed: Any) -> Any:
    """This thread's current ``distributed.Client``, if it can serve a blocking run.

    None when there is none, or when it is asynchronous (its methods would
    return coroutines) or no longer running. Call it on the caller's thread:
    ``as_current()`` is scoped to a context, which a new thread does not share.
    """
    try:
        client = distributed.Client.current()
    except ValueError:  # no client in this process
        return None
    return None if client.asynchronous or client.status != "running" else client


def same_scheduler(distributed: Any, client: Any, address: str) -> bool:
    """Is ``client`` connected to the scheduler at ``address``?

    Addresses are compared resolved (``localhost:8786`` is
    ``tcp://127.0.0.1:8786``), as ``distributed.get_client`` compares them;
    one that does not resolve matches nothing.
    """
    if client is None:
        return False
    resolve = distributed.comm.resolve_address
    try:
        return bool(resolve(str(client.scheduler.address)) == resolve(address))
    except (OSError, ValueError):
        return False


@dataclass(slots=True)
class Connection:
    """The client of a run; ``cluster`` is the ``LocalCluster`` shoal started, if any."""

    client: Any
    cluster: Any = None
    owned: bool = False  # shoal opened the client: shoal closes it

    def close(self) -> threading.Thread | None:
        """Close what shoal opened; the caller's client stays open.

        A client connected to an address is closed on a thread of its own
        (returned): closing is a few round trips with the scheduler (about
        10 ms) that the results no longer wait for. The thread is not a
        daemon, so the interpreter waits for it at exit.
        """
        if self.owned and self.cluster is None:
            closer = threading.Thread(target=cleanup, name="shoal-dask-close", daemon=False,
                                      args=("close the Dask client", self.client.close))
            closer.start()
            return closer
        if self.owned:
            cleanup("close the Dask client", self.client.close)
        if self.cluster is not None:
            cleanup("close the LocalCluster", self.cluster.close)
        return None


def connect(distributed: Any, address: str | None, given: Any, current: Any,
            workers: int, cluster_kwargs: Mapping[str, Any]) -> Connection:
    """The client for a run (see the module docstring for which).

    Raises:
        BrokenBackend: the scheduler at ``address`` cannot be reached.
    """
    d = distributed
    if given is not None:
        return Connection(given)
    if address and same_scheduler(d, current, address):
        return Connection(current)
    if address:
        try:
            return Connection(d.Client(address, set_as_default=False), owned=True)
        except (OSError, TimeoutError) as exc:
            raise BrokenBackend(
                f"cannot connect to the Dask scheduler at {address!r}: {exc}; check that "
                "`dask scheduler` runs there and that its port is reachable"
            ) from exc
    cluster = d.LocalCluster(**local_cluster_kwargs(workers, cluster_kwargs))
    try:
        return Connection(d.Client(cluster, set_as_default=False), cluster, owned=True)
    except BaseException:
        cleanup("close the LocalCluster", cluster.close)
        raise


def local_cluster_kwargs(workers: int, given: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments of the ``LocalCluster`` shoal starts: the caller's ``cluster_kwargs`` win.

    ``allowed_failures=0``: Dask would run a task whose worker died on other
    workers up to three more times (killing them too, if the task is the
    cause) before giving up on it; shoal takes over at the first death and
    runs the items alone, so only the guilty one fails.
    """
    scheduler = {"allowed_failures": 0, **given.get("scheduler_kwargs", {})}
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None, **given,
            "scheduler_kwargs": scheduler}


def heal(cluster: Any) -> None:
    """Bring the ``LocalCluster`` shoal started back to its size.

    Its nanny restarts a worker process that dies; but a worker whose
    restarts keep dying (items that kill it) is closed for good once
    ``distributed.deploy.lost-worker-timeout`` passes without a live one,
    and a cluster left with no worker would hold the run forever.
    """
    wanted = len(cluster.worker_spec)
    if len(cluster.workers) < wanted:
        cluster.scale(wanted)


#: with tasks in flight and no result for this long, look at the cluster (and
#: again as often, while that lasts)
WATCH_SECONDS = 1.0
#: a run fails when its cluster has had no worker for this long
NO_WORKERS_TIMEOUT = 60.0


class ClusterWatch:
    """Looks after a run's cluster while tasks wait and no result comes.

    It brings a LocalCluster shoal started back to its size (``heal``), and
    fails the run when the cluster has had no worker for
    ``NO_WORKERS_TIMEOUT``: Dask would keep the tasks queued for a worker
    that never comes (``distributed.scheduler.no-workers-timeout`` is off by
    default), and the run would never end.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._news = self._looked = time.monotonic()
        self._empty_since: float | None = None

    def heard(self) -> None:
        """A result came: workers are there."""
        self._news, self._empty_since = time.monotonic(), None

    def look_if_due(self, waiting: int) -> float:
        """Look at the cluster if it is time; the seconds until the next look.

        ``waiting``: tasks in flight, for the message.

        Raises:
            BrokenBackend: the cluster has had no worker for ``NO_WORKERS_TIMEOUT``.
        """
        now = time.monotonic()
        due = max(self._news, self._looked) + WATCH_SECONDS
        if now < due:
            return due - now
        self._looked = now
        client, cluster = self._connection.client, self._connection.cluster
        if cluster is not None:
            heal(cluster)
        try:
            threads = sum(client.nthreads(callback_timeout=WATCH_SECONDS).values())
        except Exception:  # the scheduler is slow to answer: look again next time
            return WATCH_SECONDS
        if threads:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since >= NO_WORKERS_TIMEOUT:
            raise BrokenBackend(
                f"the Dask cluster at {client.scheduler.address} has had no workers for "
                f"{NO_WORKERS_TIMEOUT:g} s, with {waiting} task(s) waiting for one; its "
                "workers died or were stopped: start some (`dask worker <scheduler address>`)")
        return WATCH_SECONDS


def wait_for_threads(client: Any, timeout: float) -> int:
    """The cluster's worker threads, waiting up to ``timeout`` s for a first worker
    (workers may be restarting after a crash).

    Raises:
        BrokenBackend: no worker joined in time.
    """
    threads = int(sum(client.nthreads().values()))
    if threads:
        return threads
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise BrokenBackend(
            f"the Dask cluster at {client.scheduler.address} has no workers (none joined "
            f"within {timeout:g} s); start some with `dask worker <scheduler address>`"
        ) from None
    return max(1, int(sum(client.nthreads().values())))


def gather(client: Any, futures: list[Any], direct: bool | None,
           timeout: float) -> dict[str, Any]:
    """The results of finished ``futures`` by key, fetched within ``timeout`` seconds.

    Those not fetched (time out, a worker lost with the data, a comm error)
    are missing: the caller looks at their state again. ``Client.gather``
    has no timeout and, when data is lost with a worker, waits for it to be
    computed again, forever if no worker is left; ``Future.result(timeout)``
    bounds the same coroutine the same way, one future at a time.
    """
    try:
        got = client.sync(client._gather, {f.key: f for f in futures}, errors="skip",
                          direct=direct, callback_timeout=timeout)
    except Exception:  # each future's state is looked at again: none is lost
        return {}
    return {k: v for k, v in got.items() if v is not None}


def gather_direct(client: Any, own_cluster: bool) -> bool | None:
    """Fetch results from the workers themselves rather than through the scheduler?

    Half the traffic and one hop less, but the driver must reach the workers:
    yes for the cluster shoal started and for a scheduler on this machine;
    elsewhere the client's ``direct_to_workers`` (Dask's default: no) decides.
    """
    if client.direct_to_workers is not None:
        return None  # the caller chose
    if own_cluster:
        return True
    address = str(client.scheduler.address)
    scheme, _, rest = address.rpartition("://")
    if scheme == "inproc":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback or None
    except ValueError:
        return None


def cleanup(what: str, step: Callable[[], Any]) -> None:
    """Run one cleanup step; a failure is reported, and the other steps still run."""
    try:
        step()
    except Exception as exc:
        warnings.warn(f"shoal: could not {what}: {exc!r}", RuntimeWarning, stacklevel=2)
