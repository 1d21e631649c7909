"""RTP forwarded from a real aiortc publisher to real aiortc viewers, through golive."""

from __future__ import annotations

import asyncio
import threading

import pytest

from golive.http.keys import MEDIA as MEDIA_KEY
from golive.media.hooks import ForwardingReceiver
from tests.media.clients import close_all, delete, publish, view
from tests.support import ServerThread, metric_samples

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]
DEADLINE = 30.0


async def test_publisher_reaches_every_viewer(server: ServerThread) -> None:
    publisher = await publish(server.url, "live")
    answer = publisher.answer
    assert answer.status == 201, answer.body
    assert answer.sdp.startswith("v=0\r\n")
    assert "a=setup:passive" in answer.sdp
    assert "a=recvonly" in answer.sdp
    assert answer.location.startswith("/api/whip/publish/live/")
    assert answer.etag

    viewers = [await view(server.url, "live") for _ in range(3)]
    try:
        for viewer in viewers:
            assert viewer.answer.status == 201, viewer.answer.body
            assert "a=sendonly" in viewer.answer.sdp
            assert "a=setup:passive" in viewer.answer.sdp
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)
        for viewer in viewers:
            assert viewer.frames["video"] >= 5
            assert viewer.first_video_packet_is_keyframe is True

        # A late joiner starts on a keyframe too (the server asked the publisher for one).
        late = await view(server.url, "live")
        viewers.append(late)
        await asyncio.wait_for(late.got_video.wait(), DEADLINE)
        assert late.first_video_packet_is_keyframe is True

        # The server decodes nothing: its receivers started no decoder thread.
        receivers = [
            t.receiver
            for peer in server.call(lambda: list(server.app[MEDIA_KEY]._sessions.values()))
            for t in peer.pc.getTransceivers()
            if isinstance(t.receiver, ForwardingReceiver)
        ]
        assert receivers
        assert all(getattr(r, "_RTCRtpReceiver__decoder_thread", None) is None for r in receivers)
        # Every decoder thread in this process belongs to a viewer (test client): two each.
        decoders = [t for t in threading.enumerate() if t.name.endswith("-decoder")]
        assert len(decoders) == 2 * len(viewers)

        _, body = server.get("/metrics")
        samples = metric_samples(body.decode())
        assert samples[("live_rtp_packets_total", (("room", "live"),))] > 0
        assert samples[("live_rtp_bytes_total", (("room", "live"),))] > 0
        assert samples[("live_subscribers", (("room", "live"),))] == 4

        # A viewer leaving (DELETE) affects nobody else.
        assert await delete(server.url, viewers[0].answer.location) == 200
        _, body = server.get("/api/rooms")
        assert b'"subscribers": 3' in body

        # The publisher leaving ends the room and every viewer's session.
        assert await delete(server.url, answer.location) == 200
        _, body = server.get("/api/rooms")
        assert body == b"[]"
        assert server.call(lambda: len(server.rooms.registry)) == 0
    finally:
        await close_all(publisher.pc, *(v.pc for v in viewers))
        for viewer in viewers:
            for task in viewer.tasks:
                task.cancel()


async def test_second_publisher_and_missing_room(server: ServerThread) -> None:
    first = await publish(server.url, "taken")
    second = await publish(server.url, "taken")
    nobody = await view(server.url, "empty")
    try:
        assert first.answer.status == 201
        assert second.answer.status == 409
        assert second.answer.body == b'{"error": "publisher already exists in this room"}'
        assert nobody.answer.status == 404
        assert nobody.answer.body == b'{"error": "no active publisher in room"}'
    finally:
        await close_all(first.pc, second.pc, nobody.pc)
