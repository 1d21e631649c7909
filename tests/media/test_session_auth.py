"""A session's resource belongs to whoever created it (contract section 7), and overload is a
503 with Retry-After, not a fall-over: with real offers from aiortc peers."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator, Mapping

import aiohttp
import jwt
import pytest
from aiortc import RTCPeerConnection

from golive.http.keys import LIMITS
from tests.media.clients import PatternTrack, close_all
from tests.support import ServerThread, metric_samples, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

SECRET = "jwt-secret-for-tests-0123456789abcdef"  # noqa: S105  a test key
ADMIN = "admin-token-0001"
LOBBY = "lobby-token-0003"
BASE = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}


@pytest.fixture
def secured() -> Iterator[ServerThread]:
    env = {**BASE, "ROOM_TOKENS": f"lobby:{LOBBY}", "JWT_SECRET": SECRET, "ADMIN_TOKEN": ADMIN}
    with running_server(env) as server:
        yield server


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def request(
    method: str, url: str, headers: Mapping[str, str], body: str | bytes | io.BytesIO = b""
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=body, headers=dict(headers)) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def publish(server: ServerThread, room: str, headers: Mapping[str, str]) -> str:
    """POST a real offer; the session's Location."""
    pc, sdp = await offer()
    try:
        status, response_headers, body = await request(
            "POST",
            f"{server.url}/api/whip/publish/{room}",
            {"Content-Type": "application/sdp", **headers},
            sdp,
        )
    finally:
        await close_all(pc)
    assert status == 201, body
    return response_headers["Location"]


TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
FRAGMENT = "a=ice-ufrag:nope\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"


async def test_only_the_owner_or_an_admin_may_touch_a_session(secured: ServerThread) -> None:
    owner_token = jwt.encode({"sub": "alice", "room": "lobby"}, SECRET, algorithm="HS256")
    location = await publish(secured, "lobby", bearer(owner_token))
    url = secured.url + location
    someone_else = jwt.encode({"sub": "mallory", "room": "lobby"}, SECRET, algorithm="HS256")
    for method, headers in (("GET", {}), ("PATCH", TRICKLE), ("DELETE", {})):
        status, response_headers, body = await request(method, url, headers, b"")
        assert status == 401, (method, body)
        assert response_headers["WWW-Authenticate"] == "Bearer"
        status, _, body = await request(method, url, {**headers, **bearer(someone_else)})
        assert status == 403, (method, body)
        status, _, _ = await request(method, url, {**headers, **bearer(LOBBY)})  # room's token
        assert status == 403, method
    # The same holder with a fresh token (same sub) is the owner.
    renewed = jwt.encode({"sub": "alice", "room": "lobby", "n": 2}, SECRET, algorithm="HS256")
    assert (await request("GET", url, bearer(renewed)))[0] == 204
    # A trickle fragment from the owner is judged on its merits (here: a new ufrag, 422).
    assert (await request("PATCH", url, {**TRICKLE, **bearer(renewed)}, FRAGMENT))[0] == 422
    # An admin may end anyone's session.
    assert (await request("DELETE", url, bearer(ADMIN)))[0] == 200
    assert (await request("GET", url, bearer(ADMIN)))[0] == 404


@pytest.mark.parametrize("claim", [None, 7, ["lobby"], {"name": "lobby"}, True])
async def test_a_room_claim_that_is_not_a_string_admits_no_room(
    secured: ServerThread, claim: object
) -> None:
    """``"room": null`` admitted every room (issue 12, finding 7): with the owner's ``sub``,
    it even took over the owner's session. Only an absent ``room`` claim means every room."""
    owner = jwt.encode({"sub": "alice", "room": "lobby"}, SECRET, algorithm="HS256")
    location = await publish(secured, "lobby", bearer(owner))
    url = secured.url + location
    forged = jwt.encode({"sub": "alice", "room": claim}, SECRET, algorithm="HS256")
    sdp = {"Content-Type": "application/sdp", **bearer(forged)}
    for room in ("lobby", "elsewhere"):
        status, _, body = await request("POST", f"{secured.url}/api/whip/publish/{room}", sdp)
        assert status == 401, (room, body)
        status, _, body = await request("POST", f"{secured.url}/api/whep/play/{room}", sdp)
        assert status == 401, (room, body)
    for method, headers in (("GET", {}), ("PATCH", TRICKLE), ("DELETE", {})):
        status, _, body = await request(method, url, {**headers, **bearer(forged)}, FRAGMENT)
        assert status == 401, (method, body)
    # No room claim at all: every room (here: past auth, to the SDP check).
    anywhere = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    status, _, body = await request(
        "POST",
        f"{secured.url}/api/whip/publish/elsewhere",
        {"Content-Type": "application/sdp", **bearer(anywhere)},
        "v=0 not sdp",
    )
    assert (status, json.loads(body)) == (400, {"error": "invalid SDP"})
    assert (await request("DELETE", url, bearer(owner)))[0] == 200


