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


class RoutedTrack(Protocol):
    """The loop-side object of a published track (``golive.media.forwarding.PublishedTrack``):
    what the registry hands the fanout's tables and keyframe requests to."""

    key: TrackKey

    def install(self, table: RoutingTable) -> None: ...
    def want_keyframe(self) -> None: ...


class SessionRegistry:
    """Live sessions, and the latest routing table of every track, owned by the loop.

    Each table is also handed to its track's loop-side object (:meth:`add_track`), which
    keeps the outputs a packet goes to: the packet path reads nothing here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sessions: dict[SessionId, SessionRecord] = {}
        self._tables: dict[TrackKey, RoutingTable] = {}
        self._tracks: dict[TrackKey, RoutedTrack] = {}
        #: Called on the loop with each room the directory ends, and why.
        self.room_observers: list[Callable[[RoomName, EndReason], None]] = []

    # -- LoopPort: any thread -----------------------------------------------------------------

    def publish_routes(self, table: RoutingTable) -> None:
        self._schedule(self._install_routes, table)

    def close_session(self, session: SessionId, reason: EndReason) -> None:
        self._schedule(self._close, session, reason)

    def request_keyframe(self, track: TrackKey) -> None:
        self._schedule(self._request_keyframe, track)

    def room_ended(self, room: RoomName, reason: EndReason) -> None:
        self._schedule(self._room_ended, room, reason)

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

    def get(self, session: SessionId) -> SessionRecord | None:
        return self._sessions.get(session)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(list(self._sessions.values()))

    def tracks(self) -> list[TrackKey]:
        return list(self._tables)

    def published(self) -> list[TrackKey]:
        """Every track on the packet path (its loop-side object registered), routed or not."""
        return list(self._tracks)

    def routes(self, track: TrackKey) -> RoutingTable | None:
        return self._tables.get(track)

    def targets(self, track: TrackKey) -> Targets:
        """The live sessions ``track``'s latest table routes to, with their phase (what the
        fanout decided, as the loop holds it; for checks and diagnostics)."""
        table = self._tables.get(track)
        if table is None:
            return ()
        return tuple(
            (record, route.phase)
            for route in table.routes
            if (record := self._sessions.get(route.session)) is not None
        )

    def add_track(self, track: RoutedTrack) -> None:
        """A published track's loop-side object: it gets its tables (the latest at once, if
        one came first) and keyframe requests from now on."""
        self._tracks[track.key] = track
        table = self._tables.get(track.key)
        if table is not None:
            track.install(table)

    def remove_track(self, key: TrackKey, track: RoutedTrack) -> None:
        if self._tracks.get(key) is track:
            del self._tracks[key]

    def _request_keyframe(self, track: TrackKey) -> None:
        routed = self._tracks.get(track)
        if routed is not None:
            routed.want_keyframe()

    def _install_routes(self, table: RoutingTable) -> None:
        held = self._tables.get(table.track)
        if held is not None and held.version >= table.version:
            return
        if table.retired:
            self._tables.pop(table.track, None)
        else:
            self._tables[table.track] = table
        track = self._tracks.get(table.track)
        if track is not None:
            track.install(table)

    def _room_ended(self, room: RoomName, reason: EndReason) -> None:
        for observer in list(self.room_observers):
            try:
                observer(room, reason)
            except Exception:
                log.exception("a room observer failed", room=room)

    def _close(self, session: SessionId, reason: EndReason) -> None:
        record = self._sessions.pop(session, None)
        if record is None:
            return
        try:
            record.endpoint.close(reason)
        except Exception:
            log.exception("closing a session's endpoint failed", session=session)
