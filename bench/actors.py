"""What a viewer costs in actors: threads, memory and join time, for N viewers in one room.

Run with ``make bench``. Figures are per viewer and medians over several rounds; the machines
are shared and noisy, so read ratios and orders of magnitude, not the last digit.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

from golive.actors.messages import (
    Done,
    EndReason,
    MediaKind,
    PublisherClaimed,
    RoomName,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
)
from golive.actors.system import ActorSystem
from golive.logs import configure_logging
from golive.metrics import create_metrics
from golive.rooms import RoomService
from golive.sessions import SessionRegistry

ROUNDS = 3
SIZES = (100, 500, 1000)
TRACKS = (
    TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/VP8"),
    TrackInfo(TrackId("a"), MediaKind.AUDIO, "audio/opus"),
)


class Endpoint:
    def close(self, reason: EndReason) -> None:
        pass


def rss_kib() -> int:
    """Resident memory now, from /proc (ru_maxrss would only give the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def one_round(viewers: int) -> tuple[float, float, float, float, float]:
    registry = SessionRegistry(asyncio.get_running_loop())
    system = ActorSystem(port=registry, metrics=create_metrics(), max_subscribers=0, timeout=30)
    await asyncio.to_thread(system.start)
    rooms = RoomService(system.directory, registry, timeout=30)
    try:
        claim = await rooms.publish(RoomName("bench"), Endpoint())
        assert isinstance(claim, PublisherClaimed)
        assert await rooms.publisher_ready(claim.session, TRACKS) == Done()
        gc.collect()
        threads, rss = threading.active_count(), rss_kib()
        joins = []
        sessions = []
        for _ in range(viewers):
            started = time.perf_counter()
            admitted = await rooms.subscribe(RoomName("bench"), Endpoint())
            joins.append(time.perf_counter() - started)
            assert isinstance(admitted, SubscriberAdmitted)
            sessions.append(admitted.session)
        gc.collect()
        per_thread = (threading.active_count() - threads) / viewers
        per_kib = (rss_kib() - rss) / viewers
        started = time.perf_counter()
        await rooms.leave(claim.session, EndReason.CLIENT_LEFT)
        close_all = time.perf_counter() - started
        joins.sort()
        p50 = joins[len(joins) // 2] * 1e6
        p99 = joins[int(len(joins) * 0.99) - 1] * 1e6
        return per_thread, per_kib, p50, p99, close_all * 1e3
    finally:
        await rooms.shutdown()
        await asyncio.to_thread(system.stop)


async def main() -> None:
    python = sys.version.split()[0]
    print(f"golive actor cost per viewer (medians of {ROUNDS} rounds; Python {python})")
    print(
        f"{'viewers':>8} {'threads/viewer':>15} {'RSS KiB/viewer':>15} "
        f"{'join p50 µs':>12} {'join p99 µs':>12} {'end room ms':>12}"
    )
    for size in SIZES:
        rounds = [await one_round(size) for _ in range(ROUNDS)]
        columns = [statistics.median(column) for column in zip(*rounds, strict=True)]
        print(
            f"{size:>8} {columns[0]:>15.2f} {columns[1]:>15.1f} {columns[2]:>12.0f} "
            f"{columns[3]:>12.0f} {columns[4]:>12.1f}"
        )


if __name__ == "__main__":
    configure_logging("warning", "json")
    asyncio.run(main())
