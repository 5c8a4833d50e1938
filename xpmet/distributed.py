"""The parallel stages (etl, predict, export) on Dask distributed: ``--cluster ADDRESS`` or ``local:N``.

ADDRESS is a running scheduler (``tcp://host:8786``, or the JSON file ``dask scheduler
--scheduler-file`` writes); ``local:N`` starts a LocalCluster of N single-threaded worker processes
for the duration of the command. The work is cut into tasks that each commit on their own: a
file (etl), a source_id range (predict), a read-only source_id range (export). When a worker dies,
the scheduler runs its tasks again on another worker; the server has rolled back what the dead
worker had not committed, and a committed unit is skipped by the rerun (a loaded file by its
provenance row, predicted stars by the anti-join), so no row is written twice or lost.

The task functions are the ones the serial and ``--workers`` paths call; this module only
submits them, gathers results as they complete and relays progress events from the workers.

    >>> with open_session("local:2") as s:
    ...     for item, result, error in s.map(task, items, name="demo"):
    ...         ...
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from xpmet.errors import XpmetError

#: the --cluster option's help, shared by the commands that take it
CLUSTER_HELP = ("Run on Dask: a scheduler address (tcp://host:8786) or scheduler file (scheduler.json), "
                "or local:N for a local cluster of N worker processes. Instead of --workers.")

_LOCAL = re.compile(r"local:(\d+)")
_INSTALL = "--cluster needs Dask distributed: pip install 'xpmet[cluster]'"


@dataclass(frozen=True)
class ClusterSpec:
    """What ``--cluster`` names: a local cluster of ``n`` processes, a scheduler address or file."""
    kind: str                  # local | address | file
    n: int = 0
    address: str = ""

    @property
    def remote(self) -> bool:
        """Whether workers may run on other machines (they then cannot use a Unix socket)."""
        if self.kind == "local":
            return False
        if self.kind == "file":
            return True
        host = urlsplit(self.address if "://" in self.address else f"tcp://{self.address}").hostname or ""
        if host == "localhost":
            return False
        try:
            return not ip_address(host).is_loopback
        except ValueError:
            return True


def parse_cluster(text: str) -> ClusterSpec:
    """``local:N``, ``tcp://host:port`` (``host:port``, other Dask protocols) or a scheduler JSON file."""
    text = (text or "").strip()
    m = _LOCAL.fullmatch(text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise XpmetError(f"--cluster {text}: a local cluster needs at least 1 worker")
        return ClusterSpec("local", n=n)
    if text == "local" or text.startswith("local:"):
        raise XpmetError(f"--cluster {text!r}: write local:N, N the number of worker processes")
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise XpmetError(f"--cluster {text}: no such scheduler file")
        return ClusterSpec("file", address=text)
    split = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = split.port
    except ValueError:
        port = None
    if not split.hostname or port is None:
        raise XpmetError(f"--cluster {text!r}: expected a Dask scheduler address such as tcp://host:8786, "
                         "a scheduler file (scheduler.json) or local:N")
    return ClusterSpec("address", address=text)


def worker_db_url(spec: ClusterSpec, url: str | None = None) -> str:
    """The database URL the tasks get, resolved here on the client (workers may lack XPMET_HOME).

    Remote workers cannot use the embedded server's Unix socket: they get its TCP URL when it
    listens on TCP (``xpmet db start --listen``), else a clear refusal.
    """
    from xpmet.config import settings
    from xpmet.db.engine import cluster, libpq_url
    local_url = url or libpq_url()
    if url or settings().database_url or not spec.remote:
        return local_url
    c = cluster()
    if c.listening():
        return c.tcp_url()
    raise XpmetError("workers of a remote Dask scheduler cannot reach the embedded database on its Unix socket: "
                     "start it with `xpmet db start --listen HOST:PORT` (after `xpmet db stop`), or set "
                     "XPMET_DATABASE_URL to a server the workers can reach")


@dataclass
class Session:
    """A connected Dask client and what the commands need from it."""
    spec: ClusterSpec
    client: object
    cluster: object = None

    @property
    def n_workers(self) -> int:
        """Workers attached to the scheduler now."""
        try:
            info = self.client.scheduler_info(n_workers=-1)  # newer versions list 5 by default
        except TypeError:
            info = self.client.scheduler_info()
        return len(info.get("workers", {}))

    def db_url(self, url: str | None = None) -> str:
        return worker_db_url(self.spec, url)

    def map(self, fn: Callable, items: Iterable, *, name: str, args: tuple = (), window: int | None = None,
            on_event: Callable | None = None, poll: float = 0.1) -> Iterator[tuple]:
        """Run ``fn(*args, item, topic)`` once per item; yield ``(item, result, error)`` as tasks complete.

        ``topic`` is None unless ``on_event`` is given: then tasks may call ``event_reporter(topic)``
        and ``on_event(message)`` receives what they report, in this thread. ``window`` bounds the
        tasks in flight (items are drawn lazily), so a long lazy list starts at once and results
        that the caller must order stay few. ``error`` is the task's exception (a ``KilledWorker``
        when the task killed every worker it was given).
        """
        from distributed import as_completed
        events: queue.SimpleQueue = queue.SimpleQueue()
        topic = None
        if on_event is not None:
            topic = f"xpmet-{name}-{uuid.uuid4().hex[:8]}"
            self.client.subscribe_topic(topic, lambda ev: events.put(ev[1]))
        token = uuid.uuid4().hex[:8]
        it = iter(items)
        pending: dict = {}
        ac = as_completed()
        count = 0

        def submit() -> bool:
            nonlocal count
            item = next(it, _END)
            if item is _END:
                return False
            fut = self.client.submit(fn, *args, item, topic, key=f"{name}-{count}-{token}", pure=False)
            count += 1
            pending[fut] = item
            ac.add(fut)
            return True

        def drain():
            while True:
                try:
                    msg = events.get_nowait()
                except queue.Empty:
                    return
                on_event(msg)

        try:
            while (window is None or len(pending) < window) and submit():
                pass
            while pending:
                ready = ac.next_batch(block=False) if ac.has_ready() else []
                if on_event is not None:
                    drain()
                if not ready:
                    time.sleep(poll)
                    continue
                for fut in ready:
                    item = pending.pop(fut)
                    try:
                        result, error = fut.result(), None
                    except Exception as e:  # the task's own exception, or KilledWorker
                        result, error = None, e
                    fut.release()
                    yield item, result, error
                    submit()
            if on_event is not None:
                drain()
        finally:
            for fut in pending:
                fut.cancel()
            if topic is not None:
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)


