"""SessionGarbage: a full collection once enough sessions have ended (a quarter of the live
ones, at least a few), and as soon as none is live; with the automatic collector off, so
that only its collections free anything."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from golive.media.garbage import SessionGarbage

pytestmark = pytest.mark.asyncio


class Cycle:
    """An ended session's objects, as aiortc leaves them: they refer to one another."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def no_automatic_collection() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def ended_session() -> weakref.ref[Cycle]:
    return weakref.ref(Cycle())


async def turn() -> None:
    await asyncio.sleep(0)  # the collection runs in a callback of its own


async def test_ended_sessions_are_collected_once_a_share_of_the_live_ones() -> None:
    garbage = SessionGarbage(minimum=2, share=0.25)
    first = ended_session()
    garbage.session_ended(live=12)
    await turn()
    assert first() is not None  # 1 ended: below max(2, 3)
    second = ended_session()
    garbage.session_ended(live=12)
    await turn()
    assert first() is not None  # 2 ended: below 3
    garbage.session_ended(live=12)
    await turn()
    assert first() is None
    assert second() is None


async def test_the_last_session_ending_collects_at_once() -> None:
    garbage = SessionGarbage(minimum=8)
    session = ended_session()
    garbage.session_ended(live=0)
    await turn()
    assert session() is None


async def test_a_collection_is_scheduled_once_and_close_cancels_it() -> None:
    collections: list[int] = []

    def collect() -> int:
        collections.append(1)
        return 0

    garbage = SessionGarbage(minimum=1, collect=collect)
    garbage.session_ended(live=0)
    garbage.session_ended(live=0)
    await turn()
    assert collections == [1]
    garbage.session_ended(live=0)
    garbage.close()
    await turn()
    assert collections == [1]
