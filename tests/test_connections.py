"""HTTP connections against a real server (issue 12, finding 5 and aiohttp's own 400s): the
header, body and keep-alive timeouts close what a client leaves unfinished, the connection
cap refuses what is beyond it, and a malformed request gets a JSON 400.

Raw sockets on 127.0.0.1, so that the server sees exactly what an attacker would send. Every
wait polls with a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import selectors
import socket
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from golive.http.connections import ACCEPT_FAILURE_EVENT, GuardedRequestHandler
from golive.http.keys import METRICS
from golive.server import raise_open_file_limit
from tests.support import ServerThread, labelled, metric_samples, running_server, wait_until
from tests.test_server import Golive, environment, python_m

pytestmark = pytest.mark.timeout(90)

QUICK = {
    "STUN_URLS": ",",
    "ICE_HOST_ADDRESSES": "127.0.0.1",
    "LOG_LEVEL": "warning",
}
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: golive\r\n\r\n"
UNFINISHED_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: golive\r\nX-Slow: "
# Bodies announced at 1000 bytes and cut short: one the handler reads (an SDP offer), one it
# never reads (the admin close answers 404 first; aiohttp then reads and discards it).
UNFINISHED_OFFER = (
    b"POST /api/whip/publish/r1 HTTP/1.1\r\nHost: golive\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\r\n"
)
UNFINISHED_UNREAD_BODY = (
    b"POST /api/admin/rooms/r1/close HTTP/1.1\r\nHost: golive\r\nContent-Length: 1000\r\n\r\nabc"
)


@pytest.fixture(autouse=True)
def enough_descriptors() -> None:
    """Hundreds of connections, both ends in this process (the usual soft limit is 1024)."""
    raise_open_file_limit()


def connect(server: ServerThread, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if payload:
        sock.sendall(payload)
    return sock


def metrics(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's metrics, read on its loop (no connection needed: it may be full)."""
    return metric_samples(server.call(server.app[METRICS].render).decode())


def open_connections(server: ServerThread) -> float:
    return metrics(server)[("golive_http_connections", ())]


