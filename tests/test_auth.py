"""Contract section 7, row by row, through the real app: who may publish, play and administer.

"Admitted" is shown without WebRTC: an admitted POST goes on to judge its body (400 "invalid
SDP" for a WHIP offer that is not SDP, 404 "no active publisher in room" for WHEP), a refused
one stops at 401. Session resources (owner or admin) are tested with real peers in
``tests/media/test_session_auth.py``.
"""

from __future__ import annotations

import hmac
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jwt.warnings import InsecureKeyLengthWarning
from pytest_aiohttp import AiohttpClient

from golive.config import Config
from golive.http.app import create_app

pytestmark = pytest.mark.asyncio

Client: TypeAlias = TestClient[web.Request, web.Application]
MakeClient: TypeAlias = Callable[..., Awaitable[Client]]

SECRET = "jwt-secret-for-tests-0123456789abcdef"  # noqa: S105  a test key
ADMIN = "admin-token-0001"
GLOBAL = "global-token-0002"
LOBBY = "lobby-token-0003"
STAGE = "stage-token-0004"
ALL_AUTH = {
    "AUTH_TOKEN": GLOBAL,
    "ROOM_TOKENS": f"lobby:{LOBBY};stage:{STAGE}",
    "JWT_SECRET": SECRET,
    "ADMIN_TOKEN": ADMIN,
}


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(env: Mapping[str, str] | None = None) -> Client:
        return await aiohttp_client(create_app(Config.from_env(env or {})))

    return make


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def publish_status(client: Client, room: str, headers: Mapping[str, str]) -> int:
    """401 if refused; 400 (the body is not SDP) once admitted."""
    response = await client.post(
        f"/api/whip/publish/{room}",
        data=b"not sdp",
        headers={"Content-Type": "application/sdp", **headers},
    )
    if response.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert await response.json() == {"error": "unauthorized"}
    return response.status


async def play_status(client: Client, room: str, headers: Mapping[str, str]) -> int:
    """401 if refused; 400 (the offer has no media) once admitted."""
    response = await client.post(
        f"/api/whep/play/{room}",
        data=b"v=0\r\n",
        headers={"Content-Type": "application/sdp", **headers},
    )
    return response.status


async def admin_status(client: Client, headers: Mapping[str, str]) -> int:
    """401 if refused; 404 (no such room) once admitted."""
    response = await client.post("/api/admin/rooms/nowhere/close", headers=headers)
    if response.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    return response.status


ADMITTED, REFUSED = 400, 401


# -- where credentials come from ----------------------------------------------------------


async def test_credentials_come_from_bearer_or_x_auth_token(make_client: MakeClient) -> None:
    client = await make_client({"AUTH_TOKEN": GLOBAL})
    assert await publish_status(client, "lobby", bearer(GLOBAL)) == ADMITTED
    assert await publish_status(client, "lobby", {"X-Auth-Token": GLOBAL}) == ADMITTED
    assert await publish_status(client, "lobby", {"Authorization": f"bearer {GLOBAL}"}) == ADMITTED
    assert await publish_status(client, "lobby", {}) == REFUSED
    assert await publish_status(client, "lobby", {"Authorization": f"Basic {GLOBAL}"}) == REFUSED
    assert await publish_status(client, "lobby", {"Authorization": "Bearer "}) == REFUSED
    assert await publish_status(client, "lobby", bearer(GLOBAL + "x")) == REFUSED


# -- 1. room tokens -------------------------------------------------------------------------


async def test_a_room_token_admits_its_room_only(make_client: MakeClient) -> None:
    client = await make_client({"ROOM_TOKENS": f"lobby:{LOBBY};stage:{STAGE}"})
    assert await publish_status(client, "lobby", bearer(LOBBY)) == ADMITTED
    assert await publish_status(client, "stage", bearer(STAGE)) == ADMITTED
    assert await publish_status(client, "stage", bearer(LOBBY)) == REFUSED
    assert await publish_status(client, "other", bearer(LOBBY)) == REFUSED
    assert await play_status(client, "lobby", bearer(LOBBY)) == ADMITTED
    assert await play_status(client, "stage", bearer(LOBBY)) == REFUSED


# -- 2. the global token --------------------------------------------------------------------


async def test_the_global_token_admits_every_room(make_client: MakeClient) -> None:
    client = await make_client(ALL_AUTH)
    for room in ("lobby", "stage", "anything"):
        assert await publish_status(client, room, bearer(GLOBAL)) == ADMITTED
        assert await play_status(client, room, bearer(GLOBAL)) == ADMITTED
    # A client token is no admin credential, and the admin token opens no room.
    assert await admin_status(client, bearer(GLOBAL)) == REFUSED
    assert await admin_status(client, bearer(LOBBY)) == REFUSED
    assert await publish_status(client, "lobby", bearer(ADMIN)) == REFUSED


# -- 3. JWTs --------------------------------------------------------------------------------


async def test_a_jwt_admits_the_room_of_its_claim_or_every_room(make_client: MakeClient) -> None:
    client = await make_client({"JWT_SECRET": SECRET})
    assert await publish_status(client, "lobby", bearer(token(room="lobby"))) == ADMITTED
    assert await publish_status(client, "stage", bearer(token(room="lobby"))) == REFUSED
    assert await publish_status(client, "stage", bearer(token(sub="anyone"))) == ADMITTED
    assert await play_status(client, "lobby", {"X-Auth-Token": token(room="lobby")}) == ADMITTED


