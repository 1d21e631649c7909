"""An ask that times out leaves nothing behind (a loaded server: an actor answers late).

The room service makes the session id itself and, when the directory or a room does not
answer in time, sends the compensating ``EndRoom`` or ``LeaveSubscriber`` for it. The actor
is made slow by holding it on an event inside the command: the one fault a test cannot
otherwise cause on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from golive.actors.base import barrier
from golive.actors.directory import DirectoryActor
from golive.actors.messages import (
    Done,
    MediaKind,
    PublisherClaimed,
    RoomName,
    TrackId,
    TrackInfo,
)
from golive.actors.room import RoomActor, room_proxy
from golive.actors.subscriber import SubscriberActor
from tests.support import (
    ProbeEndpoint,
    ServerThread,
    labelled,
    metric_samples,
    running_server,
    wait_until,
)

TIMEOUT = 0.5
TRACKS = (TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/VP8"),)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with running_server({"ACTOR_TIMEOUT_SECONDS": str(TIMEOUT), "LOG_LEVEL": "warning"}) as s:
        yield s


def held(method: Callable[..., Any], gate: threading.Event) -> Callable[..., Any]:
    """``method``, answering only once ``gate`` is set (an actor too busy to answer)."""

    def slow(self: Any, *args: Any) -> Any:
        gate.wait(30)
        return method(self, *args)

    return slow


def gauges(server: ServerThread) -> tuple[float, dict[str, float], dict[str, float]]:
    _, body = server.get("/metrics")
    samples = metric_samples(body.decode())
    return (
        samples[("live_rooms", ())],
        labelled(samples, "golive_sessions", "role"),
        labelled(samples, "live_subscribers", "room"),
    )


def test_a_publish_that_times_out_leaves_no_room(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(
        DirectoryActor, "claim_publisher", held(DirectoryActor.claim_publisher, gate)
    )
    with pytest.raises(TimeoutError):
        server.run(server.rooms.publish(RoomName("late"), ProbeEndpoint("publisher")))
    gate.set()  # the directory gets to the claim now, and then to its undoing
    directory = server.rooms._directory
    server.run(barrier(directory.actor_ref, 10))
    assert directory.rooms().get(timeout=10) == ()
    rooms, sessions, _ = gauges(server)
    assert rooms == 0
    assert sessions.get("publisher", 0) == 0
    wait_until(
        lambda: [a.actor_class for a in pykka.ActorRegistry.get_all()] == [DirectoryActor],
        what="the late room to stop",
    )
    # The name is free again.
    monkeypatch.undo()
    reply = server.run(server.rooms.publish(RoomName("late"), ProbeEndpoint("next")))
    assert isinstance(reply, PublisherClaimed)


def test_a_join_that_times_out_leaves_no_viewer(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = RoomName("busy")
    claimed = server.run(server.rooms.publish(room, ProbeEndpoint("publisher")))
    assert isinstance(claimed, PublisherClaimed)
    assert isinstance(server.run(server.rooms.publisher_ready(claimed.session, TRACKS)), Done)

    gate = threading.Event()
    monkeypatch.setattr(RoomActor, "join_subscriber", held(RoomActor.join_subscriber, gate))
    viewer = ProbeEndpoint("viewer")
    with pytest.raises(TimeoutError):
        server.run(server.rooms.subscribe(room, viewer))
    gate.set()
    server.run(barrier(claimed.room_actor, 10))
    assert room_proxy(claimed.room_actor).describe().get(timeout=10).subscribers == 0
    _, sessions, subscribers = gauges(server)
    assert sessions.get("subscriber", 0) == 0
    assert subscribers == {room: 0}
    wait_until(
        lambda: not any(a.actor_class is SubscriberActor for a in pykka.ActorRegistry.get_all()),
        what="the late viewer's actor to stop",
    )
    assert server.call(lambda: len(server.rooms.registry)) == 1  # the publisher alone
