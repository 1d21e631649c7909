"""HTTP connections: timeouts, a cap on open connections, JSON for aiohttp's own errors, and
one log line, not a traceback per attempt, when the process runs out of file descriptors.

Every connection golive accepts gets, in order:

- **the cap** (``HTTP_MAX_CONNECTIONS``, 0 = none): beyond it a new connection is closed as
  soon as it is accepted (``golive_http_connections_refused_total``), which frees its
  descriptor at once; the connections already open are served as usual.
- **the header timeout** (``HTTP_HEADER_TIMEOUT_SECONDS``): the request line and headers must
  be complete within it of the connection opening, or, on a kept-alive connection, of the
  first byte of the next request. Then the connection is closed (reason ``header``).
- **the body timeout** (``HTTP_BODY_TIMEOUT_SECONDS``): a body must be complete within it of
  its headers. A handler reading it gets :class:`BodyTimeoutError` (answered ``408`` by
  ``golive.http.errors``), and the connection is closed (reason ``body``).
- **the keep-alive timeout** (``HTTP_KEEPALIVE_TIMEOUT_SECONDS``): a connection whose next
  request's headers are not complete within it of the previous response is closed (reason
  ``keepalive``). This one is aiohttp's own ``keepalive_timeout``: it alone knows when a
  connection is idle (its default, 3630 s, is the "forever" of issue 12).

aiohttp 3.14 lacks the rest, so it is built here on public API only: a
:class:`web.RequestHandler` subclass (the protocol of each connection; its public
``connection_made``/``data_received``/``connection_lost``/``force_close``/``handle_error``
methods), made for each accepted socket with the runner's public :attr:`web.AppRunner.server`
as its manager; a middleware that sees each request start and end;
:meth:`StreamReader.set_exception` for the body timeout. ``tests/test_connections.py``
checks each behaviour against a real server, so an aiohttp that stops calling one of these
fails there, by name.

aiohttp answers a malformed request (bad request line or header, a line or header over 8190
bytes) itself, with plain text: :meth:`GuardedRequestHandler.handle_error` keeps its logging
(which ``golive.logs`` turns into one debug line) and answers ``{"error": ...}`` instead.

golive accepts connections itself (:class:`Listener`: ``accept()`` on its listening sockets,
then :meth:`asyncio.loop.connect_accepted_socket`), because asyncio's own accept loop handles
running out of descriptors badly: on EMFILE it calls the loop's exception handler, with a
traceback, for each of up to ``backlog`` attempts per event-loop turn, and schedules as many
retries, each of which can fire after the server is closed (another traceback): 115 000
lines in 45 s in issue 12. Here an ``accept()`` that fails for want of descriptors (or
memory) pauses accepting, retries after 5 ms doubling up to 1 s as Go's ``net/http`` does
(so did Go-Live), and logs at most one line per :data:`ACCEPT_FAILURE_LOG_INTERVAL` with the
count of failures since the previous one. The cap is applied right after ``accept()``, so a
refused connection costs no transport, and a TLS connection counts from its handshake on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from golive.config import Config
from golive.http.errors import BodyTimeoutError, Handler
from golive.logs import Throttle
from golive.metrics import Metrics

__all__ = [
    "ACCEPT_FAILURE_EVENT",
    "ACCEPT_FAILURE_LOG_INTERVAL",
    "Admission",
    "Connections",
    "GuardedRequestHandler",
    "HttpLimits",
    "Listener",
    "bind",
    "connection_middleware",
    "listen",
]

log = structlog.get_logger(__name__)

#: What golive logs (at most once per interval) when ``accept()`` runs out of resources.
ACCEPT_FAILURE_EVENT: Final = "cannot accept connections: out of file descriptors or memory"
#: At most one such line per this many seconds.
ACCEPT_FAILURE_LOG_INTERVAL: Final = 10.0
#: Accepting pauses this long after such a failure, doubling up to the maximum (as Go).
ACCEPT_RETRY_MIN: Final = 0.005
ACCEPT_RETRY_MAX: Final = 1.0
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: aiohttp's ``access_log`` default: the logger of the access lines.
ACCESS_LOG: Final = logging.getLogger("aiohttp.access")
BACKLOG: Final = 128  # as aiohttp's TCPSite

_MALFORMED: Final[tuple[tuple[type[Exception], str], ...]] = (
    (LineTooLong, "request line or header too long"),
    (BadHttpMethod, "malformed request method"),
    (BadStatusLine, "malformed request line"),
    (InvalidURLError, "malformed request target"),
    (InvalidHeader, "malformed header"),
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The connection settings, in seconds (``max_connections`` 0 = no limit)."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def from_config(cls, config: Config) -> HttpLimits:
        return cls(
            header_timeout=config.http_header_timeout_seconds,
            body_timeout=config.http_body_timeout_seconds,
            keepalive_timeout=config.http_keepalive_timeout_seconds,
            max_connections=config.http_max_connections,
        )


class Connections:
    """The open connections of one server (from their ``accept()``, a TLS handshake
    included): the cap and the counts (event loop only)."""

    def __init__(self, limits: HttpLimits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        # Set once the server stops accepting: closes after that are the shutdown's.
        self.stopping = False

    def admit(self) -> bool:
        """One more connection, unless the cap is reached (then it is counted as refused)."""
        cap = self.limits.max_connections
        if cap and self.open >= cap:
            self.metrics.http_connections_refused.inc()
            return False
        self.open += 1
        self.metrics.http_connections.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self.metrics.http_connections.set(self.open)

    def timed_out(self, reason: str, peer: object) -> None:
        self.metrics.http_connections_timed_out.labels(reason).inc()
        log.debug("http connection timed out", reason=reason, peer=str(peer))


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with the header timeout, a count of aiohttp's
    keep-alive closes, its place under the cap, and JSON for the errors aiohttp answers
    itself."""

    def __init__(
        self,
        manager: web.Server,
        connections: Connections,
        admission: Admission,
        *,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            manager, loop=loop, keepalive_timeout=connections.limits.keepalive_timeout, **kwargs
        )
        # Everything of golive's in one attribute, so no name can clash with aiohttp's.
        self.guard = _Guard(connections, admission, loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream's
        # Before aiohttp starts its keep-alive timer: see _Guard.force_closing().
        self.guard.open(transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.guard.received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.lost()
        super().connection_lost(exc)

    def force_close(self) -> None:
        # aiohttp force-closes an idle connection when its keep-alive timeout expires; its
        # other closes come with a response, a lost connection or the shutdown.
        self.guard.force_closing()
        super().force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a crash outside any handler):
        logged as aiohttp logs it, answered in JSON. Raises :class:`ConnectionError` as
        aiohttp does when a response has already begun."""
        super().handle_error(request, status, exc, message)
        response = web.json_response({"error": _problem(status, exc)}, status=status)
        response.force_close()
        return response


def _problem(status: int, exc: BaseException | None) -> str:
    """What was wrong, never with what (aiohttp's text quotes the client's bytes)."""
    if status == HTTPStatus.BAD_REQUEST:
        for kind, problem in _MALFORMED:
            if isinstance(exc, kind):
                return problem
        return "malformed request"
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return "internal error"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


class _Guard:
    """Where a connection is: waiting for a request's headers (with a deadline), in a
    request, or idle after one (aiohttp's keep-alive timer runs then)."""

    def __init__(
        self, connections: Connections, admission: Admission, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.connections = connections
        self.admission = admission
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.in_request = False
        self.idle_since = 0.0
        self.closed_for: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the previous request's

    def open(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.idle_since = self.loop.time()
        self._expect_headers()

    def received(self) -> None:
        """Bytes arrived: the first of a new request starts its header deadline (bytes of a
        previous request's body, still arriving after its response, do not)."""
        if (
            self.in_request
            or self._deadline is not None
            or self.closed_for is not None
            or (self._body is not None and not self._body.is_eof())
        ):
            return
        self._expect_headers()

    def request_started(self) -> None:
        self.in_request = True
        self._cancel()

    def request_finished(self, body: StreamReader) -> None:
        self.in_request = False
        self._body = body
        self.idle_since = self.loop.time()

    def force_closing(self) -> None:
        """aiohttp closes the connection: count it when that is its keep-alive timeout
        (idle, and at least the timeout since the last request or the opening)."""
        if (
            self.transport is not None
            and self.closed_for is None
            and not self.in_request
            and not self.connections.stopping
            and self.loop.time() >= self.idle_since + self.connections.limits.keepalive_timeout
        ):
            self.closed_for = "keepalive"
            self.connections.timed_out("keepalive", self._peer())

    def lost(self) -> None:
        self._cancel()
        self.transport = None
        self._body = None
        self.admission.release()

    def _expect_headers(self) -> None:
        self._deadline = self.loop.call_later(
            self.connections.limits.header_timeout, self._headers_late
        )

    def _headers_late(self) -> None:
        self._deadline = None
        transport = self.transport
        if self.in_request or transport is None or transport.is_closing():
            return
        self.closed_for = "header"
        self.connections.timed_out("header", self._peer())
        transport.abort()  # not close(): a peer that reads nothing cannot hold it with our output

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _peer(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport is not None else None


def connection_middleware(connections: Connections) -> Middleware:
    """Tells each connection when a request starts and ends, and runs the body timeout.

    Outermost, so that the request starts before anything else runs. The body timeout works
    on any server (aiohttp's test server too); the rest needs :func:`listen`'s connections.
    """
    body_timeout = connections.limits.body_timeout

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        guard = protocol.guard if isinstance(protocol, GuardedRequestHandler) else None
        body = request.content
        if guard is not None:
            guard.request_started()
        timer = None
        if request.body_exists and not body.is_eof():
            timer = asyncio.get_running_loop().call_later(
                body_timeout, _body_late, request, connections
            )
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_finished(body)
            if timer is not None and body.is_eof():
                timer.cancel()
            # Otherwise it stays armed: aiohttp reads (and discards) a body the handler left
            # unread before the next request, and that must not take longer either.

    return middleware


def _body_late(request: web.Request, connections: Connections) -> None:
    body, transport = request.content, request.transport
    if body.is_eof() or transport is None or transport.is_closing():
        return
    # The handler's read raises it (408); aiohttp's own read of an unread body stops at it
    # (a TimeoutError) and closes the connection.
    body.set_exception(BodyTimeoutError())
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol.guard.closed_for = "body"
    connections.timed_out("body", request.remote)


class Listener:
    """golive's listening sockets and its own accept loop (see the module's docstring)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        connections: Connections,
        protocol: Callable[[Admission], GuardedRequestHandler],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.sockets = sockets
        self.connections = connections
        self._protocol = protocol
        self._ssl = ssl_context
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._throttle = Throttle(ACCEPT_FAILURE_LOG_INTERVAL)
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self.sockets]

    def start(self) -> None:
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting (the runner's cleanup then closes the connections)."""
        if self._closed:
            return
        self._closed = True
        self.connections.stopping = True
        if self._retry is not None:
            self._retry.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BACKLOG):  # bounded per turn, like asyncio's own loop
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # the loop logs it, as asyncio's own accept loop would
                self._out_of_resources(exc)
                return
            self._backoff = 0.0
            if not self.connections.admit():
                conn.close()  # over the cap: the descriptor is free at once
                continue
            admission = Admission(self.connections)
            task = self._loop.create_task(self._connect(conn, admission))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _connect(self, conn: socket.socket, admission: Admission) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._protocol(admission),
                conn,
                ssl=self._ssl,
                # A TLS handshake is bounded like a request's headers (asyncio says 60 s).
                ssl_handshake_timeout=self.connections.limits.header_timeout if self._ssl else None,
            )
        except OSError as exc:  # a TLS handshake that failed or took too long, a reset
            conn.close()
            admission.release()
            log.debug("connection ended before HTTP", error=type(exc).__name__)
        except BaseException:
            conn.close()
            admission.release()
            raise

    def _out_of_resources(self, exc: OSError) -> None:
        """Pause accepting (the backlog waits in the kernel) and retry with a backoff."""
        self.connections.metrics.http_accept_failures.inc()
        held = self._throttle.allow()
        if held is not None:
            number = exc.errno or 0
            log.error(
                ACCEPT_FAILURE_EVENT,
                error=errno.errorcode.get(number, "unknown"),
                reason=os.strerror(number),
                failures=held + 1,  # since the previous line, this one included
            )
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
        if self._retry is not None:
            self._retry.cancel()
        self._backoff = min(ACCEPT_RETRY_MAX, max(ACCEPT_RETRY_MIN, self._backoff * 2))
        self._retry = self._loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self.start()


class Admission:
    """One accepted connection's place under the cap, given back exactly once."""

    __slots__ = ("_connections", "_released")

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._connections.release()


async def listen(
    runner: web.AppRunner,
    connections: Connections,
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    access_log: logging.Logger | None = ACCESS_LOG,
    reuse_port: bool = False,
    sockets: Sequence[socket.socket] = (),
) -> Listener:
    """Listen on ``host:port`` (every interface when ``host`` is None, as aiohttp's TCPSite)
    for the app of ``runner`` (set up), each connection guarded by ``connections``.

    ``reuse_port``: bind with ``SO_REUSEPORT``, so that the workers of a node all listen on
    the one public address and the kernel spreads connections over them. ``sockets``: more
    listening sockets, already bound (:func:`bind`), served the same way (a worker's own
    address); the listener closes them with its own."""
    loop = asyncio.get_running_loop()
    manager = runner.server
    assert manager is not None, "runner.setup() first"

    def protocol(admission: Admission) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            manager, connections, admission, loop=loop, access_log=access_log
        )

    public = await bind(host, port, reuse_port=reuse_port)
    listener = Listener([*public, *sockets], connections, protocol, ssl_context)
    listener.start()
    return listener


async def bind(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``host:port``, bound as :meth:`asyncio.loop.create_server` binds
    them: every address ``host`` resolves to (both families for None), IPv6 ones v6-only,
    ``SO_REUSEADDR`` on. With ``reuse_port``, ``SO_REUSEPORT`` too, and with port 0 every
    socket after the first gets the first one's port (one port for the node's workers)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = [(family, address) for family, _, _, _, address in dict.fromkeys(infos)]
    return bind_addresses(addresses, reuse_port=reuse_port, one_port=reuse_port)


def bind_addresses(
    addresses: Sequence[tuple[socket.AddressFamily, tuple[Any, ...]]],
    *,
    reuse_port: bool = False,
    listen: bool = True,
    one_port: bool = False,
) -> list[socket.socket]:
    """Stream sockets bound to ``addresses`` (families and ``getaddrinfo`` socket addresses),
    listening unless ``listen`` is false (a port held for the workers, receiving nothing).
    ``one_port``: where the port is 0, every socket after the first gets the first's port."""
    sockets: list[socket.socket] = []
    chosen = 0
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if one_port and chosen and address[1] == 0:
                address = (address[0], chosen, *address[2:])  # noqa: PLW2901  the same port everywhere
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: {exc.strerror}",
                ) from None
            chosen = chosen or sock.getsockname()[1]
            if listen:
                sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
