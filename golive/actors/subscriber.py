"""One actor per viewer session: that session's lifecycle, and nothing else.

``NEGOTIATING`` (admitted, answer being made) → ``WAITING_KEYFRAME`` (ICE and DTLS up) →
``ACTIVE`` (every track forwarding) → ``CLOSED``. Routes are asked of every fanout when the
actor starts, at admission: the routing tables reach the loop while the peer connection is
still being set up, and the loop forwards to the viewer as soon as its DTLS is up (it sends
to no route whose viewer is not connected), with no actor message between the two. The peer
connection's lifecycle arrives as told events from the loop; the end of the session is
decided here and carried out on the loop through the :class:`LoopPort`.

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
)
from golive.actors.ports import LoopPort
from golive.metrics import Metrics
from golive.tracing import Tracing


@dataclass(slots=True)
class SubscriberState:
    """A viewer session's phase, without threads or I/O."""

    tracks: frozenset[TrackId]
    phase: SubscriberPhase = SubscriberPhase.NEGOTIATING
    forwarding: set[TrackId] = field(default_factory=set)
    end_reason: EndReason | None = None

    def connected(self) -> bool:
        """ICE and DTLS are up. True if this starts the routes."""
        if self.phase is not SubscriberPhase.NEGOTIATING:
            return False
        self.phase = SubscriberPhase.WAITING_KEYFRAME
        self._settle()
        return True

    def track_forwarding(self, track: TrackId) -> None:
        if self.phase is SubscriberPhase.CLOSED or track not in self.tracks:
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
        if self.phase is SubscriberPhase.WAITING_KEYFRAME and self.forwarding >= self.tracks:
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
        self._state = SubscriberState(tracks=frozenset(fanouts))
        self._fanouts = dict(fanouts)
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

    def on_start(self) -> None:
        for fanout in self._fanouts.values():
            tell_quietly(fanout, RouteReady(self._session, self.actor_ref))

    def handle(self, message: Any) -> None:
        match message:
            case PeerConnected():
                if self._state.connected():
                    self._log.info("subscriber connected")
            case TrackForwarding(track_id=track_id):
                before = self._state.phase
                self._state.track_forwarding(track_id)
                if before is not self._state.phase:
                    self._log.info("subscriber active")
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

    def _end(self, reason: EndReason) -> None:
        if not self._state.close(reason):
            return
        for fanout in self._fanouts.values():
            tell_quietly(fanout, RouteGone(self._session))
        self._port.close_session(self._session, reason)
        self._log.debug("subscriber ended", reason=reason.value)  # the loop tells the story


class SubscriberProxy(ActorMemberMixin, pykka.ActorProxy[SubscriberActor]):
    describe = proxy_method(SubscriberActor.describe)
    ping = proxy_method(SubscriberActor.ping)


def subscriber_proxy(ref: pykka.ActorRef[SubscriberActor]) -> SubscriberProxy:
    return cast(SubscriberProxy, ref.proxy())
