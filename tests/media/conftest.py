"""WebRTC tests: only inside a loopback-only network namespace, against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServerThread, require_loopback_namespace, running_server


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """Refuse to run WebRTC anywhere but in a network namespace with nothing but ``lo``."""
    require_loopback_namespace()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    env = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
    with running_server(env) as running:
        yield running
