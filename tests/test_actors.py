"""The actor system: futures the loop can await, crash isolation, start/stop order, cost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
import pytest_asyncio

from golive.actors.base import CallbackFuture, GoliveActor, barrier, guarded, reply_of, stop_all
from golive.actors.directory import DirectoryActor
from golive.actors.messages import (
    Done,
    EndReason,
    KeyframeDelivered,
    MediaKind,
    PublisherClaimed,
    Refusal,
    Refused,
    Role,
    RoomName,
    RoutePhase,
    SubscriberAdmitted,
    SubscriberPhase,
    TrackId,
    TrackInfo,
    new_session_id,
    parse_room_name,
)
from golive.actors.subscriber import subscriber_proxy
from golive.actors.system import ActorSystem
from golive.metrics import Metrics, create_metrics
from golive.rooms import RoomService
from golive.sessions import SessionRegistry
from tests.support import ProbeEndpoint, eventually, metric_samples, wait_until

TIMEOUT = 10.0
VIDEO = TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/VP8")
AUDIO = TrackInfo(TrackId("a"), MediaKind.AUDIO, "audio/opus")


# -- pykka hooks and the loop bridge ---------------------------------------------------------


class Echo(GoliveActor):
    def __init__(self, release: threading.Event | None = None) -> None:
        super().__init__()
        self._release = release

    def echo(self, value: int) -> int:
        return value

    def wait_then_echo(self, value: int) -> int:
        assert self._release is not None
        assert self._release.wait(TIMEOUT)
        return value

    def fail(self) -> None:
        raise ValueError("asked to fail")

    @guarded
    def guarded_fail(self) -> None:
        raise ValueError("asked to fail, guarded")


def test_pykka_still_takes_futures_from_create_future() -> None:
    """golive relies on pykka's private ``_create_future`` hook for every ask and proxy call;
    this fails loudly if pykka stops using it."""
    ref = Echo.start()
    try:
        assert hasattr(pykka.ThreadingActor, "_create_future"), "pykka._create_future is gone"
        assert isinstance(ref.ask("anything", block=False), CallbackFuture)
        assert isinstance(ref.proxy().echo(1), CallbackFuture)
    finally:
        ref.stop()


def test_callback_future_runs_callbacks_once_resolved() -> None:
    future: CallbackFuture[int] = CallbackFuture()
    calls: list[str] = []
    future.add_done_callback(lambda: calls.append("early"))
    assert calls == []
    future.set(3)
    future.add_done_callback(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert future.get(timeout=0) == 3


@pytest.mark.asyncio
async def test_reply_of_keeps_the_loop_running_while_the_actor_works() -> None:
    release = threading.Event()
    ref = Echo.start(release)
    try:
        waiting = asyncio.ensure_future(reply_of(ref.proxy().wait_then_echo(7), TIMEOUT))
        # Only a loop that is not blocked by the pending reply can run this callback.
        asyncio.get_running_loop().call_soon(release.set)
        assert await waiting == 7
    finally:
        ref.stop()


@pytest.mark.asyncio
async def test_reply_of_raises_the_actors_exception_and_times_out() -> None:
    release = threading.Event()
    ref = Echo.start(release)
    try:
        with pytest.raises(ValueError, match="asked to fail"):
            await reply_of(ref.proxy().fail(), TIMEOUT)
        with pytest.raises(TimeoutError):
            await reply_of(ref.proxy().wait_then_echo(1), 0.05)
    finally:
        release.set()  # the actor still waits for it
        ref.stop()


@pytest.mark.asyncio
async def test_guarded_handler_crashes_the_actor_and_tells_the_caller() -> None:
    ref = Echo.start()
    with pytest.raises(ValueError, match="guarded"):
        await reply_of(ref.proxy().guarded_fail(), TIMEOUT)
    wait_until(lambda: not ref.is_alive(), what="the crashed actor to stop")
    with pytest.raises(pykka.ActorDeadError):
        await reply_of(ref.ask("late", block=False), TIMEOUT)
    await barrier(ref, TIMEOUT)  # a barrier on a dead actor returns at once


# -- a running actor system ------------------------------------------------------------------


@dataclass
class World:
    rooms: RoomService
    registry: SessionRegistry
    system: ActorSystem
    metrics: Metrics

    async def live_room(
        self, name: str, tracks: tuple[TrackInfo, ...] = (VIDEO, AUDIO)
    ) -> tuple[PublisherClaimed, ProbeEndpoint]:
        endpoint = ProbeEndpoint(f"publisher of {name}")
        claim = await self.rooms.publish(RoomName(name), endpoint)
        assert isinstance(claim, PublisherClaimed)
        assert await self.rooms.publisher_ready(claim.session, tracks) == Done()
        return claim, endpoint

    async def viewer(
        self, name: str, tracks: frozenset[TrackId] | None = None
    ) -> tuple[SubscriberAdmitted, ProbeEndpoint]:
        """A viewer admitted, its offer matched on ``tracks`` (by default all the room's)."""
        endpoint = ProbeEndpoint(f"viewer of {name}")
        admitted = await self.rooms.subscribe(RoomName(name), endpoint)
        assert isinstance(admitted, SubscriberAdmitted), admitted
        if tracks is None:
            tracks = frozenset(track.track_id for track in admitted.tracks)
        self.rooms.tracks_negotiated(admitted.session, tracks)
        return admitted, endpoint

    def gauge(self, name: str, **labels: str) -> float | None:
        samples = metric_samples(self.metrics.render().decode())
        return samples.get((name, tuple(sorted(labels.items()))))


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    registry = SessionRegistry(asyncio.get_running_loop())
    metrics = create_metrics()
    system = ActorSystem(port=registry, metrics=metrics, max_subscribers=0, timeout=TIMEOUT)
    await asyncio.to_thread(system.start)
    rooms = RoomService(system.directory, registry, timeout=TIMEOUT, metrics=metrics)
    try:
        yield World(rooms, registry, system, metrics)
    finally:
        await rooms.shutdown()
        await asyncio.to_thread(system.stop)


async def settle(*refs: pykka.ActorRef[Any]) -> None:
    for ref in refs:
        await barrier(ref, TIMEOUT)
    await asyncio.sleep(0)  # one loop turn: run callbacks the actors scheduled


@pytest.mark.asyncio
async def test_start_is_ordered_and_stop_leaves_nothing() -> None:
    threads_before = set(threading.enumerate())
    registry = SessionRegistry(asyncio.get_running_loop())
    system = ActorSystem(port=registry, metrics=create_metrics(), max_subscribers=0, timeout=5)
    await asyncio.to_thread(system.start)
    [directory] = pykka.ActorRegistry.get_by_class(DirectoryActor)
    assert directory.is_alive()
    rooms = RoomService(system.directory, registry, timeout=5)
    endpoint = ProbeEndpoint("publisher")
    assert isinstance(await rooms.publish(RoomName("r"), endpoint), PublisherClaimed)
    await asyncio.to_thread(system.stop)  # stopping the directory ends its rooms
    await asyncio.sleep(0)
    assert pykka.ActorRegistry.get_all() == []
    assert endpoint.closed is EndReason.SHUTDOWN
    wait_until(
        lambda: (
            {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}
            <= threads_before
        ),
        what="actor threads to exit",
    )
    with pytest.raises(RuntimeError, match="not running"):
        _ = system.directory


@pytest.mark.asyncio
async def test_room_crash_ends_that_room_only(world: World) -> None:
    crashing, crashing_publisher = await world.live_room("crashing")
    _, calm_publisher = await world.live_room("calm")
    crashing_viewer, crashing_endpoint = await world.viewer("crashing")
    calm_viewer, calm_endpoint = await world.viewer("calm")

    crashing.room_actor.tell("a message no room understands")
    await eventually(  # (not is_alive(): pykka marks it dead before its failure handling)
        lambda: crashing_publisher.closed is not None and crashing_endpoint.closed is not None,
        what="the room to crash and close its sessions",
        seconds=TIMEOUT,
    )
    await settle(world.system.directory.actor_ref)
    assert not crashing.room_actor.is_alive()

    assert crashing_publisher.closed is EndReason.ROOM_FAILED
    assert crashing_endpoint.closed is EndReason.ROOM_FAILED
    assert [r.name for r in await world.rooms.rooms()] == ["calm"]
    assert world.gauge("live_rooms") == 1
    assert world.gauge("live_subscribers", room="crashing") is None
    assert world.gauge("golive_actor_crashes_total", actor="room") == 1
    # The other room is untouched and still admits viewers; the crashed name is free again.
    assert calm_publisher.closed is None
    assert calm_endpoint.closed is None
    await world.viewer("calm")
    assert world.registry.get(calm_viewer.session) is not None
    assert world.registry.get(crashing_viewer.session) is None
    await world.live_room("crashing")


@pytest.mark.asyncio
async def test_a_bug_in_an_asked_room_handler_ends_the_room(world: World) -> None:
    endpoint = ProbeEndpoint("publisher")
    claim = await world.rooms.publish(RoomName("dup"), endpoint)
    assert isinstance(claim, PublisherClaimed)
    with pytest.raises(ValueError, match="distinct"):
        await world.rooms.publisher_ready(claim.session, (VIDEO, VIDEO))
    await settle(claim.room_actor, world.system.directory.actor_ref)
    assert endpoint.closed is EndReason.ROOM_FAILED
    assert await world.rooms.rooms() == ()


@pytest.mark.asyncio
async def test_fanout_crash_fails_its_room_only(world: World) -> None:
    claim, publisher = await world.live_room("broken")
    _, other_publisher = await world.live_room("other")
    admitted, viewer = await world.viewer("broken")
    [fanout] = [
        table.fanout
        for key in world.registry.tracks()
        if key.room == "broken"
        and key.track_id == "v"
        and (table := world.registry.routes(key)) is not None
    ]
    assert fanout is not None
    fanout.tell("a message no fanout understands")
    # pykka marks the room dead before its failure handling has closed the sessions: wait
    # for what that handling does, on the loop, not for the actor's death.
    await eventually(
        lambda: publisher.closed is not None and viewer.closed is not None,
        what="the room to fail with its fanout and close its sessions",
        seconds=TIMEOUT,
    )
    await settle(world.system.directory.actor_ref)
    assert not claim.room_actor.is_alive()
    assert publisher.closed is EndReason.ROOM_FAILED
    assert viewer.closed is EndReason.ROOM_FAILED
    assert other_publisher.closed is None
    assert [r.name for r in await world.rooms.rooms()] == ["other"]
    assert world.gauge("golive_actor_crashes_total", actor="fanout") == 1
    assert world.registry.get(admitted.session) is None


@pytest.mark.asyncio
async def test_subscriber_crash_ends_that_session_only(world: World) -> None:
    claim, publisher = await world.live_room("r")
    doomed, doomed_endpoint = await world.viewer("r")
    _, fine_endpoint = await world.viewer("r")
    doomed.subscriber.tell("a message no subscriber understands")
    await eventually(  # (not is_alive(): pykka marks it dead before its failure handling)
        lambda: doomed_endpoint.closed is not None,
        what="the subscriber to crash and close",
        seconds=TIMEOUT,
    )
    await settle(claim.room_actor)
    assert not doomed.subscriber.is_alive()
    assert doomed_endpoint.closed is EndReason.INTERNAL_ERROR
    assert fine_endpoint.closed is None
    assert publisher.closed is None
    [info] = await world.rooms.rooms()
    assert info.subscribers == 1


@pytest.mark.asyncio
async def test_subscriber_phases_follow_the_peer_and_the_fanouts(world: World) -> None:
    await world.live_room("r")
    admitted, _ = await world.viewer("r")
    proxy = subscriber_proxy(admitted.subscriber)
    assert await reply_of(proxy.describe(), TIMEOUT) is SubscriberPhase.NEGOTIATING
    world.rooms.peer_connected(admitted.session)
    await settle(admitted.subscriber, *pykka.ActorRegistry.get_all(), admitted.subscriber)
    assert await reply_of(proxy.describe(), TIMEOUT) is SubscriberPhase.WAITING_KEYFRAME
    phases = {
        key.track_id: [(r.session, p) for r, p in world.registry.targets(key)]
        for key in world.registry.tracks()
    }
    assert phases == {
        "v": [(admitted.session, RoutePhase.WAITING_KEYFRAME)],
        "a": [(admitted.session, RoutePhase.FORWARDING)],
    }
    [video] = [k for k in world.registry.tracks() if k.track_id == "v"]
    table = world.registry.routes(video)
    assert table is not None
    assert table.fanout is not None
    table.fanout.tell(KeyframeDelivered(admitted.session))
    await settle(table.fanout, admitted.subscriber)
    assert await reply_of(proxy.describe(), TIMEOUT) is SubscriberPhase.ACTIVE
    assert [p for _, p in world.registry.targets(video)] == [RoutePhase.FORWARDING]


@pytest.mark.asyncio
async def test_a_viewers_routes_are_installed_before_its_peer_connects(world: World) -> None:
    """Asked for as its offer is matched: when DTLS comes up the loop forwards at once, with
    no actor message between (three thread hand-offs, each up to a GIL switch interval under
    load)."""
    await world.live_room("r")
    endpoint = ProbeEndpoint("viewer")
    admitted = await world.rooms.subscribe(RoomName("r"), endpoint)
    assert isinstance(admitted, SubscriberAdmitted)
    await settle(admitted.subscriber, *pykka.ActorRegistry.get_all())
    assert all(world.registry.targets(key) == () for key in world.registry.tracks())
    world.rooms.tracks_negotiated(admitted.session, frozenset({VIDEO.track_id, AUDIO.track_id}))
    await settle(admitted.subscriber, *pykka.ActorRegistry.get_all())
    phases = {
        key.track_id: [(r.session, p) for r, p in world.registry.targets(key)]
        for key in world.registry.tracks()
    }
    assert phases == {
        "v": [(admitted.session, RoutePhase.WAITING_KEYFRAME)],
        "a": [(admitted.session, RoutePhase.FORWARDING)],
    }
    proxy = subscriber_proxy(admitted.subscriber)
    assert await reply_of(proxy.describe(), TIMEOUT) is SubscriberPhase.NEGOTIATING


@pytest.mark.asyncio
async def test_a_viewer_of_some_tracks_is_routed_on_them_alone_and_becomes_active(
    world: World,
) -> None:
    """An audio-only viewer of an audio and video room: no route waits for a video keyframe
    it will never get; it is active once connected, and leaves no route behind."""
    await world.live_room("r")
    admitted, endpoint = await world.viewer("r", frozenset({AUDIO.track_id}))
    proxy = subscriber_proxy(admitted.subscriber)
    world.rooms.peer_connected(admitted.session)
    await settle(admitted.subscriber, *pykka.ActorRegistry.get_all(), admitted.subscriber)
    routes = {
        key.track_id: [(r.session, p) for r, p in world.registry.targets(key)]
        for key in world.registry.tracks()
    }
    assert routes == {"v": [], "a": [(admitted.session, RoutePhase.FORWARDING)]}
    assert await reply_of(proxy.describe(), TIMEOUT) is SubscriberPhase.ACTIVE
    # A second match (none is sent, but an actor must not trust that) changes nothing.
    world.rooms.tracks_negotiated(admitted.session, frozenset({VIDEO.track_id}))
    await settle(admitted.subscriber, *pykka.ActorRegistry.get_all())
    assert (
        world.registry.targets(next(k for k in world.registry.tracks() if k.track_id == "v")) == ()
    )

    assert await world.rooms.leave(admitted.session, EndReason.CLIENT_LEFT) == Done()
    assert endpoint.closed is EndReason.CLIENT_LEFT
    await settle(*pykka.ActorRegistry.get_all())
    assert all(
        table.routes == ()
        for key in world.registry.tracks()
        if (table := world.registry.routes(key))
    )


@pytest.mark.asyncio
async def test_refusals_are_counted(world: World) -> None:
    await world.live_room("r")
    assert await world.rooms.publish(RoomName("r"), ProbeEndpoint("x")) == Refused(
        Refusal.ROOM_TAKEN
    )
    pending = await world.rooms.publish(RoomName("pending"), ProbeEndpoint("p"))
    assert isinstance(pending, PublisherClaimed)
    assert await world.rooms.subscribe(RoomName("pending"), ProbeEndpoint("v")) == Refused(
        Refusal.NO_PUBLISHER
    )
    assert world.gauge("golive_join_refusals_total", reason="room_taken", role="publisher") == 1
    assert world.gauge("golive_join_refusals_total", reason="no_publisher", role="subscriber") == 1


@pytest.mark.asyncio
async def test_one_thread_per_viewer_and_none_left_after_leaving(world: World) -> None:
    """pykka gives each actor a thread: a viewer costs exactly one, and gives it back."""
    await world.live_room("r")

    def viewer_threads() -> int:
        return sum(t.name.startswith("SubscriberActor") for t in threading.enumerate())

    assert viewer_threads() == 0
    viewers = [await world.viewer("r") for _ in range(20)]
    assert viewer_threads() == 20
    for admitted, endpoint in viewers:
        assert await world.rooms.leave(admitted.session, EndReason.CLIENT_LEFT) == Done()
        assert endpoint.closed is EndReason.CLIENT_LEFT
    wait_until(lambda: viewer_threads() == 0, what="viewer threads to exit")
    assert world.registry.get(viewers[0][0].session) is None
    assert world.gauge("golive_sessions", role=Role.SUBSCRIBER.value) == 0


def test_session_ids_are_unguessable_and_room_names_validated() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # 128 bits, hex
    assert parse_room_name("room_1-A") == "room_1-A"
    assert parse_room_name("x" * 64) is not None
    for bad in ("", "x" * 65, "a.b", "a b", "../etc", "é"):
        assert parse_room_name(bad) is None, bad


def test_stop_all_counts_an_actor_that_ended_by_itself_as_stopped() -> None:
    """The race the soak found: an actor stops itself (a subscriber whose transport failed)
    just as its room asks it to stop; pykka queues the stop after the actor's last look at its
    inbox, and nobody ever answers it. The room must not wait its whole timeout for it."""
    ref = Echo.start()
    ref.stop(block=True)  # it ends by itself...
    lost: pykka.ThreadingFuture[None] = pykka.ThreadingFuture()
    ref.stop = lambda **_: lost  # type: ignore[method-assign, assignment]  # ...as its stop is queued, unanswered
    assert stop_all([ref], timeout=30) == []


def test_stop_all_names_an_actor_that_does_not_stop_in_time() -> None:
    gate = threading.Event()

    class Stuck(GoliveActor):
        actor_kind = "stuck"

        def on_stop(self) -> None:
            gate.wait(10)

    ref = Stuck.start()
    try:
        assert stop_all([ref], timeout=0.2) == [ref]
    finally:
        gate.set()
    wait_until(lambda: not ref.is_alive(), what="the stuck actor to stop")


@pytest.mark.asyncio
async def test_a_barrier_through_an_actor_that_ended_by_itself_returns() -> None:
    """The same race for a barrier (``RoomService`` waits on one through a room that stops
    itself as it closes): the ask queued after the actor's end is never answered."""
    ref = Echo.start()
    ref.stop(block=True)
    lost: CallbackFuture[None] = CallbackFuture()
    ref.ask = lambda *_, **__: lost  # type: ignore[method-assign]  # queued, unanswered
    await asyncio.wait_for(barrier(ref, 30), 10)


@pytest.mark.asyncio
async def test_a_barrier_given_up_leaves_no_unretrieved_failure() -> None:
    """A barrier whose caller is cancelled (a client gone mid-request) while the actor dies:
    the ask then fails with ActorDeadError, and that failure is nobody's error (the open
    fuzz saw asyncio log "Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        ref = Echo.start()
        lost: CallbackFuture[None] = CallbackFuture()
        ref.ask = lambda *_, **__: lost  # type: ignore[method-assign]  # answered below
        waiting = asyncio.ensure_future(barrier(ref, 30))
        await asyncio.sleep(0)  # (the barrier has asked and waits)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        lost.set_exception((pykka.ActorDeadError, pykka.ActorDeadError("gone"), None))
        del ref.ask  # (its own again, to stop it)
        ref.stop(block=True)
        await eventually(lambda: len(asyncio.all_tasks()) == 1, what="the reply task done")
        import gc  # noqa: PLC0415  the "never retrieved" report comes when the task is freed

        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
