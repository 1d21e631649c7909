"""Listing the rooms (``RoomService.rooms``, ``GET /api/rooms``) against a real server.

Rooms are made through the server's own :class:`RoomService` on its loop (what the WHIP and
WHEP handlers call), with probe endpoints standing in for peer connections: 300 real WHIP
publishes would cost minutes. The listing is always read through the real HTTP route.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from golive.actors.messages import (
    Done,
    EndReason,
    MediaKind,
    PublisherClaimed,
    RoomName,
    SessionId,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
)
from golive.actors.room import RoomActor, room_proxy
from golive.http.app import room_json
from tests.support import ProbeEndpoint, ServerThread, running_server, wait_until

ROOMS = 300
TIMEOUT = 10.0
AUDIO = (TrackInfo(TrackId("0"), MediaKind.AUDIO, "audio/opus"),)
AUDIO_VIDEO = (*AUDIO, TrackInfo(TrackId("1"), MediaKind.VIDEO, "video/VP8"))

pytestmark = pytest.mark.timeout(120)


@dataclass
class Room:
    """What the test expects ``GET /api/rooms`` to show of a room."""

    publisher: SessionId
    actor: pykka.ActorRef[Any]
    tracks: tuple[TrackInfo, ...] = ()
    viewers: list[SessionId] = field(default_factory=list)

    def json(self, name: str) -> dict[str, object]:
        return {
            "name": name,
            "hasPublisher": True,
            "tracks": len(self.tracks),
            "subscribers": len(self.viewers),
            "waiting": False,
            "relay": False,
            "trackList": [
                {"id": t.track_id, "kind": t.kind.value, "codec": t.codec} for t in self.tracks
            ],
        }


class Rooms:
    """Rooms made on the server's loop, and what the listing must show of them."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.expected: dict[str, Room] = {}

    def publish(self, name: str, tracks: tuple[TrackInfo, ...] | None = AUDIO) -> Room:
        """Claim ``name``; with ``tracks``, go live too (a WHIP POST's two steps)."""
        service = self.server.rooms
        claim = self.server.run(service.publish(RoomName(name), ProbeEndpoint(name)))
        assert isinstance(claim, PublisherClaimed)
        room = Room(claim.session, claim.room_actor)
        if tracks is not None:
            self.go_live(room, tracks)
        self.expected[name] = room
        return room

    def go_live(self, room: Room, tracks: tuple[TrackInfo, ...]) -> None:
        assert self.server.run(self.server.rooms.publisher_ready(room.publisher, tracks)) == Done()
        room.tracks = tracks

    def watch(self, name: str) -> SessionId:
        service = self.server.rooms
        admitted = self.server.run(service.subscribe(RoomName(name), ProbeEndpoint("viewer")))
        assert isinstance(admitted, SubscriberAdmitted)
        self.expected[name].viewers.append(admitted.session)
        return admitted.session

    def leave(self, name: str, session: SessionId) -> None:
        """A session's DELETE: a viewer leaves, or a publisher ends its room."""
        reply = self.server.run(self.server.rooms.leave(session, EndReason.CLIENT_LEFT))
        assert reply == Done()
        room = self.expected[name]
        if session == room.publisher:
            del self.expected[name]
        else:
            room.viewers.remove(session)

    def listing(self) -> list[dict[str, object]]:
        status, body = self.server.get("/api/rooms")
        assert status == 200
        listed: list[dict[str, object]] = json.loads(body)
        return listed

    def want(self) -> list[dict[str, object]]:
        return [room.json(name) for name, room in sorted(self.expected.items())]

    def own_words(self) -> list[dict[str, object]]:
        """What every room actor says of itself (its ``describe()``), rendered as listed."""
        infos = [
            room_proxy(room.actor).describe().get(timeout=TIMEOUT)
            for _, room in sorted(self.expected.items())
        ]
        assert all(info.has_publisher for info in infos)
        return [room_json(info) for info in infos]


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with running_server({"ACTOR_TIMEOUT_SECONDS": "5"}) as running:
        yield running


