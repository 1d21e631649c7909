"""RTP forwarded from a real aiortc publisher to real aiortc viewers, through golive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pykka
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket, is_rtcp

from golive.actors.messages import RoomName, SessionId
from golive.http.keys import MEDIA as MEDIA_KEY
from golive.media.forwarding import KEYFRAME_REQUEST_INTERVAL, PublishedTrack
from golive.media.hooks import ForwardingReceiver
from tests.media.clients import Viewer, close_all, delete, publish, view
from tests.support import ServerThread, eventually, metric_samples, wait_until

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
            for peer in server.call(server.app[MEDIA_KEY].sessions)
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
        assert samples[("golive_keyframe_requests_total", ())] >= 1

        server_pcs = server.call(lambda: [peer.pc for peer in server.app[MEDIA_KEY].sessions()])
        assert len(server_pcs) == 5

        # A viewer leaving (DELETE) affects nobody else.
        assert await delete(server.url, viewers[0].answer.location) == 200
        _, body = server.get("/api/rooms")
        assert b'"subscribers": 3' in body

        # The publisher leaving ends the room and every viewer's session.
        assert await delete(server.url, answer.location) == 200
        _, body = server.get("/api/rooms")
        assert body == b"[]"
        assert server.call(lambda: len(server.rooms.registry)) == 0

        # Nothing leaks: every peer connection closed with its sockets, no actor but the
        # directory, no session anywhere.
        server.run(server.app[MEDIA_KEY].shutdown())
        assert server.call(server.app[MEDIA_KEY].sessions) == []
        assert all(pc.connectionState == "closed" for pc in server_pcs)
        for pc in server_pcs:
            for transceiver in pc.getTransceivers():
                connection = transceiver.receiver.transport.transport._connection
                assert all(
                    p.transport is None or p.transport.is_closing() for p in connection._protocols
                )
        wait_until(
            lambda: (
                [a.actor_class.__name__ for a in pykka.ActorRegistry.get_all()]
                == ["DirectoryActor"]
            ),
            what="every room, fanout and subscriber actor to stop",
        )
    finally:
        await close_all(publisher, *viewers)


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
        await close_all(first, second, nobody)


async def test_lost_packets_are_repaired_by_retransmission(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Packets lost on the way to one viewer come back from the server's packet cache, on the
    negotiated RTX stream, when the viewer NACKs them; that viewer decodes without a single
    decode error."""
    publisher = await publish(server.url, "lossy", audio=False)
    viewer = await view(server.url, "lossy")
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    ice = receiver.transport.transport
    network = ice._recv
    forward = receiver._handle_rtp_packet
    seen: set[int] = set()
    dropped: set[int] = set()
    repaired: set[int] = set()
    all_repaired = asyncio.Event()

    # The server announced its video SSRC and the RTX SSRC that repairs it (RFC 4588).
    fid = re.search(r"a=ssrc-group:FID (\d+) (\d+)", viewer.answer.sdp)
    assert fid is not None, viewer.answer.sdp
    media_ssrc, rtx_ssrc = int(fid.group(1)), int(fid.group(2))

    async def lossy_network() -> bytes:
        """The viewer's network drops five video packets (before SRTP, as a real one would)."""
        while True:
            data: bytes = await network()
            if not 127 < data[0] < 192 or is_rtcp(data):
                return data
            if int.from_bytes(data[8:12], "big") != media_ssrc:
                return data
            seq = int.from_bytes(data[2:4], "big")
            if len(seen) >= 30 and len(dropped) < 5 and seq not in seen and seq not in dropped:
                dropped.add(seq)
                continue
            seen.add(seq)
            return data

    async def watch(packet, arrival_time_ms: int) -> None:  # type: ignore[no-untyped-def]
        if packet.ssrc == rtx_ssrc:  # a retransmission: the original number leads the payload
            original = int.from_bytes(packet.payload[:2], "big")
            if original in dropped:
                repaired.add(original)
                if repaired == dropped and len(dropped) == 5:
                    all_repaired.set()
        await forward(packet, arrival_time_ms)

    ice._recv = lossy_network
    receiver._handle_rtp_packet = watch  # type: ignore[method-assign]
    try:
        assert viewer.answer.status == 201
        with caplog.at_level("WARNING", logger="aiortc.rtcrtpreceiver"):
            await asyncio.wait_for(all_repaired.wait(), DEADLINE)
            await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        assert len(dropped) == 5
        assert repaired == dropped
        samples = metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())
        assert samples[("golive_rtp_packets_retransmitted_total", ())] >= 5
        assert samples[("golive_rtcp_nacks_received_total", ())] >= 1
        assert not [r for r in caplog.records if "failed to decode" in r.getMessage()]
    finally:
        await close_all(publisher, viewer)


