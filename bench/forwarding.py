"""``make bench``: golive forwarding one publisher to N viewers, measured from outside.

Three processes, all in the loopback-only namespace: the server (``python -m golive``); this
one, holding an aiortc publisher (VP8 at about 2 Mbit/s + Opus); and a viewer process holding
N WHEP viewers that do not decode (golive's own forwarding receivers, counting packets).

Per N it prints the server's CPU time per delivered packet, the loss the viewers saw, the
time from a viewer's POST to its first RTP packet and to its first keyframe (p50/p99) and the
server's resident memory. Medians and ratios only: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from av import VideoFrame
from prometheus_client.parser import text_string_to_metric_families

from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection, ForwardingReceiver
from golive.media.rtp import keyframe_start

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "10,50,100").split(","))
WINDOW = 10.0  # seconds of steady state measured per size
SETTLE = 3.0  # seconds for every viewer to connect and start
BITRATE = 2_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class MovingBlockTrack(VideoStreamTrack):
    """640x480 grey frames with a moving block of noise: detail the encoder spends its
    bitrate on, in a region small enough for its rate control to hold the target."""

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        self._noise = os.urandom(1 << 20)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        width, height, block = 640, 480, 160
        self._count += 1
        left = (self._count * 8) % (width - block)
        top = (self._count * 5) % (height - block)
        luma = bytearray(b"\x60" * (width * height))
        start = (self._count * 7919) % (len(self._noise) - block * block)
        for index, row in enumerate(range(top, top + block)):
            noise = self._noise[start + index * block : start + (index + 1) * block]
            luma[row * width + left : row * width + left + block] = noise
        frame = VideoFrame(width=width, height=height)
        frame.planes[0].update(bytes(luma))
        for plane in frame.planes[1:]:
            plane.update(b"\x80" * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


async def post(url: str, pc: RTCPeerConnection) -> None:
    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
        ) as response,
    ):
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"{url}: {response.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


# -- the viewer process ---------------------------------------------------------------------


@dataclass
class Viewer:
    posted: float
    first_packet: float | None = None
    first_keyframe: float | None = None
    packets: int = 0
    pcs: list[RTCPeerConnection] = field(default_factory=list)

    def sink(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        now = time.perf_counter()
        self.packets += 1
        if self.first_packet is None:
            self.first_packet = now
        video = codec.mimeType.lower() == "video/vp8"
        if (
            self.first_keyframe is None
            and video
            and keyframe_start("video/VP8", packet.serialize())
        ):
            self.first_keyframe = now


async def connect_viewer(base: str, room: str) -> Viewer:
    pc = ForwardingPeerConnection()
    viewer = Viewer(posted=time.perf_counter(), pcs=[pc])
    for kind in ("video", "audio"):
        receiver = pc.addTransceiver(kind, direction="recvonly").receiver
        assert isinstance(receiver, ForwardingReceiver)
        receiver.sink = viewer.sink
    await post(f"{base}/api/whep/play/{room}", pc)
    return viewer


async def run_viewers(base: str, room: str, count: int) -> None:
    """Connect ``count`` viewers, say "ready", count packets for WINDOW, print the figures."""
    hooks.install(("127.0.0.1",))
    viewers = await asyncio.gather(*(connect_viewer(base, room) for _ in range(count)))
    await asyncio.sleep(SETTLE)
    print("ready", flush=True)
    before = sum(v.packets for v in viewers)
    await asyncio.sleep(WINDOW)
    received = sum(v.packets for v in viewers) - before
    result = {
        "received": received,
        "to_packet_ms": [(v.first_packet - v.posted) * 1e3 for v in viewers if v.first_packet],
        "to_keyframe_ms": [
            (v.first_keyframe - v.posted) * 1e3 for v in viewers if v.first_keyframe
        ],
    }
    print(json.dumps(result), flush=True)
    await asyncio.gather(*(pc.close() for v in viewers for pc in v.pcs))


# -- the driver -----------------------------------------------------------------------------


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def forwarded(base: str, room: str) -> tuple[float, float]:
    """Packets and payload bytes the server forwarded in ``room`` so far."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:  # noqa: S310  loopback
        text = response.read().decode()
    found = {"live_rtp_packets_total": 0.0, "live_rtp_bytes_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("room") == room:
                found[sample.name] = float(sample.value)
    return found["live_rtp_packets_total"], found["live_rtp_bytes_total"]


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


async def run_size(base: str, pid: int, size: int) -> str:
    room = f"bench{size}"
    publisher = RTCPeerConnection()
    video = publisher.addTransceiver(MovingBlockTrack(), direction="sendonly")
    publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await post(f"{base}/api/whip/publish/{room}", publisher)
    viewers = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.forwarding",
        "--viewers",
        str(size),
        "--room",
        room,
        "--base",
        base,
        stdout=asyncio.subprocess.PIPE,
    )
    assert viewers.stdout is not None
    # Hold the publisher's encoder at the target bitrate once it exists (aiortc starts low).
    for _ in range(100):
        encoder = getattr(video.sender, "_RTCRtpSender__encoder", None)
        if encoder is not None:
            encoder.target_bitrate = BITRATE
            break
        await asyncio.sleep(0.1)
    ready = await viewers.stdout.readline()
    assert ready.strip() == b"ready", ready
    packets_before, bytes_before = await asyncio.to_thread(forwarded, base, room)
    cpu_before = server_cpu_seconds(pid)
    result = json.loads(await viewers.stdout.readline())
    cpu = server_cpu_seconds(pid) - cpu_before
    packets_after, bytes_after = await asyncio.to_thread(forwarded, base, room)
    delivered = packets_after - packets_before
    mbits = (bytes_after - bytes_before) * 8 / WINDOW / size / 1e6
    rss = server_rss_mib(pid)
    await viewers.wait()
    await publisher.close()
    loss = max(0.0, 1 - result["received"] / delivered) if delivered else 1.0
    per_packet = cpu / delivered * 1e6 if delivered else float("nan")
    to_packet, to_keyframe = result["to_packet_ms"], result["to_keyframe_ms"]
    return (
        f"{size:>7} {mbits:>6.2f} {delivered / WINDOW:>8.0f} {per_packet:>7.1f} {loss * 100:>6.2f} "
        f"{statistics.median(to_packet):>7.0f}/{percentile(to_packet, 0.99):<7.0f} "
        f"{statistics.median(to_keyframe) if to_keyframe else float('nan'):>7.0f}/"
        f"{percentile(to_keyframe, 0.99):<7.0f} {rss:>8.1f}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main() -> None:
    hooks.install(("127.0.0.1",))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HTTP_ADDR": f"127.0.0.1:{port}",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        # N viewers join at once: measure forwarding, not the admission cap on negotiations
        "MAX_PENDING_NEGOTIATIONS": "0",
    }
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "golive", env=env)
    try:
        for _ in range(100):
            if await asyncio.to_thread(healthy, base):
                break
            await asyncio.sleep(0.1)
        print(
            f"golive forwarding: one publisher (VP8 ~{BITRATE // 1_000_000} Mbit/s + Opus), "
            f"{WINDOW:.0f} s measured per size"
        )
        print(
            "viewers Mbit/s/viewer pkts/s  µs/pkt  loss%  1st RTP ms p50/p99  "
            "1st key ms p50/p99  RSS MiB"
        )
        for size in SIZES:
            print(await run_size(base, server.pid, size), flush=True)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


if __name__ == "__main__":
    configure_logging("warning", "json")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--viewers", type=int, help="run as the viewer process")
    parser.add_argument("--room")
    parser.add_argument("--base")
    arguments = parser.parse_args()
    if arguments.viewers:
        asyncio.run(run_viewers(arguments.base, arguments.room, arguments.viewers))
    else:
        asyncio.run(main())
