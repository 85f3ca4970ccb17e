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
connect once for many runs, make a client yourself.
"""

from __future__ import annotations

import ipaddress
import threading
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
    cluster = d.LocalCluster(**{
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None, **cluster_kwargs})
    try:
        return Connection(d.Client(cluster, set_as_default=False), cluster, owned=True)
    except BaseException:
        cleanup("close the LocalCluster", cluster.close)
        raise


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
