"""Joins: how long a viewer waits for its first RTP packet when viewers join at a set rate.

Run in the loopback-only namespace (``scripts/loopback-netns .venv/bin/python -m
bench.joins``). Three processes: the server (``python -m golive``, its story log lines read
from its output), this driver holding one publisher, and a viewer process joining WHEP
viewers at a set rate. The publisher sends synthetic VP8 (about 2 Mbit/s, 30 frames a second,
a keyframe when asked) and Opus (20 ms packets), packetized once and replayed, so no encoder
competes with the server for the two cores. The viewers do not decode: once a viewer has its
first keyframe it only counts datagrams at its socket, so the viewer process stays light
while the audience grows.

Per viewer it records the timeline from the POST (client side: answer, ICE connected, DTLS
connected, first RTP, first keyframe; server side, from the session's story lines: offer
admitted, answered, ICE connected, DTLS connected, first keyframe sent) and prints p50/p99 of
each step per join rate. Then, with the publisher paused, it joins viewers one at a time and
in bursts and reads the server's CPU time (utime+stime, the loop thread and the other threads
apart) per join.

``BENCH_JOINS`` sets the runs as ``rate:count`` pairs (default ``1:15,10:80,25:200``),
``BENCH_BITRATE`` the video bitrate (default 2000000), ``BENCH_CPU_JOINS`` how many joins
the CPU figures are taken over (default 40). The server runs at nice ``BENCH_SERVER_NICE``
(default -5, as root): on a shared two-core machine the load generator and other work would
otherwise take the CPU it waits for, and the timelines would measure them.
``BENCH_CLIENT_ICE=paced`` gives the viewers aiortc's own ICE (whose connect() returns only at
its next 20 ms pacing round: an aiortc client's own delay, which browsers do not have).
``BENCH_SERVER_LOG=FILE`` keeps the server's log lines; ``BENCH_PROFILE=DIR`` records the
server with py-spy during each run (collapsed stacks, every thread; only what holds the GIL
with ``BENCH_PROFILE_GIL=1``).
``BENCH_SERVER_PATH=DIR`` runs the server from another checkout's ``golive`` (before/after:
the viewers and the publisher stay this checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from bench.forwarding import loopback_env
from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection, ForwardingReceiver, ForwardingSender
from golive.media.rtp import keyframe_start

RUNS = tuple(
    (float(rate), int(count))
    for rate, count in (
        pair.split(":") for pair in os.environ.get("BENCH_JOINS", "1:15,10:80,25:200").split(",")
    )
)
BITRATE = int(os.environ.get("BENCH_BITRATE", "2000000"))
CPU_JOINS = int(os.environ.get("BENCH_CPU_JOINS", "40"))
FPS = 30
PAYLOAD = 1100  # bytes of VP8 payload per packet
KEYFRAME_FACTOR = 4  # a keyframe is this many times an interframe
OPUS_BYTES = 160  # 64 kbit/s in 20 ms packets
PACED_CLIENT = os.environ.get("BENCH_CLIENT_ICE") == "paced"
SERVER_NICE = int(os.environ.get("BENCH_SERVER_NICE", "-5"))
NO_ICE_SERVERS = RTCConfiguration(iceServers=[])
STORY = {
    "session requested": "admitted",
    "session answered": "answered",
    "ice connected": "ice",
    "dtls connected": "dtls",
    "first keyframe sent": "key_sent",
}


# -- the publisher: synthetic VP8 and Opus, replayed ----------------------------------------


class SyntheticPublisher:
    """A WHIP publisher sending packetized VP8 (S bit and keyframe bit right, random bytes
    otherwise) and Opus-sized audio through aiortc's SRTP path (golive's senders, which
    encode nothing, hold the SSRCs and hear keyframe requests)."""

    def __init__(self, bitrate: int) -> None:
        self.pc = ForwardingPeerConnection(NO_ICE_SERVERS)
        video = self.pc.addTransceiver("video", direction="sendonly").sender
        audio = self.pc.addTransceiver("audio", direction="sendonly").sender
        assert isinstance(video, ForwardingSender)
        assert isinstance(audio, ForwardingSender)
        self._video, self._audio = video, audio
        self._ready = asyncio.Event()
        video.on_ready = audio.on_ready = self._sender_ready
        video.on_keyframe_request = self._keyframe_wanted
        self._noise = os.urandom(1 << 16)
        per_frame = bitrate / 8 / FPS
        self._inter_packets = max(1, round(per_frame / PAYLOAD))
        self._want_keyframe = True
        self._paused = asyncio.Event()
        self._paused.set()  # set = sending
        self._task: asyncio.Task[None] | None = None
        self.keyframes = 0
        self.location = ""

    def _keyframe_wanted(self) -> None:
        self._want_keyframe = True

    def _sender_ready(self, _sender: ForwardingSender) -> None:
        if self._video.codec is not None and self._audio.codec is not None:
            self._ready.set()

    async def start(
        self, base: str, room: str, aiohttp_session: aiohttp.ClientSession | None = None
    ) -> None:
        """Publish (raises :class:`OfferRefusedError` on a refusal) and start sending; the
        session's resource is then :attr:`location`."""
        self.location, _ = await post_offer(
            self.pc, f"{base}/api/whip/publish/{room}", aiohttp_session=aiohttp_session
        )
        self._task = asyncio.create_task(self._run())

    @property
    def connected(self) -> bool:
        """Both tracks can send (ICE and DTLS up, codecs negotiated)."""
        return self._ready.is_set()

    async def wait_connected(self) -> None:
        await self._ready.wait()

    def pause(self) -> None:
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionError):  # the session ended (the server closed it)
            await self._send()

    async def _send(self) -> None:
        video, audio = self._video, self._audio
        await self._ready.wait()
        assert video.codec is not None
        assert audio.codec is not None
        vpt, apt = video.codec.payloadType, audio.codec.payloadType
        assert vpt is not None
        assert apt is not None
        vseq, aseq = random.randrange(0x10000), random.randrange(0x10000)  # noqa: S311
        vts, ats = random.randrange(1 << 32), random.randrange(1 << 32)  # noqa: S311
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0  # 10 ms ticks: audio every 2, video every 10/3
        next_video = 0.0
        while True:
            await self._paused.wait()
            now = loop.time()
            tick += 1
            due = start + tick * 0.01
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.5:  # paused or starved: do not burst to catch up
                start, tick, next_video = now, 0, 0.0
            t = tick * 0.01
            if tick % 2 == 0:
                aseq = (aseq + 1) & 0xFFFF
                ats = (ats + 960) & 0xFFFFFFFF
                packet = RtpPacket(apt, True, aseq, ats, audio.ssrc, self._noise[:OPUS_BYTES])
                await audio.transport._send_rtp(packet.serialize())  # noqa: SLF001  aiortc's SRTP path
            if t + 1e-9 >= next_video:
                next_video += 1 / FPS
                vts = (vts + 90000 // FPS) & 0xFFFFFFFF
                key = self._want_keyframe
                self._want_keyframe = False
                if key:
                    self.keyframes += 1
                count = self._inter_packets * (KEYFRAME_FACTOR if key else 1)
                for index in range(count):
                    vseq = (vseq + 1) & 0xFFFF
                    descriptor = b"\x10" if index == 0 else b"\x00"
                    header = bytes([0x00 if key else 0x01]) if index == 0 else b""
                    offset = random.randrange(len(self._noise) - PAYLOAD)  # noqa: S311
                    body = self._noise[offset : offset + PAYLOAD - len(header)]
                    packet = RtpPacket(
                        vpt, index == count - 1, vseq, vts, video.ssrc, descriptor + header + body
                    )
                    await video.transport._send_rtp(packet.serialize())  # noqa: SLF001

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pc.close()


class OfferRefusedError(RuntimeError):
    """The server did not answer an offer with 201."""

    def __init__(self, url: str, status: int, text: str) -> None:
        super().__init__(f"{url}: {status} {text}")
        self.status = status


async def post_offer(
    pc: ForwardingPeerConnection, url: str, *, aiohttp_session: aiohttp.ClientSession | None
) -> tuple[str, float]:
    """Offer, POST, answer. Returns the session's Location and when the POST was sent;
    raises :class:`OfferRefusedError` when the answer is not a 201."""
    await pc.setLocalDescription(await pc.createOffer())
    own = aiohttp_session is None
    http = aiohttp.ClientSession() if aiohttp_session is None else aiohttp_session
    try:
        posted = time.time()
        async with http.post(
            url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as response:
            answer = await response.text()
            if response.status != 201:
                raise OfferRefusedError(url, response.status, answer)
            location = response.headers["Location"]
    finally:
        if own:
            await http.close()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return location, posted


# -- the viewer process ---------------------------------------------------------------------


@dataclass
class Timeline:
    """One viewer's join, client side: wall-clock seconds (time.time)."""

    started: float  # before the offer was made
    posted: float = 0.0
    answered: float = 0.0
    ice: float | None = None
    dtls: float | None = None
    first_rtp: float | None = None
    first_kind: str = ""
    first_key: float | None = None
    session: str = ""
    error: str = ""
    status: int = 0  # the POST's, when it got an answer


@dataclass
class JoiningViewer:
    timeline: Timeline
    pc: ForwardingPeerConnection
    location: str = ""
    counted: int = 0
    up: asyncio.Event = field(default_factory=asyncio.Event)  # DTLS connected (or failed)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # first keyframe (or failed)

    async def leave(self, base: str, http: aiohttp.ClientSession) -> None:
        """DELETE the session (as a WHEP player does), then close the peer connection."""
        if self.location:
            async with http.delete(base + self.location) as response:
                await response.read()
        await self.pc.close()

    def sink(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        timeline = self.timeline
        now = time.time()
        if timeline.first_rtp is None:
            timeline.first_rtp = now
            timeline.first_kind = codec.mimeType.split("/")[0]
        if (
            timeline.first_key is None
            and codec.mimeType.lower() == "video/vp8"
            and keyframe_start("video/VP8", packet.serialize())
        ):
            timeline.first_key = now
            self.count_at_socket()
            self.done.set()

    def count_at_socket(self) -> None:
        """From now on RTP and RTCP are counted at the socket, not decrypted (STUN and DTLS
        still go to aioice and aiortc: consent checks are answered, a close is seen)."""
        for transceiver in self.pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection  # noqa: SLF001
            for protocol in connection._protocols:  # noqa: SLF001
                # (the transport calls the protocol's attribute: this one socket's, from now on)
                protocol.datagram_received = self._counter(protocol.datagram_received)  # type: ignore[method-assign,assignment]

    def _counter(self, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            if data and data[0] > 127:
                self.counted += 1
            else:
                original(data, addr)

        return datagram_received


async def join(base: str, room: str, http: aiohttp.ClientSession) -> JoiningViewer:
    timeline = Timeline(started=time.time())
    pc = ForwardingPeerConnection(NO_ICE_SERVERS)
    viewer = JoiningViewer(timeline, pc)
    for kind in ("video", "audio"):
        receiver = pc.addTransceiver(kind, direction="recvonly").receiver
        assert isinstance(receiver, ForwardingReceiver)
        receiver.sink = viewer.sink
        if PACED_CLIENT:  # aiortc's own ICE: connect() returns at a 20 ms pacing round
            receiver.transport.transport._connection.__class__ = aioice.ice.Connection  # noqa: SLF001
    dtls = pc.getTransceivers()[0].receiver.transport

    @dtls.transport.on("statechange")
    def on_ice() -> None:
        if dtls.transport.state == "completed" and timeline.ice is None:
            timeline.ice = time.time()

    @dtls.on("statechange")
    def on_dtls() -> None:
        if dtls.state == "connected" and timeline.dtls is None:
            timeline.dtls = time.time()
        if dtls.state in ("connected", "failed", "closed"):
            viewer.up.set()

    try:
        location, timeline.posted = await post_offer(
            pc, f"{base}/api/whep/play/{room}", aiohttp_session=http
        )
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        timeline.error = str(exc)[:200]
        if isinstance(exc, OfferRefusedError):
            timeline.status = exc.status
        viewer.up.set()
        viewer.done.set()
        return viewer
    timeline.answered = time.time()
    timeline.status = 201
    viewer.location = location
    timeline.session = location.rsplit("/", 1)[-1]
    return viewer


async def join_paced(
    base: str, room: str, http: aiohttp.ClientSession, rate: float, count: int
) -> list[JoiningViewer]:
    """``count`` viewers, the i-th POSTing ``i / rate`` seconds after the first."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for index in range(count):
        due = start + index / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.create_task(join(base, room, http)))
    return await asyncio.gather(*tasks)


async def run_viewers(base: str, room: str, rate: float, count: int, hold: float) -> None:
    """Join ``count`` viewers ``rate`` a second, wait for each one's first keyframe (or
    ``hold`` seconds after the last join), print one JSON timeline per viewer, close all."""
    hooks.install(("127.0.0.1",))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        loop = asyncio.get_running_loop()
        start = loop.time()
        viewers = await join_paced(base, room, http, rate, count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(v.done.wait() for v in viewers)), hold)
        for viewer in viewers:
            print(json.dumps(asdict(viewer.timeline)), flush=True)
        usage = os.times()
        print(
            json.dumps({"viewer_cpu": usage.user + usage.system, "elapsed": loop.time() - start}),
            flush=True,
        )
        print("done", flush=True)
        await asyncio.gather(*(v.leave(base, http) for v in viewers))


# -- the driver -----------------------------------------------------------------------------


class ServerStory:
    """The server's story lines, by session: when each step happened (wall clock)."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, float]] = {}
        self.problems: list[str] = []

    async def read(self, stream: asyncio.StreamReader) -> None:
        keep = Path(os.environ.get("BENCH_SERVER_LOG") or os.devnull)
        with keep.open("wb") as kept:  # noqa: ASYNC230  a local file, small writes
            await self._read(stream, kept)

    async def _read(self, stream: asyncio.StreamReader, kept: Any) -> None:
        while line := await stream.readline():
            kept.write(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            step = STORY.get(entry.get("event", ""))
            if step is not None and "session" in entry:
                when = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                self.sessions.setdefault(entry["session"], {})[step] = when.timestamp()
            elif entry.get("level") in ("warning", "error"):
                self.problems.append(f"{entry.get('event')}")


def schedstat(pid: int) -> tuple[float, float, float, float]:
    """Seconds so far: (the loop thread on a CPU, the loop thread waiting for one, every other
    thread on a CPU, every other thread waiting for one), from /proc/PID/task/*/schedstat."""
    times = [0.0, 0.0, 0.0, 0.0]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            running, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        index = 0 if task.name == str(pid) else 2
        times[index] += int(running) / 1e9
        times[index + 1] += int(waiting) / 1e9
    return times[0], times[1], times[2], times[3]


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1):  # noqa: S310  loopback
            return True
    except OSError:
        return False


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def spread(values: list[float]) -> str:
    if not values:
        return "      -/-     "
    return f"{statistics.median(values):>6.0f}/{percentile(values, 0.99):<6.0f}"


async def viewer_process(base: str, room: str, rate: float, count: int) -> list[dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.joins",
        "--viewers",
        str(count),
        "--rate",
        str(rate),
        "--room",
        room,
        "--base",
        base,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    timelines = []
    while (line := await process.stdout.readline()) and line.strip() != b"done":
        timelines.append(json.loads(line))
    await process.wait()
    return timelines


def report(rate: float, timelines: list[dict[str, Any]], story: ServerStory) -> str:
    """One line per step: p50/p99 milliseconds from the POST."""
    steps: dict[str, list[float]] = {}
    failed = 0
    first_audio = 0
    usage = [t for t in timelines if "viewer_cpu" in t]
    timelines = [t for t in timelines if "viewer_cpu" not in t]
    for timeline in timelines:
        if timeline["error"]:
            failed += 1
            continue
        posted = timeline["posted"]
        client = {
            "answer": timeline["answered"],
            "client ICE": timeline["ice"],
            "client DTLS": timeline["dtls"],
            "first RTP": timeline["first_rtp"],
            "first keyframe": timeline["first_key"],
        }
        server = story.sessions.get(timeline["session"], {})
        for name, step in (
            ("server admitted", "admitted"),
            ("server answered", "answered"),
            ("server ICE", "ice"),
            ("server DTLS", "dtls"),
            ("server keyframe sent", "key_sent"),
        ):
            if step in server:
                steps.setdefault(name, []).append((server[step] - posted) * 1e3)
        for name, when in client.items():
            if when is not None:
                steps.setdefault(name, []).append((when - posted) * 1e3)
        if timeline["first_kind"] == "audio":
            first_audio += 1
    order = [
        "server admitted",
        "server answered",
        "answer",
        "server ICE",
        "client ICE",
        "client DTLS",
        "server DTLS",
        "first RTP",
        "server keyframe sent",
        "first keyframe",
    ]
    lines = [
        (
            f"{rate:g} joins/s, {len(timelines)} viewers ({failed} failed, first packet audio "
            f"for {first_audio}); ms from POST, p50/p99:"
        )
    ]
    if usage:
        busy = usage[0]["viewer_cpu"] / max(usage[0]["elapsed"], 1e-3)
        lines[0] += f" (viewer process {busy * 100:.0f} % of a core)"
    lines += [f"  {name:<22}{spread(steps.get(name, []))}" for name in order]
    lines.append("  server side alone, ms p50/p99:")
    for name, (start, end) in SERVER_STEPS.items():
        durations = [
            (server[end] - server[start]) * 1e3
            for server in (story.sessions.get(t["session"], {}) for t in timelines)
            if start in server and end in server
        ]
        lines.append(f"    {name:<20}{spread(durations)}")
    return "\n".join(lines)


SERVER_STEPS = {
    "admitted → answered": ("admitted", "answered"),
    "answered → ICE": ("answered", "ice"),
    "ICE → DTLS": ("ice", "dtls"),
}


async def measure_cpu(base: str, pid: int, room: str, publisher: SyntheticPublisher) -> str:
    """Server CPU per join, and per leave, with the publisher paused: viewers joining one at
    a time (2/s) and all at once; the idle CPU over the same time subtracted."""
    publisher.pause()
    await asyncio.sleep(1.0)
    lines = []
    for label, rate in (("one by one (2/s)", 2.0), ("all at once", 1000.0)):
        idle = await cpu_rate(pid, 2.0)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.joins",
            "--viewers",
            str(CPU_JOINS),
            "--rate",
            str(rate),
            "--room",
            room,
            "--base",
            base,
            "--until-dtls",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        before, started = thread_cpu(pid), time.monotonic()
        profiler = await profile(pid, f"cpu-{rate:g}")
        timelines = []
        while (line := await process.stdout.readline()) and line.strip() != b"connected":
            timelines.append(json.loads(line))
        joined_cpu, joined_at = thread_cpu(pid), time.monotonic()
        process.stdin.write(b"leave\n")
        await process.stdin.drain()
        await process.wait()
        await asyncio.sleep(1.0)  # the leaves reach the server
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await profiler.wait()
        left_cpu, left_at = thread_cpu(pid), time.monotonic()
        joined = sum(1 for t in timelines if not t["error"] and t["dtls"] is not None)
        count = max(joined, 1)
        join = [
            (after - start - rate_ * (joined_at - started)) / count * 1e3
            for start, after, rate_ in zip(before, joined_cpu, idle, strict=True)
        ]
        leave = [
            (after - start - rate_ * (left_at - joined_at)) / count * 1e3
            for start, after, rate_ in zip(joined_cpu, left_cpu, idle, strict=True)
        ]
        lines.append(
            f"  {label:<18}{joined:>4} joins: join {sum(join):5.1f} ms (loop {join[0]:4.1f}, "
            f"other threads {join[1]:4.1f}), leave {sum(leave):4.1f} ms"
        )
    publisher.resume()
    return "\n".join(lines)


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far: (the loop thread, every other thread)."""
    loop_cpu, _, other, _ = schedstat(pid)
    return loop_cpu, other


async def cpu_rate(pid: int, seconds: float) -> tuple[float, float]:
    """The server's idle CPU per second: (the loop thread, every other thread)."""
    before, started = thread_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = thread_cpu(pid), time.monotonic() - started
    return (after[0] - before[0]) / elapsed, (after[1] - before[1]) / elapsed


async def profile(pid: int, name: str) -> asyncio.subprocess.Process | None:
    """With ``BENCH_PROFILE=DIR``: py-spy records the server (every thread, idle frames
    left out; only what holds the GIL with ``BENCH_PROFILE_GIL=1``) into DIR/NAME.txt (collapsed
    stacks) until sent SIGINT."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  once, before a run
    spy = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(spy),
        "record",
        "--pid",
        str(pid),
        "--rate",
        os.environ.get("BENCH_PROFILE_RATE", "250"),
        "--threads",
        "--nonblocking",
        *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
        "--format",
        "raw",
        "--output",
        str(Path(folder) / f"{name}.txt"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main() -> None:
    hooks.install(("127.0.0.1",))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = loopback_env(port, LOG_LEVEL="info", LOG_FORMAT="json", MAX_PENDING_NEGOTIATIONS="0")
    # A/B: the server's golive from another checkout (``-m`` looks in the working directory
    # first, so the server runs there)
    checkout = os.environ.get("BENCH_SERVER_PATH") or None
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "golive",
        env=env,
        cwd=checkout,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert server.stdout is not None
    with contextlib.suppress(PermissionError):  # root only: the server before the load makers
        os.setpriority(os.PRIO_PROCESS, server.pid, SERVER_NICE)
    story = ServerStory()
    reader = asyncio.create_task(story.read(server.stdout))
    try:
        for _ in range(100):
            if await asyncio.to_thread(healthy, base):
                break
            await asyncio.sleep(0.1)
        print(
            f"golive joins: one publisher (synthetic VP8 ~{BITRATE / 1e6:g} Mbit/s + Opus), "
            "viewers joining at a set rate (they stay until the run ends)"
        )
        for index, (rate, count) in enumerate(RUNS):
            room = f"joins{index}"
            publisher = SyntheticPublisher(BITRATE)
            await publisher.start(base, room)
            await asyncio.sleep(1.0)
            sched_before = schedstat(server.pid)
            started = time.monotonic()
            profiler = await profile(server.pid, f"run{index}-{rate:g}")
            timelines = await viewer_process(base, room, rate, count)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                await profiler.wait()
            elapsed = time.monotonic() - started
            sched = [
                (after - before) / elapsed * 100
                for before, after in zip(sched_before, schedstat(server.pid), strict=True)
            ]
            print(report(rate, timelines, story))
            print(
                f"  server over the run, % of wall time: loop thread on a CPU {sched[0]:.0f}, "
                f"waiting for one {sched[1]:.0f}; other threads on a CPU {sched[2]:.0f}, "
                f"waiting {sched[3]:.0f}",
                flush=True,
            )
            await publisher.close()
            await asyncio.sleep(2.0)
        room = "joins-cpu"
        publisher = SyntheticPublisher(BITRATE)
        await publisher.start(base, room)
        await asyncio.sleep(1.0)
        print("server CPU per join and per leave, publisher paused (idle CPU subtracted):")
        print(await measure_cpu(base, server.pid, room, publisher), flush=True)
        await publisher.close()
        if story.problems:
            print(f"server warnings/errors: {sorted(set(story.problems))}")
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
        reader.cancel()


async def run_until_dtls(base: str, room: str, rate: float, count: int) -> None:
    """The CPU measurement's viewers: join, wait for DTLS, print, leave when told."""
    hooks.install(("127.0.0.1",))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        viewers = await join_paced(base, room, http, rate, count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(v.up.wait() for v in viewers)), 30)
        for viewer in viewers:
            print(json.dumps(asdict(viewer.timeline)), flush=True)
        print("connected", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "leave"
        await asyncio.gather(*(v.leave(base, http) for v in viewers))


if __name__ == "__main__":
    configure_logging("warning", "json")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--viewers", type=int, help="run as the viewer process")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--room")
    parser.add_argument("--base")
    parser.add_argument("--until-dtls", action="store_true")
    arguments = parser.parse_args()
    if arguments.viewers and arguments.until_dtls:
        asyncio.run(
            run_until_dtls(arguments.base, arguments.room, arguments.rate, arguments.viewers)
        )
    elif arguments.viewers:
        asyncio.run(
            run_viewers(arguments.base, arguments.room, arguments.rate, arguments.viewers, 10.0)
        )
    else:
        asyncio.run(main())
