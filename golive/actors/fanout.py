"""One fanout per published track: who receives the track's packets, and from when.

The fanout owns the track's routing table. Packets never pass through it: forwarding runs on
the event loop with plain calls, reading the latest :class:`RoutingTable` the fanout published
through the :class:`LoopPort`. What goes through the fanout are the *decisions*: a subscriber
is ready, a subscriber started on a keyframe, a subscriber is gone.

A route is asked for when the viewer is admitted (before its peer connection is up: the loop
sends to a viewer only once it is). A video route starts ``WAITING_KEYFRAME`` (the loop sends
nothing until a keyframe, then reports :class:`KeyframeDelivered`); an audio route starts
``FORWARDING``.

When the track is recorded, every table also names its recorder (started by the room), to
which the loop tells each packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pykka
import structlog
from pykka.typing import ActorMemberMixin, proxy_method

from golive.actors.base import GoliveActor, guarded, tell_quietly
from golive.actors.messages import (
    FanoutCrashed,
    KeyframeDelivered,
    MediaKind,
    Route,
    RouteGone,
    RoutePhase,
    RouteReady,
    RoutingTable,
    SessionId,
    TrackForwarding,
    TrackInfo,
    TrackKey,
)
from golive.actors.ports import LoopPort
from golive.metrics import Metrics


@dataclass(slots=True)
class FanoutState:
    """The routing table of one track, without threads or I/O."""

    track: TrackKey
    kind: MediaKind
    routes: dict[SessionId, RoutePhase] = field(default_factory=dict)
    version: int = 0
    closed: bool = False
    # The Route of each session as last published: a table reuses them, so publishing one
    # after a change makes one new Route, not one per viewer (a frozen dataclass each).
    made: dict[SessionId, Route] = field(default_factory=dict)

    def add(self, session: SessionId) -> RoutePhase | None:
        """Route the track to ``session``; the phase it starts in, None if nothing changed."""
        if self.closed or session in self.routes:
            return None
        phase = (
            RoutePhase.WAITING_KEYFRAME if self.kind is MediaKind.VIDEO else RoutePhase.FORWARDING
        )
        self.routes[session] = phase
        self.version += 1
        return phase

    def keyframe_delivered(self, session: SessionId) -> bool:
        """The session started on a keyframe. True if it was waiting for one."""
        if self.routes.get(session) is not RoutePhase.WAITING_KEYFRAME:
            return False
        self.routes[session] = RoutePhase.FORWARDING
        self.version += 1
        return True

    def remove(self, session: SessionId) -> bool:
        self.made.pop(session, None)
        if self.routes.pop(session, None) is None:
            return False
        self.version += 1
        return True

    def close(self) -> None:
        """Retire the track: no route any more, and none can be added."""
        self.closed = True
        self.routes.clear()
        self.made.clear()
        self.version += 1

    def waiting(self) -> frozenset[SessionId]:
        return frozenset(s for s, p in self.routes.items() if p is RoutePhase.WAITING_KEYFRAME)

    def table(
        self,
        fanout: pykka.ActorRef[Any] | None = None,
        recorder: pykka.ActorRef[Any] | None = None,
    ) -> RoutingTable:
        made = self.made
        routes = []
        for session, phase in self.routes.items():
            route = made.get(session)
            if route is None or route.phase is not phase:
                route = made[session] = Route(session, phase)
            routes.append(route)
        return RoutingTable(
            track=self.track,
            version=self.version,
            routes=tuple(routes),
            retired=self.closed,
            fanout=fanout,
            recorder=recorder,
        )


class FanoutActor(GoliveActor):
    actor_kind = "fanout"

    def __init__(
        self,
        track: TrackKey,
        info: TrackInfo,
        *,
        parent: pykka.ActorRef[Any],
        port: LoopPort,
        metrics: Metrics,
        recorder: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__()
        self._parent = parent
        self._recorder = recorder
        self._state = FanoutState(track=track, kind=info.kind)
        self._port = port
        self._metrics = metrics
        self._subscribers: dict[SessionId, pykka.ActorRef[Any]] = {}
        self._log = structlog.get_logger(__name__).bind(
            room=track.room, track=track.track_id, kind=info.kind.value
        )

    def on_start(self) -> None:
        self._publish()

    @guarded
    def describe(self) -> RoutingTable:
        return self._state.table()

    @guarded
    def set_recorder(self, recorder: pykka.ActorRef[Any] | None) -> None:
        """Name ``recorder`` in the tables from now on (a new publisher took the room over).
        The table is published before this returns, so the loop has it before the room's
        next answer."""
        self._recorder = recorder
        self._state.version += 1
        self._publish()

    def handle(self, message: Any) -> None:
        match message:
            case RouteReady(session=session, subscriber=subscriber):
                phase = self._state.add(session)
                if phase is None:
                    return
                self._subscribers[session] = subscriber
                self._publish()
                if phase is RoutePhase.FORWARDING:
                    tell_quietly(subscriber, TrackForwarding(self._state.track.track_id))
            case KeyframeDelivered(session=session):
                if self._state.keyframe_delivered(session):
                    self._publish()
                    waiting = self._subscribers.get(session)
                    if waiting is not None:
                        tell_quietly(waiting, TrackForwarding(self._state.track.track_id))
            case RouteGone(session=session):
                self._subscribers.pop(session, None)
                if self._state.remove(session):
                    self._publish()
            case _:
                super().handle(message)

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()
        tell_quietly(self._parent, FanoutCrashed(self._state.track.track_id))

    def release(self, *, crashed: bool) -> None:  # noqa: ARG002  same on crash and on stop
        self._state.close()
        self._subscribers.clear()
        self._publish()

    def _publish(self) -> None:
        self._port.publish_routes(self._state.table(self.actor_ref, self._recorder))


class FanoutProxy(ActorMemberMixin, pykka.ActorProxy[FanoutActor]):
    describe = proxy_method(FanoutActor.describe)
    set_recorder = proxy_method(FanoutActor.set_recorder)
    ping = proxy_method(FanoutActor.ping)


def fanout_proxy(ref: pykka.ActorRef[FanoutActor]) -> FanoutProxy:
    return cast(FanoutProxy, ref.proxy())
