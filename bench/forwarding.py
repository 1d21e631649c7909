"""``make bench``: one room, one publisher, N viewers, measured the way users feel it.

Every process runs in the loopback-only namespace (``scripts/loopback-netns``), on the same
2 cores; this one (the driver) only starts the others, reads ``/proc`` and ``/metrics``, and
prints. Per run:

1. **The server**, ``python -m golive`` in its own process, a fresh one per run (RSS figures
   are then not inflated by an earlier run's allocations), on its embedded defaults plus what a
   bench needs: loopback ICE, no STUN server, and every admission cap and rate limit lifted
   (``MAX_PENDING_NEGOTIATIONS=0``, ``MAX_SESSIONS=0``, ``HTTP_MAX_CONNECTIONS=0``,
   ``RATE_LIMIT_RPS=0``, ``MAX_SUBS_PER_ROOM=0``). Its CPU is ``utime + stime`` of
   ``/proc/PID/stat`` (all its threads), its memory ``VmRSS`` (``Pss`` of
   ``smaps_rollup`` too, in the JSON). *RSS idle*: one second after it answers ``/healthz``.
2. **The publisher** (:mod:`bench.publisher`): VP8 + Opus 64 kbit/s over WHIP, encoded once
   before publishing (2 Mbit/s at 640x480, or 300 kbit/s at 320x240 for the 1000-viewer
   size), sent as RTP by a real aiortc peer connection; a keyframe request is answered on
   the next frame. Then 3 s with the publisher alone: the server's CPU rate with no viewer
   (*base*) and *RSS with the publisher only*.
3. **The viewers** (:mod:`bench.viewers`): one or more load processes (about one per
   :data:`LOADER_PACKETS` packets a second; ``BENCH_LOAD_PROCS`` to choose) doing real WHEP
   POSTs, ICE and DTLS, then counting RTP at their sockets from the clear header, without
   decrypting (except each viewer's video until its first keyframe is found) and without
   answering anything. Viewers join paced, viewer ``i`` at ``start + i / 25`` s, across
   processes. The *join phase* lasts from the first POST until every viewer has its first
   keyframe (or failed, or 30 s past the last POST).
4. **The hold**: 1 s after the join phase, ``BENCH_HOLD`` (15) seconds at a constant
   audience. Everything per packet is measured over the hold only.

Figures, per size the median of ``BENCH_RUNS`` (3) runs:

- *server CPU µs / delivered packet*: the server's CPU over the hold divided by the packets
  it sent to viewers meanwhile (``live_rtp_packets_total{room}``): all of its work (receiving
  the publisher, RTCP, timers, actors) shared over what it delivered.
- *loss*: 1 - received / expected over the hold, summed over all viewers' streams, from
  sequence numbers (expected = highest - lowest + 1 per SSRC, across the 16-bit wrap; a
  duplicate does not count as received; see :mod:`bench.counting`). Whatever lost it (the
  server dropping under backpressure, a full socket buffer at either end, the publisher's
  packets dropped before the server read them), a viewer sees a gap (unless the server's NACK
  to the publisher, which answers them as browsers do, filled it). Also shown, to say where:
  packets the server dropped on purpose (``golive_rtp_packets_dropped_total``), and the
  kernel's drops for a full receive buffer at the server's sockets (the publisher's packets
  it did not read in time: each one is lost by every viewer) and at the viewers' sockets (the
  load generator fell behind), from ``/proc/net/udp``.
- *its loop waiting for a CPU*: the time the server's main thread (its event loop) was
  runnable but not running, from ``/proc/PID/task/PID/schedstat``: the machine's two cores
  are shared by every process here (and by anything else running): when this is large, the
  machine, not the server, was the limit.
- *viewers connected*: with a first RTP packet; *receiving at the end*: a packet in the last
  second of the hold.
- *POST → first RTP / first keyframe*, p50 and p99 over all viewers: from the moment the
  viewer's POST goes out (its offer made and its candidates gathered) to the arrival at its
  socket of its first RTP packet, and of the first packet of a VP8 keyframe (found by
  decrypting that viewer's video packets until one starts a keyframe, then decrypting no
  more). Includes the viewer's own DTLS work, on the same machine.
- *CPU per join*: the server's CPU over the join phase, less what the same time and packets
  cost without joins: ``(cpu_join - base * t_join - c * delivered_join) / joins``, where
  ``base`` is the CPU rate with the publisher alone (step 2), ``c = (cpu_hold - base *
  t_hold) / delivered_hold`` the marginal CPU of a delivered packet in the hold, and
  ``delivered_join`` the packets delivered during the join phase (to the viewers already
  there). So it is the handshake, the negotiation, the actors and the keyframe wait of a
  join, not the forwarding around it. When the server is saturated, ``c`` (and so this
  figure) is unreliable: compare it only where the loss is low.
- *RSS per viewer*: (mean RSS over the hold - RSS with the publisher only) / viewers
  connected. *RSS growth over the hold*: mean of the last 5 s minus mean of the first 5 s
  (0.5 s samples): nothing should grow at a constant audience.
- *delay growth over the hold*: for every viewer, once a second, the arrival time of its
  newest audio packet minus that packet's RTP timestamp (in seconds, unwrapped); the median
  of the last 5 s minus the median of the first 5 s. Median and worst over viewers. A server
  queueing packets (or a load process falling behind) shows as growth; the publisher sends by
  a fixed schedule, so its own lateness shows too (its worst lateness is in the JSON).
- *load generator CPU* (cores, all processes together, and the busiest one) and *publisher
  CPU* over the hold: if one load process nears a full core, its own lateness shows up as
  loss and delay: use more (``BENCH_LOAD_PROCS``).

Knobs (environment): ``BENCH_SIZES`` (default ``100,250,1000:300``: viewers, ``:kbit/s`` of
video when not 2000), ``BENCH_RUNS`` (3), ``BENCH_HOLD`` (15 s), ``BENCH_JOIN_RATE`` (25
joins/s), ``BENCH_LOAD_PROCS`` (automatic), ``BENCH_SERVER_LOG_LEVEL`` (``warning``; the
server's log is kept when a run goes wrong), ``BENCH_JSON`` (write every run and the medians
to this file), ``BENCH_PROFILE`` (a directory, or ``1`` for ``bench-profiles``: one extra run
per size with ``py-spy record`` on the server during the hold; its figures are not counted;
the summary of the server's hottest functions is printed and the raw collapsed stacks kept,
for ``flamegraph.pl`` or speedscope). Reproduce the profile alone with
``BENCH_SIZES=100 BENCH_RUNS=0 BENCH_PROFILE=1 scripts/loopback-netns .venv/bin/python -m
bench.forwarding``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Packets a second one load process is given at most (measured: a load process spends about
#: 7 µs of CPU per packet received, user and kernel, so this keeps each near a third of a
#: core, well away from being the bottleneck).
LOADER_PACKETS = 50_000
HOLD = float(os.environ.get("BENCH_HOLD", "15"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
JOIN_RATE = float(os.environ.get("BENCH_JOIN_RATE", "25"))
BASE_WINDOW = 3.0  # seconds with the publisher alone
SETTLE = 1.0  # seconds between the join phase and the hold
JOIN_GRACE = 30.0  # seconds after the last POST for every viewer to get its keyframe
GROWTH_SPAN = 5.0  # seconds at each end of the hold compared (RSS, delay)
RSS_INTERVAL = 0.5
AUDIO_PACKETS = 50  # Opus, 20 ms


@dataclass(frozen=True)
class Size:
    viewers: int
    video_kbps: int = 2000

    @property
    def label(self) -> str:
        return f"N={self.viewers}" + ("" if self.video_kbps == 2000 else f" @{self.video_kbps}k")

    @property
    def picture(self) -> tuple[int, int, int]:
        """Width, height and noise block for the publisher's video (see bench.publisher)."""
        return (640, 480, 160) if self.video_kbps >= 1000 else (320, 240, 64)

    @property
    def packets_per_second(self) -> float:
        """What the viewers receive in all, roughly (1.2 kB video packets, 50 audio/s)."""
        return self.viewers * (self.video_kbps * 1000 / 8 / 1200 + AUDIO_PACKETS)


