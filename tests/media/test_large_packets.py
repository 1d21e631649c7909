"""Large RTP packets through a real session (issue 14, item 2).

GStreamer's payloaders send RTP packets of up to 1400 bytes, other encoders up to the UDP
payload they negotiated (1500). pylibsrtp's ``protect`` refuses anything longer than 1356
bytes: when golive's forwarding protected with it, one such packet from a publisher raised
out of its DTLS receive loop and ended the room (``dtls_closed``). Here a real aiortc
publisher sends 1400- and 1480-byte packets over WHIP (protected with libsrtp directly, as
a browser or GStreamer would: aiortc's own sender is bound by the same 1356 bytes), and:

- every packet reaches every real WHEP viewer intact (payload and marker as sent, in the
  viewer's numbering), and a retransmission of one (RTX, 1482 bytes) too;
- the recording holds every frame, byte for byte;
- the publisher's session and room stay up;
- sending to one viewer failing (its address made one its socket cannot send to: no real
  network fault can be had on loopback) is counted and logged for that viewer only, and
  ends no session: the other viewers get every packet.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
import structlog.testing
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.rtp import RtpPacket
from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

from golive.actors.messages import SessionId
from golive.http.keys import MEDIA
from golive.media.hooks import SRTP_PROTECT, ForwardingSender, srtp_session
from tests.media.clients import Viewer, close_all, delete, post_offer, view
from tests.support import ServerThread, eventually, labelled, metric_samples, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

DEADLINE = 30.0
SIZES = (1400, 1480)  # whole RTP packets: GStreamer's default MTU, and near a 1500-byte payload
BURST = 12  # packets of each size
VIEWERS = 3
RTP_HEADER = 12
VP8_DESCRIPTOR = b"\x10"  # X=0, N=0, S=1, PID=0: one byte, then the VP8 frame


class Silent(MediaStreamTrack):
    """A video track that never yields a frame: the publisher's aiortc encoder sends nothing,
    the test sends every packet itself."""

    kind = "video"

    async def recv(self) -> Any:
        await asyncio.Future()  # until the sender stops (cancelled)


def vp8_frame(size: int, index: int, *, keyframe: bool) -> bytes:
    """A VP8 payload (descriptor and frame) making an RTP packet of ``size`` bytes; a
    keyframe starts with a real frame tag and the 320x240 start code (RFC 6386 9.1)."""
    length = size - RTP_HEADER - len(VP8_DESCRIPTOR)
    if keyframe:
        head = bytes([0x50, 0x42, 0x00]) + b"\x9d\x01\x2a" + struct.pack("<HH", 320, 240)
    else:
        head = bytes([0x51, 0x42, 0x00])  # frame tag, bit 0 set: an interframe
    marker = struct.pack("!HH", size, index)  # which packet this is, readable at the far end
    filler = bytes((index * 7 + n) & 0xFF for n in range(length - len(head) - len(marker)))
    return VP8_DESCRIPTOR + head + marker + filler


def protect(session: pylibsrtp.Session, packet: bytes) -> bytes:
    """SRTP-protect ``packet`` with libsrtp (pylibsrtp's ``protect`` stops at 1356 bytes:
    its 1500-byte buffer less the trailer it reserves)."""
    buffer = ffi.new("char[]", len(packet) + pylibsrtp.SRTP_MAX_TRAILER_LEN)
    ffi.memmove(buffer, packet, len(packet))
    length = ffi.new("int *", len(packet))
    assert lib.srtp_protect(session._srtp[0], buffer, length) == 0
    return bytes(ffi.buffer(buffer, length[0]))


@dataclass
class Publisher:
    pc: RTCPeerConnection
    location: str
    ssrc: int
    payload_type: int
    seq: int = 1000
    timestamp: int = 90_000
    sent: list[bytes] = field(default_factory=list)  # the payloads, in order

    async def send(self, payload: bytes) -> None:
        header = struct.pack(
            "!BBHII", 0x80, 0x80 | self.payload_type, self.seq, self.timestamp, self.ssrc
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 3000) & 0xFFFFFFFF  # one frame a packet (marker)
        dtls = self.pc.getTransceivers()[0].sender.transport
        await dtls.transport._send(protect(dtls._tx_srtp, header + payload))
        self.sent.append(payload)


async def publisher(server: ServerThread, room: str) -> Publisher:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(Silent(), direction="sendonly")
    answer = await post_offer(server.url, f"/api/whip/publish/{room}", pc)
    assert answer.status == 201, answer.body
    video = re.search(r"^m=video \d+ \S+ (\d+)", answer.sdp, re.MULTILINE)
    assert video is not None
    await eventually(
        lambda: pc.connectionState == "connected", what="the publisher to connect", seconds=DEADLINE
    )
    return Publisher(pc, answer.location, transceiver.sender._ssrc, int(video[1]))


@dataclass
class Received:
    """What one viewer's video receiver got (before aiortc's decoder, which is not fed: the
    frames are not real VP8)."""

    viewer: Viewer
    packets: list[RtpPacket] = field(default_factory=list)

    @property
    def session(self) -> SessionId:
        return SessionId(self.viewer.answer.location.rsplit("/", 1)[1])

    def media(self, payload_type: int) -> list[RtpPacket]:
        return [p for p in self.packets if p.payload_type == payload_type]


def receiving(viewer: Viewer) -> Received:
    received = Received(viewer)
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")

    async def keep(packet: RtpPacket, arrival_time_ms: int) -> None:  # noqa: ARG001  aiortc's signature
        received.packets.append(packet)

    receiver._handle_rtp_packet = keep  # type: ignore[method-assign]
    return received


def negotiated(viewer: Viewer) -> tuple[int, int]:
    """The viewer's video payload type and its RTX payload type, from the server's answer."""
    video = re.search(r"^m=video \d+ \S+ (\d+)", viewer.answer.sdp, re.MULTILINE)
    assert video is not None
    rtx = re.search(rf"^a=fmtp:(\d+) apt={video[1]}\r?$", viewer.answer.sdp, re.MULTILINE)
    assert rtx is not None, "the answer has no RTX for the video codec"
    return int(video[1]), int(rtx[1])


def nack(sender_ssrc: int, media_ssrc: int, seq: int) -> bytes:
    """A generic NACK (RFC 4585 6.2.1) for one packet."""
    body = struct.pack("!IIHH", sender_ssrc, media_ssrc, seq, 0)
    return struct.pack("!BBH", 0x81, 205, len(body) // 4) + body


def break_sending(server: ServerThread, session: SessionId) -> None:
    """From now on every packet to ``session`` fails to send: its video output is bound to an
    address its IPv4 socket cannot send to (as test_fanout's failing viewer)."""

    def rebind() -> None:  # on the server's loop
        peer = server.app[MEDIA].session(session)
        assert peer is not None
        sender = next(t.sender for t in peer.pc.getTransceivers() if t.kind == "video")
        assert isinstance(sender, ForwardingSender)
        assert sender.output is not None
        connected = sender._connected()
        assert connected is not None
        srtp, _, udp = connected
        fd = udp.get_extra_info("socket").fileno()
        sender.output.bind(fd, ("::1", 9), srtp_session(srtp), SRTP_PROTECT, srtp)

    server.call(rebind)


def ivf_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b"DKIF"
    frames, at = [], struct.unpack_from("<H", data, 6)[0]
    while at < len(data):
        (size,) = struct.unpack_from("<I", data, at)
        frames.append(data[at + 12 : at + 12 + size])
        at += 12 + size
    return frames


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(server: ServerThread) -> Samples:
    return metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())


