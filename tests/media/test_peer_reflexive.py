"""Offers without candidates that signal end-of-candidates (review bug 8), with real aiortc
clients against a real server.

A client behind a NAT, or one that sends no candidate at all (``a=end-of-candidates`` and no
``a=candidate``), is reached through the peer-reflexive candidate its checks reveal (RFC 8445
7.3.1.3, RFC 8863). aioice failed such a session at once ("no candidate pairs"), and the
publisher's room stayed listed, dead, until the connect deadline: viewers got 201 and no
media. Here the publisher and the viewer connect and media flows; a client whose check never
comes is ended by the connect deadline (or, later, by ICE's own patience), and its room with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from golive.media import hooks
from tests.media.clients import PatternTrack, Viewer, close_all, publish, view
from tests.support import ServerThread, eventually, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

DEADLINE = 30.0
ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}


def without_candidates(sdp: str) -> str:
    """The offer as a client with no usable candidate sends it: end-of-candidates, none."""
    lines = [line for line in sdp.split("\r\n") if not line.startswith("a=candidate:")]
    assert "a=end-of-candidates" in lines
    return "\r\n".join(lines)


async def post_bare_offer(server: ServerThread, path: str, pc: RTCPeerConnection) -> str:
    """POST ``pc``'s offer stripped of its candidates; apply the answer (its candidates kept:
    the client checks them, and the server learns the client's address from those checks).
    Returns the session's URL path."""
    await pc.setLocalDescription(await pc.createOffer())
    offer = without_candidates(pc.localDescription.sdp)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + path, data=offer, headers={"Content-Type": "application/sdp"}
        ) as response,
    ):
        assert response.status == 201, await response.text()
        answer = await response.text()
        location = response.headers["Location"]
    assert "a=candidate:" in answer, "the answer has lost the server's candidates"
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return location


def rooms(server: ServerThread) -> list[dict[str, Any]]:
    _, body = server.get("/api/rooms")
    listing: list[dict[str, Any]] = json.loads(body)
    return listing


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with running_server(ENV) as running:
        yield running


async def test_a_publisher_without_candidates_connects_through_its_checks(
    server: ServerThread,
) -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    viewer: Viewer | None = None
    try:
        with structlog.testing.capture_logs() as logs:
            await post_bare_offer(server, "/api/whip/publish/bare", pc)
            await eventually(
                lambda: pc.connectionState == "connected",
                what="the publisher to connect",
                seconds=DEADLINE,
            )
            viewer = await view(server.url, "bare")
            assert viewer.answer.status == 201, viewer.answer.body
            await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        assert pc.connectionState == "connected"
        assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
        assert rooms(server)[0]["subscribers"] == 1
    finally:
        await close_all(pc, *([viewer] if viewer else []))


async def test_a_viewer_without_candidates_connects_through_its_checks(
    server: ServerThread,
) -> None:
    publisher = await publish(server.url, "bareviewer", audio=False)
    assert publisher.answer.status == 201, publisher.answer.body
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    frames: list[int] = []
    got_video = asyncio.Event()

    async def consume(track: MediaStreamTrack) -> None:
        while len(frames) < 5:
            await track.recv()
            frames.append(1)
        got_video.set()

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    try:
        with structlog.testing.capture_logs() as logs:
            await post_bare_offer(server, "/api/whep/play/bareviewer", pc)
            await asyncio.wait_for(got_video.wait(), DEADLINE)
        assert pc.connectionState == "connected"
        assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
        assert [e["event"] for e in logs if e["event"] == "subscriber active"] == [
            "subscriber active"
        ]
    finally:
        for task in tasks:
            task.cancel()
        await close_all(pc, publisher)


async def vanishing_publisher(server: ServerThread, room: str) -> str:
    """A publisher that sends an offer with no candidates, then never checks anything.
    Returns its session id."""
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = without_candidates(pc.localDescription.sdp)
    await pc.close()  # gone before its first check
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/api/whip/publish/{room}",
            data=offer,
            headers={"Content-Type": "application/sdp"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        return response.headers["Location"].rsplit("/", 1)[1]


async def session_end(
    server: ServerThread, logs: list[MutableMapping[str, Any]], session: str
) -> MutableMapping[str, Any]:
    """The log line of ``session``'s end, once the session and its room have ended (the
    listing may change before the loop tells the session's end)."""

    def ended() -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e["event"] == "session ended" and e["session"] == session]

    await eventually(
        lambda: not rooms(server) and bool(ended()),
        what="the session and its room to end",
        seconds=DEADLINE,
    )
    (line,) = ended()
    return line


async def test_without_any_check_the_connect_deadline_ends_the_session_and_its_room() -> None:
    """ICE waits for the client's checks; none ever comes: the session's connect deadline
    ends it as ice_failed, the room goes, and the room is free again. (With a reconnect
    window, PUBLISHER_RECONNECT_SECONDS, the room waits that long first, listed as waiting.)"""
    # (the room ends with its publisher's session: no wait for a reconnect)
    env = {**ENV, "SESSION_CONNECT_TIMEOUT_SECONDS": "2", "PUBLISHER_RECONNECT_SECONDS": "0"}
    with running_server(env) as server, structlog.testing.capture_logs() as logs:
        session = await vanishing_publisher(server, "nocheck")
        assert len(rooms(server)) == 1
        ended = await session_end(server, logs, session)
        story = [(e["event"], e["log_level"]) for e in logs if e.get("session") == session]
        assert ("session not connected in time", "warning") in story
        assert ended["reason"] == "ice_failed"
        assert 2 <= ended["seconds"] < DEADLINE
        assert server.call(lambda: len(server.rooms.registry)) == 0
        publisher = await publish(server.url, "nocheck", audio=False)
        try:
            assert publisher.answer.status == 201
        finally:
            await close_all(publisher)


async def test_without_any_check_ice_gives_up_after_its_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a connect deadline longer than ICE's patience, ICE itself fails the session once
    its patience runs out (here shortened to 2 s): the session ends as ice_failed then."""
    monkeypatch.setattr(hooks, "PATIENCE_SECONDS", 2.0)
    env = {**ENV, "SESSION_CONNECT_TIMEOUT_SECONDS": "120", "PUBLISHER_RECONNECT_SECONDS": "0"}
    with running_server(env) as server, structlog.testing.capture_logs() as logs:
        session = await vanishing_publisher(server, "patience")
        ended = await session_end(server, logs, session)
        events = [e["event"] for e in logs if e.get("session") == session]
        assert "session not connected in time" not in events
        assert ended["reason"] == "ice_failed"
        assert 2 <= ended["seconds"] < DEADLINE