def sizes_from(text: str) -> list[Size]:
    sizes = []
    for item in text.split(","):
        viewers, _, kbps = item.strip().partition(":")
        sizes.append(Size(int(viewers), int(kbps) if kbps else 2000))
    return sizes


# -- processes --------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child, before exec: killed if the driver dies (even by SIGKILL); deaf to SIGINT
    (Ctrl-C reaches the whole process group: the driver alone decides, and ends every child
    with SIGTERM in order)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU of a process (all its threads) so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    return sum(cpu_times(pid))


def memory_mib(pid: int) -> tuple[float, float]:
    """VmRSS and Pss of a process, MiB."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    return rss, pss


def socket_inodes(pid: int) -> set[str]:
    """The inodes of a process's sockets."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def udp_socket_drops() -> dict[str, int]:
    """Datagrams dropped at each UDP socket of this namespace (full receive buffer), by inode
    (``/proc/net/udp``'s last column)."""
    drops = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 13:
                    drops[fields[9]] = int(fields[-1])
    return drops


def drops_of(pids: list[int], before: dict[str, int], after: dict[str, int]) -> int:
    """Datagrams dropped between two readings at the sockets the processes hold now."""
    inodes = set().union(*(socket_inodes(pid) for pid in pids))
    return sum(after.get(i, 0) - before.get(i, 0) for i in inodes)


