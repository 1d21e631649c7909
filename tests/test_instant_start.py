"""Instant start: a viewer joining between two keyframes is started at once on the cached one.

The packet path without peers (:mod:`tests.test_fanout`'s harness: a real
:class:`PublishedTrack`, its C fan-out, real SRTP on real loopback sockets, each viewer's
packets read back and decrypted). The publisher here is OBS-like: H.264 with one NAL unit per
packet (AUD, SPS, PPS, SEI, then the IDR slice in FU-A fragments), and it never answers a
keyframe request.

What is checked: the viewer's first packet is the keyframe's access unit's first (its AUD), sent
at once; the cached frames follow paced, numbered on without a gap, their timestamps
compressed; live packets follow with the numbering continuous; a newer keyframe during the
catch-up is skipped to; sender reports wait until the viewer is live and are translated with
its offsets; a NACK of a catch-up packet is answered as it was sent; the cache is bounded and
counted; a new publisher restarts it; with the cache off a viewer waits, as before; the
recorder sees each packet once.
"""

from __future__ import annotations

import itertools
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from golive.actors.messages import MediaKind, RecordPacket, SessionId, TrackId, TrackInfo
from golive.media.hooks import Delivery
from golive.media.keyframes import (
    CATCH_UP_MIN_RATE,
    CATCH_UP_SPEED,
    CATCH_UP_TICK,
    KeyframeCache,
)
from golive.metrics import create_metrics
from tests.support import eventually, metric_samples
from tests.test_fanout import (
    Collector,
    LoopbackViewer,
    Publisher,
    Room,
    numbers,
    told,
)

pytestmark = pytest.mark.asyncio

