"""The bench's viewers: a load generator of WHEP viewers that counts packets, decrypting none
but what it takes to find each viewer's first keyframe.

``python -m bench.viewers`` (started by ``bench.forwarding``, one or several processes) joins
its share of the audience at the agreed pace: for each viewer a real WHEP POST with an aiortc
offer (``recvonly`` video and audio), real ICE (aioice) and a real DTLS handshake (aiortc, as
DTLS client, as browsers are). Each viewer's UDP socket is read by the load generator itself
rather than by asyncio (:class:`Sockets`: one epoll set for all of them, read in ticks of a
millisecond), and each datagram is sorted before aioice sees it:

- RTP (first byte 128-191, second byte not 192-223) is counted from its clear header per SSRC
  (:class:`~bench.counting.StreamCount`) and goes no further: no SRTP, no parsing, no jitter
  buffer, no decoder. The first RTP arrival is the viewer's time to media.
- Only until the viewer's first video keyframe is found, its video packets are also
  decrypted (with the SRTP session the viewer's own DTLS handshake negotiated) to read the
  VP8 payload descriptor; after that, nothing is decrypted again. Until then, arrival times
  are the kernel's receive timestamps (``SO_TIMESTAMPNS``), not the time the load generator
  got round to the socket.
- RTCP (the server's sender reports) is counted and dropped: the viewers send no RTCP at all
  (no receiver reports, NACKs or PLIs; the server does not need them to keep a viewer).
- STUN and DTLS go to aioice (``StunProtocol.datagram_received``) and aiortc as usual:
  aioice answers the server's consent checks (RFC 7675; without answers the server would end
  the viewer after about 30 s) and makes its own.

Talks to the driver in JSON lines on stdout, commands on stdin: prints ``{"event": "ready"}``
once imported; reads ``start T`` (``time.monotonic()`` of the first join: viewer ``i`` of the
whole audience POSTs at ``T + i / rate``, in whichever process); prints ``{"event":
"joined"}`` once every viewer has its first keyframe (or failed, or the join deadline
passed); then reads ``hold`` (counting windows open, delay sampling starts), ``end`` (counts;
results written to ``--out``; prints ``{"event": "done"}``) and ``close`` (every peer
connection closed, exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription

from bench.counting import RTCP, RTP, StreamCount, TimestampClock, classify
from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection
from golive.media.rtp import keyframe_start

#: Video packets kept per viewer while its SRTP keys are not there yet (the server's first RTP
#: can arrive before the viewer's DTLS task has read the server's last handshake flight).
PENDING_LIMIT = 64
#: Video packets decrypted per viewer at most, looking for a keyframe.
DECRYPT_LIMIT = 2000
TICK = 0.001  # seconds between two readings of the sockets, at least (see Sockets)
DRAIN = 256  # datagrams read from one socket per reading at most (then the others' turn)
RECEIVE_SIZE = 8192  # larger than any datagram here (RTP, DTLS and STUN all fit an MTU)
#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python's socket module does not name it):
#: the kernel's receive time of each datagram, as ancillary data (a struct timespec).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
#: time.time() - time.perf_counter(), once: kernel timestamps are wall-clock time.
WALL_OFFSET = time.time() - time.perf_counter()
SAMPLE_INTERVAL = 1.0  # seconds between delay samples of each viewer's audio stream
POST_TIMEOUT = 30.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def internals(pc: ForwardingPeerConnection) -> tuple[Any, list[Any]]:
    """The viewer's DTLS transport and its ICE connection's sockets (aioice protocols): the
    private names the tap uses, checked so that a new aiortc or aioice fails here, named."""
    transceiver = pc.getTransceivers()[0]
    dtls = transceiver.receiver.transport
    for owner, name in ((dtls, "_rx_srtp"), (dtls.transport, "_connection")):
        if not hasattr(owner, name):
            raise RuntimeError(f"{type(owner).__name__}.{name} is gone: bench.viewers needs it")
    connection = dtls.transport._connection  # noqa: SLF001  aiortc keeps aioice's connection private
    if not hasattr(connection, "_protocols"):
        raise RuntimeError("aioice Connection._protocols is gone: bench.viewers needs it")
    return dtls, list(connection._protocols)  # noqa: SLF001  the sockets, to tap


class Sockets:
    """Every viewer socket of this process, read by one epoll set that asyncio watches as one
    file descriptor, at most once per :data:`TICK`: each wake-up reads every socket with data
    until it is empty (or :data:`DRAIN` datagrams).

    asyncio's own path costs a loop iteration, a callback and a ``recvfrom`` per datagram,
    and with packets spread over hundreds of sockets it wakes up for nearly every one: about
    9 µs of CPU per packet here, a quarter of a core at 100 viewers of 2 Mbit/s. Reading in
    ticks shares a wake-up among dozens of packets. Arrival times are then the tick's, up to
    a tick late, except where precision matters (see :meth:`LoadViewer.tap`): there the
    kernel's receive timestamp (``SO_TIMESTAMPNS``) is used."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if not hasattr(loop, "_remove_reader"):
            raise RuntimeError("asyncio's loop has no _remove_reader: bench.viewers needs it")
        self._loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, tuple[socket.socket, Reader]] = {}
        self._watching = False
        self._closed = False
        self._watch()

    def take(self, transport: Any, reader: Reader) -> None:
        """Read ``transport``'s socket with ``reader`` (given a non-blocking duplicate of the
        socket) instead of asyncio; the transport still sends and closes as before."""
        fd = transport.get_extra_info("socket").fileno()
        self._loop._remove_reader(fd)  # noqa: SLF001  see __init__
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._readers[sock.fileno()] = (sock, reader)
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _watch(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._epoll.fileno(), self._ready)

    def _ready(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        now = time.perf_counter()
        for fd, _ in self._epoll.poll(0):
            entry = self._readers.get(fd)
            if entry is not None:
                entry[1](entry[0], now)
        self._loop.call_later(TICK, self._watch)

    def close(self) -> None:
        self._closed = True
        self._loop.remove_reader(self._epoll.fileno())
        for sock, _ in self._readers.values():
            sock.close()
        self._readers.clear()
        self._epoll.close()


def kernel_arrival(ancillary: list[tuple[int, int, bytes]], fallback: float) -> float:
    """The kernel's receive time of a datagram (``SCM_TIMESTAMPNS``, wall clock), on the
    ``perf_counter`` clock; ``fallback`` without one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds * 1e-9 - WALL_OFFSET)
    return fallback


Reader = Callable[[socket.socket, float], None]


@dataclass(eq=False)
class LoadViewer:
    """One viewer: its join timings, its streams' counts, and how it found its keyframe."""

    index: int  # in the whole audience (joins are paced by it)
    posted: float = 0.0  # perf_counter when the POST went out (CLOCK_MONOTONIC: one clock
    answered: float = 0.0  # for every process on the machine)
    first_rtp: float | None = None
    first_keyframe: float | None = None
    first_video_is_keyframe: bool | None = None
    error: str | None = None
    worker: str | None = None  # the answer's Golive-Worker (node/worker): who serves it
    video_pt: int = -1
    audio_pt: int = -1
    rtcp: int = 0
    decrypted: int = 0
    streams: dict[bytes, StreamCount] = field(default_factory=dict)
    audio: StreamCount | None = None
    clock: TimestampClock = field(default_factory=lambda: TimestampClock(48000))
    pc: ForwardingPeerConnection | None = None
    dtls: Any = None
    seeking: bool = True  # still looking for the first keyframe
    pending: list[tuple[bytes, float]] = field(default_factory=list)
    hold_bytes: dict[bytes, int] = field(default_factory=dict)  # per SSRC, at the hold's start

    @property
    def settled(self) -> bool:
        return self.error is not None or self.first_keyframe is not None

    def tap(self, protocol: Any, sockets: Sockets) -> None:
        """Read this viewer's socket through ``sockets`` instead of asyncio, counting RTP and
        handing everything else to aioice (see the module's docstring). Until the viewer has
        its first RTP packet and its first keyframe, datagrams are read with the kernel's
        receive timestamp (``recvmsg``); after that with a plain ``recvfrom``."""
        forward: Callable[[bytes, Any], None] = protocol.datagram_received
        streams = self.streams
        viewer = self

        def received(sock: socket.socket, now: float) -> None:
            recvfrom, recvmsg = sock.recvfrom, sock.recvmsg
            for _ in range(DRAIN):
                arrival = now
                try:
                    if viewer.seeking or viewer.first_rtp is None:
                        data, ancillary, _, addr = recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
                        arrival = kernel_arrival(ancillary, now)
                    else:
                        data, addr = recvfrom(RECEIVE_SIZE)
                except OSError:  # BlockingIOError: nothing more for now
                    return
                kind = classify(data)
                if kind == RTP:
                    stream = streams.get(data[8:12])
                    if stream is None:
                        stream = viewer.new_stream(data)
                    stream.add(data, arrival)
                    if viewer.first_rtp is None:
                        viewer.first_rtp = arrival
                    if viewer.seeking and data[1] & 0x7F == viewer.video_pt:
                        viewer.look_for_keyframe(data, arrival)
                elif kind == RTCP:
                    viewer.rtcp += 1
                else:
                    forward(data, addr)

        sockets.take(protocol.transport, received)

    def new_stream(self, data: bytes) -> StreamCount:
        stream = self.streams[data[8:12]] = StreamCount()
        if data[1] & 0x7F == self.audio_pt and self.audio is None:
            self.audio = stream
        return stream

    def look_for_keyframe(self, data: bytes, now: float) -> None:
        """Decrypt video packets, in arrival order, until one starts a VP8 keyframe."""
        srtp = getattr(self.dtls, "_rx_srtp", None)
        if srtp is None:  # keys not derived yet: keep the packet for when they are
            if len(self.pending) < PENDING_LIMIT:
                self.pending.append((data, now))
            return
        queue, self.pending = [*self.pending, (data, now)], []
        for packet, arrival in queue:
            self.decrypted += 1
            try:
                clear = srtp.unprotect(packet)
            except Exception:  # noqa: BLE001, S112  pylibsrtp.Error: one packet, not a keyframe
                continue
            keyframe = keyframe_start("video/VP8", clear)
            if self.first_video_is_keyframe is None:
                self.first_video_is_keyframe = keyframe
            if keyframe:
                self.first_keyframe = arrival
                self.seeking = False
                return
        if self.decrypted >= DECRYPT_LIMIT:
            self.seeking = False

    def hold(self) -> None:
        """The hold starts: count from here (see StreamCount.mark)."""
        for ssrc, stream in self.streams.items():
            stream.mark()
            self.hold_bytes[ssrc] = stream.bytes

    def sample_delay(self) -> None:
        audio = self.audio
        if audio is not None and audio.last:
            self.clock.sample(audio.last_arrival, audio.timestamp)


def payload_types(answer: str) -> tuple[int, int]:
    """The video (VP8) and audio (Opus) payload types the server's answer uses."""
    video = audio = -1
    for media in SessionDescription.parse(answer).media:
        for codec in media.rtp.codecs:
            name, number = codec.mimeType.lower(), codec.payloadType
            if name == "video/vp8" and video < 0 and number is not None:
                video = number
            elif name == "audio/opus" and audio < 0 and number is not None:
                audio = number
    return video, audio


async def join(viewer: LoadViewer, http: aiohttp.ClientSession, url: str, sockets: Sockets) -> None:
    """POST an offer and apply the answer; ICE and DTLS then run in aiortc's own task."""
    pc = viewer.pc = ForwardingPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "failed" and viewer.error is None:
            viewer.error = "connection failed"

    try:
        await pc.setLocalDescription(await pc.createOffer())
        viewer.dtls, protocols = internals(pc)
        for protocol in protocols:
            viewer.tap(protocol, sockets)
        viewer.posted = time.perf_counter()
        async with http.post(
            url,
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
            timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT),
        ) as response:
            answer = await response.text()
            viewer.worker = response.headers.get("Golive-Worker")
            if response.status != 201:
                viewer.error = f"POST {response.status}: {answer[:80]}"
                return
        viewer.answered = time.perf_counter()
        viewer.video_pt, viewer.audio_pt = payload_types(answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        viewer.error = f"{type(exc).__name__}: {exc}"[:120]


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * fraction) - 1)]


