"""The packet path without peers: a :class:`PublishedTrack` and its C fan-out, sending real
SRTP on real loopback sockets, each viewer's packets read back and decrypted with the
viewer's key.

What is checked: a video viewer starts on a keyframe (and the fanout is told, once); every
viewer's numbering is continuous across a publisher restart; a closed or failing viewer is
skipped and every other viewer still gets every packet; the recorder is told each packet
once, however many viewers there are; packets up to 1500 bytes and more are forwarded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pykka
import pylibsrtp
import pytest
import pytest_asyncio
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from golive.actors.base import GoliveActor
from golive.actors.messages import (
    KeyframeDelivered,
    MediaKind,
    RecordPacket,
    RoomName,
    Route,
    RoutePhase,
    RoutingTable,
    SessionId,
    TrackId,
    TrackInfo,
    TrackKey,
)
from golive.media._fanout import Fanout, Output
from golive.media.forwarding import PublishedTrack
from golive.media.hooks import SRTP_PROTECT, Delivery, PacketSink, srtp_session
from golive.metrics import create_metrics
from golive.sessions import SessionRegistry
from tests.support import metric_samples

pytestmark = pytest.mark.asyncio

KEY = TrackKey(RoomName("r"), SessionId("publisher"), TrackId("v"))
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111)
SRTP_KEY = bytes(range(30))
KEYFRAME = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A])  # VP8: S=1, PID=0; frame header P=0
INTERFRAME = bytes([0x10, 0x01, 0x00])


class Publisher:
    """The track's source, as a ``ForwardingReceiver`` is to it: counts keyframe requests."""

    def __init__(self) -> None:
        self.sink: PacketSink | None = None
        self.on_sender_report: Callable[[RtcpSrPacket], None] | None = None
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    return sock


def srtp(ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=SRTP_KEY, ssrc_type=ssrc_type)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