H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
H264_INFO = TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/H264")
AUD = b"\x09\xf0"
SPS = b"\x67\x42\xc0\x1f\xda\x02\x80\xbf\xe5\x84"
PPS = b"\x68\xce\x3c\x80"
SEI = b"\x06\x05\x10" + bytes(16) + b"\x80"
FRAME_TICKS = 3000  # 30 frames a second
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def fu_a(nal: bytes, size: int = 1000) -> list[bytes]:
    """``nal`` in FU-A fragments of ``size`` bytes (RFC 6184)."""
    indicator = (nal[0] & 0xE0) | 28
    body = nal[1:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    out = []
    for index, chunk in enumerate(chunks):
        header = nal[0] & 0x1F
        if index == 0:
            header |= 0x80
        if index == len(chunks) - 1:
            header |= 0x40
        out.append(bytes([indicator, header]) + chunk)
    return out


def keyframe_unit(size: int = 3000, mark: int = 0) -> list[bytes]:
    """An IDR access unit as OBS sends it: AUD, SPS, PPS, SEI, then the slice's fragments."""
    return [AUD, SPS, PPS, SEI, *fu_a(b"\x65" + bytes([mark]) * size)]


def inter_unit(size: int = 1000, mark: int = 0) -> list[bytes]:
    return [b"\x41" + bytes([mark & 0xFF]) * size]


@dataclass
class Stream:
    """The publisher's side: frames sent with its numbering, 30 a second."""

    room: Room
    seq: int = 40_000
    ts: int = 1_000_000
    packets: list[tuple[int, int, bytes]] = field(default_factory=list)  # (seq, ts, payload)

    def frame(self, payloads: list[bytes]) -> None:
        for index, payload in enumerate(payloads):
            self.room.send(self.seq, self.ts, payload, marker=index == len(payloads) - 1)
            self.packets.append((self.seq, self.ts, payload))
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts += FRAME_TICKS

    def gop(self, inter: int, *, size: int = 1000, mark: int = 0) -> None:
        self.frame(keyframe_unit(mark=mark))
        for n in range(inter):
            self.frame(inter_unit(size, mark=n))


@dataclass
class Viewer(LoopbackViewer):
    """A loopback viewer that keeps what it is sent (and when the kernel received it), its
    sender reports and its retransmissions."""

    got: list[bytes] = field(default_factory=list)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)
    reports: list[tuple[int, int]] = field(default_factory=list)  # (ntp, rtp)
    resent: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def take(self) -> list[bytes]:
        """What arrived since the last call, decrypted, and kept in ``got``."""
        new: list[bytes] = []
        while True:
            try:
                data, ancillary, _, _ = self.client.recvmsg(4096, 64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.got.extend(new)
                return new
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    self.arrivals.append((seconds + nanoseconds / 1e9, len(data)))
            new.append(self.rx.unprotect(data))

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> bool:
        self.reports.append((ntp_timestamp, rtp_timestamp))
        return True

    def send_rtx(self, data: bytes) -> Delivery:
        self.resent.append(data)
        return Delivery.SENT


@pytest_asyncio.fixture
async def h264() -> AsyncIterator[Callable[..., Room]]:
    rooms: list[Room] = []

    def make(viewers: int = 0, **kwargs: int) -> Room:
        rooms.append(Room(H264_INFO, H264, viewers, **kwargs))
        return rooms[-1]

    yield make
    for room in rooms:
        room.close()


def joined_mid_gop(room: Room, inter: int, *, size: int = 1000) -> tuple[Room, Stream, Viewer]:
    """``room`` routed, its publisher's keyframe and ``inter`` frames sent, then a viewer
    joining."""
    room.route()
    stream = Stream(room)
    stream.gop(inter, size=size)
    return room, stream, join(room)


def join(room: Room) -> Viewer:
    """A viewer connects now (its sender is up, then the fanout routes to it)."""
    viewer = room.add_viewer(Viewer(ssrc=0x5000 + len(room.viewers)))
    room.route()
    assert isinstance(viewer, Viewer)
    return viewer


async def caught_up(viewer: Viewer, count: int) -> None:
    await eventually(lambda: len(viewer.got) + len(viewer.take()) >= count, what="the catch-up")


async def started_again(viewer: Viewer, *, mark: int, after: int | None = None) -> None:
    """``viewer`` gets the keyframe ``mark`` and one frame after it (sent since it had
    ``after`` packets, or since it last took them), numbered on with no gap."""
    count = len(viewer.got) if after is None else after
    await caught_up(viewer, count + len(keyframe_unit()) + 1)
    seqs = [numbers(p)[0] for p in viewer.got]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]
    assert [p[12:] for p in viewer.got[-len(keyframe_unit()) - 1 :]] == [
        *keyframe_unit(mark=mark),
        *inter_unit(mark=0),
    ]


def catching_up(viewer: Viewer) -> bool:
    """Whether ``viewer`` is being sent the cache (held out of the fan-out)."""
    return viewer.output is not None and viewer.output.held


def ascending(stamps: list[int]) -> bool:
    """Whether RTP timestamps never go back (modulo 2**32)."""
    return all((b - a) & 0xFFFFFFFF < 0x80000000 for a, b in itertools.pairwise(stamps))


def samples(room: Room) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples(room.metrics.render().decode())


async def test_a_viewer_between_keyframes_starts_at_once_from_the_access_units_first_packet(
    h264: Callable[..., Room],
) -> None:
    room = h264()
    room.route()
    stream = Stream(room)
    stream.gop(20)
    viewers = [join(room) for _ in range(3)]
    for viewer in viewers:  # at once: the keyframe's whole access unit, AUD first
        first = viewer.take()
        assert [p[12:] for p in first] == keyframe_unit()
        assert viewer.output is not None
        first_seq, first_ts = viewer.output.first_seq, viewer.output.first_ts
        assert [numbers(p)[:2] for p in first] == [
            ((first_seq + n) & 0xFFFF, first_ts) for n in range(len(first))
        ]
    for viewer in viewers:
        await caught_up(viewer, len(stream.packets))
    stream.frame(inter_unit(mark=99))  # live
    for viewer in viewers:
        viewer.take()
        assert [p[12:] for p in viewer.got] == [p for _, _, p in stream.packets]
        seqs = [numbers(p)[0] for p in viewer.got]
        assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]  # no gap
        stamps = [numbers(p)[1] for p in viewer.got]
        span = (stamps[-2] - stamps[0]) & 0xFFFFFFFF  # the cached frames' span, as sent
        assert 0 < span < 20 * FRAME_TICKS  # compressed: sent faster than they were made
        assert ascending(stamps)
        assert (stamps[-1] - stamps[-2]) & 0xFFFFFFFF == FRAME_TICKS  # live: as made
    # Three joins ask the publisher once (it does not answer: the cache served them).
    assert room.publisher.keyframe_requests == 1
    found = samples(room)
    assert found[("golive_viewer_starts_total", (("start", "cache"),))] == 3
    live = (("role", "subscriber"), ("stage", "live"))
    assert found[("golive_session_setup_seconds_count", live)] == 3