def until_closed(socks: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it (EOF or reset); what each received.
    Fails, naming how many are still open, if that takes longer than ``seconds``."""
    received = dict.fromkeys(socks, b"")
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        deadline = time.monotonic() + seconds
        while selector.get_map():
            left = deadline - time.monotonic()
            assert left > 0, f"{len(selector.get_map())} of {len(socks)} connections still open"
            for key, _ in selector.select(timeout=min(left, 1.0)):
                ready: socket.socket = key.data
                try:
                    chunk = ready.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[ready] += chunk
                else:
                    selector.unregister(ready)
    return received


def response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def healthz(server: ServerThread, sock: socket.socket | None = None) -> bytes:
    """``GET /healthz`` on ``sock`` (kept open) or a new connection: the raw response."""
    own = sock is None
    sock = connect(server) if sock is None else sock
    try:
        sock.sendall(HEALTHZ)
        raw = b""
        while b"\r\n\r\nok" not in raw:
            chunk = sock.recv(4096)
            assert chunk, f"closed before the response was complete: {raw!r}"
            raw += chunk
        return raw
    finally:
        if own:
            sock.close()


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def settings(**values: object) -> Mapping[str, str]:
    return {**QUICK, **{name.upper(): str(value) for name, value in values.items()}}


# --------------------------------------------------------------------------- timeouts


def test_idle_unfinished_header_and_body_connections_are_closed() -> None:
    """300 + 300 + 50 such connections stayed open forever (issue 12, finding 5)."""
    env = settings(
        http_header_timeout_seconds=0.5,
        http_body_timeout_seconds=0.5,
        http_keepalive_timeout_seconds=60,
        http_max_connections=0,
    )
    with running_server(env) as server, closing_all([]) as socks:
        idle = [connect(server) for _ in range(200)]
        headers = [connect(server, UNFINISHED_HEADERS) for _ in range(200)]
        offers = [connect(server, UNFINISHED_OFFER) for _ in range(25)]
        unread = [connect(server, UNFINISHED_UNREAD_BODY) for _ in range(25)]
        socks.extend([*idle, *headers, *offers, *unread])

        received = until_closed(socks, seconds=30)

        for sock in [*idle, *headers]:
            assert received[sock] == b""  # closed without a word
        for sock in offers:  # the handler was reading the body: 408, in JSON
            status, fields, body = response(received[sock])
            assert (status, json.loads(body)) == (
                408,
                {"error": "request body not received in time"},
            )
            assert fields["connection"] == "close"
        for sock in unread:  # answered at once; then the unread body ran out of time
            status, _, body = response(received[sock])
            assert (status, json.loads(body)) == (404, {"error": "room not found"})
        wait_until(lambda: open_connections(server) == 0, what="every connection released")
        timed_out = labelled(metrics(server), "golive_http_connections_timed_out_total", "reason")
        assert timed_out == {"header": 400, "body": 50}
        assert response(healthz(server))[0] == 200  # and the server still answers


def test_a_request_gets_the_header_timeout_from_its_first_byte() -> None:
    """A kept-alive connection making requests is not cut at the header timeout after its
    opening: the deadline starts again with each request (and a slow one is still cut)."""
    env = settings(http_header_timeout_seconds=0.3, http_keepalive_timeout_seconds=30)
    with running_server(env) as server, closing_all([connect(server)]) as (sock,):
        opened = time.monotonic()
        served = 0
        while time.monotonic() < opened + 1.0:  # bounded: over three header timeouts
            assert response(healthz(server, sock))[0] == 200
            served += 1
        assert served >= 3
        sock.sendall(UNFINISHED_HEADERS)
        assert until_closed([sock], seconds=10) == {sock: b""}
        assert labelled(metrics(server), "golive_http_connections_timed_out_total", "reason") == {
            "header": 1
        }


def test_keepalive_closes_an_idle_connection_after_its_response() -> None:
    env = settings(http_header_timeout_seconds=30, http_keepalive_timeout_seconds=0.3)
    with running_server(env) as server, closing_all([connect(server)]) as (sock,):
        assert response(healthz(server, sock))[0] == 200
        assert until_closed([sock], seconds=10) == {sock: b""}
        assert labelled(metrics(server), "golive_http_connections_timed_out_total", "reason") == {
            "keepalive": 1
        }


def requests_in_progress(server: ServerThread) -> int:
    def count() -> int:
        runner = server._runner
        assert runner is not None
        assert runner.server is not None
        handlers = runner.server.connections
        return sum(h.guard.in_request for h in handlers if isinstance(h, GuardedRequestHandler))

    return server.call(count)


def test_a_client_leaving_mid_body_is_not_a_server_error(caplog: pytest.LogCaptureFixture) -> None:
    """Each such request was an error line with a traceback: a log flood anyone could cause."""
    with running_server(settings(http_body_timeout_seconds=60)) as server:
        with capture_logs() as logs, caplog.at_level("DEBUG"):
            socks = [connect(server, UNFINISHED_OFFER) for _ in range(5)]
            wait_until(lambda: requests_in_progress(server) == 5, what="5 bodies being read")
            for sock in socks:
                sock.close()
            wait_until(lambda: open_connections(server) == 0, what="every connection released")
            wait_until(lambda: requests_in_progress(server) == 0, what="every request done")
        assert [e for e in logs if e["log_level"] in {"warning", "error", "critical"}] == []
        assert [e["event"] for e in logs].count("client went away") == 5
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------- the cap


def test_connections_beyond_the_cap_are_refused_and_those_under_it_served() -> None:
    env = settings(http_max_connections=20, http_header_timeout_seconds=60)
    with running_server(env) as server, closing_all([]) as socks:
        held = [connect(server) for _ in range(20)]
        socks.extend(held)
        wait_until(lambda: open_connections(server) == 20, what="20 connections open")

        extra = [connect(server) for _ in range(10)]
        socks.extend(extra)
        assert until_closed(extra, seconds=10) == dict.fromkeys(extra, b"")
        samples = metrics(server)
        assert samples[("golive_http_connections_refused_total", ())] == 10
        assert samples[("golive_http_connections", ())] == 20

        # A connection under the cap is served as usual.
        assert response(healthz(server, held[0]))[0] == 200
        # Below the cap again, new connections are accepted.
        for sock in held[:5]:
            sock.close()
        wait_until(lambda: open_connections(server) == 15, what="5 connections released")
        assert response(healthz(server))[0] == 200


# --------------------------------------------------------------------------- aiohttp's 400s


MALFORMED = {
    "not HTTP": b"GARBAGE\r\n\r\n",
    "bad header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "long line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "long header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    "bad target": b"GET \x7fwhat HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_a_json_400(payload: bytes) -> None:
    with running_server(QUICK) as server, closing_all([connect(server, payload)]) as (sock,):
        raw = until_closed([sock], seconds=10)[sock]
    status, headers, body = response(raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"error"}
    for echoed in (b"GARBAGE", b"abc", b"aaaa", b"bbbb", b"what"):  # what was wrong, not with what
        assert echoed not in body


# --------------------------------------------------------------------------- the loop's errors


def test_other_loop_errors_are_reported_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """Only accept() failures are condensed; anything else the loop reports still reaches
    asyncio's logger at error, with its exception."""
    with running_server(QUICK) as server:

        def report() -> None:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "something else broke", "exception": ValueError("boom")}
            )

        with caplog.at_level("ERROR", logger="asyncio"):
            server.call(report)
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("something else broke")
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


