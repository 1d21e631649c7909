"""The ``PPROF=1`` debug endpoints (``golive.http.debug``), against a real server."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import tracemalloc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest

from golive.http.debug import PROFILER
from tests.support import ServerThread, running_server, wait_until

ADMIN = "debug-admin-t0ken"
CLIENT = "debug-client-t0ken"
ON = {"PPROF": "1"}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        assert self.headers.get_content_type() == "text/plain", self.headers
        return self.body.decode()

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


def fetch(server: ServerThread, path: str, headers: Mapping[str, str] = {}) -> Reply:
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.request("GET", path, headers=dict(headers))
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@pytest.fixture
def no_tracemalloc_left() -> Iterator[None]:
    """tracemalloc is process-wide: whatever a test starts is stopped after it."""
    was = tracemalloc.is_tracing()
    yield
    if not was:
        tracemalloc.stop()


def test_off_by_default_no_debug_route() -> None:
    with running_server({}) as server:
        for path in ("/debug/", "/debug/threads", "/debug/profile?seconds=1"):
            reply = fetch(server, path)
            assert reply.status == 404, path
            assert reply.json() == {"error": "not found"}


@pytest.mark.usefixtures("no_tracemalloc_left")
def test_dumps_and_memory() -> None:
    with running_server(ON) as server:
        index = fetch(server, "/debug/")
        assert index.status == 200
        assert "/debug/threads" in index.json()["endpoints"]

        threads = fetch(server, "/debug/threads")
        assert threads.status == 200
        assert '"MainThread"' in threads.text
        assert re.search(r'thread "DirectoryActor-\d+"', threads.text), threads.text
        assert "event loop]" in threads.text
        assert 'File "' in threads.text

        tasks = fetch(server, "/debug/tasks")
        assert tasks.status == 200
        assert re.search(r'^task "[^"]+" ', tasks.text, re.MULTILINE), tasks.text
        assert "running (this request)" in tasks.text
        assert "golive/http/debug.py" in tasks.text

        assert fetch(server, "/debug/memory?top=0").status == 400
        assert fetch(server, "/debug/memory?top=x").json()["error"].startswith("top must")
        was_tracing = tracemalloc.is_tracing()
        first = fetch(server, "/debug/memory?top=5")
        assert first.status == 200
        assert tracemalloc.is_tracing()
        if not was_tracing:  # (only if nothing else in this process traces already)
            assert "started now" in first.text
        second = fetch(server, "/debug/memory?top=5")
        assert second.status == 200
        assert "started now" not in second.text
        sites = re.findall(r"^\S.*:\d+: size=", second.text, re.MULTILINE)
        assert 1 <= len(sites) <= 5, second.text

        stopped = fetch(server, "/debug/memory?stop=1")
        assert stopped.status == 200
        assert stopped.text == "tracemalloc stopped\n"
        assert not tracemalloc.is_tracing()
        assert fetch(server, "/debug/memory?stop=maybe").status == 400


def test_profile_and_its_bounds() -> None:
    with running_server(ON) as server:
        reply = fetch(server, "/debug/profile?seconds=1")
        assert reply.status == 200
        assert "function calls" in reply.text
        assert "cumulative" in reply.text
        for bad in ("0", "61", "x", "1.5", "-1", ""):
            refused = fetch(server, f"/debug/profile?seconds={bad}")
            assert refused.status == 400, bad
            assert "seconds must be" in refused.json()["error"]


def test_one_profile_at_a_time() -> None:
    with (
        running_server(ON) as server,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(fetch, server, "/debug/profile?seconds=2")
        wait_until(lambda: server.app[PROFILER].running, what="the first profile to start")
        second = fetch(server, "/debug/profile?seconds=1")
        assert second.status == 409
        assert second.json() == {"error": "a profile is already running"}
        assert first.result(timeout=20).status == 200
        assert not server.app[PROFILER].running


@pytest.mark.usefixtures("no_tracemalloc_left")
def test_admin_only_when_credentials_are_configured() -> None:
    was_tracing = tracemalloc.is_tracing()
    with running_server({**ON, "ADMIN_TOKEN": ADMIN, "AUTH_TOKEN": CLIENT}) as server:
        for path in ("/debug/", "/debug/threads", "/debug/tasks", "/debug/memory"):
            for headers in ({}, {"Authorization": f"Bearer {CLIENT}"}):
                refused = fetch(server, path, headers)
                assert refused.status == 401, (path, headers)
                assert refused.headers["WWW-Authenticate"] == "Bearer"
                assert refused.json() == {"error": "unauthorized"}
        assert fetch(server, "/debug/profile?seconds=1").status == 401
        assert tracemalloc.is_tracing() == was_tracing  # a refused request starts nothing

        admin = {"Authorization": f"Bearer {ADMIN}"}
        for path in ("/debug/threads", "/debug/tasks"):
            reply = fetch(server, path, admin)
            assert reply.status == 200, path
            # code locations only: no credential, no configuration value
            assert ADMIN not in reply.text
            assert CLIENT not in reply.text
        assert fetch(server, "/debug/", admin).status == 200