async def test_a_room_token_owns_what_it_created(secured: ServerThread) -> None:
    location = await publish(secured, "lobby", bearer(LOBBY))
    url = secured.url + location
    admin_jwt = jwt.encode({"role": "admin"}, SECRET, algorithm="HS256")
    assert (await request("GET", url, bearer(admin_jwt)))[0] == 204
    assert (await request("DELETE", url, {"X-Auth-Token": LOBBY}))[0] == 200


async def test_a_trickle_body_over_1_mib_is_refused(secured: ServerThread) -> None:
    location = await publish(secured, "lobby", bearer(LOBBY))
    url = secured.url + location
    huge = io.BytesIO(b"a=candidate:" + b"x" * (1 << 20))
    status, _, body = await request("PATCH", url, {**TRICKLE, **bearer(LOBBY)}, huge)
    assert status == 413, body
    assert (await request("DELETE", url, bearer(LOBBY)))[0] == 200


async def test_the_session_cap_answers_503_with_retry_after() -> None:
    with running_server({**BASE, "MAX_SESSIONS": "1"}) as server:
        location = await publish(server, "one", {})
        pc, sdp = await offer()
        try:
            status, headers, body = await request(
                "POST",
                f"{server.url}/api/whip/publish/two",
                {"Content-Type": "application/sdp"},
                sdp,
            )
        finally:
            await close_all(pc)
        assert status == 503, body
        assert int(headers["Retry-After"]) >= 1
        assert b"server full" in body
        rooms = await asyncio.to_thread(server.get, "/api/rooms")
        assert [room["name"] for room in json.loads(rooms[1])] == ["one"]
        samples = metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())
        refused = ("golive_join_refusals_total", (("reason", "server_full"), ("role", "publisher")))
        assert samples[refused] == 1
        assert (await request("DELETE", server.url + location, {}))[0] == 200


async def test_too_many_negotiations_at_once_answer_503() -> None:
    with running_server({**BASE, "MAX_PENDING_NEGOTIATIONS": "2"}) as server:
        limits = server.app[LIMITS]
        # Two offers are being answered right now (held open here: a slow negotiation cannot
        # be made to last on demand otherwise).
        server.call(lambda: setattr(limits, "pending", 2))
        pc, sdp = await offer()
        try:
            status, headers, body = await request(
                "POST", f"{server.url}/api/whep/play/any", {"Content-Type": "application/sdp"}, sdp
            )
            assert (status, headers["Retry-After"]) == (503, "1"), body
            server.call(lambda: setattr(limits, "pending", 0))
            status, _, _ = await request(
                "POST", f"{server.url}/api/whep/play/any", {"Content-Type": "application/sdp"}, sdp
            )
            assert status == 404  # admitted to negotiation: no publisher there
        finally:
            await close_all(pc)


async def test_garbage_candidates_are_skipped_not_a_server_error(secured: ServerThread) -> None:
    """aiortc's candidate parser asserts on some garbage; the server skips such lines."""
    location = await publish(secured, "lobby", bearer(LOBBY))
    url = secured.url + location
    for fragment in ("a=candidate:" + "x" * 5000, "a=candidate:1 1 udp\r\n", "a=candidate:\r\n"):
        status, _, body = await request("PATCH", url, {**TRICKLE, **bearer(LOBBY)}, fragment)
        assert status == 204, (fragment[:40], body)
    assert (await request("DELETE", url, bearer(LOBBY)))[0] == 200
