"""A room: one publisher, its tracks, and the viewers admitted to it.

:class:`RoomState` holds every rule of contract section 4 that concerns one room, as plain
code (no threads, no I/O); the property suite drives it directly. :class:`RoomActor` is the
thin shell that owns a ``RoomState`` in its own thread and carries out its decisions: it
starts one :class:`FanoutActor` per published track and one :class:`SubscriberActor` per
viewer, and when the room ends it closes every session and stops every child before it stops.
With recording on, it also starts one :class:`RecorderActor` per recordable track (handed to
the track's fanout); a recorder that crashes fails its recording, not the room.

A room is created by the directory on its first publish, *pending* until the publisher's
offer is answered (:class:`PublisherReady`), then *live*. A room admits viewers once its
tracks are known. When its publisher vanishes (:class:`PublisherGone`, decided by the
directory) the room *waits*: its viewers stay connected and its recordings are finalized;
a new publisher taking over (:class:`TakeOver`) makes it pending again with everything kept,
and live with the new publisher's tracks mapped onto the room's (a track whose codec changed
ends the viewers of it).
Whenever what ``GET /api/rooms`` shows of the room changes (live with its tracks, a viewer in
or out), the room tells the directory (:class:`RoomChanged`), which lists every room from
those reports without asking any room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import pykka
import structlog
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from pykka.typing import ActorMemberMixin, proxy_method

from golive.actors.base import GoliveActor, guarded, stop_all, tell_quietly, traced
from golive.actors.fanout import FanoutActor, fanout_proxy
from golive.actors.messages import (
    CloseRoom,
    CloseSession,
    Done,
    EndReason,
    FanoutCrashed,
    JoinSubscriber,
    LeaveSubscriber,
    PublisherGone,
    PublisherReady,
    RecorderCrashed,
    Refusal,
    Refused,
    Role,
    RoomChanged,
    RoomCrashed,
    RoomInfo,
    RoomName,
    SessionId,
    SubscriberAdmitted,
    SubscriberEnded,
    TakeOver,
    TrackId,
    TrackInfo,
    TrackKey,
)
from golive.actors.ports import LoopPort
from golive.actors.recorder import RecorderActor, RecordingSettings, recordable
from golive.actors.subscriber import SubscriberActor
from golive.metrics import Metrics
from golive.tracing import Tracing


class PublisherPhase(StrEnum):
    PENDING = "pending"  # claimed (or taken over), its offer not answered yet
    LIVE = "live"  # answered: tracks known, viewers admitted
    WAITING = "waiting"  # the publisher vanished: viewers kept until a takeover


@dataclass(slots=True)
class RoomState:
    """The rules of one room, without threads or I/O."""

    name: RoomName
    publisher: SessionId
    max_subscribers: int = 0  # 0 = no limit
    phase: PublisherPhase = PublisherPhase.PENDING
    tracks: tuple[TrackInfo, ...] = ()
    subscribers: set[SessionId] = field(default_factory=set)
    ended: EndReason | None = None
    reported: RoomInfo | None = None  # what the directory was last told of the room
    relay: bool = False  # its publisher is a relay pulling the room from its owner

    def go_live(self, session: SessionId, tracks: tuple[TrackInfo, ...]) -> Refusal | None:
        """The publisher's offer was answered with these tracks."""
        if self.ended is not None or session != self.publisher:
            return Refusal.UNKNOWN_SESSION
        if not tracks:
            raise ValueError("a publisher goes live with at least one track")
        if len({t.track_id for t in tracks}) != len(tracks):
            raise ValueError("track ids of a publisher must be distinct")
        if self.phase is PublisherPhase.LIVE:
            return None if tracks == self.tracks else Refusal.UNKNOWN_SESSION
        if self.phase is not PublisherPhase.PENDING:
            return Refusal.UNKNOWN_SESSION
        if self.tracks:  # a takeover: the new tracks are the room's, by id and kind
            kinds = {t.track_id: t.kind for t in self.tracks}
            if any(kinds.get(t.track_id) is not t.kind for t in tracks):
                raise ValueError("a takeover maps its tracks onto the room's")
            new = {t.track_id: t for t in tracks}
            tracks = tuple(new.get(t.track_id, t) for t in self.tracks)
        self.phase = PublisherPhase.LIVE
        self.tracks = tracks
        return None

    def lose(self, session: SessionId) -> bool:
        """The publisher vanished: the room waits. False if it was not the publisher."""
        if self.ended is not None or session != self.publisher:
            return False
        self.phase = PublisherPhase.WAITING
        return True

    def take_over(self, session: SessionId) -> None:
        """A new publisher takes the room (its tracks and viewers) over, pending its offer."""
        if self.ended is None:
            self.publisher = session
            self.phase = PublisherPhase.PENDING

    def admit(self, session: SessionId) -> Refusal | None:
        """Admit a viewer, or say why not."""
        if self.ended is not None or not self.tracks:
            return Refusal.NO_PUBLISHER
        if 0 < self.max_subscribers <= len(self.subscribers):
            return Refusal.SUBSCRIBER_LIMIT
        if session in self.subscribers:
            raise ValueError(f"session {session} was admitted twice")
        self.subscribers.add(session)
        return None

    def remove(self, session: SessionId) -> bool:
        """A viewer left. False if it was not (or no longer) in the room."""
        if session not in self.subscribers:
            return False
        self.subscribers.discard(session)
        return True

    def end(self, reason: EndReason) -> frozenset[SessionId]:
        """End the room: the viewer sessions to close (none if it had ended already)."""
        if self.ended is not None:
            return frozenset()
        self.ended = reason
        sessions = frozenset(self.subscribers)
        self.subscribers.clear()
        return sessions

    def info(self) -> RoomInfo:
        waiting = self.ended is None and self.phase is PublisherPhase.WAITING
        return RoomInfo(
            name=self.name,
            has_publisher=self.ended is None and not waiting,
            tracks=self.tracks,
            subscribers=len(self.subscribers),
            waiting=waiting,
            relay=self.relay,
        )

    def report(self) -> RoomInfo | None:
        """The room's info if the directory has not been told it yet (from now on it has);
        None if nothing changed, or once the room has ended (the directory has dropped it)."""
        info = self.info()
        if self.ended is not None or info == self.reported:
            return None
        self.reported = info
        return info


