"""WebRTC tests: only inside a loopback-only network namespace, against a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import ServerThread, running_server


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """Refuse to run WebRTC anywhere but in a network namespace with nothing but ``lo``."""
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        pytest.fail(
            "WebRTC tests run only in a loopback-only network namespace "
            f"(this one has {interfaces}): use `make test` or scripts/loopback-netns"
        )


@pytest.fixture
def server() -> Iterator[ServerThread]:
    env = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
    with running_server(env) as running:
        yield running
