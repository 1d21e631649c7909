"""Running golive: configuration, logging, the HTTP server, and a graceful shutdown.

SIGTERM or SIGINT: stop accepting, let the requests in flight finish (for at most
:data:`DRAIN_SHARE` of ``SHUTDOWN_TIMEOUT_SECONDS``; those still running are cancelled), end
every session and room (the app's cleanup: recordings finalized), stop the actors, exit 0, all
within ``SHUTDOWN_TIMEOUT_SECONDS``. A shutdown that has not finished by then is abandoned
(logged, exit status 1: recordings not finalized yet are repaired at the next start), and so is
one that gets a second signal. SIGUSR1 logs the stack of every thread (every actor has one).

HTTP connections are accepted by :func:`golive.http.connections.listen` (the cap, the
timeouts, JSON for aiohttp's own errors). At start the soft open-file limit is raised to the
hard one, as Go does for every program (so Go-Live did too): the usual soft limit of 1024
would leave a server with ``MAX_SESSIONS`` and ``HTTP_MAX_CONNECTIONS`` at their defaults
short of descriptors.

In a cluster (``REDIS_URL``) the process is a worker with a
:class:`~golive.cluster.identity.WorkerIdentity` (every response names it, every log line
carries its ``node`` and ``worker``). With ``WORKERS`` > 1, ``golive`` itself is the
supervisor of the node's worker processes (golive/cluster/workers.py), each of which runs
:func:`serve` on the public address (``SO_REUSEPORT``) and on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import ssl
import sys
from typing import NoReturn

import pykka.debug
import structlog
from aiohttp import web

from golive import __version__
from golive.cluster.workers import (
    PublicPort,
    log_fields,
    prepare_worker,
    supervise,
    watch_supervisor,
    worker_index,
)
from golive.config import Config, ConfigError, load_or_exit
from golive.http.app import create_app
from golive.http.connections import listen
from golive.http.keys import CONNECTIONS
from golive.logs import configure_logging
from golive.metrics import create_metrics

log = structlog.get_logger(__name__)

FORCED_EXIT_STATUS = 1
#: The share of ``SHUTDOWN_TIMEOUT_SECONDS`` the HTTP requests in flight get to finish; the
#: rest is kept for ending every room and session, finalizing the recordings and stopping
#: the actors (under a second with hundreds of sessions: a slow client cannot take it all).
DRAIN_SHARE = 0.5


def main() -> int:
    config = load_or_exit(os.environ)
    try:
        context = tls_context(config)
        worker = worker_index(os.environ, config)
    except ConfigError as error:  # before anything starts: one line, status 2, as for config
        sys.stderr.write(f"golive: invalid configuration: {error}\n")
        return 2
    if config.workers > 1 and worker is None:
        return _supervise(config)
    configure_logging(
        config.log_level, config.log_format, config.secrets(), fields=log_fields(config, worker)
    )
    raise_open_file_limit()
    return asyncio.run(serve(config, ssl_context=context, worker=worker))


def _supervise(config: Config) -> int:
    """``WORKERS`` > 1: hold the public port, then run the workers (their configuration is
    this one with that port, which ``HTTP_ADDR=...:0`` leaves to the system)."""
    configure_logging(
        config.log_level, config.log_format, config.secrets(), fields=log_fields(config, None)
    )
    try:
        public = PublicPort.hold(config)
    except OSError as error:
        log.error("cannot listen on HTTP_ADDR", error=str(error))
        return FORCED_EXIT_STATUS
    workers_config = Config.from_env({**os.environ, "HTTP_ADDR": public.http_addr})
    configure_logging(
        config.log_level,
        config.log_format,
        config.secrets(),
        fields=log_fields(workers_config, None),
    )
    raise_open_file_limit()
    log.info(
        "golive supervising workers",
        version=__version__,
        workers=config.workers,
        http_addr=public.http_addr,
        pid=os.getpid(),
    )
    return supervise(workers_config, public)


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (never above it); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft) or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def _check_open_file_limit(config: Config) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = config.http_max_connections
    if soft != resource.RLIM_INFINITY and (cap == 0 or cap > soft // 2):
        log.warning(
            "the open-file limit leaves little room beside HTTP_MAX_CONNECTIONS: raise it "
            "(systemd LimitNOFILE=, ulimit -n) or lower HTTP_MAX_CONNECTIONS",
            open_file_limit=soft,
            http_max_connections=cap,
        )


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context, or None without TLS. Raises :class:`ConfigError` naming the
    variable when a file cannot be read or the key does not fit the certificate."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    for variable, path in (
        ("TLS_CERT_FILE", config.tls_cert_file),
        ("TLS_KEY_FILE", config.tls_key_file),
    ):
        if not path.is_file():
            raise ConfigError(variable, f"no readable file at {str(path)!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            "TLS_CERT_FILE", f"cannot load the certificate and key (TLS_KEY_FILE): {reason}"
        ) from None
    return context


async def serve(
    config: Config,
    started: asyncio.Event | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    worker: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or, for a worker, until its supervisor is gone), then shut
    down in stages. Returns the exit status. ``worker``: this worker's index when a
    supervisor started it (``WORKERS`` > 1)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    cluster = prepare_worker(config, worker)

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second signal: forced exit", signal=signal.Signals(signum).name)
            _forced_exit()
        log.info("shutting down", signal=signal.Signals(signum).name)
        stopping.set()

    app = (
        create_app(config)
        if cluster is None
        else create_app(config, identity=cluster.identity, metrics=create_metrics(cluster.metrics))
    )
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout_seconds * DRAIN_SHARE,
    )
    await runner.setup()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # SIGUSR1: log every thread's stack (each actor is a thread), as Mopidy does.
    loop.add_signal_handler(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    supervisor_gone = asyncio.Event()
    watch = loop.create_task(watch_supervisor(os.environ, supervisor_gone))
    watch.add_done_callback(lambda _: _stop_if(supervisor_gone, stopping))
    try:
        listener = await listen(
            runner,
            runner.app[CONNECTIONS],
            config.http_host,
            config.http_port,
            ssl_context=ssl_context if ssl_context is not None else tls_context(config),
            reuse_port=config.workers > 1,
            sockets=cluster.sockets if cluster is not None else (),
        )
        worker_fields = (
            {}
            if cluster is None
            else {"worker_url": cluster.identity.url, "worker_tag": cluster.identity.tag}
        )
        log.info(
            "golive listening",
            version=__version__,
            addresses=[_address(a) for a in listener.addresses],
            config=config.describe(),
            open_file_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            gc_frozen=freeze_start_up_objects(),
            **worker_fields,
        )
        _check_open_file_limit(config)
        if started is not None:
            started.set()
        await stopping.wait()
        # Stage 1: stop accepting, drain the requests in flight; stage 2: the app's cleanup
        # ends every room and stops the actors. Both within SHUTDOWN_TIMEOUT_SECONDS.
        # (Not wait_for: cancelling the cleanup would not stop it, aiohttp runs every cleanup
        # step whatever the one before raised, cancellation included.)
        listener.close()
        cleanup = asyncio.ensure_future(runner.cleanup())
        await asyncio.wait({cleanup}, timeout=config.shutdown_timeout_seconds)
        if not cleanup.done():
            log.error(
                "shutdown did not finish within SHUTDOWN_TIMEOUT_SECONDS: forced exit; "
                "recordings not finalized are repaired at the next start",
                timeout=config.shutdown_timeout_seconds,
            )
            _forced_exit()
        cleanup.result()  # what went wrong in it, if anything
    finally:
        watch.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
    log.info("golive stopped")
    return 0


def _stop_if(gone: asyncio.Event, stopping: asyncio.Event) -> None:
    """The supervisor that started this worker is gone: shut down as for SIGTERM."""
    if gone.is_set() and not stopping.is_set():
        log.warning("the supervisor is gone: shutting down")
        stopping.set()


def _forced_exit() -> NoReturn:
    """Exit at once with :data:`FORCED_EXIT_STATUS`: no cleanup, no waiting for the actors'
    threads; the logs written so far are flushed first."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(FORCED_EXIT_STATUS)


def freeze_start_up_objects() -> int:
    """Move every object alive once the server is up (modules, classes, the app, the actors:
    about 57 000) out of the cyclic garbage collector's sight; how many. A full collection
    scans every tracked object and holds the event loop meanwhile: these live as long as the
    process, and scanning them again and again cost each full collection 15-25 ms here."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _address(address: object) -> str:
    """``host:port`` of a listening socket address (IPv6 hosts in brackets)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)
