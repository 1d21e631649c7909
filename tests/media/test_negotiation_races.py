"""A publisher's negotiation raced by what can happen while it awaits: its session closed
(review bug 4: its tracks were made afterwards and leaked), viewers joining the moment its room
goes live (review bug 5: a viewer admitted before the loop knew the room's tracks got 404)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pykka
import pytest
from aiortc import RTCPeerConnection

from golive.actors.messages import RoomName
from golive.http.keys import MEDIA
from golive.media.hooks import ForwardingPeerConnection
from tests.media.clients import PatternTrack, close_all, delete, publish, view
from tests.support import ServerThread, eventually, metric_samples

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DEADLINE = 30.0


class Gate:
    """Holds a step of the server's work, on the server's loop, until released: ``wrap`` a
    coroutine function so that it runs, says so, then waits (no sleep, no timing)."""

    def __init__(self, server: ServerThread) -> None:
        self._server = server
        self._reached: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._open = server.call(asyncio.Event)

    def wrap(
        self, function: Callable[..., Coroutine[Any, Any, Any]]
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        async def held(*args: Any, **kwargs: Any) -> Any:
            result = await function(*args, **kwargs)
            if not self._reached.done():
                self._reached.set_result(None)
            await self._open.wait()
            return result

        return held

    async def reached(self) -> None:
        await asyncio.wait_for(asyncio.wrap_future(self._reached), DEADLINE)

    def release(self) -> None:
        self._server.call(self._open.set)


def nothing_published(server: ServerThread, room: str) -> bool:
    """No track of any publisher on the packet path, none known as ``room``'s."""
    media = server.app[MEDIA]
    return server.call(
        lambda: server.rooms.registry.published() == [] and media.taps(RoomName(room)) == []
    )


async def admin_close(server: ServerThread, room: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/api/admin/rooms/{room}/close") as response,
    ):
        return response.status


@pytest.mark.parametrize("ending", ["its DELETE", "an admin close of its room"])
async def test_a_publisher_ended_while_its_answer_is_made_leaves_no_track(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    gate = Gate(server)
    # The last thing a publisher's negotiation awaits: its answer set as local description.
    monkeypatch.setattr(
        ForwardingPeerConnection,
        "setLocalDescription",
        gate.wrap(ForwardingPeerConnection.setLocalDescription),
    )
    posting = asyncio.ensure_future(publish(server.url, "closing"))
    try:
        await gate.reached()
        [record] = server.call(lambda: list(server.rooms.registry))
        if ending == "its DELETE":  # (a client that guessed its Location: an open server)
            status = await delete(server.url, f"/api/whip/publish/closing/{record.session}")
        else:
            status = await admin_close(server, "closing")
        assert status == 200
        gate.release()
        publisher = await posting
        assert publisher.answer.status == 404, publisher.answer.body
        assert json.loads(publisher.answer.body) == {"error": "session not found"}
        assert nothing_published(server, "closing")
        assert server.call(lambda: len(server.rooms.registry)) == 0
        assert json.loads(server.get("/api/rooms")[1]) == []
        assert [a.actor_class.__name__ for a in pykka.ActorRegistry.get_all()] == ["DirectoryActor"]
    finally:
        gate.release()
        publisher = await posting
        await close_all(publisher)


async def test_a_viewer_admitted_the_moment_a_room_goes_live_is_answered(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room is live in the actors, the publisher's POST not yet answered (its reply
    still on its way back through the loop): a viewer joining then must find the room's
    tracks, whatever order the loop runs its callbacks in."""
    gate = Gate(server)
    monkeypatch.setattr(server.rooms, "publisher_ready", gate.wrap(server.rooms.publisher_ready))
    posting = asyncio.ensure_future(publish(server.url, "early"))
    viewer = None
    try:
        await gate.reached()
        viewer = await view(server.url, "early")
        assert viewer.answer.status == 201, viewer.answer.body
        gate.release()
        publisher = await posting
        assert publisher.answer.status == 201
        await eventually(viewer.got_video.is_set, what="video at the early viewer")
        await eventually(lambda: viewer.frames["audio"] >= 5, what="audio at the early viewer")
    finally:
        gate.release()
        publisher = await posting
        await close_all(publisher, *([viewer] if viewer is not None else []))


async def offer(*, publisher: bool) -> tuple[RTCPeerConnection, str]:
    """A client's peer connection and its offer, made before the race starts."""
    pc = RTCPeerConnection()
    if publisher:
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
    else:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def post(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[int, bytes, str]:
    headers = {"Content-Type": "application/sdp"}
    async with http.post(url, data=sdp, headers=headers) as response:
        return response.status, await response.read(), response.headers.get("Location", "")


ROUNDS = 15


async def test_viewers_joining_as_a_room_goes_live_are_answered_or_refused_never_dropped(
    server: ServerThread,
) -> None:
    """Each round: a WHEP POST sent with the WHIP POST, and one sent the moment the WHIP
    POST's 201 arrives. The second is always answered; the first is answered or refused as
    the room was not live yet (404), and never admitted and then turned away."""
    refused = 0
    async with aiohttp.ClientSession() as http:
        for index in range(ROUNDS):
            room = f"race-{index}"
            whip = f"{server.url}/api/whip/publish/{room}"
            whep = f"{server.url}/api/whep/play/{room}"
            (publisher, publisher_sdp), (early, early_sdp), (late, late_sdp) = (
                await offer(publisher=True),
                await offer(publisher=False),
                await offer(publisher=False),
            )
            try:
                published, joined_early = await asyncio.gather(
                    post(http, whip, publisher_sdp), post(http, whep, early_sdp)
                )
                assert published[0] == 201, published
                joined_late = await post(http, whep, late_sdp)
                assert joined_late[0] == 201, (index, joined_late)
                assert joined_early[0] in (201, 404), (index, joined_early)
                if joined_early[0] == 404:
                    refused += 1
                    assert json.loads(joined_early[1]) == {"error": "no active publisher in room"}
                for status, _, location in (joined_early, joined_late):
                    if status == 201:  # routed on both tracks of the room
                        session = location.rsplit("/", 1)[1]

                        def routed(session: str = session) -> bool:
                            return routed_on(server, session) == 2

                        await eventually(routed, what=f"the viewer routed in round {index}")
                assert await delete(server.url, published[2]) == 200
            finally:
                await close_all(publisher, early, late)
    samples = metric_samples(server.get("/metrics")[1].decode())
    dropped = (
        "golive_sessions_ended_total",
        (("reason", "negotiation_failed"), ("role", "subscriber")),
    )
    assert samples.get(dropped, 0) == 0
    refusals = ("golive_join_refusals_total", (("reason", "no_publisher"), ("role", "subscriber")))
    assert samples.get(refusals, 0) == refused


def routed_on(server: ServerThread, session: str) -> int:
    def count() -> int:
        registry = server.rooms.registry
        return sum(
            1
            for key in registry.tracks()
            if (table := registry.routes(key)) is not None and session in table.sessions()
        )

    return server.call(count)