async def test_transport_ends_end_sessions(server: ServerThread) -> None:
    """A viewer that just goes away (DTLS close, no DELETE) ends its own session only; a
    publisher that goes away ends the room."""
    publisher = await publish(server.url, "gone", audio=False)
    staying = await view(server.url, "gone")
    leaving = await view(server.url, "gone")
    try:
        await asyncio.wait_for(
            asyncio.gather(staying.got_video.wait(), leaving.got_video.wait()), DEADLINE
        )
        await leaving.pc.close()
        await wait_for_rooms(server, b'"subscribers": 1')
        assert staying.pc.connectionState == "connected"
        _, body = await asyncio.to_thread(server.get, "/metrics")
        ended = metric_samples(body.decode())
        key = ("golive_sessions_ended_total", (("reason", "dtls_closed"), ("role", "subscriber")))
        assert ended.get(key) == 1
        await publisher.pc.close()
        await wait_for_rooms(server, b"[]")
        await asyncio.wait_for(_closed(staying), DEADLINE)
    finally:
        await close_all(publisher, staying, leaving)


async def _closed(viewer: Viewer) -> None:
    ended = asyncio.Event()
    viewer.pc.on("connectionstatechange", ended.set)
    while viewer.pc.connectionState not in ("closed", "failed"):
        await ended.wait()
        ended.clear()