def name_of(index: int) -> str:
    return f"room-{index:03d}"


@dataclass(frozen=True, slots=True)
class Stall:
    """Told to a room actor by the test: the room blocks until ``release`` is set."""

    entered: threading.Semaphore
    release: threading.Event


@pytest.fixture
def stallable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Room actors that a :class:`Stall` blocks: a room busy or stuck in its own work, which no
    request from outside can cause at will (the one fault injected here)."""
    handle = RoomActor.handle

    def stalling(self: RoomActor, message: Any) -> None:
        if isinstance(message, Stall):
            message.entered.release()
            message.release.wait(TIMEOUT * 6)
            return
        handle(self, message)

    monkeypatch.setattr(RoomActor, "handle", stalling)


@pytest.mark.usefixtures("stallable")
def test_a_listing_of_300_rooms_waits_for_no_room(server: ServerThread) -> None:
    rooms = Rooms(server)
    for index in range(ROOMS):
        rooms.publish(name_of(index))
    for index in range(0, ROOMS, 30):
        rooms.watch(name_of(index))
    rooms.publish("pending", tracks=None)  # claimed, its offer not answered yet: listed too
    assert rooms.listing() == rooms.want()

    # Every room actor is stuck: a listing that asked any of them would wait for it (then
    # answer 503 when ACTOR_TIMEOUT_SECONDS runs out).
    entered, release = threading.Semaphore(0), threading.Event()
    try:
        for room in rooms.expected.values():
            room.actor.tell(Stall(entered, release))
        for _ in rooms.expected:
            assert entered.acquire(timeout=TIMEOUT), "a room did not stall"
        for _ in range(3):
            assert rooms.listing() == rooms.want()
    finally:
        release.set()
    assert rooms.listing() == rooms.own_words() == rooms.want()


def test_the_listing_follows_rooms_as_they_come_and_go(server: ServerThread) -> None:
    """Each change is seen by the very next listing (a room reports a change before it answers
    the request that made it), and agrees with what every room says of itself."""
    rooms = Rooms(server)

    def check() -> None:
        assert rooms.listing() == rooms.want()

    for index in range(ROOMS):
        rooms.publish(name_of(index))
    pending = [rooms.publish(f"pending-{index}", tracks=None) for index in range(3)]
    check()
    assert rooms.listing() == rooms.own_words()

    # Viewers come...
    viewers = {
        name_of(index): [rooms.watch(name_of(index)) for _ in range(3)] for index in range(5)
    }
    check()
    # ...and go: a DELETE, and a transport that fails on its own (told, not asked: polled).
    rooms.leave(name_of(0), viewers[name_of(0)][0])
    check()
    failed = viewers[name_of(1)][1]
    server.call(lambda: server.rooms.peer_failed(failed, EndReason.ICE_FAILED))
    rooms.expected[name_of(1)].viewers.remove(failed)
    wait_until(lambda: rooms.listing() == rooms.want(), what="the failed viewer to be gone")

    # A pending room goes live.
    rooms.go_live(pending[0], AUDIO_VIDEO)
    check()

    # Publishers leave, an admin closes rooms, one room's name is claimed again at once.
    for index in range(10, 60):
        rooms.leave(name_of(index), rooms.expected[name_of(index)].publisher)
    check()
    for index in (60, 61, 2):
        request = urllib.request.Request(  # noqa: S310  loopback URL built by the server
            f"{server.url}/api/admin/rooms/{name_of(index)}/close", method="POST"
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            assert response.status == 200
        del rooms.expected[name_of(index)]
    check()
    rooms.publish(name_of(2), AUDIO_VIDEO)  # the old room's viewers are not the new one's
    rooms.watch(name_of(2))
    check()
    assert rooms.listing() == rooms.own_words()
    # 300 and 3 pending; 50 ended by their publisher, 3 closed, 1 of those claimed again.
    assert len(rooms.listing()) == ROOMS + 3 - 50 - 3 + 1
