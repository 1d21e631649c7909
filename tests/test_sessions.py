"""The loop's session registry: routing tables in order, closed sessions unreachable."""

from __future__ import annotations

import asyncio
import threading

import pykka
import pytest

from golive.actors.base import GoliveActor
from golive.actors.messages import (
    EndReason,
    Role,
    RoomName,
    Route,
    RoutePhase,
    RoutingTable,
    SessionId,
    TrackId,
    TrackKey,
)
from golive.sessions import SessionRecord, SessionRegistry
from tests.support import ProbeEndpoint

KEY = TrackKey(RoomName("r"), SessionId("pub"), TrackId("v"))


def record(
    session: str, endpoint: ProbeEndpoint, room_actor: pykka.ActorRef[GoliveActor]
) -> SessionRecord:
    return SessionRecord(SessionId(session), RoomName("r"), Role.SUBSCRIBER, endpoint, room_actor)


def table(version: int, *sessions: str, retired: bool = False) -> RoutingTable:
    routes = tuple(Route(SessionId(s), RoutePhase.FORWARDING) for s in sessions)
    return RoutingTable(KEY, version, routes, retired=retired)


async def turn() -> None:
    """Let callbacks scheduled with call_soon_threadsafe run."""
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_tables_from_another_thread_apply_in_version_order() -> None:
    registry = SessionRegistry(asyncio.get_running_loop())
    actor = GoliveActor.start()
    try:
        one, two = ProbeEndpoint("one"), ProbeEndpoint("two")
        registry.add(record("one", one, actor))
        registry.add(record("two", two, actor))
        sender = threading.Thread(target=registry.publish_routes, args=(table(2, "one", "two"),))
        sender.start()
        sender.join()
        await turn()
        assert [r.session for r, _ in registry.targets(KEY)] == ["one", "two"]
        registry.publish_routes(table(1, "one"))  # stale: an older version never wins
        await turn()
        assert [r.session for r, _ in registry.targets(KEY)] == ["one", "two"]
        registry.publish_routes(table(3, retired=True))
        await turn()
        assert registry.tracks() == []
        assert registry.targets(KEY) == ()
    finally:
        actor.stop()


@pytest.mark.asyncio
async def test_a_closed_session_is_unreachable_even_through_a_stale_table() -> None:
    registry = SessionRegistry(asyncio.get_running_loop())
    actor = GoliveActor.start()
    try:
        gone, stays = ProbeEndpoint("gone"), ProbeEndpoint("stays")
        registry.add(record("gone", gone, actor))
        registry.add(record("stays", stays, actor))
        registry.publish_routes(table(1, "gone", "stays"))
        registry.close_session(SessionId("gone"), EndReason.CLIENT_LEFT)
        registry.close_session(SessionId("gone"), EndReason.SHUTDOWN)  # a second close is a no-op
        await turn()
        assert gone.closed is EndReason.CLIENT_LEFT
        assert gone.close_calls == 1
        assert [r.session for r, _ in registry.targets(KEY)] == ["stays"]
        assert registry.get(SessionId("gone")) is None
        assert len(registry) == 1
        with pytest.raises(ValueError, match="registered already"):
            registry.add(record("stays", stays, actor))
    finally:
        actor.stop()


def test_scheduling_onto_a_closed_loop_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    registry = SessionRegistry(loop)
    loop.close()
    registry.close_session(SessionId("x"), EndReason.SHUTDOWN)
    registry.publish_routes(table(1))
