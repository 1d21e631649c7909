"""The room lifecycle property suite, against the running actors behind the real HTTP server.

Each example starts a real golive app (aiohttp + actor system) on a loop thread bound to
127.0.0.1, drives it through :class:`RoomService` (what the WHIP/WHEP handlers call) and the
admin HTTP route, and checks after every step that the directory, every room, the routing
tables on the loop, the Prometheus gauges and ``/api/rooms`` all agree with the model. A rule
only this machine has crashes a room's actor: that room ends, every other room carries on.
After each example the server shuts down and no actor, thread or session may be left.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pykka
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule

from golive.actors.base import Barrier
from golive.actors.messages import (
    Done,
    EndReason,
    KeyframeDelivered,
    PublisherClaimed,
    ReconnectExpired,
    Refusal,
    Refused,
    RelayIdle,
    Role,
    RoomChanged,
    RoomInfo,
    RoomName,
    RoutePhase,
    SessionId,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
)
from golive.actors.room import room_proxy
from golive.actors.subscriber import subscriber_proxy
from golive.config import Config
from golive.sessions import SessionRecord
from tests.property.model import LifecycleMachine, Observed, examples, rooms
from tests.support import ProbeEndpoint, ServerThread, labelled, metric_samples, wait_until

TIMEOUT = 10.0
HOPS = 4  # the longest chain of actor messages one step causes


class ActorLifecycle(LifecycleMachine):
    name = "running-actors machine"

    def start(self, limit: int) -> None:
        self.threads_before = set(threading.enumerate())
        config = Config.from_env(
            {
                "MAX_SUBS_PER_ROOM": str(limit),
                "ACTOR_TIMEOUT_SECONDS": str(TIMEOUT),
                # Windows pass when a rule says so (reconnect_expires, relay_idle_expires),
                # never by the clock.
                "PUBLISHER_RECONNECT_SECONDS": "3600",
                "RELAY_GRACE_SECONDS": "3600",
            }
        )
        self.server = ServerThread(config).start()
        self.endpoints: dict[SessionId, ProbeEndpoint] = {}

    # -- synchronisation ----------------------------------------------------------------------

    def settle(self) -> None:
        """Let every message chain started by a step run to its end: a barrier through every
        live actor, once per hop, then one turn of the event loop."""
        for _ in range(HOPS):
            futures = []
            for ref in pykka.ActorRegistry.get_all():
                try:
                    futures.append(ref.ask(Barrier(), block=False))
                except pykka.ActorDeadError:
                    continue
            for future in futures:
                try:
                    future.get(timeout=TIMEOUT)
                except pykka.ActorDeadError:
                    continue
        self.server.call(lambda: None)

    def records(self) -> list[SessionRecord]:
        return self.server.call(lambda: list(self.server.rooms.registry))

    # -- the system under test ----------------------------------------------------------------

    def publish(self, room: RoomName, replaces: SessionId | None = None) -> SessionId | Refusal:
        endpoint = ProbeEndpoint(f"publisher of {room}")
        reply = self.server.run(self.server.rooms.publish(room, endpoint, replaces=replaces))
        self.settle()  # (a takeover closes the publisher it replaces)
        if isinstance(reply, Refused):
            return reply.reason
        assert isinstance(reply, PublisherClaimed)
        self.endpoints[reply.session] = endpoint
        return reply.session

    def go_live(self, session: SessionId, tracks: tuple[TrackInfo, ...]) -> Refusal | None:
        reply = self.server.run(self.server.rooms.publisher_ready(session, tracks))
        self.settle()
        return reply.reason if isinstance(reply, Refused) else None

    def end_publisher(self, session: SessionId, *, failed: bool) -> bool:
        reason = EndReason.PUBLISH_FAILED if failed else EndReason.CLIENT_LEFT
        reply = self.server.run(self.server.rooms.leave(session, reason))
        self.settle()
        return isinstance(reply, Done)

    def subscribe(self, room: RoomName, tracks: frozenset[TrackId]) -> SessionId | Refusal:
        endpoint = ProbeEndpoint(f"viewer of {room}")
        reply = self.server.run(self.server.rooms.subscribe(room, endpoint))
        if isinstance(reply, Refused):
            return reply.reason
        assert isinstance(reply, SubscriberAdmitted)
        self.endpoints[reply.session] = endpoint
        # What the media layer tells once the viewer's offer is matched.
        self.server.call(lambda: self.server.rooms.tracks_negotiated(reply.session, tracks))
        self.settle()  # its routes, asked for then
        return reply.session

    def connect(self, session: SessionId) -> None:
        self.server.call(lambda: self.server.rooms.peer_connected(session))
        self.settle()

    def keyframe(self, session: SessionId, track: TrackId) -> None:
        def fanout() -> pykka.ActorRef[Any]:
            registry = self.server.rooms.registry
            record = registry.get(session)
            assert record is not None
            for key in registry.tracks():
                table = registry.routes(key)
                if key.room == record.room and key.track_id == track and table is not None:
                    assert table.fanout is not None
                    return table.fanout
            raise AssertionError(f"no routing table for {track}")

        fanout().tell(KeyframeDelivered(session))
        self.settle()

    def leave(self, session: SessionId) -> bool:
        reply = self.server.run(self.server.rooms.leave(session, EndReason.CLIENT_LEFT))
        self.settle()
        return isinstance(reply, Done)

    def transport_fails(self, session: SessionId) -> None:
        self.server.call(lambda: self.server.rooms.peer_failed(session, EndReason.ICE_FAILED))
        self.settle()

    def publisher_vanishes(self, session: SessionId, *, connected: bool) -> None:
        self.server.call(
            lambda: self.server.rooms.peer_failed(
                session, EndReason.ICE_FAILED, connected=connected
            )
        )
        self.server.run(self.server.rooms._tasks.wait(TIMEOUT))  # its room waits, or ends
        self.settle()

    def reconnect_expires(self, room: RoomName, publisher: SessionId) -> None:
        self.server.rooms._directory.actor_ref.tell(ReconnectExpired(room, publisher))
        self.settle()

    def admin_close(self, room: RoomName) -> bool:
        request = urllib.request.Request(  # noqa: S310  loopback URL built here
            f"{self.server.url}/api/admin/rooms/{room}/close", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        self.settle()
        if status == 404:
            assert json.loads(body) == {"error": "room not found"}
            return False
        assert status == 200, status
        return True

    def relay(self, room: RoomName, tracks: tuple[TrackInfo, ...]) -> SessionId | Refusal:
        endpoint = ProbeEndpoint(f"relay of {room}")
        reply = self.server.run(self.server.rooms.publish(room, endpoint, relay=True))
        if isinstance(reply, Refused):
            return reply.reason
        assert isinstance(reply, PublisherClaimed)
        assert not reply.takeover
        self.endpoints[reply.session] = endpoint
        ready = self.server.run(self.server.rooms.publisher_ready(reply.session, tracks))
        assert isinstance(ready, Done), ready
        self.settle()
        return reply.session

    def hold_relay(self, room: RoomName, relay: SessionId) -> bool:
        held: bool = self.server.run(self.server.rooms.hold_relay(room, relay))
        self.settle()
        return held

    def origin_ends(self, relay: SessionId, reason: EndReason) -> bool:
        reply = self.server.run(self.server.rooms.leave(relay, reason))  # (Relays.end)
        self.settle()
        return isinstance(reply, Done)

    def relay_transport_fails(self, relay: SessionId) -> None:
        self.publisher_vanishes(relay, connected=True)

    def relay_idle_expires(self, room: RoomName, relay: SessionId) -> None:
        self.server.rooms._directory.actor_ref.tell(RelayIdle(room, relay))
        self.settle()

    @rule(room=rooms)
    def room_crashes_rule(self, room: RoomName) -> None:
        """A room's actor dies of a bug: that room ends, its sessions close, others go on."""
        self.step(f"room {room} crashes")
        ref = self.server.run(_lookup(self.server, room))
        if ref is None:
            assert room not in self.model
            return
        ref.tell("a message no room understands")
        self.end_room(room, EndReason.ROOM_FAILED)
        wait_until(
            lambda: all(self.endpoints[s].closed for s in self.closed),
            what="the crashed room's sessions to close",
        )
        wait_until(
            lambda: room not in self.server.run(_directory_names(self.server)),
            what="the directory to drop the crashed room",
        )
        self.settle()

    def late_report(self, publisher: SessionId, info: RoomInfo) -> None:
        self.server.rooms._directory.actor_ref.tell(RoomChanged(publisher, info))
        self.settle()

    def room_views(self) -> tuple[dict[RoomName, RoomInfo], dict[RoomName, RoomInfo]]:
        listed = {info.name: info for info in self.server.run(self.server.rooms.rooms())}
        entries = self.server.rooms._directory.rooms().get(timeout=TIMEOUT)
        own = {name: room_proxy(ref).describe().get(timeout=TIMEOUT) for name, ref in entries}
        return listed, own

    def observe(self) -> Observed:
        self.server.call(self._deliver_probe_packets)
        status, body = self.server.get("/api/rooms")
        assert status == 200
        listed = {r["name"]: (r["tracks"], r["subscribers"]) for r in json.loads(body)}
        relays = frozenset(r["name"] for r in json.loads(body) if r["relay"])
        assert all(r["hasPublisher"] != r["waiting"] for r in json.loads(body))
        records = self.records()
        sessions = {r.session: (r.room, r.role) for r in records}
        routes: dict[SessionId, dict[TrackId, RoutePhase]] = {}

        def tables() -> None:
            registry = self.server.rooms.registry
            for key in registry.tracks():
                table = registry.routes(key)
                assert table is not None
                for route in table.routes:
                    routes.setdefault(route.session, {})[key.track_id] = route.phase

        self.server.call(tables)
        phases = {
            r.session: subscriber_proxy(r.actor).describe().get(timeout=TIMEOUT)
            for r in records
            if r.role is Role.SUBSCRIBER and r.actor is not None
        }
        return Observed(listed, sessions, routes, phases, relays)

    def _deliver_probe_packets(self) -> None:
        """Forward one probe 'packet' per track the way the packet path resolves targets."""
        registry = self.server.rooms.registry
        for key in registry.tracks():
            for record, phase in registry.targets(key):
                if phase is RoutePhase.FORWARDING:
                    assert isinstance(record.endpoint, ProbeEndpoint)
                    record.endpoint.deliver(key)

    def check_extra(self) -> None:
        names = self.server.run(_directory_names(self.server))
        assert names == sorted(self.model), (names, sorted(self.model))
        for session, reason in self.closed.items():
            endpoint = self.endpoints[session]
            assert endpoint.closed is reason, (session, endpoint.closed, reason)
            assert endpoint.close_calls == 1, (session, endpoint.close_calls)
            assert endpoint.received_after_close == [], session
        _, body = self.server.get("/metrics")
        samples = metric_samples(body.decode())
        assert samples[("live_rooms", ())] == len(self.model)
        assert labelled(samples, "live_subscribers", "room") == {
            name: len(room.subscribers) for name, room in self.model.items()
        }
        sessions = labelled(samples, "golive_sessions", "role")
        assert sessions.get("publisher", 0) == len(self.model)
        assert sessions.get("subscriber", 0) == sum(len(r.subscribers) for r in self.model.values())

    def teardown(self) -> None:
        if not hasattr(self, "server"):
            return
        self.server.stop()
        # Every session ever admitted was closed exactly once; nothing is left running.
        for session, endpoint in self.endpoints.items():
            expected = self.closed.get(session, EndReason.SHUTDOWN)
            assert endpoint.closed is expected, (session, endpoint.closed, expected)
            assert endpoint.close_calls == 1, session
        assert pykka.ActorRegistry.get_all() == []
        wait_until(
            lambda: set(threading.enumerate()) <= self.threads_before,
            what="every actor and loop thread to exit",
        )


async def _lookup(server: ServerThread, room: RoomName) -> pykka.ActorRef[Any] | None:
    from golive.actors.base import reply_of  # noqa: PLC0415  kept beside its only use

    directory = server.rooms._directory
    return await reply_of(directory.lookup(room), TIMEOUT)


async def _directory_names(server: ServerThread) -> list[RoomName]:
    from golive.actors.base import reply_of  # noqa: PLC0415  kept beside its only use

    entries = await reply_of(server.rooms._directory.rooms(), TIMEOUT)
    return [name for name, _ in entries]


ActorLifecycle.TestCase.settings = settings(
    max_examples=examples(150),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


pytestmark = [pytest.mark.property, pytest.mark.timeout(900)]
TestActorLifecycle = ActorLifecycle.TestCase
