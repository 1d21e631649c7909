"""One actor per viewer session: that session's lifecycle, and nothing else.

``NEGOTIATING`` (admitted, answer being made) → ``WAITING_KEYFRAME`` (ICE and DTLS up) →
``ACTIVE`` (every track its answer carries forwarding) → ``CLOSED``. A viewer may receive a
subset of the room's tracks (an audio-only player, a codec it cannot take): the loop tells the
actor which tracks its answer carries (:class:`TracksNegotiated`) as soon as the offer is
matched, before the answer is made, and the actor asks exactly those fanouts for routes. The
routing tables reach the loop while the peer connection is still being set up, and the loop
forwards to the viewer as soon as its DTLS is up (it sends to no route whose viewer is not
connected), with no actor message between the two. The peer connection's lifecycle arrives as
told events from the loop; the end of the session is decided here and carried out on the loop
through the :class:`LoopPort`, and each route asked for is withdrawn.

Cost: pykka gives every actor a thread. A subscriber actor holds its small state and no
other resource; ``make bench`` measures its threads and memory per viewer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pykka
import structlog
from opentelemetry.util.types import AttributeValue
from pykka.typing import ActorMemberMixin, proxy_method

from golive.actors.base import GoliveActor, guarded, tell_quietly
from golive.actors.messages import (
    CloseSession,
    EndReason,
    PeerConnected,
    PeerFailed,
    Role,
    RoomName,
    RouteGone,
    RouteReady,
    SessionId,
    SubscriberEnded,
    SubscriberPhase,
    TrackForwarding,
    TrackId,
    TracksNegotiated,
)
from golive.actors.ports import LoopPort
from golive.metrics import Metrics
from golive.tracing import Tracing


@dataclass(slots=True)
class SubscriberState:
    """A viewer session's phase, without threads or I/O."""

    tracks: frozenset[TrackId] | None = None  # what its answer carries, once negotiated
    phase: SubscriberPhase = SubscriberPhase.NEGOTIATING
    forwarding: set[TrackId] = field(default_factory=set)
    end_reason: EndReason | None = None

    def negotiated(self, tracks: frozenset[TrackId]) -> bool:
        """Its answer carries ``tracks``. True if this routes them (once, and not once closed)."""
        if self.tracks is not None or self.phase is SubscriberPhase.CLOSED:
            return False
        self.tracks = tracks
        self._settle()
        return True

    def connected(self) -> bool:
        """ICE and DTLS are up. True if this starts the routes."""
        if self.phase is not SubscriberPhase.NEGOTIATING:
            return False
        self.phase = SubscriberPhase.WAITING_KEYFRAME
        self._settle()
        return True

    def track_forwarding(self, track: TrackId) -> None:
        if self.phase is SubscriberPhase.CLOSED or self.tracks is None or track not in self.tracks:
            return
        self.forwarding.add(track)
        self._settle()

    def close(self, reason: EndReason) -> bool:
        """True the first time only: a closed session stays closed."""
        if self.phase is SubscriberPhase.CLOSED:
            return False
        self.phase = SubscriberPhase.CLOSED
        self.end_reason = reason
        return True

    def _settle(self) -> None:
        if (
            self.phase is SubscriberPhase.WAITING_KEYFRAME
            and self.tracks is not None
            and self.forwarding >= self.tracks
        ):
            self.phase = SubscriberPhase.ACTIVE


class SubscriberActor(GoliveActor):
    actor_kind = "subscriber"

    def __init__(
        self,
        session: SessionId,
        room: RoomName,
        *,
        fanouts: Mapping[TrackId, pykka.ActorRef[Any]],
        parent: pykka.ActorRef[Any],
        port: LoopPort,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(tracing)
        self._session = session
        self._room = room
        self._state = SubscriberState()
        self._fanouts = dict(fanouts)  # one per track of the room
        self._routed: dict[TrackId, pykka.ActorRef[Any]] = {}  # the ones asked for a route
        self._parent = parent
        self._port = port
        self._metrics = metrics
        self._log = structlog.get_logger(__name__).bind(
            room=room, session=session, role=Role.SUBSCRIBER.value
        )

    def span_attributes(self) -> dict[str, AttributeValue]:
        return {
            "golive.actor": self.actor_kind,
            "golive.room": self._room,
            "golive.session": self._session,
        }

    @guarded
    def describe(self) -> SubscriberPhase:
        return self._state.phase

    def handle(self, message: Any) -> None:
        match message:
            case TracksNegotiated(tracks=tracks):
                self._route(tracks)
            case PeerConnected():
                if self._state.connected():
                    self._log.info("subscriber connected")
                    self._tell_if_active()  # (audio alone forwards before it connects)
            case TrackForwarding(track_id=track_id):
                before = self._state.phase
                self._state.track_forwarding(track_id)
                if before is not self._state.phase:
                    self._tell_if_active()
            case PeerFailed(reason=reason):
                # The transport ended by itself: end the session, tell the room, stop.
                self._end(reason)
                tell_quietly(self._parent, SubscriberEnded(self._session, reason))
                self.stop()
            case CloseSession(reason=reason, trace=carrier):
                # The room ends this session; it stops this actor right after.
                attributes = {**self.span_attributes(), "golive.reason": reason.value}
                with self.tracing.handling("subscriber.close", carrier, attributes):
                    self._end(reason)
            case _:
                super().handle(message)

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()
        tell_quietly(self._parent, SubscriberEnded(self._session, EndReason.INTERNAL_ERROR))

    def release(self, *, crashed: bool) -> None:
        self._end(EndReason.INTERNAL_ERROR if crashed else EndReason.SHUTDOWN)

    def _route(self, tracks: frozenset[TrackId]) -> None:
        """Ask the fanouts of the tracks the answer carries, and no other, for a route."""
        unknown = tracks - self._fanouts.keys()
        if unknown:  # not the room's tracks (its publisher changed them): nothing to route
            self._log.warning("negotiated tracks the room does not have", tracks=sorted(unknown))
        if not self._state.negotiated(tracks - unknown):
            return
        self._routed = {track: self._fanouts[track] for track in sorted(tracks - unknown)}
        for fanout in self._routed.values():
            tell_quietly(fanout, RouteReady(self._session, self.actor_ref))

    def _tell_if_active(self) -> None:
        if self._state.phase is SubscriberPhase.ACTIVE:
            self._log.info("subscriber active", tracks=sorted(self._routed))

    def _end(self, reason: EndReason) -> None:
        if not self._state.close(reason):
            return
        for fanout in self._routed.values():
            tell_quietly(fanout, RouteGone(self._session))
        self._port.close_session(self._session, reason)
        self._log.debug("subscriber ended", reason=reason.value)  # the loop tells the story


class SubscriberProxy(ActorMemberMixin, pykka.ActorProxy[SubscriberActor]):
    describe = proxy_method(SubscriberActor.describe)
    ping = proxy_method(SubscriberActor.ping)


def subscriber_proxy(ref: pykka.ActorRef[SubscriberActor]) -> SubscriberProxy:
    return cast(SubscriberProxy, ref.proxy())