def run_queue_seconds(pid: int) -> float:
    """Time a process's main thread (golive's event loop) spent runnable but waiting for a
    CPU (``/proc/PID/task/PID/schedstat``): the machine, not the server, was the limit."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def udp_receive_drops() -> int:
    """UDP datagrams the kernel dropped for a full receive buffer, in this namespace."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    for names, values in itertools.pairwise(lines):
        if names[0] == "Udp:" and values[0] == "Udp:" and "RcvbufErrors" in names:
            return int(values[names.index("RcvbufErrors")])
    return 0


class Child:
    """A process the driver started: its JSON-line events on stdout, commands on stdin."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid

    async def event(self, name: str, within: float) -> dict[str, Any]:
        """The next event called ``name`` (other lines are skipped), within ``within`` s."""
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    code = await self.process.wait()
                    raise RuntimeError(f"{self.name} exited ({code}) before {name!r}")
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and message.get("event") == name:
                        return message

    def send(self, command: str) -> None:
        if self.process.stdin is not None and self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                self.process.stdin.write(command.encode() + b"\n")

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.pid)
        except (OSError, IndexError):
            return math.nan

    async def stop(self, within: float, grace: float = 5.0) -> None:
        """Wait up to ``within`` seconds for it to end by itself; then SIGTERM and ``grace``
        seconds; then SIGKILL."""
        process = self.process
        for step, wait in ((signal.SIGTERM, within), (signal.SIGKILL, grace)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), wait)
            if process.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(step)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5.0)


@dataclass
class Processes:
    """Every child of the driver, so that none outlives it (error, Ctrl-C or a kill)."""

    children: list[Child] = field(default_factory=list)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="golive-bench-")))

    async def start(
        self,
        name: str,
        *argv: str,
        env: dict[str, str] | None = None,
        log: str | None = None,
        events: bool = True,
    ) -> Child:
        """Start a child; its stderr (and stdout, unless it speaks in ``events``) goes to a
        log file in :attr:`directory`."""
        stderr = (self.directory / (log or f"{name}.log")).open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if events else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if events else stderr,
                stderr=stderr,
                env=env,
                preexec_fn=_child_setup,
            )
        finally:
            stderr.close()
        child = Child(name, process)
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        await asyncio.gather(*(c.stop(0.0) for c in self.children), return_exceptions=True)
        self.children.clear()

    def kill_all(self) -> None:
        """Last resort, synchronous (the loop may be gone)."""
        for child in self.children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)


# -- the server, seen from outside -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  loopback only
        return bytes(response.read())


@dataclass(frozen=True)
class Counters:
    """What the server counted so far, and when (the driver's monotonic clock)."""

    at: float
    cpu: float
    system: float  # of which in the kernel (sendto, recvfrom, epoll...)
    delivered: float  # live_rtp_packets_total{room}
    dropped: float  # golive_rtp_packets_dropped_total, every reason


async def counters(base: str, room: str, server: Child) -> Counters:
    # (an overloaded server answers late, but it answers: that is a figure, not a failure)
    text = (await asyncio.to_thread(http_get, f"{base}/metrics", 30.0)).decode()
    at = time.monotonic()
    try:
        user, system = cpu_times(server.pid)
    except (OSError, IndexError):
        user = system = math.nan
    delivered = dropped = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "live_rtp_packets_total" and sample.labels.get("room") == room:
                delivered += sample.value
            elif sample.name == "golive_rtp_packets_dropped_total":
                dropped += sample.value
    return Counters(at, user + system, system, delivered, dropped)


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def healthy(base: str) -> bool:
    try:
        http_get(f"{base}/healthz", timeout=1)
    except OSError:
        return False
    return True


def room_live(base: str, room: str) -> bool:
    rooms = json.loads(http_get(f"{base}/api/rooms", 30.0))
    return any(r["name"] == room and r["hasPublisher"] and r["tracks"] >= 2 for r in rooms)


async def sample_memory(pid: int, into: list[tuple[float, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            into.append((time.monotonic(), memory_mib(pid)[0]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_INTERVAL)


# -- one run ------------------------------------------------------------------------------------


def loaders_for(size: Size) -> int:
    chosen = os.environ.get("BENCH_LOAD_PROCS")
    if chosen:
        return max(1, int(chosen))
    return max(1, min(size.viewers, math.ceil(size.packets_per_second / LOADER_PACKETS)))


def loopback_env(port: int, **settings: str) -> dict[str, str]:
    """The environment of a golive process serving 127.0.0.1:``port`` with loopback ICE (no
    STUN), plus ``settings``."""
    return {
        **os.environ,
        "HTTP_ADDR": f"127.0.0.1:{port}",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        **settings,
    }


def server_env(port: int) -> dict[str, str]:
    return {
        **loopback_env(port),
        "LOG_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "warning"),
        # lift every cap: measure forwarding and joins, not admission control
        "MAX_PENDING_NEGOTIATIONS": "0",
        "MAX_SESSIONS": "0",
        "MAX_SUBS_PER_ROOM": "0",
        "HTTP_MAX_CONNECTIONS": "0",
        "RATE_LIMIT_RPS": "0",
        "RECORD_ENABLED": "0",
        "PPROF": "0",
    }


async def run_once(  # noqa: PLR0915  one run, step by step, reads best in one piece
    size: Size, processes: Processes, profile: Path | None = None
) -> dict[str, Any]:
    python = sys.executable
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    room = f"bench{size.viewers}"
    server = await processes.start(
        "server", python, "-m", "golive", env=server_env(port), log="server.log", events=False
    )
    await wait_for(lambda: healthy(base), 60, "the server to answer /healthz")
    await asyncio.sleep(1.0)
    rss_idle, pss_idle = memory_mib(server.pid)

    width, height, block = size.picture
    publisher = await processes.start(
        "publisher",
        python,
        "-m",
        "bench.publisher",
        "--base",
        base,
        "--room",
        room,
        "--video-bitrate",
        str(size.video_kbps * 1000),
        "--width",
        str(width),
        "--height",
        str(height),
        "--block",
        str(block),
    )
    published = await publisher.event("publishing", 120)
    await wait_for(lambda: room_live(base, room), 30, "the room to be live")
    await asyncio.sleep(1.0)

    base_start = await counters(base, room, server)
    samples: list[tuple[float, float]] = []
    stop_sampling = asyncio.Event()
    sampling = asyncio.ensure_future(sample_memory(server.pid, samples, stop_sampling))
    await asyncio.sleep(BASE_WINDOW)
    base_end = await counters(base, room, server)
    base_rate = (base_end.cpu - base_start.cpu) / (base_end.at - base_start.at)
    rss_publisher = statistics.mean(r for _, r in samples) if samples else math.nan
    pss_publisher = memory_mib(server.pid)[1]

    count = loaders_for(size)
    loaders = [
        await processes.start(
            f"viewers{index}",
            python,
            "-m",
            "bench.viewers",
            "--base",
            base,
            "--room",
            room,
            "--first",
            str(index),
            "--step",
            str(count),
            "--total",
            str(size.viewers),
            "--rate",
            str(JOIN_RATE),
            "--grace",
            str(JOIN_GRACE),
            "--span",
            str(min(GROWTH_SPAN, HOLD / 3)),
            "--out",
            str(processes.directory / f"viewers{index}.json"),
            log=f"viewers{index}.log",
        )
        for index in range(count)
    ]
    await asyncio.gather(*(loader.event("ready", 60) for loader in loaders))
    start = time.monotonic() + 0.2
    for loader in loaders:
        loader.send(f"start {start}")
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    join_start = await counters(base, room, server)
    joining = size.viewers / JOIN_RATE + JOIN_GRACE + 30
    joined = await asyncio.gather(*(loader.event("joined", joining) for loader in loaders))
    join_end = await counters(base, room, server)
    await asyncio.sleep(SETTLE)

    loader_cpu = [loader.cpu() for loader in loaders]
    publisher_cpu = publisher.cpu()
    drops = udp_receive_drops()
    socket_drops = udp_socket_drops()
    waited = run_queue_seconds(server.pid)
    samples.clear()
    hold_start = await counters(base, room, server)
    for loader in loaders:
        loader.send("hold")
    publisher.send("count")
    sent_start = (await publisher.event("count", 10))["packets"]
    spy = None
    if profile is not None:
        spy = await profile_server(processes, server.pid, profile / f"server-{size.viewers}.txt")
    await asyncio.sleep(HOLD)
    hold_end = await counters(base, room, server)
    for loader in loaders:
        loader.send("end")
    publisher.send("count")
    sent = (await publisher.event("count", 10))["packets"] - sent_start
    alive = await asyncio.to_thread(room_live, base, room)
    drops = udp_receive_drops() - drops
    waited = run_queue_seconds(server.pid) - waited
    socket_drops_end = udp_socket_drops()
    server_drops = drops_of([server.pid], socket_drops, socket_drops_end)
    viewer_drops = drops_of([loader.pid for loader in loaders], socket_drops, socket_drops_end)
    publisher_cpu = publisher.cpu() - publisher_cpu
    loader_cpu = [loader.cpu() - before for loader, before in zip(loaders, loader_cpu, strict=True)]
    rss_hold = [(t, r) for t, r in samples if hold_start.at <= t <= hold_end.at]
    pss_hold = memory_mib(server.pid)[1]
    stop_sampling.set()
    await sampling
    await asyncio.gather(*(loader.event("done", 60) for loader in loaders))
    reports = [
        json.loads((processes.directory / f"viewers{index}.json").read_text())
        for index in range(count)
    ]
    if spy is not None:
        await spy.stop(30)

    for loader in loaders:
        loader.send("close")
    publisher.send("stop")
    stopped = await publisher.event("stopped", 30)
    await asyncio.gather(*(loader.stop(30) for loader in loaders), publisher.stop(10))
    await server.stop(0.0, grace=20.0)
    await processes.stop_all()
    return summarize(
        size,
        loaders=count,
        published=published,
        stopped=stopped,
        joined=joined,
        reports=reports,
        counters={"base": (base_start, base_end), "join": (join_start, join_end)},
        hold=(hold_start, hold_end),
        base_rate=base_rate,
        memory={
            "rss_idle": rss_idle,
            "pss_idle": pss_idle,
            "rss_publisher": rss_publisher,
            "pss_publisher": pss_publisher,
            "pss_hold": pss_hold,
        },
        rss_hold=rss_hold,
        loader_cpu=loader_cpu,
        publisher_cpu=publisher_cpu,
        udp_drops=(drops, server_drops, viewer_drops),
        waited=waited,
        sent=sent,
        alive=alive,
    )


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * fraction) - 1)]


def growth(samples: list[tuple[float, float]], span: float) -> float | None:
    if not samples:
        return None
    start, end = samples[0][0], samples[-1][0]
    first = [v for t, v in samples if t < start + span]
    last = [v for t, v in samples if t > end - span]
    return statistics.mean(last) - statistics.mean(first) if first and last else None


def summarize(
    size: Size,
    *,
    loaders: int,
    published: dict[str, Any],
    stopped: dict[str, Any],
    joined: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    counters: dict[str, tuple[Counters, Counters]],
    hold: tuple[Counters, Counters],
    base_rate: float,
    memory: dict[str, float],
    rss_hold: list[tuple[float, float]],
    loader_cpu: list[float],
    publisher_cpu: float,
    udp_drops: tuple[int, int, int],
    waited: float,
    sent: int,
    alive: bool,
) -> dict[str, Any]:
    """One run's figures (see the module's docstring for what each is)."""
    viewers = [v for report in reports for v in report["viewers"]]
    hold_start, hold_end = hold
    seconds = hold_end.at - hold_start.at
    cpu = hold_end.cpu - hold_start.cpu
    # (a room that ended takes its counter with it: nothing can be said per packet then)
    delivered = hold_end.delivered - hold_start.delivered if alive else 0.0
    connected = [v for v in viewers if v["to_rtp_ms"] is not None]
    received = sum(v["received"] for v in connected)
    # A viewer still receiving at the end: what its sequence numbers say it missed. One that
    # stopped receiving (the room ended, say) missed, besides, whatever the publisher made
    # after: expected, at least, every packet the publisher made during the hold.
    expected = sum(
        v["expected"] if v["receiving_at_end"] else max(v["expected"], sent) for v in connected
    )
    to_rtp = [v["to_rtp_ms"] for v in connected]
    to_keyframe = [v["to_keyframe_ms"] for v in viewers if v["to_keyframe_ms"] is not None]
    delays = [v["delay_growth_ms"] for v in viewers if v["delay_growth_ms"] is not None]
    posted = sorted(v["posted"] for v in viewers if v["posted"])
    join_start, join_end = counters["join"]
    per_packet = (cpu - base_rate * seconds) / delivered if delivered > 0 else None
    join_cpu = (
        None
        if per_packet is None
        else join_end.cpu
        - join_start.cpu
        - base_rate * (join_end.at - join_start.at)
        - per_packet * (join_end.delivered - join_start.delivered)
    )
    rss_at_n = statistics.mean(r for _, r in rss_hold) if rss_hold else math.nan
    errors = Counter(v["error"] for v in viewers if v["error"])
    return {
        "viewers": size.viewers,
        "video_kbps": size.video_kbps,
        "published_kbps": published["video_kbps"] + published["audio_kbps"],
        "load_processes": loaders,
        "hold_s": seconds,
        "server_cpu_cores": cpu / seconds,
        "server_system_pct": 100 * (hold_end.system - hold_start.system) / cpu if cpu else None,
        "server_us_per_packet": cpu / delivered * 1e6 if delivered > 0 else None,
        "server_marginal_us_per_packet": None if per_packet is None else per_packet * 1e6,
        "server_base_cores": base_rate,
        "delivered_per_s": delivered / seconds,
        "received_mbps_per_viewer": (
            sum(r["datagram_bytes"] for r in reports) * 8 / seconds / len(connected) / 1e6
            if connected
            else None
        ),
        "loss_pct": 100 * (1 - received / expected) if expected else None,
        "received_of_delivered_pct": 100 * received / delivered if delivered > 0 else None,
        "server_dropped": hold_end.dropped - hold_start.dropped,
        "udp_receive_drops": udp_drops[0],
        "udp_drops_at_server": udp_drops[1],
        "udp_drops_at_viewers": udp_drops[2],
        "server_loop_waiting_pct": 100 * waited / seconds,
        "duplicates": sum(r["duplicates"] for r in reports),
        "reordered": sum(r["reordered"] for r in reports),
        "connected": len(connected),
        "receiving_at_end": sum(1 for v in viewers if v["receiving_at_end"]),
        "first_video_is_keyframe": sum(1 for v in viewers if v["first_video_is_keyframe"]),
        "errors": dict(errors.most_common(5)),
        "room_alive_at_end": alive,
        "publisher_sent": sent,
        "publisher_connection": stopped.get("connection"),
        "join_rate": (len(posted) - 1) / (posted[-1] - posted[0]) if len(posted) > 1 else None,
        "join_phase_s": join_end.at - join_start.at,
        "to_answer_p50_ms": percentile([v["to_answer_ms"] for v in connected], 0.5),
        "to_rtp_p50_ms": percentile(to_rtp, 0.5),
        "to_rtp_p99_ms": percentile(to_rtp, 0.99),
        "to_keyframe_p50_ms": percentile(to_keyframe, 0.5),
        "to_keyframe_p99_ms": percentile(to_keyframe, 0.99),
        "cpu_per_join_ms": (
            join_cpu / len(connected) * 1e3 if connected and join_cpu is not None else None
        ),
        "rss_idle_mib": memory["rss_idle"],
        "rss_publisher_mib": memory["rss_publisher"],
        "rss_at_n_mib": rss_at_n,
        "rss_per_viewer_mib": (
            (rss_at_n - memory["rss_publisher"]) / len(connected) if connected else None
        ),
        "rss_growth_mib": growth(rss_hold, min(GROWTH_SPAN, seconds / 3)),
        "rss_hold_samples": [
            (round(t - hold_start.at, 2), round(r, 2)) for t, r in rss_hold
        ],  # (seconds into the hold, MiB)
        "pss_idle_mib": memory["pss_idle"],
        "pss_publisher_mib": memory["pss_publisher"],
        "pss_at_n_mib": memory["pss_hold"],
        "delay_growth_p50_ms": percentile(delays, 0.5),
        "delay_growth_max_ms": max(delays) if delays else None,
        "loader_cpu_cores": sum(loader_cpu) / seconds,
        "loader_cpu_max_cores": max(loader_cpu) / seconds,
        "publisher_cpu_cores": publisher_cpu / seconds,
        "publisher_late_max_ms": stopped.get("late_max_ms"),
        "publisher_keyframes": stopped.get("keyframes"),
        "publisher_resent": stopped.get("resent"),
        "joined_events": joined,
    }


# -- profile ------------------------------------------------------------------------------------


async def profile_server(processes: Processes, pid: int, output: Path) -> Child:
    """``py-spy record`` of the server for up to 10 s of the hold, as collapsed stacks."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("BENCH_PROFILE needs py-spy: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    seconds = str(max(1, int(min(10.0, HOLD))))
    return await processes.start(
        "py-spy",
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        seconds,
        "--rate",
        "100",
        "--idle",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
        log="py-spy.log",
        events=False,
    )


def profile_summary(path: Path, top: int = 20) -> list[str]:
    """The event loop's hottest functions in a py-spy raw (collapsed) profile taken with
    ``--idle``: only the main thread's stacks (golive's event loop; the actors' threads sleep
    on their inboxes), by own samples (the frame on top of the stack: where the time went)
    and by inclusive samples (anywhere in the stack). Shares are of the loop thread's wall
    time: what ``select`` holds is the loop waiting for something to do."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames or not frames[0].startswith("_run_module_as_main"):
            continue  # another thread than the loop's
        samples = int(number)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return ["(no samples of the event loop's thread)"]
    idle = sum(n for name, n in own.items() if name.split(" (")[0].endswith(".select"))
    busy = 100 * (total - idle) / total
    lines = [f"{total} samples of the event loop's thread, {busy:.0f} % busy; own time:"]
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("inclusive time (anywhere in the stack):")
    lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return lines


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` → ``name (file.py)``; process and thread frames dropped."""
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = Path(where).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({short})"


# -- the report --------------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else None


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


ROWS: list[tuple[str, Callable[[list[dict[str, Any]]], str]]] = [
    ("video + audio sent (kbit/s)", lambda r: _f(median(r, "published_kbps"), 0)),
    ("received per viewer (Mbit/s, wire)", lambda r: _f(median(r, "received_mbps_per_viewer"), 2)),
    ("packets delivered / s", lambda r: _f(median(r, "delivered_per_s"), 0)),
    ("server CPU µs / delivered packet", lambda r: _f(median(r, "server_us_per_packet"))),
    ("server CPU (cores, hold)", lambda r: _f(median(r, "server_cpu_cores"), 2)),
    ("  of which in the kernel (%)", lambda r: _f(median(r, "server_system_pct"), 0)),
    (
        "  its loop waiting for a CPU (% of the hold)",
        lambda r: _f(median(r, "server_loop_waiting_pct")),
    ),
    ("loss % (sequence gaps)", lambda r: _f(median(r, "loss_pct"), 2)),
    (
        "  dropped: by server / kernel at server / at viewers",
        lambda r: (
            _pair(r, "server_dropped", "udp_drops_at_server")
            + f" / {_f(median(r, 'udp_drops_at_viewers'), 0)}"
        ),
    ),
    ("viewers connected", lambda r: _of(r, "connected")),
    (
        "  room still live at the end (runs)",
        lambda r: f"{sum(1 for run in r if run['room_alive_at_end'])} / {len(r)}",
    ),
    ("  receiving at the end", lambda r: _of(r, "receiving_at_end")),
    ("  first video packet a keyframe", lambda r: _of(r, "first_video_is_keyframe")),
    ("joins / s (achieved)", lambda r: _f(median(r, "join_rate"))),
    ("POST → first RTP p50 / p99 (ms)", lambda r: _pair(r, "to_rtp_p50_ms", "to_rtp_p99_ms")),
    (
        "POST → first keyframe p50 / p99 (ms)",
        lambda r: _pair(r, "to_keyframe_p50_ms", "to_keyframe_p99_ms"),
    ),
    ("CPU per join (ms)", lambda r: _f(median(r, "cpu_per_join_ms"))),
    ("RSS idle (MiB)", lambda r: _f(median(r, "rss_idle_mib"))),
    ("RSS publisher only / at N (MiB)", lambda r: _pair(r, "rss_publisher_mib", "rss_at_n_mib")),
    ("RSS per viewer (MiB)", lambda r: _f(median(r, "rss_per_viewer_mib"), 3)),
    ("RSS growth over the hold (MiB)", lambda r: _f(median(r, "rss_growth_mib"), 2)),
    (
        "delay growth over the hold p50 / max (ms)",
        lambda r: _pair(r, "delay_growth_p50_ms", "delay_growth_max_ms", 1),
    ),
    (
        "load generator CPU (cores: all / busiest)",
        lambda r: (
            _pair(r, "loader_cpu_cores", "loader_cpu_max_cores", 2)
            + f" [{_f(median(r, 'load_processes'), 0)}]"
        ),
    ),
    ("publisher CPU (cores)", lambda r: _f(median(r, "publisher_cpu_cores"), 2)),
]


def _pair(runs: list[dict[str, Any]], first: str, second: str, digits: int = 0) -> str:
    return f"{_f(median(runs, first), digits)} / {_f(median(runs, second), digits)}"


def _of(runs: list[dict[str, Any]], key: str) -> str:
    return f"{_f(median(runs, key), 0)} / {runs[0]['viewers']}" if runs else "-"


NOTES = """\
How (python -m bench.forwarding --help has it all): CPU from /proc/PID/stat over the hold,
divided by the packets the server delivered (live_rtp_packets_total). Loss from the viewers'
sequence numbers (a viewer that stopped receiving: from what the publisher sent). First RTP
and first keyframe: kernel receive time at the viewer's socket minus the time its POST went
out; the keyframe found by decrypting the viewer's video until one starts a VP8 keyframe, and
nothing after. CPU per join: the server's CPU during the join phase, less the CPU rate with
the publisher alone and the marginal CPU of each packet delivered meanwhile (from the hold),
per join; unreliable where the server is saturated (loss). RSS per viewer: (mean RSS over the
hold - RSS with the publisher alone) / viewers. Growth: last 5 s minus first 5 s of the hold
(delay: arrival time minus RTP time of each viewer's newest audio packet, sampled each second)."""


def table(results: dict[Size, list[dict[str, Any]]]) -> str:
    sizes = [s for s in results if results[s]]
    width = max(len(label) for label, _ in ROWS) + 2
    columns = [max(18, len(s.label) + 2) for s in sizes]
    lines = [" " * width + "".join(s.label.rjust(c) for s, c in zip(sizes, columns, strict=True))]
    for label, cell in ROWS:
        cells = [cell(results[s]).rjust(c) for s, c in zip(sizes, columns, strict=True)]
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


def run_lines(run: dict[str, Any]) -> Iterator[str]:
    yield (
        f"  run: {_f(run['server_us_per_packet'])} µs/pkt, loss {_f(run['loss_pct'], 2)} %, "
        f"{run['connected']}/{run['viewers']} connected, first RTP "
        f"{_f(run['to_rtp_p50_ms'], 0)}/{_f(run['to_rtp_p99_ms'], 0)} ms, keyframe "
        f"{_f(run['to_keyframe_p50_ms'], 0)}/{_f(run['to_keyframe_p99_ms'], 0)} ms, "
        f"join {_f(run['cpu_per_join_ms'])} ms CPU, server {_f(run['server_cpu_cores'], 2)} "
        f"cores, load {_f(run['loader_cpu_max_cores'], 2)} cores max"
    )
    if run["errors"]:
        yield f"    failures: {run['errors']}"
    if not run["room_alive_at_end"]:
        yield (
            "    the room ended during the hold (the publisher's connection: "
            f"{run['publisher_connection']}): no figure per delivered packet"
        )


async def bench(processes: Processes) -> None:
    sizes = sizes_from(os.environ.get("BENCH_SIZES", "100,250,1000:300"))
    profile_env = os.environ.get("BENCH_PROFILE", "")
    profile = (
        None
        if profile_env in ("", "0")
        else Path("bench-profiles" if profile_env == "1" else profile_env)
    )
    print(
        f"golive forwarding: one room, one publisher (VP8 + Opus 64 kbit/s), N viewers joining "
        f"at {JOIN_RATE:g}/s, {HOLD:g} s held; medians of {RUNS} run(s)",
        flush=True,
    )
    results: dict[Size, list[dict[str, Any]]] = {}
    keep = False  # the children's logs, when a run went wrong
    try:
        for size in sizes:
            results[size] = []
            for _ in range(RUNS):
                run = await run_once(size, processes)
                results[size].append(run)
                keep = keep or bool(run["errors"]) or not run["room_alive_at_end"]
                for line in run_lines(run):
                    print(f"{size.label}{line}", flush=True)
            if profile is not None:
                await run_once(size, processes, profile)
                path = profile / f"server-{size.viewers}.txt"
                print(f"\nprofile of the server at {size.label} ({path}):")
                print("\n".join(profile_summary(path)), flush=True)
    except BaseException:
        print(f"bench failed; logs in {processes.directory}", file=sys.stderr)
        raise
    finally:
        await processes.stop_all()
    if any(results.values()):
        print()
        print(table(results))
        print()
        print(NOTES)
    output = os.environ.get("BENCH_JSON")
    if output:
        document = {
            "hold_s": HOLD,
            "join_rate": JOIN_RATE,
            "sizes": [
                {
                    "label": size.label,
                    "runs": runs,
                    "median": {
                        key: median(runs, key)
                        for key in runs[0]
                        if isinstance(runs[0][key], int | float | None)
                    },
                }
                for size, runs in results.items()
                if runs
            ],
        }
        await asyncio.to_thread(Path(output).write_text, json.dumps(document, indent=1))
        print(f"\nwritten: {output}")
    if keep:
        print(f"\nlogs of the runs: {processes.directory}")
    else:
        shutil.rmtree(processes.directory, ignore_errors=True)


def main() -> None:
    from golive.logs import configure_logging  # noqa: PLC0415  only when run

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # (--help; the knobs are environment variables)
    configure_logging("warning", "json", stream=sys.stderr)
    processes = Processes()
    try:
        asyncio.run(bench(processes))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        processes.kill_all()


if __name__ == "__main__":
    main()
