"""Fixtures of the cluster tests: a real Redis per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from golive.media import hooks
from tests.cluster.nodes import Cluster
from tests.cluster.redis import RedisServer


@pytest.fixture(autouse=True)
def loopback_clients() -> None:
    """The test's own aiortc clients gather candidates on 127.0.0.1 (the nodes' media are on
    their own loopback addresses)."""
    hooks.install(("127.0.0.1",))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes sharing ``redis_server``, as real processes; all killed at the end."""
    nodes = Cluster(redis_server, tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()
