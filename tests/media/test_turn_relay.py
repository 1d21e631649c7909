"""TURN REST credentials against a real TURN server (issue 12, finding 4): Debian's coturn,
configured as operators do (``use-auth-secret``, ``static-auth-secret`` = golive's
``TURN_SECRET``), on 127.0.0.1. A relay is allocated (aioice's TURN client) with the
credentials golive hands out in the ``Link`` headers of an authenticated ``OPTIONS`` and of
a real WHIP answer; an unauthenticated ``OPTIONS`` gets none; and coturn refuses a
credential whose expiry has passed, which is what makes them short-lived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aioice import stun, turn

from golive.media import hooks
from tests.media.clients import close_all, publish
from tests.support import eventually, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

SECRET = "coturn-shared-secret-0001"  # noqa: S105  a test credential
TOKEN = "client-token-0002"  # noqa: S105  a test credential
REALM = "golive.test"
TURN_LINK = re.compile(
    r'<turn:(?P<host>[0-9.]+):(?P<port>[0-9]+)\?transport=udp>; rel="ice-server"; '
    r'username="(?P<username>[^"]+)"; credential="(?P<credential>[^"]+)"; '
    r'credential-type="password"'
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def coturn(tmp_path: Path) -> AsyncIterator[int]:
    """A coturn on 127.0.0.1 sharing ``SECRET``; its listening port."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("Debian's coturn (turnserver) is needed: `make test` installs it")
    port = free_udp_port()
    log = tmp_path / "turnserver.log"
    process = await asyncio.create_subprocess_exec(
        binary,
        "-n",  # no configuration file: everything is here
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        "--min-port=49152",
        "--max-port=49407",
        "--use-auth-secret",
        f"--static-auth-secret={SECRET}",
        f"--realm={REALM}",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-cli",
        "--allow-loopback-peers",
        f"--log-file={log}",
        "--simple-log",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        def ready() -> bool:
            assert process.returncode is None, "turnserver exited"
            return log.exists() and "Total General servers" in log.read_text(errors="replace")

        await eventually(ready, what="coturn listening", seconds=20)
        yield port
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def allocate(port: int, username: str, credential: str) -> tuple[str, int]:
    """Allocate a relay on the TURN server; its relayed address."""

    class Ignore(asyncio.DatagramProtocol):
        pass

    transport, _ = await asyncio.wait_for(
        turn.create_turn_endpoint(Ignore, ("127.0.0.1", port), username, credential), 10
    )
    try:
        relayed = transport.get_extra_info("sockname")
        return str(relayed[0]), int(relayed[1])
    finally:
        transport.close()


def turn_credentials(links: list[str]) -> tuple[str, str] | None:
    for link in links:
        match = TURN_LINK.fullmatch(link)
        if match is not None:
            return match["username"], match["credential"]
    return None


async def options_links(url: str, headers: dict[str, str]) -> list[str]:
    async with aiohttp.ClientSession() as http, http.options(url, headers=headers) as response:
        assert response.status == 204
        return response.headers.getall("Link", [])


async def test_turn_rest_credentials_allocate_a_relay_on_coturn(tmp_path: Path) -> None:
    hooks.install(("127.0.0.1",))
    async with coturn(tmp_path) as port:
        env = {
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "STUN_URLS": ",",
            "TURN_URLS": f"turn:127.0.0.1:{port}?transport=udp",
            "TURN_SECRET": SECRET,
            "AUTH_TOKEN": TOKEN,
            "LOG_LEVEL": "warning",
        }
        with running_server(env) as server:
            endpoint = f"{server.url}/api/whip/publish/lobby"
            # No credential: no TURN link at all, nothing to allocate with.
            assert await options_links(endpoint, {}) == []
            # A credential for the room: a relay on coturn.
            found = turn_credentials(await options_links(endpoint, {"X-Auth-Token": TOKEN}))
            assert found is not None
            relayed = await allocate(port, *found)
            assert relayed[0] == "127.0.0.1"
            # The same from a real WHIP answer (201).
            publisher = await publish(server.url, "lobby", headers={"X-Auth-Token": TOKEN})
            try:
                assert publisher.answer.status == 201
                found = turn_credentials(publisher.answer.links)
                assert found is not None
                assert found[0].endswith(":lobby")
                await allocate(port, *found)
            finally:
                await close_all(publisher)

        # Short-lived: coturn refuses a correctly signed credential whose time is up.
        expired = f"{int(time.time()) - 1}:lobby"
        digest = hmac.new(SECRET.encode(), expired.encode(), hashlib.sha1).digest()
        with pytest.raises(stun.TransactionFailed, match="401"):
            await allocate(port, expired, base64.b64encode(digest).decode())
        # And one signed with another secret.
        with pytest.raises(stun.TransactionFailed, match="401"):
            await allocate(port, found[0], base64.b64encode(bytes(20)).decode())
