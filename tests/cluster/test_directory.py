"""The cluster directory against a real redis-server: one owner per room, leases that run
out, the listing, room-end events, an outage and the registration after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from golive.actors.messages import EndReason, MediaKind, RoomInfo, RoomName, TrackId, TrackInfo
from golive.cluster.directory import ClusterDirectory, ClusterUnavailableError
from golive.cluster.identity import WorkerIdentity
from tests.cluster.redis import RedisServer
from tests.support import eventually

pytestmark = pytest.mark.asyncio

STAGE = RoomName("stage")
VIDEO = TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/VP8")


class Worker:
    """A directory for one pretend worker, whose rooms and relays the test sets."""

    def __init__(self, redis: RedisServer, node: str, *, lease: float = 5.0) -> None:
        self.rooms: dict[RoomName, RoomInfo] = {}
        self.relays: set[RoomName] = set()
        self.ended: list[tuple[RoomName, EndReason]] = []
        self.identity = WorkerIdentity.create(f"http://{node}", 0, f"http://{node}")
        self.directory = ClusterDirectory(
            redis.url,
            self.identity,
            listing=self._listing,
            relayed=lambda: self.relays,
            on_origin_ended=lambda room, reason: self.ended.append((room, reason)),
            lease_seconds=lease,
            heartbeat_seconds=0.1,
        )

    async def _listing(self) -> tuple[RoomInfo, ...]:
        return tuple(self.rooms.values())


@pytest_asyncio.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(node: str, **kwargs: float) -> Worker:
        worker = Worker(redis_server, node, **kwargs)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.directory.close()


async def test_one_owner_per_room(workers: Callable[..., Worker]) -> None:
    a, b = workers("10.0.0.1:8080"), workers("10.0.0.2:8080")
    await a.directory.start()
    await b.directory.start()
    first = await a.directory.claim(STAGE)
    assert first.new
    assert first.mine
    second = await b.directory.claim(STAGE)
    assert not second.new
    assert not second.mine
    assert second.owner.node == "10.0.0.1:8080"
    assert second.owner.url == "http://10.0.0.1:8080"
    again = await a.directory.claim(STAGE)  # the owner's own claim: its directory decides
    assert again.mine
    assert not again.new
    assert (await b.directory.owner(STAGE)) == first.owner
    assert await b.directory.worker_url(a.identity.tag) == "http://10.0.0.1:8080"


async def test_concurrent_claims_make_one_owner(workers: Callable[..., Worker]) -> None:
    many = [workers(f"10.0.0.{i}:8080") for i in range(1, 9)]
    for worker in many:
        await worker.directory.start()
    claims = await asyncio.gather(*(w.directory.claim(STAGE) for w in many))
    assert sum(claim.new for claim in claims) == 1
    assert len({claim.owner.tag for claim in claims}) == 1


async def test_listing_sums_viewers_per_node(workers: Callable[..., Worker]) -> None:
    a, b = workers("10.0.0.1:8080"), workers("10.0.0.2:8080")
    await a.directory.start()
    await b.directory.start()
    await a.directory.claim(STAGE)
    a.rooms[STAGE] = RoomInfo(STAGE, True, (VIDEO,), 3)
    b.rooms[STAGE] = RoomInfo(STAGE, True, (VIDEO,), 5)  # b relays it
    b.relays.add(STAGE)

    async def listed() -> bool:
        rooms = await b.directory.rooms()
        return len(rooms) == 1 and dict(rooms[0].viewers) == {
            "10.0.0.1:8080": 3,
            "10.0.0.2:8080": 5,
        }

    await eventually(listed, what="both workers' viewers listed", seconds=10)
    (room,) = await a.directory.rooms()
    assert room.subscribers == 8
    assert room.has_publisher
    assert room.tracks == ({"id": "0", "kind": "video", "codec": "video/VP8"},)
    assert room.owner.node == "10.0.0.1:8080"


async def test_a_released_room_ends_its_relays_with_the_reason(
    workers: Callable[..., Worker],
) -> None:
    a, b = workers("10.0.0.1:8080"), workers("10.0.0.2:8080")
    await a.directory.start()
    await b.directory.start()
    await a.directory.claim(STAGE)
    b.relays.add(STAGE)
    await b.directory.wait_heartbeat()  # (its subscription is up)
    await a.directory.release(STAGE, EndReason.ADMIN_CLOSED)
    await eventually(lambda: b.ended == [(STAGE, EndReason.ADMIN_CLOSED)], what="the event")
    assert await b.directory.owner(STAGE) is None
    assert await b.directory.rooms() == []
    claim = await b.directory.claim(STAGE)  # the name is free
    assert claim.new


async def test_a_dead_worker_is_forgotten_and_its_relays_end(
    workers: Callable[..., Worker],
) -> None:
    a = workers("10.0.0.1:8080", lease=0.5)
    b = workers("10.0.0.2:8080")
    await a.directory.start()
    await b.directory.start()
    await a.directory.claim(STAGE)
    b.relays.add(STAGE)
    # a stops renewing (as if killed): no release, no event; its lease runs out.
    for task in a.directory._tasks:
        task.cancel()
    await eventually(lambda: b.ended == [(STAGE, EndReason.ORIGIN_GONE)], what="origin gone")
    assert await b.directory.owner(STAGE) is None
    assert await b.directory.worker_url(a.identity.tag) is None
    assert [w["tag"] for w in await b.directory.workers()] == [b.identity.tag]


async def test_an_outage_refuses_claims_and_the_worker_registers_again(
    workers: Callable[..., Worker], redis_server: RedisServer
) -> None:
    a = workers("10.0.0.1:8080")
    await a.directory.start()
    await a.directory.claim(STAGE)
    a.rooms[STAGE] = RoomInfo(STAGE, True, (VIDEO,), 1)
    assert a.directory.available
    redis_server.stop()
    with pytest.raises(ClusterUnavailableError):
        await a.directory.claim(RoomName("other"))
    await eventually(lambda: not a.directory.available, what="the outage noticed")
    redis_server.start()  # empty: nothing was saved
    await eventually(lambda: a.directory.available, what="registered again", seconds=10)
    owner = await a.directory.owner(STAGE)
    assert owner is not None
    assert owner.tag == a.identity.tag
    assert [w["tag"] for w in await a.directory.workers()] == [a.identity.tag]


async def test_a_clean_close_leaves_nothing(workers: Callable[..., Worker]) -> None:
    a, b = workers("10.0.0.1:8080"), workers("10.0.0.2:8080")
    await a.directory.start()
    await b.directory.start()
    await a.directory.claim(STAGE)
    await a.directory.close()
    assert await b.directory.owner(STAGE) is None
    assert [w["tag"] for w in await b.directory.workers()] == [b.identity.tag]