async def test_a_jwt_must_be_signed_with_the_secret_in_hs256(make_client: MakeClient) -> None:
    client = await make_client({"JWT_SECRET": SECRET})
    other_key = jwt.encode(
        {"room": "lobby"}, "another-secret-0123456789abcdefgh", algorithm="HS256"
    )
    assert await publish_status(client, "lobby", bearer(other_key)) == REFUSED
    with warnings.catch_warnings():  # the test key is short for HS512; it is refused anyway
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = jwt.encode({"room": "lobby"}, SECRET, algorithm="HS512")
    assert await publish_status(client, "lobby", bearer(hs512)) == REFUSED
    unsigned = jwt.encode({"room": "lobby"}, "", algorithm="none")
    assert await publish_status(client, "lobby", bearer(unsigned)) == REFUSED
    assert await publish_status(client, "lobby", bearer("a.b.c")) == REFUSED


async def test_a_jwts_exp_and_nbf_are_enforced(make_client: MakeClient) -> None:
    client = await make_client({"JWT_SECRET": SECRET})
    now = int(time.time())
    assert await publish_status(client, "lobby", bearer(token(exp=now + 60))) == ADMITTED
    assert await publish_status(client, "lobby", bearer(token(exp=now - 60))) == REFUSED
    assert await publish_status(client, "lobby", bearer(token(nbf=now + 60))) == REFUSED
    assert await publish_status(client, "lobby", bearer(token(nbf=now - 60))) == ADMITTED


async def test_a_jwts_audience_must_match_when_one_is_configured(make_client: MakeClient) -> None:
    client = await make_client({"JWT_SECRET": SECRET, "JWT_AUDIENCE": "golive"})
    assert await publish_status(client, "lobby", bearer(token(aud="golive"))) == ADMITTED
    assert await publish_status(client, "lobby", bearer(token(aud=["x", "golive"]))) == ADMITTED
    assert await publish_status(client, "lobby", bearer(token(aud="elsewhere"))) == REFUSED
    assert await publish_status(client, "lobby", bearer(token())) == REFUSED


async def test_a_jwts_audience_is_not_checked_when_none_is_configured(
    make_client: MakeClient,
) -> None:
    client = await make_client({"JWT_SECRET": SECRET})
    assert await publish_status(client, "lobby", bearer(token(aud="anything"))) == ADMITTED


async def test_an_admin_jwt_is_an_admin(make_client: MakeClient) -> None:
    client = await make_client({"JWT_SECRET": SECRET, "ADMIN_TOKEN": ADMIN})
    assert await admin_status(client, bearer(token(role="admin"))) == 404
    assert await admin_status(client, bearer(token(admin=True))) == 404
    assert await admin_status(client, bearer(token(admin="true"))) == REFUSED  # not the boolean
    assert await admin_status(client, bearer(token(role="viewer"))) == REFUSED
    assert await admin_status(client, bearer(token(room="lobby"))) == REFUSED
    expired = token(role="admin", exp=int(time.time()) - 60)
    assert await admin_status(client, bearer(expired)) == REFUSED
    # An admin JWT with a room claim still reaches every room.
    assert await publish_status(client, "stage", bearer(token(role="admin", room="x"))) == ADMITTED


# -- 4. open when nothing is configured -----------------------------------------------------


async def test_everything_is_open_when_nothing_is_configured(make_client: MakeClient) -> None:
    client = await make_client()
    assert await publish_status(client, "lobby", {}) == ADMITTED
    assert await play_status(client, "lobby", {}) == ADMITTED
    assert await admin_status(client, {}) == 404
    assert (await (await client.get("/api/bootstrap")).json())["authEnabled"] is False


async def test_only_an_admin_token_leaves_rooms_open_and_guards_admin(
    make_client: MakeClient,
) -> None:
    client = await make_client({"ADMIN_TOKEN": ADMIN})
    assert await publish_status(client, "lobby", {}) == ADMITTED
    assert await admin_status(client, {}) == REFUSED
    assert await admin_status(client, bearer(ADMIN)) == 404
    assert await admin_status(client, {"X-Auth-Token": ADMIN}) == 404
    assert (await (await client.get("/api/bootstrap")).json())["authEnabled"] is False


async def test_records_are_admin_only(make_client: MakeClient, tmp_path: Any) -> None:
    client = await make_client({**ALL_AUTH, "RECORD_ENABLED": "1", "RECORD_DIR": str(tmp_path)})
    assert (await client.get("/api/records", headers=bearer(GLOBAL))).status == REFUSED
    assert (await client.get("/api/records", headers=bearer(ADMIN))).status == 200
    assert (await client.get("/api/records", headers=bearer(token(admin=True)))).status == 200
    assert (await client.get("/records/lobby_0_1.ivf", headers=bearer(LOBBY))).status == REFUSED


# -- every comparison is constant-time ------------------------------------------------------


async def test_every_token_comparison_is_constant_time(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each configured token is compared through hmac.compare_digest, every room token on
    every attempt (so how long a refusal takes tells nothing about which token is close)."""
    compared: list[bytes] = []
    original = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        compared.append(b if isinstance(b, bytes) else str(b).encode())
        return original(a, b)

    monkeypatch.setattr("golive.http.auth.hmac.compare_digest", recording)
    client = await make_client(ALL_AUTH)
    assert await publish_status(client, "lobby", bearer("guess")) == REFUSED
    assert {LOBBY.encode(), STAGE.encode(), GLOBAL.encode()} <= set(compared)
    compared.clear()
    assert await admin_status(client, bearer("guess")) == REFUSED
    assert ADMIN.encode() in compared


async def test_a_short_jwt_secret_works_without_warnings(make_client: MakeClient) -> None:
    """(PyJWT warns about keys under 32 bytes; pytest turns warnings into errors.)"""
    client = await make_client({"JWT_SECRET": "short"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        short = jwt.encode({"room": "lobby"}, "short", algorithm="HS256")
    assert await publish_status(client, "lobby", bearer(short)) == ADMITTED
