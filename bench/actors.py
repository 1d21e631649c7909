"""What a viewer costs in actors: threads, memory and join time, for N viewers in one room;
and what ``GET /api/rooms`` costs with 300 live rooms, alone and to a publish meanwhile.

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

import aiohttp
from aiohttp import web

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
from golive.config import Config
from golive.http.app import create_app
from golive.http.keys import ROOMS
from golive.logs import configure_logging
from golive.metrics import create_metrics
from golive.rooms import RoomService
from golive.sessions import SessionRegistry

ROUNDS = 3
SIZES = (100, 500, 1000)
LISTED_ROOMS = 300
LISTINGS = 200
CONCURRENT_LISTERS = 12
PUBLISHES = 20
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


async def list_once(http: aiohttp.ClientSession, url: str) -> float:
    """Seconds for one ``GET /api/rooms`` over HTTP."""
    started = time.perf_counter()
    async with http.get(url) as response:
        assert response.status == 200
        await response.read()
    return time.perf_counter() - started


async def publish_once(rooms: RoomService, name: RoomName) -> float:
    """Seconds to claim a room and go live (the actors' part of a WHIP POST); then it ends."""
    started = time.perf_counter()
    claim = await rooms.publish(name, Endpoint())
    assert isinstance(claim, PublisherClaimed)
    assert await rooms.publisher_ready(claim.session, TRACKS[1:]) == Done()
    elapsed = time.perf_counter() - started
    await rooms.leave(claim.session, EndReason.CLIENT_LEFT)
    return elapsed


async def listing_round() -> tuple[float, float, float, float]:
    """A real server with 300 live rooms: ``GET /api/rooms`` p50 and p99 (µs), and a publish's
    median (ms) alone and while 12 clients list the rooms in a loop."""
    runner = web.AppRunner(create_app(Config()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/api/rooms"
    rooms = runner.app[ROOMS]
    try:
        for index in range(LISTED_ROOMS):
            claim = await rooms.publish(RoomName(f"room-{index}"), Endpoint())
            assert isinstance(claim, PublisherClaimed)
            assert await rooms.publisher_ready(claim.session, TRACKS[1:]) == Done()
        async with aiohttp.ClientSession() as http:
            alone = sorted([await list_once(http, url) for _ in range(LISTINGS)])
            quiet = [await publish_once(rooms, RoomName("new")) for _ in range(PUBLISHES)]
            listing = True

            async def lister() -> None:
                async with aiohttp.ClientSession() as own:  # a connection of its own
                    while listing:
                        await list_once(own, url)

            listers = [asyncio.ensure_future(lister()) for _ in range(CONCURRENT_LISTERS)]
            try:
                loaded = [await publish_once(rooms, RoomName("new")) for _ in range(PUBLISHES)]
            finally:
                listing = False
                await asyncio.gather(*listers)
        p50 = alone[len(alone) // 2] * 1e6
        p99 = alone[int(len(alone) * 0.99) - 1] * 1e6
        return p50, p99, statistics.median(quiet) * 1e3, statistics.median(loaded) * 1e3
    finally:
        await runner.cleanup()


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
    print()
    print(
        f"{LISTED_ROOMS} live rooms on a real server: GET /api/rooms, and a publish (claim and"
        f" go live) alone and while {CONCURRENT_LISTERS} clients list the rooms in a loop"
        f" (medians of {ROUNDS} rounds)"
    )
    print(
        f"{'listing p50 µs':>15} {'listing p99 µs':>15} {'publish ms':>11} "
        f"{'publish ms, 12 listing':>23}"
    )
    listings = [await listing_round() for _ in range(ROUNDS)]
    columns = [statistics.median(column) for column in zip(*listings, strict=True)]
    print(f"{columns[0]:>15.0f} {columns[1]:>15.0f} {columns[2]:>11.1f} {columns[3]:>23.1f}")


if __name__ == "__main__":
    configure_logging("warning", "json")
    asyncio.run(main())