class RoomActor(GoliveActor):
    actor_kind = "room"

    def __init__(
        self,
        name: RoomName,
        publisher: SessionId,
        *,
        directory: pykka.ActorRef[Any],
        port: LoopPort,
        metrics: Metrics,
        max_subscribers: int,
        stop_timeout: float,
        recording: RecordingSettings | None = None,
        tracing: Tracing | None = None,
        relay: bool = False,
    ) -> None:
        super().__init__(tracing)
        self._state = RoomState(
            name=name, publisher=publisher, max_subscribers=max_subscribers, relay=relay
        )
        # A relay room never records: the room's owner does.
        self._recording = None if relay else recording
        self._recorders: dict[TrackId, pykka.ActorRef[Any]] = {}
        self._directory = directory
        self._port = port
        self._metrics = metrics
        self._stop_timeout = stop_timeout
        self._fanouts: dict[TrackId, pykka.ActorRef[Any]] = {}
        self._subscribers: dict[SessionId, pykka.ActorRef[Any]] = {}
        self._log = structlog.get_logger(__name__).bind(room=name)

    def span_attributes(self) -> dict[str, AttributeValue]:
        return {"golive.actor": self.actor_kind, "golive.room": self._state.name}

    def on_start(self) -> None:
        self._metrics.subscribers.labels(self._state.name).set(0)
        self._log.info(
            "room created",
            session=self._state.publisher,
            role=Role.PUBLISHER.value,
            relay=self._state.relay,
        )

    # -- asked --------------------------------------------------------------------------------

    @guarded
    @traced("room.publisher_ready")
    def publisher_ready(self, message: PublisherReady) -> Done | Refused:
        span = trace.get_current_span()
        span.set_attributes(
            {"golive.session": message.session, "golive.tracks": len(message.tracks)}
        )
        takeover = bool(self._state.tracks)
        refusal = self._state.go_live(message.session, message.tracks)
        if refusal is not None:
            span.set_attribute("golive.refusal", refusal.value)
            return Refused(refusal)
        if takeover:
            self._resume(message)
            return Done()
        for track in message.tracks:
            if track.track_id not in self._fanouts:
                key = TrackKey(self._state.name, self._state.publisher, track.track_id)
                self._fanouts[track.track_id] = FanoutActor.start(
                    key,
                    track,
                    parent=self.actor_ref,
                    port=self._port,
                    metrics=self._metrics,
                    recorder=self._start_recorder(key, track),
                )
        self._log.info("room live", tracks=[t.codec for t in message.tracks])
        self._report()
        return Done()

    def _resume(self, message: PublisherReady) -> None:
        """The publisher that took the room over is answered: viewers of a track whose codec
        they cannot receive end; the rest go on (the loop starts each again on the new
        publisher's first keyframe, numbering continued); each track is recorded anew."""
        ended: set[SessionId] = set()
        for track_id in message.changed:  # its viewers: the sessions its fanout routes to
            fanout = self._fanouts.get(track_id)
            if fanout is not None:
                table = fanout_proxy(fanout).describe().get(timeout=self._stop_timeout)
                ended |= table.sessions()
        for session in sorted(ended):
            self._close_subscriber(session, EndReason.CODEC_CHANGED)
        for track in message.tracks:
            fanout = self._fanouts.get(track.track_id)
            if fanout is None:
                continue
            key = TrackKey(self._state.name, self._state.publisher, track.track_id)
            recorder = self._start_recorder(key, track)
            fanout_proxy(fanout).set_recorder(recorder).get(timeout=self._stop_timeout)
        self._log.info(
            "room live again",
            session=message.session,
            tracks=[t.codec for t in message.tracks],
            codec_changed=sorted(message.changed),
            subscribers_ended=len(ended),
        )
        self._report()

    def _start_recorder(self, key: TrackKey, track: TrackInfo) -> pykka.ActorRef[Any] | None:
        if self._recording is None:
            return None
        if not recordable(track):
            self._log.warning("codec cannot be recorded", track=track.track_id, codec=track.codec)
            return None
        try:
            ref = RecorderActor.start(
                key,
                track,
                settings=self._recording,
                parent=self.actor_ref,
                port=self._port,
                metrics=self._metrics,
            )
        except Exception:  # noqa: BLE001  no recording is no reason to refuse the publisher
            self._log.exception("recorder could not start", track=track.track_id)
            return None
        self._recorders[track.track_id] = ref
        return ref

    @guarded
    @traced("room.join_subscriber")
    def join_subscriber(self, message: JoinSubscriber) -> SubscriberAdmitted | Refused:
        span = trace.get_current_span()
        session = message.session
        refusal = self._state.admit(session)
        if refusal is not None:
            self._metrics.join_refusals.labels(Role.SUBSCRIBER.value, refusal.value).inc()
            span.set_attribute("golive.refusal", refusal.value)
            return Refused(refusal)
        span.set_attribute("golive.session", session)
        ref = SubscriberActor.start(
            session,
            self._state.name,
            fanouts=self._fanouts,
            parent=self.actor_ref,
            port=self._port,
            metrics=self._metrics,
            tracing=self.tracing,
        )
        self._subscribers[session] = ref
        self._metrics.sessions.labels(Role.SUBSCRIBER.value).inc()
        self._count_subscribers()
        self._report()
        self._log.info("subscriber admitted", session=session)
        return SubscriberAdmitted(self._state.name, session, self._state.tracks, ref)

    @guarded
    @traced("room.leave_subscriber")
    def leave_subscriber(self, message: LeaveSubscriber) -> Done | Refused:
        span = trace.get_current_span()
        span.set_attributes(
            {"golive.session": message.session, "golive.reason": message.reason.value}
        )
        if not self._close_subscriber(message.session, message.reason):
            span.set_attribute("golive.refusal", Refusal.UNKNOWN_SESSION.value)
            return Refused(Refusal.UNKNOWN_SESSION)
        return Done()

    def _close_subscriber(self, session: SessionId, reason: EndReason) -> bool:
        if not self._state.remove(session):
            return False
        ref = self._subscribers.pop(session)
        tell_quietly(ref, CloseSession(reason, self.tracing.carrier()))
        stop_all([ref], self._stop_timeout)
        self._subscriber_ended(reason)
        return True

    @guarded
    def describe(self) -> RoomInfo:
        """The room as it sees itself (``GET /api/rooms`` reads the directory's copy)."""
        return self._state.info()

    # -- told ---------------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        match message:
            case CloseRoom(reason=reason, trace=carrier):
                attributes = {**self.span_attributes(), "golive.reason": reason.value}
                with self.tracing.handling("room.close", carrier, attributes):
                    self._end(reason)
                self.stop()
            case PublisherGone(session=session, reason=reason, trace=carrier):
                with self.tracing.handling("room.publisher_gone", carrier, self.span_attributes()):
                    if self._state.lose(session):
                        # Its recordings end here; a publisher taking over records anew. Its
                        # session stays until the room ends or is taken over: its DELETE
                        # (a page closed sends one, often after the transport's close)
                        # still ends the room at once.
                        self._stop_recorders()
                        self._log.info(
                            "publisher gone; waiting for another", session=session, reason=reason
                        )
                        self._report()
            case TakeOver(session=session, previous=previous, trace=carrier):
                with self.tracing.handling("room.take_over", carrier, self.span_attributes()):
                    self._state.take_over(session)
                    self._stop_recorders()
                    self._port.close_session(previous, EndReason.PUBLISHER_REPLACED)
                    self._log.info("publisher taking over", session=session, previous=previous)
                    self._report()
            case SubscriberEnded(session=session, reason=reason):
                # The subscriber ended on its own and stops itself.
                if self._state.remove(session):
                    self._subscribers.pop(session, None)
                    self._subscriber_ended(reason)
            case RecorderCrashed(track_id=track_id):
                # The recording failed (counted and logged by the recorder); the room goes on.
                self._recorders.pop(track_id, None)
                self._log.error("recorder crashed; the track is no longer recorded", track=track_id)
            case FanoutCrashed(track_id=track_id):
                # A room that cannot forward one of its tracks cannot go on: it fails as a
                # whole (its sessions close, the directory drops it), other rooms carry on.
                self._fanouts.pop(track_id, None)
                raise RuntimeError(f"the fanout of track {track_id} crashed")
            case _:
                super().handle(message)

    # -- lifecycle ----------------------------------------------------------------------------

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()
        tell_quietly(self._directory, RoomCrashed(self._state.name, self.actor_urn))

    def release(self, *, crashed: bool) -> None:
        self._end(EndReason.ROOM_FAILED if crashed else EndReason.SHUTDOWN)

    def _end(self, reason: EndReason) -> None:
        """Close every session, stop every child. Runs once; later calls do nothing."""
        if self._state.ended is not None:
            return
        sessions = self._state.end(reason)
        subscribers = [self._subscribers.pop(s) for s in sessions if s in self._subscribers]
        carrier = self.tracing.carrier()  # the room's closing span, if it has one
        for ref in subscribers:
            tell_quietly(ref, CloseSession(reason, carrier))
        children = [*subscribers, *self._subscribers.values(), *self._fanouts.values()]
        stop_all(children, self._stop_timeout)
        # Recorders last: every packet the loop told them so far is written before they stop.
        self._stop_recorders()
        self._subscribers.clear()
        self._fanouts.clear()
        for _ in sessions:
            self._subscriber_ended(reason)
        self._port.close_session(self._state.publisher, reason)
        self._metrics.forget_room(self._state.name)
        self._log.info("room ended", reason=reason.value, subscribers_closed=len(sessions))

    def _stop_recorders(self) -> None:
        """Stop every recorder (each finalizes its recording) and forget them."""
        stop_all(self._recorders.values(), self._stop_timeout)
        self._recorders.clear()

    def _subscriber_ended(self, reason: EndReason) -> None:
        self._metrics.sessions.labels(Role.SUBSCRIBER.value).dec()
        self._metrics.sessions_ended.labels(Role.SUBSCRIBER.value, reason.value).inc()
        if self._state.ended is None:
            self._count_subscribers()
            self._report()

    def _report(self) -> None:
        """Tell the directory what the room now shows in ``GET /api/rooms``, if that changed.
        Told before the room answers the command that changed it, so a listing asked after
        that answer already sees the change (the directory's inbox is in order)."""
        info = self._state.report()
        if info is not None:
            tell_quietly(self._directory, RoomChanged(self._state.publisher, info))

    def _count_subscribers(self) -> None:
        self._metrics.subscribers.labels(self._state.name).set(len(self._state.subscribers))


class RoomProxy(ActorMemberMixin, pykka.ActorProxy[RoomActor]):
    publisher_ready = proxy_method(RoomActor.publisher_ready)
    join_subscriber = proxy_method(RoomActor.join_subscriber)
    leave_subscriber = proxy_method(RoomActor.leave_subscriber)
    describe = proxy_method(RoomActor.describe)
    ping = proxy_method(RoomActor.ping)


def room_proxy(ref: pykka.ActorRef[Any]) -> RoomProxy:
    return cast(RoomProxy, ref.proxy())
