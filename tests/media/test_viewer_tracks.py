"""A viewer of some of a room's tracks: it is routed on exactly the tracks its answer carries,
becomes active, receives them, and leaves no route behind (review bug 3: an audio-only viewer
of an audio and video room stayed waiting for a video keyframe for its whole life, with a dead
route in the video table)."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog.testing

from golive.actors.messages import SessionId, SubscriberPhase, TrackId
from golive.actors.subscriber import subscriber_proxy
from tests.media.clients import close_all, delete, publish, view
from tests.support import ServerThread, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]
DEADLINE = 30.0


def routed(server: ServerThread, session: SessionId) -> set[TrackId]:
    """The tracks whose routing table, as the loop holds it, routes to ``session``."""

    def collect() -> set[TrackId]:
        registry = server.rooms.registry
        return {
            key.track_id
            for key in registry.tracks()
            if (table := registry.routes(key)) is not None and session in table.sessions()
        }

    return server.call(collect)


async def phase(server: ServerThread, session: SessionId) -> SubscriberPhase | None:
    """The viewer's subscriber actor's phase (None once the session is gone)."""
    record = server.call(lambda: server.rooms.registry.get(session))
    actor = None if record is None else record.actor
    if actor is None:
        return None
    return await asyncio.to_thread(lambda: subscriber_proxy(actor).describe().get(timeout=DEADLINE))


def session_of(location: str) -> SessionId:
    return SessionId(location.rsplit("/", 1)[1])


@pytest.mark.parametrize("offer", ["an audio section alone", "video only in H.264"])
async def test_a_viewer_of_the_audio_alone_becomes_active_and_leaves_no_route(
    server: ServerThread, offer: str
) -> None:
    publisher = await publish(server.url, "subset")  # VP8 video and Opus audio
    assert publisher.answer.status == 201
    [room] = json.loads(server.get("/api/rooms")[1])
    kinds = {track["id"]: track["kind"] for track in room["trackList"]}
    with structlog.testing.capture_logs() as logs:
        if offer == "an audio section alone":
            viewer = await view(server.url, "subset", kinds=("audio",))
        else:  # the room's VP8 cannot be answered: the answer carries the audio alone
            viewer = await view(server.url, "subset", video_codecs=("video/H264", "video/rtx"))
        full = await view(server.url, "subset")  # beside it, a viewer of both tracks
        try:
            assert viewer.answer.status == 201, viewer.answer.body
            assert full.answer.status == 201, full.answer.body
            session = session_of(viewer.answer.location)
            other = session_of(full.answer.location)
            await eventually(lambda: viewer.frames["audio"] >= 5, what="audio at the viewer")
            await eventually(full.got_video.is_set, what="video at the viewer of both")

            async def active(who: SessionId) -> bool:
                return await phase(server, who) is SubscriberPhase.ACTIVE

            await eventually(lambda: active(session), what="the audio viewer active")
            await eventually(lambda: active(other), what="the viewer of both active")
            assert viewer.frames["video"] == 0
            # Routed on the audio track alone (no dead route waiting for a video keyframe);
            # the other viewer on both.
            assert {kinds[track] for track in routed(server, session)} == {"audio"}
            assert {kinds[track] for track in routed(server, other)} == {"audio", "video"}
            # Counted, and its story says it became active, as for any viewer.
            assert json.loads(server.get("/api/rooms")[1])[0]["subscribers"] == 2
            for who in (session, other):
                story = [entry["event"] for entry in logs if entry.get("session") == who]
                assert "subscriber active" in story, story

            assert await delete(server.url, viewer.answer.location) == 200
            await eventually(lambda: not routed(server, session), what="no route left for it")
            assert {kinds[track] for track in routed(server, other)} == {"audio", "video"}
            assert json.loads(server.get("/api/rooms")[1])[0]["subscribers"] == 1
        finally:
            await close_all(publisher, viewer, full)