async def test_the_catch_up_is_paced(h264: Callable[..., Room]) -> None:
    """The cached frames go out at a few times the stream's rate, whole frames at a time: in
    no window of the kernel's arrival times does the viewer get more than that rate allows
    (and one frame ahead)."""
    room = h264()
    room.route()
    stream = Stream(room)
    stream.gop(90, size=1200)
    cached = sum(len(p) + 12 for _, _, p in stream.packets)
    rate = max(CATCH_UP_MIN_RATE, CATCH_UP_SPEED * cached)  # (the cache's rate: held / 1 s)
    viewer = join(room)
    assert len(viewer.take()) == len(keyframe_unit())  # the first frame alone, at once
    await caught_up(viewer, len(stream.packets))
    times = [t for t, _ in viewer.arrivals]
    sizes = [n for _, n in viewer.arrivals]
    window = 0.05
    allowed = rate * (window + 4 * CATCH_UP_TICK) + 2 * 1300
    start = 0
    total = 0
    for end in range(len(times)):
        total += sizes[end]
        while times[end] - times[start] > window:
            total -= sizes[start]
            start += 1
        assert total <= allowed, f"{total} bytes within {window * 1000:.0f} ms"
    assert times[-1] - times[0] >= 0.5 * (cached - 4000) / rate  # not all at once


async def test_a_newer_keyframe_during_the_catch_up_is_skipped_to(
    h264: Callable[..., Room],
) -> None:
    _room, stream, viewer = joined_mid_gop(h264(), 60)
    assert len(viewer.take()) == len(keyframe_unit())
    stream.gop(2, mark=7)  # the next keyframe, before the pacer sent any older frame
    viewer.take()  # at once: skipped to it, the viewer is live (not paced behind K1's debt)
    assert not catching_up(viewer)
    stream.frame(inter_unit(mark=50))
    viewer.take()
    assert [p[12:] for p in viewer.got] == [
        *keyframe_unit(),
        *keyframe_unit(mark=7),
        *inter_unit(mark=0),
        *inter_unit(mark=1),
        *inter_unit(mark=50),
    ]
    seqs = [numbers(p)[0] for p in viewer.got]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]  # no gap to NACK
    stamps = [numbers(p)[1] for p in viewer.got]
    assert ascending(stamps)


async def test_sender_reports_wait_for_live_and_carry_the_viewers_offsets(
    h264: Callable[..., Room],
) -> None:
    room, stream, viewer = joined_mid_gop(h264(), 60, size=1200)
    assert viewer.output is not None
    assert catching_up(viewer)  # catching up
    last_ts = stream.ts - FRAME_TICKS  # the newest frame's, the publisher's clock

    def report(rtp: int) -> None:
        info = RtcpSenderInfo(
            ntp_timestamp=0x1234_5678_0000_0000, rtp_timestamp=rtp, packet_count=1, octet_count=1
        )
        room.track.on_sender_report(RtcpSrPacket(ssrc=0xABC, sender_info=info))

    report(last_ts)
    assert viewer.reports == []  # its clock is the catch-up's: nothing to map yet
    await caught_up(viewer, len(stream.packets))
    assert not catching_up(viewer)
    report(last_ts)
    [(ntp, rtp)] = viewer.reports
    assert ntp == 0x1234_5678_0000_0000
    assert rtp == numbers(viewer.got[-1])[1]  # the newest frame's time, as the viewer got it


