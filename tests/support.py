"""Test support: a real golive server on a loop thread, probe endpoints, metric reading."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from golive.actors.messages import EndReason, TrackKey
from golive.config import Config
from golive.http.app import create_app
from golive.http.connections import Listener, listen
from golive.http.keys import CONNECTIONS, ROOMS
from golive.rooms import RoomService
from golive.tracing import Tracing

T = TypeVar("T")


def require_loopback_namespace() -> None:
    """Fail unless this process is in a network namespace with nothing but ``lo`` (WebRTC
    tests must never reach a real network: ``make test`` or ``scripts/loopback-netns``)."""
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        pytest.fail(
            "WebRTC tests run only in a loopback-only network namespace "
            f"(this one has {interfaces}): use `make test` or scripts/loopback-netns"
        )


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, what: str, seconds: float = 30.0
) -> None:
    """On the event loop: poll ``condition`` (a function, or a coroutine function such as an
    HTTP query; the loop's callbacks run between polls) until it holds, failing after
    ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert loop.time() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.02)


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.005)


@dataclass
class ProbeEndpoint:
    """A session's loop-side end that records what reaches it (media is not wired yet)."""

    name: str
    closed: EndReason | None = None
    close_calls: int = 0
    received: list[TrackKey] = field(default_factory=list)
    received_after_close: list[TrackKey] = field(default_factory=list)

    def close(self, reason: EndReason) -> None:
        self.close_calls += 1
        if self.closed is None:
            self.closed = reason

    def deliver(self, track: TrackKey) -> None:
        (self.received if self.closed is None else self.received_after_close).append(track)


class ServerThread:
    """A real golive app (aiohttp + actors) on its own event loop thread, on 127.0.0.1,
    listening as ``golive`` does (its connection cap and timeouts, from the config)."""

    def __init__(self, config: Config, tracing: Tracing | None = None) -> None:
        self._config = config
        self._tracing = tracing
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="golive-test-loop")
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self.url = ""
        self.port = 0

    def start(self) -> ServerThread:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self._config, tracing=self._tracing))
        await self._runner.setup()
        self._listener = await listen(
            self._runner, self._runner.app[CONNECTIONS], "127.0.0.1", 0, access_log=None
        )
        host, self.port = self._listener.addresses[0][:2]
        self.url = f"http://{host}:{self.port}"

    @property
    def app(self) -> web.Application:
        assert self._runner is not None
        return self._runner.app

    @property
    def rooms(self) -> RoomService:
        return self.app[ROOMS]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 30.0) -> T:
        """Run a plain function on the server's loop (after everything scheduled before it)."""
        return self.submit(function).result(timeout)

    def submit(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Schedule a plain function on the server's loop (after everything scheduled before
        it); its result or exception comes in the future (``asyncio.wrap_future`` to await it
        from another loop without blocking it)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except Exception as exc:  # noqa: BLE001  handed to the waiting test
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310  loopback URL built here
            return response.status, response.read()

    def stop(self) -> None:
        if self._listener is not None:
            self.call(self._listener.close)
            self._listener = None
        if self._runner is not None:
            self.run(self._runner.cleanup())
            self._runner = None
        self.run(self._loop.shutdown_default_executor())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def running_server(
    env: Mapping[str, str], tracing: Tracing | None = None
) -> Iterator[ServerThread]:
    """A real server configured from ``env`` (as the environment would), stopped afterwards."""
    server = ServerThread(Config.from_env(env), tracing).start()
    try:
        yield server
    finally:
        server.stop()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labelled(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str
) -> dict[str, float]:
    """The values of metric ``name`` by the value of its one label ``label``."""
    return {
        dict(labels)[label]: value
        for (sample_name, labels), value in samples.items()
        if sample_name == name and labels and dict(labels).get(label) is not None
    }
