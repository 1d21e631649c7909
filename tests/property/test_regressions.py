"""Sequences the lifecycle suite must never break again, kept as plain tests.

Each is a short, shrunk scenario: the situation that broke (or would break) a design, spelled
out step by step against the running actors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from golive.actors.base import barrier
from golive.actors.messages import (
    Done,
    EndReason,
    MediaKind,
    PublisherClaimed,
    Refusal,
    Refused,
    RoomName,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
)
from golive.actors.system import ActorSystem
from golive.metrics import create_metrics
from golive.rooms import RoomService
from golive.sessions import SessionRegistry
from tests.support import ProbeEndpoint

TIMEOUT = 10.0
TRACKS = (TrackInfo(TrackId("0"), MediaKind.AUDIO, "audio/opus"),)
ROOM = RoomName("again")


@pytest_asyncio.fixture
async def rooms() -> AsyncIterator[RoomService]:
    registry = SessionRegistry(asyncio.get_running_loop())
    system = ActorSystem(
        port=registry, metrics=create_metrics(), max_subscribers=0, timeout=TIMEOUT
    )
    await asyncio.to_thread(system.start)
    service = RoomService(system.directory, registry, timeout=TIMEOUT)
    try:
        yield service
    finally:
        await service.shutdown()
        await asyncio.to_thread(system.stop)


async def live(rooms: RoomService) -> PublisherClaimed:
    claim = await rooms.publish(ROOM, ProbeEndpoint("publisher"))
    assert isinstance(claim, PublisherClaimed)
    assert await rooms.publisher_ready(claim.session, TRACKS) == Done()
    return claim


@pytest.mark.asyncio
async def test_a_reclaimed_room_keeps_its_routes_when_the_old_fanout_retires(
    rooms: RoomService,
) -> None:
    """publish A, A leaves, publish B at once with the same track ids: the retired table of
    A's fanout must not wipe B's routes (tracks are keyed by publisher session too)."""
    first = await live(rooms)
    assert await rooms.leave(first.session, EndReason.CLIENT_LEFT) == Done()
    second = await live(rooms)
    viewer = await rooms.subscribe(ROOM, ProbeEndpoint("viewer"))
    assert isinstance(viewer, SubscriberAdmitted)
    rooms.tracks_negotiated(viewer.session, frozenset(track.track_id for track in TRACKS))
    rooms.peer_connected(viewer.session)
    await barrier(viewer.subscriber, TIMEOUT)
    for key in rooms.registry.tracks():
        table = rooms.registry.routes(key)
        assert table is not None
        assert table.fanout is not None
        await barrier(table.fanout, TIMEOUT)
    await asyncio.sleep(0)
    [key] = rooms.registry.tracks()
    assert key.publisher == second.session
    assert [r.session for r, _ in rooms.registry.targets(key)] == [viewer.session]


@pytest.mark.asyncio
async def test_a_stale_publisher_cannot_end_the_room_that_reused_its_name(
    rooms: RoomService,
) -> None:
    """publish A, admin closes, publish B; A's late DELETE and go-live must not touch B."""
    first = await live(rooms)
    assert await rooms.close_room(ROOM, EndReason.ADMIN_CLOSED)
    second = await live(rooms)
    assert await rooms.leave(first.session, EndReason.CLIENT_LEFT) == Refused(
        Refusal.UNKNOWN_SESSION
    )
    assert await rooms.publisher_ready(first.session, TRACKS) == Refused(Refusal.UNKNOWN_SESSION)
    [info] = await rooms.rooms()
    assert info.name == ROOM
    assert rooms.registry.get(second.session) is not None


@pytest.mark.asyncio
async def test_a_viewer_leaving_after_its_room_ended_is_unknown(rooms: RoomService) -> None:
    claim = await live(rooms)
    viewer = await rooms.subscribe(ROOM, ProbeEndpoint("viewer"))
    assert isinstance(viewer, SubscriberAdmitted)
    assert await rooms.leave(claim.session, EndReason.CLIENT_LEFT) == Done()
    assert await rooms.leave(viewer.session, EndReason.CLIENT_LEFT) == Refused(
        Refusal.UNKNOWN_SESSION
    )
    rooms.peer_failed(viewer.session, EndReason.ICE_FAILED)  # a late transport event: ignored
    assert await rooms.rooms() == ()
