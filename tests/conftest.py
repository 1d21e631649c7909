"""Shared fixtures: every test ends with no actor left running."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest


@pytest.fixture(autouse=True)
def no_actor_left_behind() -> Iterator[None]:
    yield
    leftovers = pykka.ActorRegistry.get_all()
    if leftovers:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        pytest.fail(f"actors left running after the test: {leftovers}")