_END = object()


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise XpmetError(_INSTALL) from None
    return distributed


@contextlib.contextmanager
def open_session(address: str, connect_timeout: float | None = None) -> Iterator[Session]:
    """A Session on ``address`` (see :func:`parse_cluster`); a local cluster is shut down at the end."""
    spec = parse_cluster(address)
    distributed = _import_distributed()
    import dask
    timeout = connect_timeout or dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
    cluster = None
    if spec.kind == "local":
        # processes, one thread each: the loaders and torch hold the GIL and their own connections;
        # the dashboard on a free port: several commands may run their clusters at once
        cluster = distributed.LocalCluster(n_workers=spec.n, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        try:
            if spec.kind == "file":
                client = distributed.Client(scheduler_file=spec.address, timeout=timeout)
            else:
                client = distributed.Client(spec.address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise XpmetError(f"cannot reach the Dask scheduler at {spec.address}: {first}") from None
    try:
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(_malloc_plugin())
        yield Session(spec, client, cluster)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def tune_malloc() -> None:
    """Give glibc back the heap thresholds its adaptive rule reaches (mmap 32 MB, trim 64 MB).

    Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the
    OS), which also switches that rule off: every array over 128 kB is then mmap'ed and
    page-faulted afresh, and a worker spent ~30 % more CPU per loaded row than the serial path.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


def _malloc_plugin():
    """A worker plugin that runs tune_malloc in every worker, also those that join or restart later."""
    from distributed import WorkerPlugin

    class TuneMalloc(WorkerPlugin):
        name = "xpmet-malloc"

        def setup(self, worker):
            tune_malloc()
    return TuneMalloc()


# -- inside tasks ------------------------------------------------------------------------------
def event_reporter(topic: str | None) -> Callable:
    """``report(rows, nbytes=0)`` for a task: an event to the client's progress bar (or nothing)."""
    if topic is None:
        return lambda rows, nbytes=0: None
    from distributed import get_worker
    worker = get_worker()
    return lambda rows, nbytes=0: worker.log_event(topic, [int(rows), int(nbytes)])


_STATE = threading.local()


def worker_state(key, factory: Callable):
    """Per-process (per thread) state reused by a run's tasks, e.g. a model and its connections.

    Only the latest key is kept: state of an earlier run is closed when a new run's first task
    arrives on a long-lived worker.
    """
    held = getattr(_STATE, "held", None)
    if held is not None and held[0] == key:
        return held[1]
    drop_worker_state()
    obj = factory()
    _STATE.held = (key, obj)
    return obj


def drop_worker_state() -> None:
    """Close and forget this thread's state (the serial path, at the end of its run)."""
    held = getattr(_STATE, "held", None)
    _STATE.held = None
    if held is not None and hasattr(held[1], "close"):
        with contextlib.suppress(Exception):
            held[1].close()


def error_line(exc: BaseException) -> str:
    """One line for a task's exception (a KilledWorker says what the retries were)."""
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [""])[0]
    if name == "KilledWorker":
        return (f"a task was running on every worker that died ({text}); Dask gives up after "
                "distributed.scheduler.allowed-failures retries")
    return text if isinstance(exc, XpmetError) and text else f"{name}: {text}" if text else name