def alarms(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["log_level"] in ("warning", "error", "critical")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(tmp_path),
    }
    with running_server(env) as running:
        yield running


async def test_large_packets_reach_every_viewer_intact_and_a_failing_viewer_ends_nothing(
    server: ServerThread, tmp_path: Path
) -> None:
    source = await publisher(server, "large")
    viewers = [await view(server.url, "large") for _ in range(VIEWERS)]
    try:
        for viewer in viewers:
            assert viewer.answer.status == 201, viewer.answer.body
        received = [receiving(viewer) for viewer in viewers]
        payload_types = [negotiated(viewer) for viewer in viewers]

        # Keyframes (1400 bytes) until every viewer has started on one.
        async def all_started() -> bool:
            await source.send(vp8_frame(1400, len(source.sent), keyframe=True))
            return all(r.packets for r in received)

        await eventually(all_started, what="every viewer to start", seconds=DEADLINE)
        failing, *healthy = received
        before = await metrics(server)
        start = len(source.sent)
        with structlog.testing.capture_logs() as logs:
            break_sending(server, failing.session)
            for _ in range(BURST):
                for size in SIZES:
                    await source.send(vp8_frame(size, len(source.sent), keyframe=False))
            burst = source.sent[start:]
            await eventually(
                lambda: all(r.packets[-1].payload == burst[-1] for r in healthy),
                what="the healthy viewers to get the burst",
                seconds=DEADLINE,
            )

            # Intact, in order, numbered on from what each viewer had.
            for r, (video_pt, _) in zip(healthy, payload_types[1:], strict=True):
                media = r.media(video_pt)
                assert [p.payload for p in media[-len(burst) :]] == burst
                assert {len(bytes(p.serialize())) for p in media[-len(burst) :]} == set(SIZES)
                seqs = [p.sequence_number for p in media]
                assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]
                assert all(p.marker for p in media)

            # A retransmission of a 1480-byte packet: 1482 bytes on the RTX stream.
            asker, (video_pt, rtx_pt) = healthy[0], payload_types[1]
            wanted = asker.media(video_pt)[-1]
            assert len(bytes(wanted.serialize())) == 1480
            dtls = asker.viewer.pc.getTransceivers()[0].receiver.transport
            await dtls._send_rtp(nack(0x1234, wanted.ssrc, wanted.sequence_number))
            await eventually(
                lambda: bool(asker.media(rtx_pt)), what="the retransmission", seconds=DEADLINE
            )
            (resent,) = asker.media(rtx_pt)
            assert resent.payload == struct.pack("!H", wanted.sequence_number) + wanted.payload
            assert len(bytes(resent.serialize())) == 1482

            # The publisher and every session are still up: one viewer's failures are its own.
            listing = json.loads((await asyncio.to_thread(server.get, "/api/rooms"))[1])
            assert [(r["name"], r["hasPublisher"], r["subscribers"]) for r in listing] == [
                ("large", True, VIEWERS)
            ]
            assert source.pc.connectionState == "connected"
            assert all(v.pc.connectionState == "connected" for v in viewers)
            assert not [p for p in failing.packets if p.payload in burst]  # none reached it
        after = await metrics(server)

        def delta(reason: str) -> float:
            counted = labelled(after, "golive_rtp_packets_dropped_total", "reason").get(reason, 0)
            return counted - labelled(before, "golive_rtp_packets_dropped_total", "reason").get(
                reason, 0
            )

        assert delta("send_failed") >= len(burst)
        assert delta("too_large") == 0
        assert not labelled(after, "golive_media_receive_errors_total", "error")
        warnings = alarms(logs)
        assert [(e["event"], e["session"]) for e in warnings] == [
            ("sending to a viewer failed", failing.session)
        ]
        assert warnings[0]["message"]  # the socket's error, in words

        # The recording, once the publisher leaves: every frame from the first keyframe it
        # saw, byte for byte (the VP8 payload descriptor stripped).
        with structlog.testing.capture_logs() as ending:
            assert await delete(server.url, source.location) == 200
            await eventually(
                lambda: any(e["event"] == "recording finished" for e in ending),
                what="the recording to be finished",
                seconds=DEADLINE,
            )
        (recording,) = await asyncio.to_thread(lambda: list(tmp_path.glob("large_*.ivf")))
        frames = await asyncio.to_thread(ivf_frames, recording)
        frames_sent = [payload[len(VP8_DESCRIPTOR) :] for payload in source.sent]
        assert len(frames) >= len(burst)
        assert frames == frames_sent[len(frames_sent) - len(frames) :]
    finally:
        await close_all(source.pc, *viewers)
