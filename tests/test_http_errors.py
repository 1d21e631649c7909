"""golive.http.errors: which failures a request answers 503 "server busy" and which 500.

Only an actor that does not answer an ask in time (:class:`ActorTimeoutError`, raised by
``reply_of`` alone) is overload: 503 with ``Retry-After``. Any other ``TimeoutError`` (asyncio's,
aiortc's, one an actor itself raised) is a bug like any other: 500 and its traceback in the
log, never "an actor did not answer in time".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient

from golive.actors.base import ActorTimeoutError, GoliveActor, reply_of
from golive.http.errors import error_middleware

pytestmark = pytest.mark.asyncio

ASK_TIMEOUT = 0.05  # how long the handlers wait for an actor that will not answer in time
Logs = list[MutableMapping[str, Any]]
AiohttpClient = Callable[[web.Application], Any]


class Slow(GoliveActor):
    """Answers once released; raises a TimeoutError of its own when asked to."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self._release = release

    def answer(self) -> int:
        assert self._release.wait(10)
        return 1

    def time_out(self) -> None:
        raise TimeoutError("the actor's own timeout")


class PlainSlow(pykka.ThreadingActor):
    """A plain pykka actor (its futures are not golive's CallbackFuture)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self._release = release

    def answer(self) -> int:
        assert self._release.wait(10)
        return 1


@dataclass
class Actors:
    release: threading.Event  # lets them answer
    slow: pykka.ActorProxy[Slow]
    plain: pykka.ActorProxy[PlainSlow]


@pytest.fixture
def actors() -> Iterator[Actors]:
    release = threading.Event()
    slow, plain = Slow.start(release), PlainSlow.start(release)
    yield Actors(release, slow.proxy(), plain.proxy())
    release.set()
    for ref in (slow, plain):
        ref.stop()


def app(actors: Actors) -> web.Application:
    slow, plain = actors.slow, actors.plain

    async def actor(_request: web.Request) -> web.Response:
        return web.json_response(await reply_of(slow.answer(), ASK_TIMEOUT))

    async def plain_actor(_request: web.Request) -> web.Response:
        return web.json_response(await reply_of(plain.answer(), ASK_TIMEOUT))

    async def actors_own(_request: web.Request) -> web.Response:
        await reply_of(slow.time_out(), 10)
        return web.json_response(1)

    async def not_an_actor(_request: web.Request) -> web.Response:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)  # asyncio's, as aiortc's would be
        return web.json_response(1)

    application = web.Application(middlewares=[error_middleware])
    application.router.add_get("/actor", actor)
    application.router.add_get("/plain-actor", plain_actor)
    application.router.add_get("/actors-own", actors_own)
    application.router.add_get("/not-an-actor", not_an_actor)
    return application


async def fetch(client: TestClient[Any, Any], path: str) -> tuple[int, Any, dict[str, str], Logs]:
    with structlog.testing.capture_logs() as logs:
        response = await client.get(path)
        body = await response.json()
    return response.status, body, dict(response.headers), logs


@pytest.mark.parametrize("path", ["/actor", "/plain-actor"])
async def test_an_actor_that_does_not_answer_in_time_is_503(
    aiohttp_client: AiohttpClient, actors: Actors, path: str
) -> None:
    client = await aiohttp_client(app(actors))
    status, body, headers, logs = await fetch(client, path)
    assert (status, body) == (503, {"error": "server busy, try again"})
    assert headers["Retry-After"] == "1"
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("an actor did not answer in time", "error")
    ]


@pytest.mark.parametrize("path", ["/not-an-actor", "/actors-own"])
async def test_any_other_timeout_is_a_bug_500_with_its_traceback(
    aiohttp_client: AiohttpClient, actors: Actors, path: str
) -> None:
    client = await aiohttp_client(app(actors))
    status, body, headers, logs = await fetch(client, path)
    assert (status, body) == (500, {"error": "internal error"})
    assert "Retry-After" not in headers
    assert [(e["event"], e["log_level"]) for e in logs] == [("request failed", "error")]
    assert logs[0].get("exc_info"), "the traceback is logged"


async def test_reply_of_raises_actor_timeout_only_for_its_own_wait(actors: Actors) -> None:
    for proxy in (actors.slow, actors.plain):
        with pytest.raises(ActorTimeoutError):
            await reply_of(proxy.answer(), ASK_TIMEOUT)
    actors.release.set()
    with pytest.raises(TimeoutError) as raised:
        await reply_of(actors.slow.time_out(), 10)
    assert not isinstance(raised.value, ActorTimeoutError)
    assert str(raised.value) == "the actor's own timeout"
