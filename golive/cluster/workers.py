"""``WORKERS`` > 1: the processes of one node, and the supervisor that keeps them running.

``golive`` with ``WORKERS=N`` (N > 1, which needs ``REDIS_URL``) does not serve: it becomes a
small supervisor. It holds the public ``HTTP_ADDR`` port (bound with ``SO_REUSEPORT``, never
listening, so the port cannot be taken between two workers and ``:0`` is one port for all),
makes a private directory for prometheus-client's multiprocess mode, and starts N workers:
each a fresh ``python -m golive`` (its own interpreter, event loop and actor system; never a
fork of a running loop) with these internal variables in its environment:

- ``GOLIVE_WORKER``: the worker's index, 0 to N-1 (:data:`WORKER_ENV`);
- ``GOLIVE_SUPERVISOR_FD``: the read end of a pipe the supervisor never writes to: when the
  supervisor is gone (even killed with ``kill -9``) the worker reads its end, shuts down
  gracefully and exits (:data:`SUPERVISOR_FD_ENV`);
- ``PROMETHEUS_MULTIPROC_DIR``: the node's metrics directory (golive/metrics.py);
- ``HTTP_ADDR``: the supervisor's, with the port it holds (the one ``:0`` chose).

Every worker listens on the public address with ``SO_REUSEPORT`` (the kernel spreads the
connections over them) and on its own port, ``CLUSTER_PORT`` + i (a free port when
``CLUSTER_PORT`` is 0), where ``HTTP_ADDR`` listens; advertised at ``NODE_URL``'s host, that
is its ``WorkerIdentity.url``, where other workers and nodes reach it. The workers run in
their own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it.

The supervisor forwards SIGTERM and SIGINT to every worker (a second one too: the workers
then exit at once, status 1) and waits for them for ``SHUTDOWN_TIMEOUT_SECONDS`` plus
:data:`EXIT_GRACE_SECONDS`; a worker still running then is killed. It exits 0 when every
worker exited 0, 1 otherwise. A worker that exits while the node is not shutting down (a
crash, ``kill -9``) is logged with its status and started again, after
:data:`RESTART_DELAY_SECONDS` doubling with each exit that followed its start within
:data:`FAST_FAILURE_SECONDS`; after :data:`MAX_FAST_FAILURES` such exits in a row the
supervisor gives up: it stops the node and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import structlog
from prometheus_client.multiprocess import mark_process_dead

from golive.cluster.identity import WorkerIdentity, node_name
from golive.config import Config, ConfigError
from golive.http.connections import bind_addresses
from golive.metrics import MULTIPROC_DIR_ENV, ClusterScope, pid_file

__all__ = [
    "SUPERVISOR_FD_ENV",
    "WORKER_ENV",
    "PublicPort",
    "Supervisor",
    "WorkerSetup",
    "log_fields",
    "prepare_worker",
    "worker_index",
]

log = structlog.get_logger(__name__)

#: The worker's index (internal: set by the supervisor).
WORKER_ENV: Final = "GOLIVE_WORKER"
#: The read end of the supervisor's pipe: end of file there means the supervisor is gone.
SUPERVISOR_FD_ENV: Final = "GOLIVE_SUPERVISOR_FD"
#: The supervisor waits this much beyond SHUTDOWN_TIMEOUT_SECONDS for its workers to exit.
EXIT_GRACE_SECONDS: Final = 5.0
#: The first delay before a worker that exited is started again; it doubles with each exit
#: within FAST_FAILURE_SECONDS of its start, up to RESTART_DELAY_MAX_SECONDS.
RESTART_DELAY_SECONDS: Final = 0.5
RESTART_DELAY_MAX_SECONDS: Final = 30.0
FAST_FAILURE_SECONDS: Final = 10.0
#: Exits in a row within FAST_FAILURE_SECONDS of their start after which the supervisor
#: stops the node rather than restart the worker again.
MAX_FAST_FAILURES: Final = 5
FAILED: Final = 1


def worker_index(env: Mapping[str, str], config: Config) -> int | None:
    """This process's worker index when a supervisor started it, else None. Raises
    :class:`ConfigError` for an index that does not fit ``WORKERS``."""
    raw = env.get(WORKER_ENV, "").strip()
    if not raw or config.workers == 1:
        return None
    if not raw.isdigit() or int(raw) >= config.workers:
        raise ConfigError(WORKER_ENV, f"must be a worker index below WORKERS ({config.workers})")
    if not env.get(MULTIPROC_DIR_ENV):
        raise ConfigError(MULTIPROC_DIR_ENV, "must be set for a worker (the supervisor does)")
    return int(raw)


def log_fields(config: Config, worker: int | None) -> dict[str, object]:
    """The fields every log line of this process carries: none without ``REDIS_URL``; else
    the node and the worker's index (None for the supervisor of several)."""
    if not config.clustered:
        return {}
    if worker is None and config.workers == 1:
        worker = 0
    return {"node": node_name(config.effective_node_url), "worker": worker}


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker of a cluster is: its identity, its own listening sockets (none with
    one worker), the scope of its metrics."""

    identity: WorkerIdentity
    sockets: list[socket.socket]
    metrics: ClusterScope


def prepare_worker(
    config: Config, worker: int | None, env: Mapping[str, str] = os.environ
) -> WorkerSetup | None:
    """Bind this worker's own address (with ``WORKERS`` > 1) and make its identity; None
    without ``REDIS_URL``. ``worker`` is None for the one process of ``WORKERS=1``."""
    if not config.clustered:
        return None
    node_url = config.effective_node_url
    node = node_name(node_url)
    if worker is None:
        return WorkerSetup(
            WorkerIdentity.create(node_url, 0, node_url), [], ClusterScope(node, 0, 1)
        )
    parts = urlsplit(node_url)
    host = parts.hostname or ""
    port = config.cluster_port + worker if config.cluster_port else 0
    # Bound where HTTP_ADDR listens (every interface for ":8080"), advertised at NODE_URL's
    # host: behind NAT or in a container NODE_URL names an address this machine may not have.
    infos = socket.getaddrinfo(
        config.http_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    addresses = [(family, address) for family, _, _, _, address in dict.fromkeys(infos)]
    sockets = bind_addresses(addresses, one_port=True)
    shown = f"[{host}]" if ":" in host else host
    url = f"{parts.scheme}://{shown}:{sockets[0].getsockname()[1]}"
    directory = Path(env[MULTIPROC_DIR_ENV])
    return WorkerSetup(
        WorkerIdentity.create(node_url, worker, url),
        sockets,
        ClusterScope(node, worker, config.workers, directory),
    )


@dataclass(frozen=True)
class PublicPort:
    """The public port held by the supervisor (bound, not listening) and the ``HTTP_ADDR``
    its workers get (the port ``:0`` chose written out)."""

    sockets: list[socket.socket]
    http_addr: str

    @classmethod
    def hold(cls, config: Config) -> PublicPort:
        host = config.http_host
        infos = socket.getaddrinfo(
            host, config.http_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = [(family, address) for family, _, _, _, address in dict.fromkeys(infos)]
        sockets = bind_addresses(addresses, reuse_port=True, listen=False, one_port=True)
        port = sockets[0].getsockname()[1]
        if host is None:
            http_addr = f":{port}"
        else:
            http_addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(sockets, http_addr)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@dataclass
class _Slot:
    """Worker ``index``: its process now (None between two), and its exits in a row that
    came soon after their start."""

    index: int
    process: asyncio.subprocess.Process | None = None
    fast_failures: int = 0
    status: int | None = None  # its last exit status once the node is shutting down


class Supervisor:
    """Starts ``config.workers`` workers, restarts those that die, forwards the signals that
    stop the node; :meth:`run` returns the exit status."""

    def __init__(self, config: Config, public: PublicPort, env: Mapping[str, str]) -> None:
        self._config = config
        self._public = public
        self._env = dict(env)
        self._slots = [_Slot(index) for index in range(config.workers)]
        self._stopping = asyncio.Event()
        self._signal: signal.Signals = signal.SIGTERM
        self._failed = False
        self._pipe_read, self._pipe_write = os.pipe()
        self._directory = Path(tempfile.mkdtemp(prefix="golive-metrics-"))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            keepers = [loop.create_task(self._keep(slot)) for slot in self._slots]
            await self._stopping.wait()
            deadline = self._config.shutdown_timeout_seconds + EXIT_GRACE_SECONDS
            _, late = await asyncio.wait(keepers, timeout=deadline)
            if late:
                self._kill_late(deadline)
                await asyncio.wait(late)
            statuses = [slot.status for slot in self._slots]
            status = 0 if not self._failed and all(s in (0, None) for s in statuses) else FAILED
            log.info("golive stopped", status=status, worker_statuses=statuses)
            return status
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            os.close(self._pipe_read)
            os.close(self._pipe_write)
            shutil.rmtree(self._directory, ignore_errors=True)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum)
        if self._stopping.is_set():
            log.warning("second signal: forwarded to the workers", signal=name.name)
        else:
            log.info("shutting down", signal=name.name)
            self._signal = name
            self._stopping.set()
        for slot in self._slots:
            self._send(slot, name)

    def _send(self, slot: _Slot, signum: signal.Signals) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def _kill_late(self, waited: float) -> None:
        for slot in self._slots:
            process = slot.process
            if process is not None and process.returncode is None:
                log.error(
                    "worker did not exit in time: killed",
                    worker_index=slot.index,
                    pid=process.pid,
                    waited_seconds=waited,
                )
                self._send(slot, signal.SIGKILL)

    async def _keep(self, slot: _Slot) -> None:
        """Run worker ``slot`` until the node stops, starting it again when it dies."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            process = await self._spawn(slot)
            if self._stopping.is_set():  # a signal came while it was being started
                self._send(slot, self._signal)
            status = await process.wait()
            self._forget(process.pid, slot.index)
            if self._stopping.is_set():
                slot.status = status
                log.info("worker exited", worker_index=slot.index, pid=process.pid, status=status)
                return
            log.error(
                "worker died",
                worker_index=slot.index,
                pid=process.pid,
                status=status,
                **_signal_of(status),
            )
            if loop.time() - started < FAST_FAILURE_SECONDS:
                slot.fast_failures += 1
            else:
                slot.fast_failures = 1
            if slot.fast_failures >= MAX_FAST_FAILURES:
                log.error(
                    "worker keeps dying soon after its start: stopping the node",
                    worker_index=slot.index,
                    exits=slot.fast_failures,
                )
                self._failed = True
                slot.status = status
                self._on_signal(signal.SIGTERM)
                return
            delay = min(
                RESTART_DELAY_MAX_SECONDS, RESTART_DELAY_SECONDS * 2 ** (slot.fast_failures - 1)
            )
            log.info("restarting worker", worker_index=slot.index, delay_seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                slot.status = status
                return

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        env = {
            **self._env,
            "HTTP_ADDR": self._public.http_addr,
            WORKER_ENV: str(slot.index),
            SUPERVISOR_FD_ENV: str(self._pipe_read),
            MULTIPROC_DIR_ENV: str(self._directory),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "golive",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(self._pipe_read,),
            start_new_session=True,  # a terminal's Ctrl-C is the supervisor's to forward
        )
        slot.process = process
        log.info("worker started", worker_index=slot.index, pid=process.pid)
        return process

    def _forget(self, pid: int, index: int) -> None:
        """A worker exited: its live gauges leave the node's figures, its pid file goes."""
        mark_process_dead(pid, str(self._directory))  # type: ignore[no-untyped-call]  # prometheus-client's
        path = pid_file(self._directory, index)
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text()) == pid:
                path.unlink()


def _signal_of(status: int) -> dict[str, str]:
    """``{"signal": name}`` for the status of a process a signal ended (negative)."""
    if status >= 0:
        return {}
    try:
        return {"signal": signal.Signals(-status).name}
    except ValueError:
        return {"signal": str(-status)}


def supervise(config: Config, public: PublicPort, env: Mapping[str, str] = os.environ) -> int:
    """Run the node's workers until a signal stops them; the exit status."""
    try:
        return asyncio.run(Supervisor(config, public, env).run())
    finally:
        public.close()


async def watch_supervisor(env: Mapping[str, str], gone: asyncio.Event) -> None:
    """Set ``gone`` when the supervisor that started this worker is gone (its pipe's end of
    file); returns at once for a process no supervisor started."""
    raw = env.get(SUPERVISOR_FD_ENV, "")
    if not raw.isdigit():
        return
    fd = int(raw)
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not ended.done():
            ended.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
    gone.set()
