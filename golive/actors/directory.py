"""The room directory: which rooms exist, and who publishes in each.

A room exists exactly while it has a publisher, so the directory is where "one publisher per
room" is decided: a claim on a free name creates the room (pending until the publisher's
offer is answered), a claim on a taken name is refused. Every end of a room goes through
here too (the publisher leaving, a failed publish, an admin close, shutdown), so that the name
is free again the moment the caller hears back. The directory only *tells* rooms; it never
waits on one, and rooms never ask it anything.

A publisher that vanishes without a DELETE (its transport failed) does not end a room that
has gone live, when reconnects are allowed (``PUBLISHER_RECONNECT_SECONDS``): the room
*waits*, its viewers connected, until a new publisher claims it (a *takeover*: the room, its
tracks and its viewers are the new publisher's) or the window passes. A claim may also take
over a live room whose publisher the loop saw go silent (``ClaimPublisher.replaces``).

A *relay* room (``ClaimPublisher.relay``) is pulled from its owner elsewhere in the cluster
for viewers here (``golive/cluster/relay.py``); its "publisher" is that pull. It never waits
for a publisher: its transport to the origin failing ends it as ``origin_gone``. It is never
taken over. Once it has no viewer it waits ``RELAY_GRACE_SECONDS`` for one (a new relay, or
one held for a viewer about to join, at least :data:`RELAY_JOIN_SECONDS`), then ends
(``relay_idle``).

It also holds what each room shows in ``GET /api/rooms``: a room tells it every change
(:class:`RoomChanged`), so listing every room is one ask to the directory, whatever the number
of rooms, and a busy or stalled room delays no listing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar, cast

import pykka
import structlog
from opentelemetry import trace
from pykka.typing import ActorMemberMixin, proxy_method

from golive.actors.base import GoliveActor, guarded, stop_all, tell_quietly, traced
from golive.actors.messages import (
    ClaimPublisher,
    CloseRoom,
    Done,
    EndAllRooms,
    EndReason,
    EndRoom,
    HoldRelay,
    PublisherClaimed,
    PublisherGone,
    PublisherLost,
    ReconnectExpired,
    Refusal,
    Refused,
    RelayIdle,
    Role,
    RoomChanged,
    RoomCrashed,
    RoomEnding,
    RoomInfo,
    RoomName,
    SessionId,
    TakeOver,
)
from golive.actors.ports import LoopPort
from golive.actors.recorder import RecordingSettings
from golive.actors.room import RoomActor
from golive.config import DEFAULT_RELAY_GRACE_SECONDS
from golive.metrics import Metrics
from golive.tracing import Tracing

H = TypeVar("H")

#: How long a relay room waits for its first viewer (a new one, or one held for a viewer
#: about to join), at least: the viewer's join comes right after, but RELAY_GRACE_SECONDS may
#: be 0 (an idle relay ends at once).
RELAY_JOIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class DirectoryEntry(Generic[H]):
    publisher: SessionId
    room: H
    info: RoomInfo  # what the room last reported of itself
    waiting: bool = False  # the publisher is gone: the room waits for a takeover
    taken_over: bool = False  # a publisher has taken the room over at least once
    relay: bool = False  # the publisher is a relay, pulling the room from its owner

    @property
    def has_audience(self) -> bool:
        """The room has gone live (its tracks are known): viewers may be kept for a takeover."""
        return bool(self.info.tracks)


def claimed(room: RoomName, *, relay: bool = False) -> RoomInfo:
    """What a room shows from its claim until its first report: a publisher, nothing else."""
    return RoomInfo(name=room, has_publisher=True, tracks=(), subscribers=0, relay=relay)


@dataclass(slots=True)
class DirectoryState(Generic[H]):
    """Which rooms exist, without threads or I/O. ``H`` is whatever stands for a room."""

    rooms: dict[RoomName, DirectoryEntry[H]] = field(default_factory=dict)
    accepting: bool = True
    reconnect: bool = False  # a room whose publisher vanished waits for another
    # listing()'s answer, kept until a room comes, goes or changes: the same tuple each time,
    # so whoever renders it can keep the rendering too.
    _listing: tuple[RoomInfo, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def can_claim(
        self, room: RoomName, replaces: SessionId | None = None, *, relay: bool = False
    ) -> Refusal | None:
        """None if ``room`` is free or may be taken over (see :meth:`takes_over`)."""
        if not self.accepting:
            return Refusal.SHUTTING_DOWN
        entry = self.rooms.get(room)
        if entry is None or self.takes_over(room, replaces, relay=relay):
            return None
        return Refusal.ROOM_TAKEN

    def takes_over(
        self, room: RoomName, replaces: SessionId | None = None, *, relay: bool = False
    ) -> bool:
        """A claim on ``room`` is a takeover: the room waits for a publisher, or the claimant
        saw its live publisher (``replaces``) go silent. A relay neither takes a room over
        nor is taken over."""
        entry = self.rooms.get(room)
        if entry is None or not self.accepting or relay or entry.relay:
            return False
        return entry.waiting or (
            self.reconnect and entry.has_audience and replaces == entry.publisher
        )

    def add(self, room: RoomName, publisher: SessionId, handle: H, *, relay: bool = False) -> None:
        if room in self.rooms or self.can_claim(room, relay=relay) is not None:
            raise ValueError(f"room {room} cannot be claimed")
        self.rooms[room] = DirectoryEntry(
            publisher, handle, claimed(room, relay=relay), relay=relay
        )
        self._listing = None

    def take_over(self, room: RoomName, publisher: SessionId) -> DirectoryEntry[H]:
        """``publisher`` takes ``room`` over; the entry as it was before."""
        entry = self.rooms[room]
        self.rooms[room] = replace(entry, publisher=publisher, waiting=False, taken_over=True)
        self._listing = None
        return entry

    def lose(self, room: RoomName, publisher: SessionId, *, connected: bool = True) -> bool:
        """``publisher`` is gone without a DELETE. True if its room now waits for another
        (reconnects allowed, the room has gone live and had media: its publisher connected,
        or an earlier one did); False if it must end (or is gone). A first publisher that
        never connected ends its room: its viewers never got anything to keep."""
        entry = self.rooms.get(room)
        if entry is None or entry.publisher != publisher or entry.waiting or entry.relay:
            return False
        if not (self.reconnect and self.accepting and entry.has_audience):
            return False
        if not (connected or entry.taken_over):
            return False
        self.rooms[room] = replace(entry, waiting=True)
        self._listing = None
        return True

    def lost_reason(self, room: RoomName, reason: EndReason) -> EndReason:
        """Why a room whose publisher's transport ended (``reason``) ends: a relay's ends
        because its origin is gone (else the origin would have said why, see
        ``Relays.end``)."""
        entry = self.rooms.get(room)
        return EndReason.ORIGIN_GONE if entry is not None and entry.relay else reason

    def is_relay(self, room: RoomName, publisher: SessionId) -> bool:
        """``room`` is the relay room pulled by ``publisher``."""
        entry = self.rooms.get(room)
        return entry is not None and entry.relay and entry.publisher == publisher

    def relay_idle(self, room: RoomName, publisher: SessionId | None = None) -> bool:
        """``room`` is a relay room (pulled by ``publisher``, when given) that is live and has
        no viewer: it waits for one, then ends."""
        entry = self.rooms.get(room)
        if entry is None or not entry.relay:
            return False
        if publisher is not None and entry.publisher != publisher:
            return False
        return entry.has_audience and entry.info.subscribers == 0

    def remove(
        self, room: RoomName, publisher: SessionId | None = None
    ) -> DirectoryEntry[H] | Refusal:
        """Remove ``room`` (only if ``publisher`` still publishes there, when given)."""
        entry = self.rooms.get(room)
        if entry is None:
            return Refusal.NO_SUCH_ROOM
        if publisher is not None and entry.publisher != publisher:
            return Refusal.UNKNOWN_SESSION
        del self.rooms[room]
        self._listing = None
        return entry

    def room_changed(self, publisher: SessionId, info: RoomInfo) -> bool:
        """A room reports what it shows now. Ignored (False) when that room is gone: removed,
        or its name claimed again by another publisher (whose room reports for itself)."""
        entry = self.rooms.get(info.name)
        if entry is None or entry.publisher != publisher:
            return False
        self.rooms[info.name] = replace(entry, info=info)
        self._listing = None
        return True

    def listing(self) -> tuple[RoomInfo, ...]:
        """Every room with a publisher, by name, as its room last reported it. The same tuple
        until a room comes, goes or reports a change."""
        if self._listing is None:
            self._listing = tuple(
                entry.info
                for _, entry in sorted(self.rooms.items())
                if entry.info.has_publisher or entry.info.waiting
            )
        return self._listing

    def close(self) -> list[DirectoryEntry[H]]:
        """Stop accepting claims; every room, removed."""
        self.accepting = False
        entries = list(self.rooms.values())
        self.rooms.clear()
        self._listing = None
        return entries


class DirectoryActor(GoliveActor):
    actor_kind = "directory"

    def __init__(
        self,
        *,
        port: LoopPort,
        metrics: Metrics,
        max_subscribers: int,
        stop_timeout: float,
        recording: RecordingSettings | None = None,
        tracing: Tracing | None = None,
        reconnect_seconds: float = 0.0,
        relay_grace_seconds: float = DEFAULT_RELAY_GRACE_SECONDS,
    ) -> None:
        super().__init__(tracing)
        self._recording = recording
        self._state: DirectoryState[pykka.ActorRef[Any]] = DirectoryState(
            reconnect=reconnect_seconds > 0
        )
        self._reconnect_seconds = reconnect_seconds
        self._deadlines: dict[RoomName, threading.Timer] = {}  # waiting rooms' windows
        self._relay_grace_seconds = relay_grace_seconds
        self._idle: dict[RoomName, threading.Timer] = {}  # idle relay rooms' waits
        self._port = port
        self._metrics = metrics
        self._max_subscribers = max_subscribers
        self._stop_timeout = stop_timeout
        self._log = structlog.get_logger(__name__)

    @guarded
    @traced("directory.claim_publisher")
    def claim_publisher(self, message: ClaimPublisher) -> PublisherClaimed | Refused:
        span = trace.get_current_span()
        session = message.session
        span.set_attributes({"golive.room": message.room, "golive.session": session})
        refusal = self._state.can_claim(message.room, message.replaces, relay=message.relay)
        if refusal is not None:
            self._metrics.join_refusals.labels(Role.PUBLISHER.value, refusal.value).inc()
            span.set_attribute("golive.refusal", refusal.value)
            return Refused(refusal)
        if self._state.takes_over(message.room, message.replaces, relay=message.relay):
            return self._take_over(message.room, session)
        ref = RoomActor.start(
            message.room,
            session,
            directory=self.actor_ref,
            port=self._port,
            metrics=self._metrics,
            max_subscribers=self._max_subscribers,
            stop_timeout=self._stop_timeout,
            recording=self._recording,
            tracing=self.tracing,
            relay=message.relay,
        )
        self._state.add(message.room, session, ref, relay=message.relay)
        self._metrics.sessions.labels(Role.PUBLISHER.value).inc()
        self._count_rooms()
        return PublisherClaimed(message.room, session, ref)

    def _take_over(self, room: RoomName, session: SessionId) -> PublisherClaimed:
        previous = self._state.take_over(room, session)
        self._cancel_deadline(room)
        self._publisher_ended(EndReason.PUBLISHER_REPLACED)  # (vanished, or gone silent)
        self._metrics.sessions.labels(Role.PUBLISHER.value).inc()
        self._metrics.takeovers.inc()
        trace.get_current_span().set_attribute("golive.takeover", previous.publisher)
        tell_quietly(previous.room, TakeOver(session, previous.publisher, self.tracing.carrier()))
        return PublisherClaimed(room, session, previous.room, takeover=True)

    @guarded
    @traced("directory.publisher_lost")
    def publisher_lost(self, message: PublisherLost) -> Done | RoomEnding | Refused:
        """The publisher's transport ended without a DELETE: its room waits for another
        publisher (:class:`Done`) or ends, as :meth:`end_room`."""
        reason = self._state.lost_reason(message.room, message.reason)
        return self._lose_or_end(
            message.room, message.publisher, reason, connected=message.connected
        )

    def _lose_or_end(
        self, room: RoomName, publisher: SessionId, reason: EndReason, *, connected: bool = True
    ) -> Done | RoomEnding | Refused:
        span = trace.get_current_span()
        span.set_attributes({"golive.room": room, "golive.reason": reason.value})
        entry = self._state.rooms.get(room)
        if entry is not None and entry.waiting and entry.publisher == publisher:
            return Done()  # it waits for another already
        if not self._state.lose(room, publisher, connected=connected):
            return self._end_room(room, reason, publisher)
        entry = self._state.rooms[room]
        span.set_attribute("golive.waiting", True)
        timer = threading.Timer(
            self._reconnect_seconds,
            tell_quietly,
            (self.actor_ref, ReconnectExpired(room, publisher)),
        )
        timer.daemon = True
        self._cancel_deadline(room)
        self._deadlines[room] = timer
        timer.start()
        tell_quietly(entry.room, PublisherGone(publisher, reason, self.tracing.carrier()))
        return Done()

    def _cancel_deadline(self, room: RoomName) -> None:
        for timers in (self._deadlines, self._idle):
            timer = timers.pop(room, None)
            if timer is not None:
                timer.cancel()

    # -- relay rooms ----------------------------------------------------------------------------

    @guarded
    @traced("directory.hold_relay")
    def hold_relay(self, message: HoldRelay) -> bool:
        """A viewer is about to join a relay room: True if that relay is still there (an idle
        one waits for the viewer anew, at least :data:`RELAY_JOIN_SECONDS`)."""
        if not self._state.is_relay(message.room, message.publisher):
            return False
        if self._state.relay_idle(message.room):
            self._wait_for_viewer(message.room, message.publisher, first=True)
        return True

    def _relay_changed(self, room: RoomName, *, was_idle: bool, was_live: bool) -> None:
        """A relay room reported a change: once it has no viewer it waits for one (its first:
        at least :data:`RELAY_JOIN_SECONDS`; another: ``RELAY_GRACE_SECONDS``); a viewer
        joining ends the wait."""
        entry = self._state.rooms.get(room)
        if entry is None or not entry.relay:
            return
        if not self._state.relay_idle(room):
            timer = self._idle.pop(room, None)
            if timer is not None:
                timer.cancel()
        elif not was_idle:
            self._wait_for_viewer(room, entry.publisher, first=not was_live)

    def _wait_for_viewer(self, room: RoomName, publisher: SessionId, *, first: bool) -> None:
        seconds = self._relay_grace_seconds
        if first:
            seconds = max(seconds, RELAY_JOIN_SECONDS)
        timer = threading.Timer(seconds, tell_quietly, (self.actor_ref, RelayIdle(room, publisher)))
        timer.daemon = True
        previous = self._idle.pop(room, None)
        if previous is not None:
            previous.cancel()
        self._idle[room] = timer
        timer.start()

    @guarded
    @traced("directory.end_room")
    def end_room(self, message: EndRoom) -> RoomEnding | Refused | Done:
        """End the room. A publish that failed in a room taken over (negotiation, a timeout)
        does not end it: the room goes back to waiting (:class:`Done`). (A first publisher
        that failed never connected: its room ends.)"""
        if message.reason is EndReason.PUBLISH_FAILED and message.publisher is not None:
            return self._lose_or_end(
                message.room, message.publisher, message.reason, connected=False
            )
        return self._end_room(message.room, message.reason, message.publisher)

    def _end_room(
        self, room: RoomName, reason: EndReason, publisher: SessionId | None
    ) -> RoomEnding | Refused:
        span = trace.get_current_span()
        span.set_attributes({"golive.room": room, "golive.reason": reason.value})
        entry = self._state.remove(room, publisher)
        if isinstance(entry, Refusal):
            span.set_attribute("golive.refusal", entry.value)
            return Refused(entry)
        return self._close(room, entry, reason)

    @guarded
    @traced("directory.end_all")
    def end_all(self, message: EndAllRooms) -> tuple[RoomEnding, ...]:
        """Stop admitting publishers and end every room (shutdown)."""
        return tuple(
            self._close(name, entry, message.reason) for name, entry in self._entries_closing()
        )

    @guarded
    def lookup(self, room: RoomName) -> pykka.ActorRef[Any] | None:
        entry = self._state.rooms.get(room)
        return None if entry is None else entry.room

    @guarded
    def rooms(self) -> tuple[tuple[RoomName, pykka.ActorRef[Any]], ...]:
        return tuple((name, entry.room) for name, entry in sorted(self._state.rooms.items()))

    @guarded
    def listing(self) -> tuple[RoomInfo, ...]:
        """What ``GET /api/rooms`` shows: every room as it last reported (no room is asked)."""
        return self._state.listing()

    def handle(self, message: Any) -> None:
        match message:
            case RoomChanged(publisher=publisher, info=info):
                entry = self._state.rooms.get(info.name)
                was_idle = self._state.relay_idle(info.name, publisher)
                was_live = entry is not None and entry.has_audience
                if self._state.room_changed(publisher, info):
                    self._relay_changed(info.name, was_idle=was_idle, was_live=was_live)
            case RelayIdle(room=room, publisher=publisher):
                if self._state.relay_idle(room, publisher):
                    self._log.info("relay room kept no viewer; ending it", room=room)
                    self._end_room(room, EndReason.RELAY_IDLE, publisher)
            case ReconnectExpired(room=room, publisher=publisher):
                entry = self._state.rooms.get(room)
                if entry is not None and entry.waiting and entry.publisher == publisher:
                    self._log.info("no publisher took over in time", room=room)
                    self._end_room(room, EndReason.PUBLISHER_GONE, publisher)
            case RoomCrashed(room=room, actor_urn=urn):
                entry = self._state.rooms.get(room)
                if entry is not None and entry.room.actor_urn == urn:
                    self._state.remove(room)
                    self._cancel_deadline(room)
                    self._publisher_ended(EndReason.ROOM_FAILED)
                    self._port.room_ended(room, EndReason.ROOM_FAILED)
                    self._log.error("room crashed and was removed", room=room)
            case _:
                super().handle(message)

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()

    def release(self, *, crashed: bool) -> None:
        reason = EndReason.ROOM_FAILED if crashed else EndReason.SHUTDOWN
        endings = [self._close(name, entry, reason) for name, entry in self._entries_closing()]
        stop_all([ending.room_actor for ending in endings], self._stop_timeout)

    def _entries_closing(self) -> list[tuple[RoomName, DirectoryEntry[pykka.ActorRef[Any]]]]:
        items = sorted(self._state.rooms.items())
        self._state.close()
        return items

    def _close(
        self, name: RoomName, entry: DirectoryEntry[pykka.ActorRef[Any]], reason: EndReason
    ) -> RoomEnding:
        # The room's span for closing is a child of the current one (end_room, end_all).
        tell_quietly(entry.room, CloseRoom(reason, self.tracing.carrier()))
        self._cancel_deadline(name)
        self._publisher_ended(reason)
        self._port.room_ended(name, reason)
        return RoomEnding(name, entry.room)

    def _publisher_ended(self, reason: EndReason) -> None:
        self._metrics.sessions.labels(Role.PUBLISHER.value).dec()
        self._metrics.sessions_ended.labels(Role.PUBLISHER.value, reason.value).inc()
        self._count_rooms()

    def _count_rooms(self) -> None:
        self._metrics.rooms.set(len(self._state.rooms))


class DirectoryProxy(ActorMemberMixin, pykka.ActorProxy[DirectoryActor]):
    claim_publisher = proxy_method(DirectoryActor.claim_publisher)
    publisher_lost = proxy_method(DirectoryActor.publisher_lost)
    end_room = proxy_method(DirectoryActor.end_room)
    end_all = proxy_method(DirectoryActor.end_all)
    hold_relay = proxy_method(DirectoryActor.hold_relay)
    lookup = proxy_method(DirectoryActor.lookup)
    rooms = proxy_method(DirectoryActor.rooms)
    listing = proxy_method(DirectoryActor.listing)
    ping = proxy_method(DirectoryActor.ping)


def directory_proxy(ref: pykka.ActorRef[DirectoryActor]) -> DirectoryProxy:
    return cast(DirectoryProxy, ref.proxy())