# --------------------------------------------------------------------------- out of descriptors


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:  # noqa: S310  loopback
            return bool(reply.status == 200)
    except OSError:
        return False


@pytest.mark.timeout(150)
def test_out_of_descriptors_logs_a_line_per_interval_and_recovers(tmp_path: Path) -> None:
    """A real golive with a low open-file limit, flooded with idle connections: it runs out of
    descriptors, says so in one line per 10 s (asyncio logged a traceback per accept attempt:
    115 000 in 45 s), and answers again once the flood's connections time out."""
    env = environment({**settings(http_header_timeout_seconds=1), "LOG_LEVEL": "info"})
    golive = Golive(python_m(), env, tmp_path)
    flood: list[socket.socket] = []
    try:
        url = golive.wait_listening()
        host, port = url.removeprefix("http://").split(":")
        pid = golive.process.pid
        limit = len(list(Path(f"/proc/{pid}/fd").iterdir())) + 30
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        started = time.monotonic()
        # More than the limit and the listen backlog (128) together can hold.
        for _ in range(150):
            sock = socket.socket()
            flood.append(sock)
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
        deadline = started + 30
        while True:  # until the server says it ran out (one line either way)
            line = golive.next_line(deadline)
            assert line is not None, "golive exited"
            if "accept" in line and "out of" in line:
                break
        # The flood times out (1 s each) and the server answers again.
        while not healthy(url):
            assert time.monotonic() < started + 90, "golive did not answer again"
        elapsed = time.monotonic() - started
        for sock in flood:
            sock.close()
        assert golive.stop() == 0
    finally:
        for sock in flood:
            sock.close()
        golive.kill()
    logged = [json.loads(line) for line in golive.stdout]
    lines = [r for r in logged if r["event"] == ACCEPT_FAILURE_EVENT]
    assert 1 <= len(lines) <= elapsed / 10 + 2, lines
    assert lines[0]["error"] in {"EMFILE", "ENFILE"}
    assert sum(r["failures"] for r in lines) >= len(lines)
    assert [r for r in logged if r.get("logger") == "asyncio"] == []
    assert [r for r in logged if "exception" in r] == []
    assert len(golive.stdout) < 2000  # nothing else floods either
