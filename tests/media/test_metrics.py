"""Operator metrics that move with a real session: join stages, event-loop lag, actors alive
and their mailboxes (issue 6, first part)."""

from __future__ import annotations

import asyncio

import pytest
import structlog.testing

from tests.media.clients import close_all, delete, publish, view
from tests.support import ServerThread, metric_samples

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]
DEADLINE = 30.0


async def scrape(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())


def setup_count(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], role: str, stage: str
) -> float:
    key = ("golive_session_setup_seconds_count", (("role", role), ("stage", stage)))
    return samples.get(key, 0.0)


async def test_join_stages_loop_lag_and_actors_are_measured(server: ServerThread) -> None:
    publisher = await publish(server.url, "metered")
    viewer = await view(server.url, "metered")
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while True:
            samples = await scrape(server)
            if samples.get(("golive_event_loop_lag_seconds_count", ()), 0) >= 1:
                break
            assert loop.time() < deadline, "no event-loop lag sample"
            await asyncio.sleep(0.1)
        assert setup_count(samples, "publisher", "connected") == 1
        assert setup_count(samples, "subscriber", "connected") == 1
        assert setup_count(samples, "subscriber", "first_keyframe") == 1  # one video track
        setup_sum = samples[
            (
                "golive_session_setup_seconds_sum",
                (("role", "subscriber"), ("stage", "first_keyframe")),
            )
        ]
        assert 0 < setup_sum < DEADLINE
        actors = {dict(k[1])["actor"]: v for k, v in samples.items() if k[0] == "golive_actors"}
        assert actors == {"directory": 1, "room": 1, "fanout": 2, "subscriber": 1}
        mailboxes = [k for k in samples if k[0] == "golive_actor_mailbox_messages"]
        assert len(mailboxes) == 4
        assert await delete(server.url, publisher.answer.location) == 200
        samples = await scrape(server)
        actors = {dict(k[1])["actor"]: v for k, v in samples.items() if k[0] == "golive_actors"}
        assert actors == {"directory": 1}  # the room's actors are gone with it
    finally:
        await close_all(publisher, viewer)


async def test_a_viewers_life_tells_a_story_in_the_logs(server: ServerThread) -> None:
    """Filter by session: requested, answered, ICE connected, DTLS connected, first keyframe,
    ended (and why), each with the seconds since the offer."""
    publisher = await publish(server.url, "story")
    with structlog.testing.capture_logs() as logs:
        viewer = await view(server.url, "story")
        try:
            await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
            assert await delete(server.url, viewer.answer.location) == 200
        finally:
            await close_all(viewer)
    await delete(server.url, publisher.answer.location)
    await close_all(publisher)
    session = viewer.answer.location.rsplit("/", 1)[1]
    story = [entry for entry in logs if entry.get("session") == session]
    events = [entry["event"] for entry in story]
    expected = [
        "session requested",
        "session answered",
        "ice connected",
        "dtls connected",
        "first keyframe sent",
        "session ended",
    ]
    assert [event for event in events if event in expected] == expected, str(events)
    for entry in story:
        if entry["event"] in expected:  # each can be filtered by room too, and is not debug
            assert (entry["room"], entry["log_level"]) == ("story", "info"), entry
    timed = [e for e in story if e["event"] in expected]
    assert all(0 <= e["seconds"] < DEADLINE for e in timed)
    assert [e["seconds"] for e in timed] == sorted(e["seconds"] for e in timed)
    assert story[events.index("session ended")]["reason"] == "client_left"
    assert story[events.index("first keyframe sent")]["track"]


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_go_lives_series_and_sessions_move_with_a_session_and_vanish_with_its_room(
    server: ServerThread,
) -> None:
    """The series an operator watches, scraped as Prometheus would during one room's life."""
    before = await scrape(server)
    assert value(before, "live_rooms") == 0
    publisher = await publish(server.url, "watched")
    viewer = await view(server.url, "watched")
    try:
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        live = await scrape(server)
        assert value(live, "live_rooms") == 1
        assert value(live, "live_subscribers", room="watched") == 1
        assert value(live, "golive_sessions", role="publisher") == 1
        assert value(live, "golive_sessions", role="subscriber") == 1
        packets = value(live, "live_rtp_packets_total", room="watched")
        payload = value(live, "live_rtp_bytes_total", room="watched")
        assert packets is not None
        assert payload is not None
        assert packets > 0
        assert payload > 12 * packets  # payload bytes: more than a header's worth each
        # Forwarding goes on: the counters keep moving while media flows.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while (value(await scrape(server), "live_rtp_packets_total", room="watched") or 0) <= (
            packets
        ):
            assert loop.time() < deadline, "live_rtp_packets_total stopped moving"
            await asyncio.sleep(0.05)
        assert await delete(server.url, viewer.answer.location) == 200
        left = await scrape(server)
        assert value(left, "live_subscribers", room="watched") == 0
        assert value(left, "golive_sessions", role="subscriber") == 0
        assert value(left, "golive_sessions_ended_total", role="subscriber", reason="client_left")
        assert await delete(server.url, publisher.answer.location) == 200
    finally:
        await close_all(publisher, viewer)
    after = await scrape(server)
    assert value(after, "live_rooms") == 0
    assert value(after, "golive_sessions", role="publisher") == 0
    ended = value(after, "golive_sessions_ended_total", role="publisher", reason="publisher_left")
    assert ended == 1
    # The room's label values are gone with it: cardinality follows the live rooms.
    assert not [key for key in after if ("room", "watched") in key[1]], after.keys()