@dataclass
class LoopbackViewer:
    """A viewer's sender on a real socket pair: the server's end sends with a real SRTP
    session, the viewer's end reads and decrypts with the same key."""

    ssrc: int
    payload_type: int = 100
    clock_rate: int = 90000
    on_keyframe_request: Callable[[], None] | None = None
    on_nack: Callable[[list[int]], None] | None = None
    output: Output | None = None
    address: tuple[str, int] | None = None  # where the output sends (the viewer's end)
    server: socket.socket = field(default_factory=udp)
    client: socket.socket = field(default_factory=udp)
    tx: pylibsrtp.Session = field(default_factory=lambda: srtp(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx: pylibsrtp.Session = field(default_factory=lambda: srtp(pylibsrtp.Policy.SSRC_ANY_INBOUND))

    def new_output(self, first_seq: int, first_ts: int) -> Output:
        self.output = Output(
            ssrc=self.ssrc,
            payload_type=self.payload_type,
            first_seq=first_seq,
            first_ts=first_ts,
            clock_rate=self.clock_rate,
        )
        self.bind()
        return self.output

    def bind(self) -> bool:
        assert self.output is not None
        address = self.address or self.client.getsockname()
        self.output.bind(
            self.server.fileno(), address, srtp_session(self.tx), SRTP_PROTECT, self.tx
        )
        return True

    def send_rtx(self, data: bytes) -> Delivery:  # noqa: ARG002  the sender's signature
        raise AssertionError("no NACK in these tests")

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> bool:  # noqa: ARG002
        raise AssertionError("no SR in these tests")

    def received(self) -> list[bytes]:
        """Every packet that reached the viewer so far, decrypted (in arrival order)."""
        packets: list[bytes] = []
        while True:
            try:
                data = self.client.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return packets
            packets.append(self.rx.unprotect(data))

    def close(self) -> None:
        self.server.close()
        self.client.close()


def numbers(packet: bytes) -> tuple[int, int, int]:
    seq, ts, ssrc = struct.unpack_from("!HII", packet, 2)
    return seq, ts, ssrc


class Collector(GoliveActor):
    """Stands where a fanout or a recorder actor would: keeps what the loop tells it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def handle(self, message: Any) -> None:
        self.seen.append(message)

    def messages(self) -> list[Any]:
        return list(self.seen)


@pytest.fixture
def actors() -> Iterator[Callable[[], pykka.ActorRef[Collector]]]:
    started: list[pykka.ActorRef[Collector]] = []

    def start() -> pykka.ActorRef[Collector]:
        started.append(Collector.start())
        return started[-1]

    yield start
    for ref in started:
        ref.stop()


def told(ref: pykka.ActorRef[Collector]) -> list[Any]:
    messages: list[Any] = ref.proxy().messages().get(timeout=5)
    return messages


class Room:
    """One published track on the running loop, with ``viewers`` routed to."""

    def __init__(
        self,
        info: TrackInfo,
        codec: RTCRtpCodecParameters,
        viewers: int,
        *,
        keyframe_cache_bytes: int = 1 << 20,
    ) -> None:
        self.publisher = Publisher()
        self.metrics = create_metrics()
        self.codec = codec
        self.track = PublishedTrack(
            KEY,
            info,
            codec,
            self.publisher,
            registry=SessionRegistry(asyncio.get_running_loop()),
            metrics=self.metrics,
            keyframe_cache_bytes=keyframe_cache_bytes,
        )
        self.viewers: list[LoopbackViewer] = []
        self.version = 0
        for _ in range(viewers):
            self.add_viewer(LoopbackViewer(ssrc=0x1000 + len(self.viewers)))

    def add_viewer(self, viewer: LoopbackViewer) -> LoopbackViewer:
        """Attach ``viewer`` (its sender connected); it is forwarded to once routed."""
        session = SessionId(f"viewer{len(self.viewers)}")
        self.viewers.append(viewer)
        self.track.attach(session, viewer, created=asyncio.get_running_loop().time())
        return viewer

    def route(
        self,
        fanout: pykka.ActorRef[Any] | None = None,
        recorder: pykka.ActorRef[Any] | None = None,
    ) -> None:
        self.version += 1
        routes = tuple(
            Route(SessionId(f"viewer{n}"), RoutePhase.WAITING_KEYFRAME)
            for n in range(len(self.viewers))
        )
        self.track.install(
            RoutingTable(KEY, self.version, routes, fanout=fanout, recorder=recorder)
        )

    def send(
        self, seq: int, ts: int, payload: bytes, *, ssrc: int = 0xABC, marker: bool = False
    ) -> None:
        packet = RtpPacket(
            payload_type=96, sequence_number=seq, timestamp=ts, ssrc=ssrc, marker=int(marker)
        )
        packet.payload = payload
        assert self.publisher.sink is not None
        self.publisher.sink(packet, self.codec)

    def close(self) -> None:
        self.track.close()
        for viewer in self.viewers:
            viewer.close()


@pytest_asyncio.fixture
async def video() -> AsyncIterator[Callable[[int], Room]]:
    rooms: list[Room] = []

    def make(viewers: int) -> Room:
        rooms.append(Room(TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/VP8"), VP8, viewers))
        return rooms[-1]

    yield make
    for room in rooms:
        room.close()


async def test_viewers_start_on_a_keyframe_and_the_fanout_is_told_once(
    video: Callable[[int], Room], actors: Callable[[], pykka.ActorRef[Collector]]
) -> None:
    room = video(2)
    fanout = actors()
    room.route(fanout=fanout)
    room.send(10, 1000, INTERFRAME)
    assert [v.received() for v in room.viewers] == [[], []]
    assert room.publisher.keyframe_requests == 1  # the waiting viewers asked, once
    room.send(11, 4000, KEYFRAME)
    room.send(12, 7000, INTERFRAME)
    room.send(13, 10000, KEYFRAME)  # a second keyframe starts no one again
    for viewer in room.viewers:
        assert viewer.output is not None
        packets = viewer.received()
        first_seq, first_ts = viewer.output.first_seq, viewer.output.first_ts
        assert [numbers(p) for p in packets] == [
            (first_seq, first_ts, viewer.ssrc),
            ((first_seq + 1) & 0xFFFF, (first_ts + 3000) & 0xFFFFFFFF, viewer.ssrc),
            ((first_seq + 2) & 0xFFFF, (first_ts + 6000) & 0xFFFFFFFF, viewer.ssrc),
        ]
        assert packets[0][1] & 0x7F == viewer.payload_type
        assert packets[0][12:] == KEYFRAME
    assert sorted(m.session for m in told(fanout) if isinstance(m, KeyframeDelivered)) == [
        "viewer0",
        "viewer1",
    ]
    assert len(told(fanout)) == 2


async def test_numbering_is_continuous_across_a_publisher_restart(
    video: Callable[[int], Room],
) -> None:
    """The publisher restarts: another SSRC, numbering from elsewhere. Each viewer's stream
    goes on one by one, its clock moved on (at least one tick)."""
    room = video(2)
    room.route()
    room.send(100, 50_000, KEYFRAME, ssrc=0xA)
    room.send(101, 53_000, INTERFRAME, ssrc=0xA)
    room.send(40_000, 9_000_000, KEYFRAME, ssrc=0xB)
    room.send(40_001, 9_003_000, INTERFRAME, ssrc=0xB)
    for viewer in room.viewers:
        seqs = [numbers(p)[0] for p in viewer.received()]
        first = seqs[0]
        assert seqs == [(first + n) & 0xFFFF for n in range(4)]
        assert viewer.output is not None
        assert viewer.output.source == 0xB


async def test_a_new_publisher_feeds_the_track_from_its_keyframe_numbering_continued(
    video: Callable[[int], Room], actors: Callable[[], pykka.ActorRef[Collector]]
) -> None:
    """A publisher takes the room over: the track's source changes. Each viewer waits for
    the new publisher's keyframe (its interframes before are not sent), then goes on right
    after its last packet; the old publisher's receiver feeds nothing more; the fanout is not
    told again, and a keyframe is asked of the new publisher."""
    room = video(2)
    fanout = actors()
    room.route(fanout=fanout)
    room.send(100, 50_000, KEYFRAME, ssrc=0xA)
    room.send(101, 53_000, INTERFRAME, ssrc=0xA)
    room.track.want_keyframe()  # asked of the old publisher just now
    old = room.publisher
    new = Publisher()
    info = TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/VP8")
    room.track.switch_source(new, VP8, info, SessionId("successor"), compatible=True)
    assert old.sink is None
    assert room.track.publisher == "successor"
    assert new.keyframe_requests == 1
    room.publisher = new
    room.send(7_000, 9_000_000, INTERFRAME, ssrc=0xB)  # mid-stream: nobody starts on it
    room.send(7_001, 9_003_000, KEYFRAME, ssrc=0xB)
    room.send(7_002, 9_006_000, INTERFRAME, ssrc=0xB)
    for viewer in room.viewers:
        packets = viewer.received()
        seqs = [numbers(p)[0] for p in packets]
        stamps = [numbers(p)[1] for p in packets]
        assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(4)]
        assert [p[12:] for p in packets] == [KEYFRAME, INTERFRAME, KEYFRAME, INTERFRAME]
        assert 0 < (stamps[2] - stamps[1]) & 0xFFFFFFFF < 0x80000000  # the clock goes on
        assert (stamps[3] - stamps[2]) & 0xFFFFFFFF == 3000
        assert {numbers(p)[2] for p in packets} == {viewer.ssrc}
    assert len(told(fanout)) == 2  # each viewer's first keyframe, once


async def test_a_new_publisher_with_another_codec_feeds_no_existing_viewer(
    video: Callable[[int], Room],
) -> None:
    room = video(1)
    room.route()
    room.send(100, 50_000, KEYFRAME, ssrc=0xA)
    new = Publisher()
    h264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
    info = TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/H264")
    room.track.switch_source(new, h264, info, SessionId("successor"), compatible=False)
    room.publisher = new
    room.send(7_000, 9_000_000, bytes([0x65, 0x88]), ssrc=0xB)  # an H.264 IDR slice
    assert len(room.viewers[0].received()) == 1  # the VP8 keyframe alone
    assert room.track.codec is h264


async def test_a_closed_or_failing_viewer_is_skipped_and_the_others_get_everything(
    video: Callable[[int], Room],
) -> None:
    room = video(4)
    room.route()
    room.send(1, 0, KEYFRAME)
    closed, failing = room.viewers[1], room.viewers[2]
    room.track.detach(SessionId("viewer1"))  # the session closed
    # The viewer's address is one its socket cannot send to: every send to it fails.
    failing.address = ("::1", 9)
    failing.bind()
    for seq in range(2, 12):
        room.send(seq, seq * 3000, INTERFRAME)
    assert [len(v.received()) for v in room.viewers] == [11, 1, 1, 11]
    assert failing.output is not None
    assert failing.output.send_errors == 10
    samples = metric_samples(room.metrics.render().decode())
    assert samples[("golive_rtp_packets_dropped_total", (("reason", "send_failed"),))] == 10
    assert samples[("live_rtp_packets_total", (("room", "r"),))] == 1 * 4 + 10 * 2
    assert closed.output is not None
    assert not closed.output.bound


async def test_the_recorder_is_told_each_packet_once(
    video: Callable[[int], Room], actors: Callable[[], pykka.ActorRef[Collector]]
) -> None:
    room = video(3)
    recorder = actors()
    room.route(recorder=recorder)
    for seq in range(5):
        room.send(seq, seq * 3000, KEYFRAME if seq == 0 else INTERFRAME)
    recorded = [m for m in told(recorder) if isinstance(m, RecordPacket)]
    assert [numbers(m.data)[0] for m in recorded] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("size", [1200, 1400, 1480])
async def test_large_packets_are_forwarded(video: Callable[[int], Room], size: int) -> None:
    """GStreamer's payloaders default to a 1400-byte MTU and other encoders go higher: the
    whole packet reaches the viewer (pylibsrtp's own protect refuses more than 1356 bytes)."""
    room = video(1)
    room.route()
    payload = KEYFRAME + bytes(size - 12 - len(KEYFRAME))
    room.send(1, 0, payload)
    [packet] = room.viewers[0].received()
    assert len(packet) == size
    assert packet[12:] == payload


async def test_audio_starts_on_any_packet_and_asks_for_no_keyframe() -> None:
    publisher = Publisher()
    track = PublishedTrack(
        KEY,
        TrackInfo(TrackId("a"), MediaKind.AUDIO, "audio/opus"),
        OPUS,
        publisher,
        registry=SessionRegistry(asyncio.get_running_loop()),
        metrics=create_metrics(),
    )
    viewer = LoopbackViewer(ssrc=0x2000, payload_type=111, clock_rate=48000)
    try:
        track.attach(SessionId("v"), viewer, created=0.0)
        track.install(RoutingTable(KEY, 1, (Route(SessionId("v"), RoutePhase.FORWARDING),)))
        packet = RtpPacket(payload_type=111, sequence_number=7, timestamp=960, ssrc=0xA)
        packet.payload = b"\xfc\xff\xfe"
        assert publisher.sink is not None
        publisher.sink(packet, OPUS)
        [received] = viewer.received()
        assert received[12:] == b"\xfc\xff\xfe"
        assert publisher.keyframe_requests == 0
    finally:
        track.close()
        viewer.close()


async def test_outputs_are_checked_and_an_unbound_output_sends_nothing() -> None:
    fanout = Fanout()
    with pytest.raises(TypeError):
        fanout.outputs = (object(),)  # type: ignore[assignment]
    output = Output(ssrc=1, payload_type=96, first_seq=0, first_ts=0)
    fanout.outputs = (output,)
    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]) + KEYFRAME
    assert fanout.forward(packet, True, 0.0) == (0, 0, 0, 0, 0, None)
    assert not output.started  # it starts only once it has somewhere to send
    assert output.send(packet) == 2  # NOT_READY
    with pytest.raises(ValueError, match="not an RTP packet"):
        fanout.forward(b"\x00" * 12, True, 0.0)
    with pytest.raises(ValueError, match="too long"):
        fanout.forward(packet + bytes(2000), True, 0.0)
