"""The event loop's side of every session: the registry actors reach through the LoopPort.

Runs on the event loop only, except the :class:`LoopPort` methods (``publish_routes``,
``close_session``, ``request_keyframe``), which any actor thread may call: they schedule the work
onto the loop with ``call_soon_threadsafe`` and return at once.

A session is in the registry from the moment it is admitted until it is closed. Forwarding
resolves a routing table's session ids here, so a closed session, gone from the registry,
receives nothing more even if a stale table still names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pykka
import structlog

from golive.actors.messages import (
    EndReason,
    Role,
    RoomName,
    RoutePhase,
    RoutingTable,
    SessionId,
    TrackKey,
)

log = structlog.get_logger(__name__)


class SessionEndpoint(Protocol):
    """The loop-side end of a session: its peer connection, once media is wired in."""

    def close(self, reason: EndReason) -> None:
        """Called once, on the loop, when the session ends. Must not block."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session: SessionId
    room: RoomName
    role: Role
    endpoint: SessionEndpoint
    room_actor: pykka.ActorRef[Any]
    actor: pykka.ActorRef[Any] | None = None  # the subscriber's own actor


Targets = tuple[tuple[SessionRecord, RoutePhase], ...]


class SessionRegistry:
    """Live sessions and the latest routing table of every track, owned by the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sessions: dict[SessionId, SessionRecord] = {}
        self._tables: dict[TrackKey, RoutingTable] = {}
        # targets() per track, resolved once per (table version, sessions generation): the
        # packet path asks for every packet, the answer changes only when a table or a
        # session does.
        self._generation = 0
        self._resolved: dict[TrackKey, tuple[int, int, Targets]] = {}
        self._keyframe_sources: dict[TrackKey, Callable[[], None]] = {}

    # -- LoopPort: any thread -----------------------------------------------------------------

    def publish_routes(self, table: RoutingTable) -> None:
        self._schedule(self._install_routes, table)

    def close_session(self, session: SessionId, reason: EndReason) -> None:
        self._schedule(self._close, session, reason)

    def request_keyframe(self, track: TrackKey) -> None:
        self._schedule(self._request_keyframe, track)

    def _schedule(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the process is exiting
            log.debug("event loop closed; dropped", callback=callback.__name__)

    # -- the loop -----------------------------------------------------------------------------

    def add(self, record: SessionRecord) -> None:
        if record.session in self._sessions:
            raise ValueError(f"session {record.session} is registered already")
        self._sessions[record.session] = record
        self._generation += 1

    def get(self, session: SessionId) -> SessionRecord | None:
        return self._sessions.get(session)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(list(self._sessions.values()))

    def tracks(self) -> list[TrackKey]:
        return list(self._tables)

    def routes(self, track: TrackKey) -> RoutingTable | None:
        return self._tables.get(track)

    def targets(self, track: TrackKey) -> Targets:
        """The live sessions a packet of ``track`` goes to, with their phase."""
        table = self._tables.get(track)
        if table is None:
            return ()
        cached = self._resolved.get(track)
        if cached is not None and cached[0] == table.version and cached[1] == self._generation:
            return cached[2]
        found = tuple(
            (record, route.phase)
            for route in table.routes
            if (record := self._sessions.get(route.session)) is not None
        )
        self._resolved[track] = (table.version, self._generation, found)
        return found

    def add_keyframe_source(self, track: TrackKey, request: Callable[[], None]) -> None:
        """How to ask ``track``'s publisher for a keyframe (its tap's coalescing request)."""
        self._keyframe_sources[track] = request

    def remove_keyframe_source(self, track: TrackKey) -> None:
        self._keyframe_sources.pop(track, None)

    def _request_keyframe(self, track: TrackKey) -> None:
        request = self._keyframe_sources.get(track)
        if request is not None:
            request()

    def _install_routes(self, table: RoutingTable) -> None:
        held = self._tables.get(table.track)
        if held is not None and held.version >= table.version:
            return
        if table.retired:
            self._tables.pop(table.track, None)
            self._resolved.pop(table.track, None)
        else:
            self._tables[table.track] = table

    def _close(self, session: SessionId, reason: EndReason) -> None:
        record = self._sessions.pop(session, None)
        if record is None:
            return
        self._generation += 1
        try:
            record.endpoint.close(reason)
        except Exception:
            log.exception("closing a session's endpoint failed", session=session)