async def test_a_nack_of_a_catch_up_packet_is_answered_as_it_was_sent(
    h264: Callable[..., Room],
) -> None:
    _room, stream, viewer = joined_mid_gop(h264(), 30)
    await caught_up(viewer, len(stream.packets))
    lost = [viewer.got[len(keyframe_unit()) + 10], viewer.got[-2]]
    assert viewer.on_nack is not None
    viewer.on_nack([numbers(p)[0] for p in lost])
    assert viewer.resent == lost  # same numbers, same (compressed) timestamps, same payload


async def test_the_cache_is_bounded_and_counted(h264: Callable[..., Room]) -> None:
    """Over its bound the cache is emptied (counted): a viewer catching up then, and one
    joining, wait for the next keyframe, asked of the publisher; their numbering goes on."""
    room = h264(keyframe_cache_bytes=40_000)
    room.route()
    stream = Stream(room)
    stream.gop(10)
    held = sum(len(p) + 12 for _, _, p in stream.packets)
    assert samples(room)[("golive_keyframe_cache_bytes", ())] == held
    early = join(room)
    assert early.output is not None
    assert catching_up(early)
    for n in range(30):  # past 40 000 bytes
        stream.frame(inter_unit(mark=n))
    found = samples(room)
    assert found[("golive_keyframe_cache_bytes", ())] == 0
    assert found[("golive_keyframe_cache_dropped_total", ())] == 1
    assert not catching_up(early)
    late = join(room)
    stream.frame(inter_unit(mark=77))
    early.take()
    assert late.take() == []  # nothing to start on
    asked = room.publisher.keyframe_requests
    assert asked >= 1
    stream.gop(1, mark=3)
    for viewer in (early, late):
        await started_again(viewer, mark=3)


async def test_a_new_publisher_empties_the_cache_and_its_keyframe_starts_everyone(
    h264: Callable[..., Room],
) -> None:
    room, _stream, viewer = joined_mid_gop(h264(), 60)
    assert viewer.output is not None
    assert catching_up(viewer)
    new = Publisher()
    room.track.switch_source(new, H264, H264_INFO, SessionId("successor"), compatible=True)
    room.publisher = new
    assert not catching_up(viewer)
    assert samples(room)[("golive_keyframe_cache_bytes", ())] == 0
    viewer.take()
    before = len(viewer.got)
    successor = Stream(room, seq=7, ts=5_000)
    successor.frame(inter_unit(mark=1))  # nobody starts on it
    successor.gop(1, mark=9)
    await started_again(viewer, mark=9, after=before)


async def test_without_the_cache_a_viewer_waits_for_the_next_keyframe(
    h264: Callable[..., Room],
) -> None:
    room = h264(keyframe_cache_bytes=0)
    room.route()
    stream = Stream(room)
    stream.gop(5)
    viewer = join(room)
    stream.frame(inter_unit(mark=40))
    assert viewer.take() == []
    assert room.publisher.keyframe_requests == 1
    stream.gop(0, mark=2)
    assert [p[12:] for p in viewer.take()] == keyframe_unit(mark=2)[1:]  # from its SPS
    found = samples(room)
    assert found[("golive_viewer_starts_total", (("start", "keyframe"),))] == 1
    assert found[("golive_keyframe_cache_bytes", ())] == 0


async def test_the_recorder_sees_each_packet_once_whoever_catches_up(
    h264: Callable[..., Room],
) -> None:
    room = h264()
    recorder = Collector.start()
    try:
        room.route(recorder=recorder)
        stream = Stream(room)
        stream.gop(20)
        viewers = [join(room) for _ in range(2)]
        room.route(recorder=recorder)
        stream.gop(5)
        for viewer in viewers:
            await caught_up(viewer, len(keyframe_unit()) + 5)
        recorded = [m.data for m in told(recorder) if isinstance(m, RecordPacket)]
        assert [numbers(p)[0] for p in recorded] == [seq for seq, _, _ in stream.packets]
    finally:
        recorder.stop()