async def wait_for_rooms(
    server: ServerThread, expected: bytes, *, deadline: float = DEADLINE
) -> None:
    """Poll /api/rooms (off the loop) until it shows ``expected``, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline
    while True:
        _, body = await asyncio.to_thread(server.get, "/api/rooms")
        if expected in body:
            return
        assert loop.time() < deadline, body
        await asyncio.sleep(0.05)


async def test_sender_reports_carry_the_publishers_clock_in_each_viewers_numbering(
    server: ServerThread,
) -> None:
    """Each viewer gets SRs whose NTP time is the publisher's and whose RTP time is the
    publisher's translated by that viewer's own timestamp offset (so lip sync survives)."""
    publisher = await publish(server.url, "clock")
    viewer = await view(server.url, "clock")
    reports: list[RtcpSrPacket] = []
    got_reports = asyncio.Event()
    transceivers = viewer.pc.getTransceivers()
    for transceiver in transceivers:
        handle = transceiver.receiver._handle_rtcp_packet

        async def watch(packet: object, handle: object = handle) -> None:
            if isinstance(packet, RtcpSrPacket):
                reports.append(packet)
                if len({r.ssrc for r in reports}) == 2:
                    got_reports.set()
            await handle(packet)  # type: ignore[operator]

        transceiver.receiver._handle_rtcp_packet = watch  # type: ignore[method-assign]
    published: list[RtcpSrPacket] = []

    def taps() -> list[PublishedTrack]:
        return server.app[MEDIA_KEY].taps(RoomName("clock"))

    def record_publisher_reports() -> None:  # on the server's loop
        for tap in taps():
            forward = tap.on_sender_report

            def record(
                report: RtcpSrPacket, forward: Callable[[RtcpSrPacket], None] = forward
            ) -> None:
                published.append(report)
                forward(report)

            tap._receiver.on_sender_report = record

    server.call(record_publisher_reports)
    try:
        await asyncio.wait_for(got_reports.wait(), DEADLINE)
        offsets = {
            viewer.output.ssrc: viewer.output.ts_offset
            for tap in server.call(taps)
            for viewer in tap._viewers.values()
        }
        by_ntp = {r.sender_info.ntp_timestamp: r.sender_info.rtp_timestamp for r in published}
        for report in reports:
            assert report.ssrc in offsets
            original_rtp = by_ntp[report.sender_info.ntp_timestamp]
            assert (
                report.sender_info.rtp_timestamp
                == (original_rtp + offsets[report.ssrc]) & 0xFFFFFFFF
            )
            assert report.sender_info.packet_count > 0
    finally:
        await close_all(publisher, viewer)


async def test_a_viewer_that_cannot_keep_up_loses_packets_and_nobody_else_does(
    server: ServerThread,
) -> None:
    """One viewer's path is slow: the namespace's loopback carries what goes to that viewer's
    port at 100 bit/s (an HTB class; nothing else is slowed), and the server's socket towards
    it has the kernel's smallest send buffer, so it fills. That viewer's packets are dropped
    and counted, never queued, and the other viewer keeps receiving every frame."""
    publisher = await publish(server.url, "slow", audio=False)
    fast = await view(server.url, "slow")
    slow = await view(server.url, "slow")
    try:
        await asyncio.wait_for(
            asyncio.gather(fast.got_video.wait(), slow.got_video.wait()), DEADLINE
        )
        [port] = {
            pair.protocol.transport.get_extra_info("sockname")[1]
            for transceiver in slow.pc.getTransceivers()
            if (pair := transceiver.receiver.transport.transport._connection._nominated.get(1))
        }
        slow_session = SessionId(slow.answer.location.rsplit("/", 1)[1])

        def shrink_send_buffer() -> None:  # on the server's loop: a real socket option
            peer = server.app[MEDIA_KEY].session(slow_session)
            assert peer is not None
            for transceiver in peer.pc.getTransceivers():
                pair = transceiver.sender.transport.transport._connection._nominated[1]
                sock = pair.protocol.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)

        async def dropped() -> bool:
            metrics = (await asyncio.to_thread(server.get, "/metrics"))[1].decode()
            key = ("golive_rtp_packets_dropped_total", (("reason", "backpressure"),))
            return metric_samples(metrics).get(key, 0) > 0

        with throttled_port(port):
            server.call(shrink_send_buffer)
            await eventually(dropped, what="a dropped packet", seconds=DEADLINE)
            before = fast.frames["video"], slow.frames["video"]
            await eventually(
                lambda: fast.frames["video"] >= before[0] + 60,
                what="the fast viewer's next 60 frames",
                seconds=DEADLINE,
            )
            assert slow.frames["video"] <= before[1] + 1
    finally:
        await close_all(publisher, fast, slow)


@contextlib.contextmanager
def throttled_port(port: int) -> Iterator[None]:
    """Loopback traffic to ``port`` at 100 bit/s while the block runs (HTB, in the test's own
    network namespace: tests run inside one)."""
    assert os.environ.get("GOLIVE_IN_NETNS") == "1", "tc would change the machine's loopback"
    match = f"match ip dport {port} 0xffff"
    commands = [
        "qdisc add dev lo root handle 1: htb default 1",
        "class add dev lo parent 1: classid 1:1 htb rate 10gbit",
        "class add dev lo parent 1: classid 1:2 htb rate 100bit",
        f"filter add dev lo parent 1: protocol ip prio 1 u32 {match} flowid 1:2",
    ]
    try:
        for command in commands:
            subprocess.run(["tc", *command.split()], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)


async def test_losses_from_the_publisher_are_nacked_and_reports_go_back(
    server: ServerThread,
) -> None:
    """The publisher's network drops three video packets: the server NACKs them, the
    publisher resends them, and they reach the viewer. The publisher also gets receiver
    reports about its stream."""
    publisher = await publish(server.url, "upstream", audio=False)
    viewer = await view(server.url, "upstream")
    sender = publisher.pc.getTransceivers()[0].sender
    ice = sender.transport.transport
    network = ice._send
    sent: set[int] = set()
    dropped: set[int] = set()

    async def lossy_network(data: bytes) -> None:
        """Drop three of the publisher's video packets on the wire (after SRTP)."""
        is_media = 127 < data[0] < 192 and not is_rtcp(data)
        if is_media and int.from_bytes(data[8:12], "big") == sender._ssrc:
            seq = int.from_bytes(data[2:4], "big")
            if len(sent) >= 30 and len(dropped) < 3 and seq not in sent:
                dropped.add(seq)
                return
            sent.add(seq)
        await network(data)

    ice._send = lossy_network
    arrived: set[int] = set()

    def watch_server_side() -> None:  # on the server's loop
        [tap] = server.app[MEDIA_KEY].taps(RoomName("upstream"))
        forward = tap.on_packet

        def record(packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
            arrived.add(packet.sequence_number)
            forward(packet, codec)

        tap._receiver.sink = record

    server.call(watch_server_side)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while len(dropped) < 3 or not dropped <= server.call(lambda: set(arrived)):
            assert loop.time() < deadline, (dropped, len(arrived))
            await asyncio.sleep(0.05)
        while not [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]:
            assert loop.time() < deadline, "the publisher got no receiver report"
            await asyncio.sleep(0.1)
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
    finally:
        await close_all(publisher, viewer)


@pytest.mark.timeout(120)
async def test_a_viewer_that_vanishes_loses_consent_and_its_session(server: ServerThread) -> None:
    """A viewer whose sockets just disappear (no DTLS close, no DELETE) stops answering ICE
    consent checks (RFC 7675); about 30 s later its session ends as ice_failed, and only it."""
    publisher = await publish(server.url, "vanish", audio=False)
    staying = await view(server.url, "vanish")
    vanishing = await view(server.url, "vanish")
    try:
        await asyncio.wait_for(
            asyncio.gather(staying.got_video.wait(), vanishing.got_video.wait()), DEADLINE
        )
        for transceiver in vanishing.pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            for protocol in connection._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
        await wait_for_rooms(server, b'"subscribers": 1', deadline=90.0)
        _, body = await asyncio.to_thread(server.get, "/metrics")
        ended = metric_samples(body.decode())
        key = ("golive_sessions_ended_total", (("reason", "ice_failed"), ("role", "subscriber")))
        assert ended.get(key) == 1
        assert staying.pc.connectionState == "connected"
    finally:
        await close_all(publisher, staying, vanishing)


async def test_a_viewers_picture_loss_asks_the_publisher_for_a_keyframe(
    server: ServerThread,
) -> None:
    """A viewer's PLI becomes one keyframe request to the publisher (coalesced), and the
    publisher's next keyframe reaches the viewer."""
    publisher = await publish(server.url, "pli", audio=False)
    viewer = await view(server.url, "pli")
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        publisher_sender = publisher.pc.getTransceivers()[0].sender
        keyframes_asked = asyncio.Event()
        send_keyframe = publisher_sender._send_keyframe

        def on_keyframe_request() -> None:  # the publisher (aiortc) was asked for a keyframe
            keyframes_asked.set()
            send_keyframe()

        def requests() -> int:
            [tap] = server.app[MEDIA_KEY].taps(RoomName("pli"))
            return tap.keyframe_requests

        def quiet() -> bool:  # no request pending, none in the last interval
            [tap] = server.app[MEDIA_KEY].taps(RoomName("pli"))
            since = tap._loop.time() - tap._last_request
            return tap._deferred is None and since > KEYFRAME_REQUEST_INTERVAL

        await asyncio.to_thread(wait_until, lambda: server.call(quiet), what="a quiet track")
        before = server.call(requests)
        publisher_sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        fid = re.search(r"a=ssrc-group:FID (\d+)", viewer.answer.sdp)
        assert fid is not None
        for _ in range(3):  # three PLIs at once: one request upstream
            await receiver._send_rtcp_pli(int(fid.group(1)))
        await asyncio.wait_for(keyframes_asked.wait(), DEADLINE)
        assert server.call(requests) == before + 1
    finally:
        await close_all(publisher, viewer)
