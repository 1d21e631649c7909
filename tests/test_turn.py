"""TURN credentials go only to requests whose credential admits the room (issue 12, finding
4): against a real server, ``OPTIONS`` on the WHIP/WHEP endpoints with and without
credentials, static TURN passwords and TURN REST credentials (``TURN_SECRET``), the latter
checked here with an HMAC computed independently (the ``hmac`` module, not golive's code).
``tests/media/test_turn_relay.py`` allocates a relay with them from Debian's coturn."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import re
import time
from collections.abc import Mapping

import jwt
import pytest

from tests.support import ServerThread, running_server

TOKEN = "client-token-0001"  # noqa: S105  a test credential
LOBBY = "lobby-token-0002"
JWT_KEY = "jwt-key-for-tests-0123456789abcdef"
TURN_PASSWORD = "turn-password-0003"  # noqa: S105  a test credential
TURN_SECRET = "turn-rest-secret-0004"  # noqa: S105  a test credential
BASE = {
    "ICE_HOST_ADDRESSES": "127.0.0.1",
    "STUN_URLS": "stun:stun.example.com:3478",
    "TURN_URLS": "turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349",
    "LOG_LEVEL": "warning",
}
STATIC = {**BASE, "TURN_USERNAME": "alice", "TURN_PASSWORD": TURN_PASSWORD}
REST = {**BASE, "TURN_SECRET": TURN_SECRET, "TURN_CREDENTIAL_TTL_SECONDS": "600"}
STUN_ONLY = ['<stun:stun.example.com:3478>; rel="ice-server"']
LINK = re.compile(
    r'<(?P<url>[^>]+)>; rel="ice-server"'
    r'(?:; username="(?P<username>[^"]*)"; credential="(?P<credential>[^"]*)"'
    r'; credential-type="password")?'
)
ENDPOINTS = ("/api/whip/publish", "/api/whep/play")


def options(
    server: ServerThread, path: str, headers: Mapping[str, str] = {}
) -> tuple[int, list[str], str]:
    """``OPTIONS path``: status, every ``Link`` value, and the whole answer as text."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("OPTIONS", path, headers=dict(headers))
        response = connection.getresponse()
        body = response.read()
        links = response.headers.get_all("Link") or []
        return response.status, links, f"{response.headers}\n{body.decode()}"
    finally:
        connection.close()


def turn_links(links: list[str]) -> list[dict[str, str | None]]:
    parsed = []
    for link in links:
        match = LINK.fullmatch(link)
        assert match is not None, link
        if match["url"].startswith("turn"):
            parsed.append(match.groupdict())
    return parsed


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_turn_credentials_without_a_credential_for_the_room(path: str) -> None:
    env = {**STATIC, "AUTH_TOKEN": TOKEN, "ROOM_TOKENS": f"lobby:{LOBBY}", "JWT_SECRET": JWT_KEY}
    other_room = jwt.encode({"room": "elsewhere"}, JWT_KEY, algorithm="HS256")
    null_room = jwt.encode({"room": None}, JWT_KEY, algorithm="HS256")
    forged = jwt.encode(
        {"room": "lobby"}, "not-the-key-0123456789abcdef-0123456", algorithm="HS256"
    )
    with running_server(env) as server:
        for headers in (
            {},
            {"X-Auth-Token": "wrong"},
            bearer(forged),
            bearer(other_room),
            bearer(null_room),
            {"X-Auth-Token": LOBBY.replace("lobby", "stage")},
        ):
            status, links, text = options(server, f"{path}/lobby", headers)
            assert (status, links) == (204, STUN_ONLY), headers
            assert TURN_PASSWORD not in text
            assert "credential" not in text
        # A room token for another room: no TURN there either.
        assert options(server, f"{path}/stage", {"X-Auth-Token": LOBBY})[:2] == (204, STUN_ONLY)
        # An invalid room name is still a 204, with nothing but STUN.
        assert options(server, f"{path}/b@d", {"X-Auth-Token": TOKEN})[:2] == (204, STUN_ONLY)
        # A CORS preflight gets no Link at all (as before).
        preflight = {"X-Auth-Token": TOKEN, "Access-Control-Request-Method": "POST"}
        assert options(server, f"{path}/lobby", preflight)[:2] == (204, [])


@pytest.mark.parametrize("path", ENDPOINTS)
def test_turn_credentials_for_a_credential_that_admits_the_room(path: str) -> None:
    env = {**STATIC, "AUTH_TOKEN": TOKEN, "ROOM_TOKENS": f"lobby:{LOBBY}", "JWT_SECRET": JWT_KEY}
    lobby_jwt = jwt.encode({"room": "lobby"}, JWT_KEY, algorithm="HS256")
    any_room_jwt = jwt.encode({"sub": "bob"}, JWT_KEY, algorithm="HS256")
    with running_server(env) as server:
        for headers in (
            {"X-Auth-Token": TOKEN},
            bearer(TOKEN),
            {"X-Auth-Token": LOBBY},
            bearer(lobby_jwt),
            bearer(any_room_jwt),
        ):
            status, links, _ = options(server, f"{path}/lobby", headers)
            assert status == 204
            assert links[0] == STUN_ONLY[0]
            assert turn_links(links) == [
                {
                    "url": url,
                    "username": "alice",
                    "credential": TURN_PASSWORD,
                }
                for url in (
                    "turn:turn.example.com:3478?transport=udp",
                    "turns:turn.example.com:5349",
                )
            ], headers


def test_with_client_auth_off_everyone_gets_them_as_before() -> None:
    with running_server(STATIC) as server:
        status, links, _ = options(server, "/api/whip/publish/lobby")
    assert status == 204
    assert [link["credential"] for link in turn_links(links)] == [TURN_PASSWORD] * 2


def expected_credential(username: str) -> str:
    """coturn's use-auth-secret: base64(HMAC-SHA1(secret, username)), computed here."""
    digest = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_turn_rest_credentials_are_fresh_hmacs_that_expire(path: str) -> None:
    with running_server({**REST, "AUTH_TOKEN": TOKEN}) as server:
        before = int(time.time())
        status, links, text = options(server, f"{path}/lobby", {"X-Auth-Token": TOKEN})
        after = int(time.time())
        assert status == 204
        assert TURN_SECRET not in text
        turns = turn_links(links)
        assert [link["url"] for link in turns] == [
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.example.com:5349",
        ]
        username = turns[0]["username"]
        assert username is not None
        assert all(link["username"] == username for link in turns)
        expiry, _, user = username.partition(":")
        assert before + 600 <= int(expiry) <= after + 600  # TURN_CREDENTIAL_TTL_SECONDS ahead
        assert user == "lobby"  # the room: nothing secret in a name STUN sends in the clear
        assert all(link["credential"] == expected_credential(username) for link in turns)
        # Without a credential: STUN only, no TURN name or HMAC.
        status, links, text = options(server, f"{path}/lobby")
        assert (status, links) == (204, STUN_ONLY)
        assert "credential" not in text


def test_turn_rest_credentials_default_to_a_day() -> None:
    env = {**BASE, "TURN_SECRET": TURN_SECRET}
    with running_server(env) as server:
        now = int(time.time())
        _, links, _ = options(server, "/api/whep/play/lobby")  # client auth off: open
    (first, _) = turn_links(links)
    assert first["username"] is not None
    assert now + 86400 <= int(first["username"].split(":")[0]) <= now + 86400 + 5