async def test_a_publisher_that_never_changes_its_timestamp_is_held_to_the_bound() -> None:
    """Packets of one endless access unit without a keyframe are not cached, and what is kept
    of them while a keyframe might still start (the unit's packets so far) stays within the
    bound: a hostile publisher cannot make the server hold more."""
    metrics = create_metrics()
    cache = KeyframeCache(
        100_000,
        "video/H264",
        gauge=metrics.keyframe_cache_bytes,
        dropped=metrics.keyframe_cache_dropped,
    )
    header = struct.pack("!BBHII", 0x80, 102, 0, 1234, 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):  # 20 MB in all
            cache.add(header + bytes([0x41, n & 0xFF]) + bytes(1000), 0.0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.packets is None
    assert held < 400_000


async def test_a_viewer_that_asks_for_a_keyframe_is_sent_the_cached_one_again(
    h264: Callable[..., Room],
) -> None:
    """Chromium drops what arrives between its DTLS handshake and its receive stream, then asks
    for a keyframe (PLI) that this publisher ignores: the viewer is sent the cached keyframe
    again at once, numbered on, and caught up again; once a second at most."""
    room, stream, viewer = joined_mid_gop(h264(), 20)
    await caught_up(viewer, len(stream.packets))
    before = len(viewer.got)
    asked = room.publisher.keyframe_requests
    assert viewer.on_keyframe_request is not None
    viewer.on_keyframe_request()  # "what I was sent first never reached me"
    again = viewer.take()
    assert [p[12:] for p in again] == keyframe_unit()  # at once
    await caught_up(viewer, before + len(stream.packets))
    viewer.on_keyframe_request()  # within the second: the publisher is asked, no more
    stream.frame(inter_unit(mark=60))
    viewer.take()
    assert len(viewer.got) == before + len(stream.packets)
    assert [p[12:] for p in viewer.got[before:]] == [p for _, _, p in stream.packets]
    seqs = [numbers(p)[0] for p in viewer.got]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(len(seqs))]
    assert ascending([numbers(p)[1] for p in viewer.got])
    assert room.publisher.keyframe_requests >= asked  # (coalesced: one a second)
    found = samples(room)
    assert found[("golive_keyframe_cache_replays_total", ())] == 1
    live = (("role", "subscriber"), ("stage", "live"))
    assert found[("golive_session_setup_seconds_count", live)] == 1  # a replay is no setup


async def test_a_relays_keyframe_requests_are_passed_on_never_answered_from_the_cache(
    h264: Callable[..., Room],
) -> None:
    """A relay's link asks on behalf of its own viewers, whom its own cache serves: a replay
    down the link would rewind every one of them. Its request only reaches the publisher."""
    room = h264()
    room.route()
    stream = Stream(room)
    stream.gop(10)
    link = room.add_viewer(Viewer(ssrc=0x7000))
    room.track.attach(SessionId("viewer0"), link, created=0.0, replays=False)
    room.route()
    assert isinstance(link, Viewer)
    await caught_up(link, len(stream.packets))
    asked = room.publisher.keyframe_requests
    assert link.on_keyframe_request is not None
    link.on_keyframe_request()
    stream.frame(inter_unit(mark=30))
    assert [p[12:] for p in link.take()] == inter_unit(mark=30)  # live, nothing replayed
    assert room.publisher.keyframe_requests >= asked
    assert samples(room)[("golive_keyframe_cache_replays_total", ())] == 0


async def test_a_new_keyframe_lets_the_previous_interval_go(h264: Callable[..., Room]) -> None:
    """Once a keyframe starts the cache again, the packets before it are held only by the NACK
    ring (its last 1024): an interval longer than that is freed, not kept beside the new one."""
    room = h264()
    room.route()
    stream = Stream(room)
    tracemalloc.start()
    try:
        stream.gop(3000, size=200)  # 3000 packets: about 700 kB
        before = tracemalloc.get_traced_memory()[0]
        stream.gop(0, mark=1)
        freed = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert freed > 1900 * 200  # the 1976 packets past the ring's reach, at least