def results(viewers: list[LoadViewer], hold: tuple[float, float], span: float) -> dict[str, Any]:
    """What the driver needs, per viewer and in sums (over the hold: see StreamCount.mark)."""
    per_viewer = []
    received = expected = duplicates = reordered = too_late = datagram_bytes = rtcp = 0
    for viewer in viewers:
        v_received = v_expected = 0
        for ssrc, stream in viewer.streams.items():
            # (a stream first seen during the hold: expected from its first packet)
            v_received += stream.window_received
            v_expected += stream.window_expected
            datagram_bytes += stream.bytes - viewer.hold_bytes.get(ssrc, 0)
            duplicates += stream.duplicates
            reordered += stream.reordered
            too_late += stream.too_late
        received += v_received
        expected += v_expected
        rtcp += viewer.rtcp
        growth = viewer.clock.growth(hold[0], hold[1], span)
        last = max((s.last_arrival for s in viewer.streams.values()), default=0.0)
        per_viewer.append(
            {
                "index": viewer.index,
                "posted": viewer.posted,
                "error": viewer.error,
                "worker": viewer.worker,
                "to_answer_ms": _ms(viewer.answered, viewer.posted),
                "to_rtp_ms": _ms(viewer.first_rtp, viewer.posted),
                "to_keyframe_ms": _ms(viewer.first_keyframe, viewer.posted),
                "first_video_is_keyframe": viewer.first_video_is_keyframe,
                "received": v_received,
                "expected": v_expected,
                "receiving_at_end": last >= hold[1] - 1.0,
                "delay_growth_ms": None if growth is None else growth * 1e3,
                "decrypted": viewer.decrypted,
            }
        )
    return {
        "viewers": per_viewer,
        "received": received,
        "expected": expected,
        "duplicates": duplicates,
        "reordered": reordered,
        "too_late": too_late,
        "datagram_bytes": datagram_bytes,
        "rtcp": rtcp,
    }


