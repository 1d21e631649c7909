"""Operator metrics that move with a real session: join stages, event-loop lag, actors alive
and their mailboxes (issue 6, first part)."""

from __future__ import annotations

import asyncio

import pytest

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
