"""Publisher reconnect: a room whose publisher vanishes keeps its viewers, and a new publisher
takes it over; each viewer sees one continuous stream (real aiortc peers)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtpPacket
from av import VideoFrame

from golive.media.rtp import keyframe_start
from tests.media.clients import (
    PatternTrack,
    Publisher,
    Viewer,
    close_all,
    delete,
    post_offer,
    publish,
    view,
)
from tests.support import ServerThread, eventually, metric_samples, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DEADLINE = 30.0
ROOM = "show"


def reconnecting_server(seconds: float) -> Iterator[ServerThread]:
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        "PUBLISHER_RECONNECT_SECONDS": str(seconds),
    }
    with running_server(env) as running:
        yield running


@pytest.fixture
def server() -> Iterator[ServerThread]:
    yield from reconnecting_server(60)


@pytest.fixture
def short_wait_server() -> Iterator[ServerThread]:
    yield from reconnecting_server(1)


@pytest.fixture
def no_wait_server() -> Iterator[ServerThread]:
    yield from reconnecting_server(0)


class PausableTrack(PatternTrack):
    """A pattern that stops (the encoder sends nothing) while ``running`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.running = asyncio.Event()
        self.running.set()

    async def recv(self) -> VideoFrame:
        await self.running.wait()
        return await super().recv()


@dataclass(frozen=True)
class Seen:
    ssrc: int
    seq: int
    timestamp: int
    keyframe: bool


def watch_video(viewer: Viewer, codec: str = "video/VP8") -> list[Seen]:
    """Every primary video RTP packet the viewer receives, in arrival order (RTX excluded)."""
    seen: list[Seen] = []
    receiver = viewer.pc.getTransceivers()[0].receiver
    original = receiver._handle_rtp_packet

    async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.payload_type in receiver._RTCRtpReceiver__codecs:  # type: ignore[attr-defined]
            codec_name = receiver._RTCRtpReceiver__codecs[packet.payload_type].mimeType  # type: ignore[attr-defined]
            if codec_name.lower() != "video/rtx":
                data = bytes(packet.serialize())
                seen.append(
                    Seen(
                        packet.ssrc,
                        packet.sequence_number,
                        packet.timestamp,
                        keyframe_start(codec, data),
                    )
                )
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = record  # type: ignore[method-assign]
    return seen


async def publish_with(
    base_url: str, *, track: PatternTrack | None = None, h264: bool = False, audio: bool = True
) -> Publisher:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(track or PatternTrack(), direction="sendonly")
    if h264:
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    answer = await post_offer(base_url, f"/api/whip/publish/{ROOM}", pc)
    return Publisher(pc, answer)


def listing(server: ServerThread) -> list[dict[str, object]]:
    status, body = server.get("/api/rooms")
    assert status == 200
    rooms: list[dict[str, object]] = json.loads(body)
    return rooms


def samples(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = server.get("/metrics")
    return metric_samples(body.decode())


def ended(server: ServerThread, role: str, reason: str) -> float:
    key = ("golive_sessions_ended_total", (("reason", reason), ("role", role)))
    return samples(server).get(key, 0.0)


def newer(a: int, b: int, bits: int) -> bool:
    """``a`` comes after ``b`` in a wrapping sequence of ``bits`` bits."""
    half = 1 << (bits - 1)
    return 0 < (a - b) % (1 << bits) < half


def continuous(seen: list[Seen]) -> None:
    """One SSRC; every sequence number the one after the last; timestamps never go back."""
    assert len({s.ssrc for s in seen}) == 1, {s.ssrc for s in seen}
    for before, after in itertools.pairwise(seen):
        assert after.seq == (before.seq + 1) & 0xFFFF, (before, after)
        assert after.timestamp == before.timestamp or newer(after.timestamp, before.timestamp, 32)


async def test_a_vanished_publisher_is_taken_over_and_viewers_see_one_stream(
    server: ServerThread,
) -> None:
    first = await publish(server.url, ROOM)
    assert first.answer.status == 201, first.answer.body
    viewers = [await view(server.url, ROOM) for _ in range(2)]
    second: Publisher | None = None
    try:
        seen = [watch_video(viewer) for viewer in viewers]
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)

        # The publisher vanishes: no DELETE, its peer connection simply goes.
        await first.pc.close()
        await eventually(
            lambda: [(r["waiting"], r["hasPublisher"]) for r in listing(server)] == [(True, False)],
            what="the room to wait for a publisher",
        )
        assert [r["subscribers"] for r in listing(server)] == [2]
        assert all(v.pc.connectionState == "connected" for v in viewers)
        before = [len(s) for s in seen]
        frames_before = [v.frames["video"] for v in viewers]

        # A new publish to the room takes it over at once.
        second = await publish(server.url, ROOM)
        assert second.answer.status == 201, second.answer.body
        await eventually(
            lambda: all(len(s) >= b + 60 for s, b in zip(seen, before, strict=True)),
            what="the viewers to receive the new publisher's video",
        )
        await eventually(
            lambda: all(
                v.frames["video"] >= f + 10 for v, f in zip(viewers, frames_before, strict=True)
            ),
            what="the viewers to decode the new publisher's frames",
        )
        for packets, count in zip(seen, before, strict=True):
            # One stream: the same SSRC, numbering continued; it resumes on a keyframe.
            continuous(packets)
            assert packets[count].keyframe, packets[count]
        rooms = listing(server)
        assert [(r["waiting"], r["hasPublisher"], r["subscribers"]) for r in rooms] == [
            (False, True, 2)
        ]
        assert samples(server)[("golive_publisher_takeovers_total", ())] == 1
        assert ended(server, "subscriber", "publisher_gone") == 0
        # The vanished session is gone; the new one's DELETE still ends the room at once.
        assert await delete(server.url, first.answer.location) == 404
        assert await delete(server.url, second.answer.location) == 200
        assert listing(server) == []
        assert server.call(lambda: len(server.rooms.registry)) == 0
    finally:
        await close_all(first, *viewers, *([second] if second else []))


async def test_a_silent_publisher_is_taken_over_a_live_one_is_not(server: ServerThread) -> None:
    track = PausableTrack()
    first = await publish_with(server.url, track=track, audio=False)
    assert first.answer.status == 201, first.answer.body
    viewer = await view(server.url, ROOM)
    attempts: list[Publisher] = []
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        # Still sending: the room is taken.
        attempts.append(await publish_with(server.url))
        assert attempts[-1].answer.status == 409, attempts[-1].answer.body

        # It goes silent (connected still, its ICE far from timing out): after two seconds
        # a new publisher may take over, as a reconnecting client would keep trying.
        track.running.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while True:
            attempt = await publish_with(server.url)
            attempts.append(attempt)
            if attempt.answer.status == 201:
                break
            assert attempt.answer.status == 409, attempt.answer.body
            assert loop.time() < deadline, "the silent publisher was never replaced"
            await asyncio.sleep(0.25)  # a client's retry interval, not a synchronisation
        frames = viewer.frames["video"]
        await eventually(
            lambda: viewer.frames["video"] >= frames + 10,
            what="the viewer to decode the new publisher's frames",
        )
        assert ended(server, "publisher", "publisher_replaced") == 1
        assert await delete(server.url, first.answer.location) == 404
        assert [r["subscribers"] for r in listing(server)] == [1]
    finally:
        await close_all(first, viewer, *attempts)


@contextlib.asynccontextmanager
async def vanished(server: ServerThread) -> AsyncIterator[tuple[Publisher, Viewer]]:
    """A publisher and a viewer receiving its video; then the publisher vanishes (its peer
    connection closes, no DELETE)."""
    first = await publish(server.url, ROOM)
    viewer = await view(server.url, ROOM)
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        await first.pc.close()
        yield first, viewer
    finally:
        await close_all(first, viewer)


async def test_a_waiting_room_ends_when_no_publisher_comes(short_wait_server: ServerThread) -> None:
    server = short_wait_server
    async with vanished(server):
        await eventually(lambda: listing(server) == [], what="the waiting room to end")
        await eventually(
            lambda: ended(server, "subscriber", "publisher_gone") == 1,
            what="the viewer to end with publisher_gone",
        )
        assert server.call(lambda: len(server.rooms.registry)) == 0


async def test_the_vanished_publishers_delete_still_ends_the_waiting_room(
    server: ServerThread,
) -> None:
    """A page that closes tears its peer connection down and sends its DELETE: whichever the
    server sees first, the room ends."""
    async with vanished(server) as (first, _):
        await eventually(
            lambda: [r["waiting"] for r in listing(server)] == [True], what="the room to wait"
        )
        assert await delete(server.url, first.answer.location) == 200
        assert listing(server) == []
        assert server.call(lambda: len(server.rooms.registry)) == 0
        assert ended(server, "publisher", "publisher_left") == 1


async def test_no_reconnect_window_ends_the_room_at_once(no_wait_server: ServerThread) -> None:
    server = no_wait_server
    async with vanished(server):
        await eventually(lambda: listing(server) == [], what="the room to end")
        # (its sessions close on the loop just after the room is unlisted)
        await eventually(
            lambda: server.call(lambda: len(server.rooms.registry)) == 0,
            what="every session of the room closed",
            seconds=5,
        )
        assert samples(server).get(("golive_publisher_takeovers_total", ()), 0) == 0


async def test_a_new_codec_ends_the_viewers_who_cannot_decode_it(server: ServerThread) -> None:
    first = await publish(server.url, ROOM)
    viewer = await view(server.url, ROOM)
    listener = await view(server.url, ROOM, kinds=("audio",))  # unaffected: audio only
    late: Viewer | None = None
    second: Publisher | None = None
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        await eventually(lambda: listener.frames["audio"] > 0, what="audio to the listener")
        await first.pc.close()
        await eventually(
            lambda: [r["waiting"] for r in listing(server)] == [True],
            what="the room to wait",
        )
        # The new publisher offers H.264 only: the viewer negotiated VP8.
        second = await publish_with(server.url, h264=True)
        assert second.answer.status == 201, second.answer.body
        await eventually(
            lambda: ended(server, "subscriber", "codec_changed") == 1,
            what="the VP8 viewer to end with codec_changed",
        )
        codecs = [t["codec"] for r in listing(server) for t in r["trackList"]]  # type: ignore[attr-defined]
        assert "video/H264" in codecs
        assert [r["subscribers"] for r in listing(server)] == [1]  # the listener stays
        heard = listener.frames["audio"]
        await eventually(
            lambda: listener.frames["audio"] > heard + 10,
            what="the listener to hear the new publisher",
        )
        # A viewer joining now gets the new codec.
        late = await view(server.url, ROOM)
        assert late.answer.status == 201, late.answer.body
        assert "H264" in late.answer.sdp
        await eventually(
            lambda: late is not None and late.frames["video"] >= 5,
            what="a new viewer to decode H.264",
        )
    finally:
        await close_all(
            first, viewer, listener, *([late] if late else []), *([second] if second else [])
        )