def _ms(end: float | None, start: float) -> float | None:
    return None if not end or not start else (end - start) * 1e3


async def sampler(viewers: list[LoadViewer], active: asyncio.Event) -> None:
    while True:
        await asyncio.sleep(SAMPLE_INTERVAL)
        if active.is_set():
            for viewer in viewers:
                viewer.sample_delay()


async def stdin() -> asyncio.StreamReader:
    """The driver's commands, read by the loop (a thread blocked in ``readline`` would keep
    the process alive after the loop ends)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def command(reader: asyncio.StreamReader) -> str:
    """The next command; ``close`` at EOF (the driver is gone)."""
    return (await reader.readline()).decode().strip() or "close"


async def run(arguments: argparse.Namespace) -> None:
    hooks.install(("127.0.0.1",))
    viewers = [
        LoadViewer(index) for index in range(arguments.first, arguments.total, arguments.step)
    ]
    url = f"{arguments.base}/api/whep/play/{arguments.room}"
    loop = asyncio.get_running_loop()
    # every process paces by the same clock: viewer i POSTs at start + i / rate
    offset = loop.time() - time.monotonic()
    sockets = Sockets(loop)
    holding = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(viewers, holding))
    commands = await stdin()
    emit("ready")  # imports done: the driver sends the joins' start time
    first, _, start = (await command(commands)).partition(" ")
    if first != "start":
        return
    # (--connection-per-viewer: each POST on a connection of its own, as from its own browser:
    # the kernel spreads connections, not requests, over the workers of a SO_REUSEPORT port)
    connector = aiohttp.TCPConnector(limit=0, force_close=arguments.connection_per_viewer)
    async with aiohttp.ClientSession(connector=connector) as http:
        joins = []
        for viewer in viewers:
            due = float(start) + viewer.index / arguments.rate + offset
            await asyncio.sleep(max(0.0, due - loop.time()))
            joins.append(asyncio.ensure_future(join(viewer, http, url, sockets)))
        deadline = loop.time() + arguments.grace
        while loop.time() < deadline and not all(v.settled for v in viewers):  # noqa: ASYNC110  they settle in socket reads: polled, with a deadline
            await asyncio.sleep(0.05)
        for viewer in viewers:
            if not viewer.settled:
                viewer.error = "no keyframe before the deadline"
        emit(
            "joined",
            viewers=len(viewers),
            with_rtp=sum(1 for v in viewers if v.first_rtp is not None),
            with_keyframe=sum(1 for v in viewers if v.first_keyframe is not None),
        )
        hold = [0.0, 0.0]
        while True:
            order = await command(commands)
            if order == "hold":
                for viewer in viewers:
                    viewer.hold()
                hold[0] = time.perf_counter()
                holding.set()
            elif order == "end":
                hold[1] = time.perf_counter()
                holding.clear()
                report = results(viewers, (hold[0], hold[1]), arguments.span)
                await asyncio.to_thread(Path(arguments.out).write_text, json.dumps(report))
                emit("done")
            else:
                break
        sampling.cancel()
        for task in joins:
            task.cancel()
        closing = [v.pc.close() for v in viewers if v.pc is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 20)
        sockets.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--first", type=int, required=True, help="first viewer index")
    parser.add_argument("--step", type=int, required=True, help="index step (processes)")
    parser.add_argument("--total", type=int, required=True, help="audience size")
    parser.add_argument("--rate", type=float, required=True, help="joins a second, all in all")
    parser.add_argument("--grace", type=float, required=True, help="seconds after the last")
    parser.add_argument("--span", type=float, required=True, help="delay windows (seconds)")
    parser.add_argument("--out", required=True, help="results file")
    parser.add_argument(
        "--connection-per-viewer", action="store_true", help="no connection kept for the next"
    )
    arguments = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    configure_logging("error", "json", stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(arguments))


if __name__ == "__main__":
    main()
