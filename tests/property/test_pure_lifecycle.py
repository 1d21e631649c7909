"""The room lifecycle property suite, against the pure state classes (no threads, no I/O).

The directory, room, fanout and subscriber states are composed here the way their actors
compose them, and driven through random sequences checked against the model.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from golive.actors.directory import DirectoryState
from golive.actors.fanout import FanoutState
from golive.actors.messages import (
    EndReason,
    Refusal,
    Role,
    RoomInfo,
    RoomName,
    RoutePhase,
    SessionId,
    SubscriberPhase,
    TrackId,
    TrackInfo,
    TrackKey,
    new_session_id,
)
from golive.actors.room import RoomState
from golive.actors.subscriber import SubscriberState
from tests.property.model import LifecycleMachine, Observed, examples


class PureLifecycle(LifecycleMachine):
    name = "pure-state machine"

    def start(self, limit: int) -> None:
        self.directory: DirectoryState[RoomState] = DirectoryState(reconnect=True)
        self.fanouts: dict[tuple[RoomName, TrackId], FanoutState] = {}
        self.subs: dict[SessionId, tuple[RoomName, SubscriberState]] = {}
        self.ended_subs: dict[SessionId, SubscriberState] = {}
        self.max_subscribers = limit

    def _room(self, name: RoomName) -> RoomState | None:
        entry = self.directory.rooms.get(name)
        return None if entry is None else entry.room

    def _published_by(self, session: SessionId) -> RoomName | None:
        """The room ``session`` publishes in, or vanished from (its session stays until the
        room ends or is taken over)."""
        for name, entry in self.directory.rooms.items():
            if entry.publisher == session:
                return name
        return None

    def _report(self, name: RoomName) -> None:
        """What the room's actor does after each change: tell the directory what it shows."""
        entry = self.directory.rooms[name]
        info = entry.room.report()
        if info is not None:
            assert self.directory.room_changed(entry.publisher, info)

    def _room_fanouts(self, name: RoomName) -> list[tuple[TrackId, FanoutState]]:
        return [(track, f) for (room, track), f in self.fanouts.items() if room == name]

    def _end(self, name: RoomName, state: RoomState, reason: EndReason) -> None:
        for session in state.end(reason):
            self._close_viewer(session, reason)
        for track, fanout in self._room_fanouts(name):
            fanout.close()
            del self.fanouts[(name, track)]

    def _close_viewer(self, session: SessionId, reason: EndReason) -> None:
        name, viewer = self.subs.pop(session)
        if viewer.close(reason):  # its routes withdrawn, on the tracks it was routed on
            for track in viewer.tracks or ():
                if (name, track) in self.fanouts:
                    self.fanouts[(name, track)].remove(session)
        self.ended_subs[session] = viewer

    def publish(self, room: RoomName, replaces: SessionId | None = None) -> SessionId | Refusal:
        refusal = self.directory.can_claim(room, replaces)
        if refusal is not None:
            return refusal
        session = new_session_id()
        if self.directory.takes_over(room, replaces):
            self.directory.take_over(room, session).room.take_over(session)
            self._report(room)
        else:
            self.directory.add(room, session, RoomState(room, session, self.max_subscribers))
        return session

    def _lose(
        self, name: RoomName, session: SessionId, reason: EndReason, *, connected: bool = True
    ) -> None:
        """The publisher is gone without a DELETE: the room waits, or ends."""
        if self.directory.rooms[name].waiting:  # (it waits already)
            return
        if self.directory.lose(name, session, connected=connected):
            assert self.directory.rooms[name].room.lose(session)
            self._report(name)
            return
        entry = self.directory.remove(name, session)
        assert not isinstance(entry, Refusal)
        self._end(name, entry.room, reason)

    def publisher_vanishes(self, session: SessionId, *, connected: bool) -> None:
        name = self._published_by(session)
        if name is not None:
            reason = self.directory.lost_reason(name, EndReason.ICE_FAILED)
            self._lose(name, session, reason, connected=connected)

    def relay(self, room: RoomName, tracks: tuple[TrackInfo, ...]) -> SessionId | Refusal:
        refusal = self.directory.can_claim(room, relay=True)
        if refusal is not None:
            return refusal
        session = new_session_id()
        state = RoomState(room, session, self.max_subscribers, relay=True)
        self.directory.add(room, session, state, relay=True)
        assert self.go_live(session, tracks) is None
        return session

    def hold_relay(self, room: RoomName, relay: SessionId) -> bool:
        return self.directory.is_relay(room, relay)

    def origin_ends(self, relay: SessionId, reason: EndReason) -> bool:
        name = self._published_by(relay)
        if name is None:
            return False
        if reason is EndReason.PUBLISH_FAILED:  # (as the directory's end_room: never waits)
            self._lose(name, relay, reason, connected=False)
            return True
        entry = self.directory.remove(name, relay)
        assert not isinstance(entry, Refusal)
        self._end(name, entry.room, reason)
        return True

    def relay_transport_fails(self, relay: SessionId) -> None:
        self.publisher_vanishes(relay, connected=True)

    def relay_idle_expires(self, room: RoomName, relay: SessionId) -> None:
        if self.directory.relay_idle(room, relay):
            removed = self.directory.remove(room, relay)
            assert not isinstance(removed, Refusal)
            self._end(room, removed.room, EndReason.RELAY_IDLE)

    def reconnect_expires(self, room: RoomName, publisher: SessionId) -> None:
        entry = self.directory.rooms.get(room)
        if entry is not None and entry.waiting and entry.publisher == publisher:
            removed = self.directory.remove(room, publisher)
            assert not isinstance(removed, Refusal)
            self._end(room, removed.room, EndReason.PUBLISHER_GONE)

    def go_live(self, session: SessionId, tracks: tuple[TrackInfo, ...]) -> Refusal | None:
        name = self._published_by(session)
        if name is None:
            return Refusal.UNKNOWN_SESSION
        state = self.directory.rooms[name].room
        refusal = state.go_live(session, tracks)
        if refusal is None:
            for track in tracks:
                key = TrackKey(name, session, track.track_id)
                self.fanouts.setdefault((name, track.track_id), FanoutState(key, track.kind))
            self._report(name)
        return refusal

    def end_publisher(self, session: SessionId, *, failed: bool) -> bool:
        name = self._published_by(session)
        if name is None:
            return False
        if failed:  # (a publish that failed never connected)
            self._lose(name, session, EndReason.PUBLISH_FAILED, connected=False)
            return True
        entry = self.directory.remove(name, session)
        assert not isinstance(entry, Refusal)
        self._end(name, entry.room, EndReason.PUBLISHER_LEFT)
        return True

    def subscribe(self, room: RoomName, tracks: frozenset[TrackId]) -> SessionId | Refusal:
        state = self._room(room)
        if state is None:
            return Refusal.NO_PUBLISHER
        session = new_session_id()
        refusal = state.admit(session)
        if refusal is not None:
            return refusal
        self._report(room)
        viewer = SubscriberState()
        self.subs[session] = (room, viewer)
        if viewer.negotiated(tracks):  # routes asked for on the tracks its answer carries
            for track in tracks:
                if self.fanouts[(room, track)].add(session) is RoutePhase.FORWARDING:
                    viewer.track_forwarding(track)
        return session

    def connect(self, session: SessionId) -> None:
        if session in self.subs:
            self.subs[session][1].connected()

    def keyframe(self, session: SessionId, track: TrackId) -> None:
        name, viewer = self.subs[session]
        if self.fanouts[(name, track)].keyframe_delivered(session):
            viewer.track_forwarding(track)

    def leave(self, session: SessionId) -> bool:
        if session not in self.subs:
            return False
        state = self._room(self.subs[session][0])
        assert state is not None
        removed = state.remove(session)
        self._report(self.subs[session][0])
        self._close_viewer(session, EndReason.CLIENT_LEFT)
        return removed

    def transport_fails(self, session: SessionId) -> None:
        if session in self.subs:
            state = self._room(self.subs[session][0])
            assert state is not None
            state.remove(session)
            self._report(self.subs[session][0])
            self._close_viewer(session, EndReason.ICE_FAILED)

    def admin_close(self, room: RoomName) -> bool:
        entry = self.directory.remove(room)
        if isinstance(entry, Refusal):
            return False
        self._end(room, entry.room, EndReason.ADMIN_CLOSED)
        return True

    def late_report(self, publisher: SessionId, info: RoomInfo) -> None:
        assert not self.directory.room_changed(publisher, info)

    def room_views(self) -> tuple[dict[RoomName, RoomInfo], dict[RoomName, RoomInfo]]:
        listed = {info.name: info for info in self.directory.listing()}
        own = {name: entry.room.info() for name, entry in self.directory.rooms.items()}
        return listed, own

    def observe(self) -> Observed:
        rooms = {
            name: (len(entry.room.tracks), len(entry.room.subscribers))
            for name, entry in self.directory.rooms.items()
        }
        sessions = {
            entry.publisher: (name, Role.PUBLISHER) for name, entry in self.directory.rooms.items()
        }
        sessions.update({s: (name, Role.SUBSCRIBER) for s, (name, _) in self.subs.items()})
        routes: dict[SessionId, dict[TrackId, RoutePhase]] = {}
        for (_, track), fanout in self.fanouts.items():
            for session, phase in fanout.routes.items():
                routes.setdefault(session, {})[track] = phase
        phases = {s: viewer.phase for s, (_, viewer) in self.subs.items()}
        relays = frozenset(info.name for info in self.directory.listing() if info.relay)
        return Observed(rooms, sessions, routes, phases, relays)

    def check_extra(self) -> None:
        for session, viewer in self.ended_subs.items():
            assert viewer.phase is SubscriberPhase.CLOSED, session
            assert viewer.end_reason is self.closed[session], (session, viewer.end_reason)
        for fanout in self.fanouts.values():
            table = fanout.table()
            assert table.sessions() == frozenset(fanout.routes)
            assert not table.sessions() & set(self.ended_subs)


PureLifecycle.TestCase.settings = settings(
    max_examples=examples(500), stateful_step_count=50, deadline=None
)


pytestmark = [pytest.mark.property, pytest.mark.timeout(900)]
TestPureLifecycle = PureLifecycle.TestCase
