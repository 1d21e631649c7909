"""The HTTP skeleton (contract sections 4, 6, 9): health, metrics, rooms, bootstrap, admin
close, JSON errors and CORS, against ``create_app`` with the real actor system.

Rooms are made through the app's own :class:`RoomService` (no WHIP/WHEP routes yet), with
probe endpoints standing in for peer connections.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import pytest
import pytest_asyncio
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from golive.actors.messages import (
    Done,
    EndReason,
    MediaKind,
    PublisherClaimed,
    RoomName,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
)
from golive.config import Config
from golive.http.app import create_app
from golive.http.keys import ROOMS
from tests.support import ProbeEndpoint, metric_samples

pytestmark = pytest.mark.asyncio

Client: TypeAlias = TestClient[web.Request, web.Application]
MakeClient: TypeAlias = Callable[..., Awaitable[Client]]

VIDEO = TrackInfo(TrackId("v"), MediaKind.VIDEO, "video/VP8")
ADMIN_CLOSE = "/api/admin/rooms/{}/close"


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    """A client for ``create_app(Config.from_env(env))``; the app (and its actors) start now
    and stop when the test ends."""

    async def make(env: Mapping[str, str] | None = None) -> Client:
        return await aiohttp_client(create_app(Config.from_env(env or {})))

    return make


@pytest_asyncio.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def live_room(client: Client, name: str = "r1") -> tuple[ProbeEndpoint, ProbeEndpoint]:
    """A room with a live publisher (one video track) and one subscriber."""
    rooms = client.app[ROOMS]
    publisher, viewer = ProbeEndpoint("publisher"), ProbeEndpoint("viewer")
    claimed = await rooms.publish(RoomName(name), publisher)
    assert isinstance(claimed, PublisherClaimed)
    assert isinstance(await rooms.publisher_ready(claimed.session, (VIDEO,)), Done)
    assert isinstance(await rooms.subscribe(RoomName(name), viewer), SubscriberAdmitted)
    return publisher, viewer


async def json_body(response: ClientResponse) -> Any:
    """The JSON body of a response, after checking it is declared JSON."""
    assert response.content_type == "application/json"
    return json.loads(await response.text())


def header_list(value: str | None) -> set[str]:
    """A comma-separated header value as a set of its (stripped, lower-case) items."""
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


# --------------------------------------------------------------------------- /healthz


async def test_healthz_says_ok(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "ok"


# --------------------------------------------------------------------------- /metrics


async def metrics(
    client: Client,
) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert "version=" in response.headers["Content-Type"]
    text = await response.text()
    return text, metric_samples(text)


async def test_metrics_follow_a_room_from_creation_to_admin_close(client: Client) -> None:
    text, samples = await metrics(client)
    assert "live_rooms 0.0" in text
    assert samples[("live_rooms", ())] == 0.0
    assert not [key for key in samples if key[0] == "live_subscribers"]

    await live_room(client)
    text, samples = await metrics(client)
    assert "live_rooms 1.0" in text
    assert 'live_subscribers{room="r1"} 1.0' in text
    assert samples[("live_subscribers", (("room", "r1"),))] == 1.0

    response = await client.post(ADMIN_CLOSE.format("r1"))
    assert response.status == 200
    text, samples = await metrics(client)
    assert "live_rooms 0.0" in text
    assert samples[("live_rooms", ())] == 0.0
    # The finished room's label values are removed, not left at 0.
    assert 'room="r1"' not in text
    assert ("live_subscribers", (("room", "r1"),)) not in samples


async def test_metrics_speak_openmetrics_and_gzip_and_carry_the_process(client: Client) -> None:
    """prometheus-client's own handler: the format by Accept, gzip by Accept-Encoding; the
    process, platform and GC collectors on golive's registry."""
    _, samples = await metrics(client)
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    assert any(name == "python_info" for name, _ in samples)
    assert any(name == "python_gc_collections_total" for name, _ in samples)

    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status == 200
    assert response.content_type == "application/openmetrics-text"
    assert (await response.text()).endswith("# EOF\n")

    response = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()).startswith(b"# HELP")


# --------------------------------------------------------------------------- /api/rooms


async def test_rooms_lists_live_rooms_the_go_live_way(client: Client) -> None:
    response = await client.get("/api/rooms")
    assert response.status == 200
    assert await json_body(response) == []

    await live_room(client)
    response = await client.get("/api/rooms")
    assert response.status == 200
    assert await json_body(response) == [
        {
            "name": "r1",
            "hasPublisher": True,
            "tracks": 1,  # Go-Live's shape: a count
            "subscribers": 1,
            "waiting": False,
            "relay": False,
            "trackList": [{"id": "v", "kind": "video", "codec": "video/VP8"}],
        }
    ]


# --------------------------------------------------------------------------- /api/bootstrap


async def bootstrap(
    make_client: MakeClient, env: Mapping[str, str]
) -> tuple[str, dict[str, object]]:
    client = await make_client(env)
    response = await client.get("/api/bootstrap")
    assert response.status == 200
    body = await json_body(response)
    assert isinstance(body, dict)
    return await response.text(), body


async def test_bootstrap_defaults(make_client: MakeClient) -> None:
    _, body = await bootstrap(make_client, {})
    assert body["authEnabled"] is False
    assert body["recordEnabled"] is False
    assert body["iceServers"] == [{"urls": ["stun:stun.l.google.com:19302"]}]
    assert isinstance(body["features"], dict)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTH_TOKEN": "tok"}, {"authEnabled": True, "recordEnabled": False}),
        ({"ROOM_TOKENS": "r1:tok1"}, {"authEnabled": True, "recordEnabled": False}),
        ({"JWT_SECRET": "jwt-key"}, {"authEnabled": True, "recordEnabled": False}),
        # Go-Live's authEnabled: whether publishing and playing need credentials.
        ({"ADMIN_TOKEN": "adm"}, {"authEnabled": False, "recordEnabled": False}),
        ({"RECORD_ENABLED": "1"}, {"authEnabled": False, "recordEnabled": True}),
        ({"RECORD_ENABLED": "0"}, {"authEnabled": False, "recordEnabled": False}),
    ],
    ids=["auth-token", "room-tokens", "jwt", "admin-token-only", "record-on", "record-off"],
)
async def test_bootstrap_mirrors_auth_and_recording(
    make_client: MakeClient, env: dict[str, str], expected: dict[str, bool]
) -> None:
    _, body = await bootstrap(make_client, env)
    assert {key: body[key] for key in expected} == expected
    assert isinstance(body["features"], dict)


async def test_bootstrap_gives_ice_servers_but_never_the_turn_password(
    make_client: MakeClient,
) -> None:
    hidden = "turn-pass-SECRET-42"
    text, body = await bootstrap(
        make_client,
        {
            "STUN_URLS": "stun:stun.example.com:3478",
            "TURN_URLS": "turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349",
            "TURN_USERNAME": "alice",
            "TURN_PASSWORD": hidden,
        },
    )
    assert body["iceServers"] == [
        {"urls": ["stun:stun.example.com:3478"]},
        {
            "urls": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
            "username": "alice",
        },
    ]
    assert hidden not in text


# --------------------------------------------------------------------------- admin close


async def test_admin_close_ends_the_room_and_every_session(client: Client) -> None:
    publisher, viewer = await live_room(client)
    response = await client.post(ADMIN_CLOSE.format("r1"))
    assert response.status == 200
    assert response.content_type == "application/json"
    assert publisher.closed is EndReason.ADMIN_CLOSED
    assert viewer.closed is EndReason.ADMIN_CLOSED
    assert (publisher.close_calls, viewer.close_calls) == (1, 1)
    assert await json_body(await client.get("/api/rooms")) == []
    # The room is gone: closing it again finds nothing, and its name is free again.
    response = await client.post(ADMIN_CLOSE.format("r1"))
    assert response.status == 404
    await live_room(client)


async def test_admin_close_leaves_other_rooms_alone(client: Client) -> None:
    await live_room(client, "r1")
    other_publisher, other_viewer = await live_room(client, "r2")
    assert (await client.post(ADMIN_CLOSE.format("r1"))).status == 200
    assert other_publisher.closed is None
    assert other_viewer.closed is None
    rooms = await json_body(await client.get("/api/rooms"))
    assert [room["name"] for room in rooms] == ["r2"]


async def test_admin_close_of_an_unknown_room_is_404(client: Client) -> None:
    response = await client.post(ADMIN_CLOSE.format("nobody-here"))
    assert response.status == 404
    assert await json_body(response) == {"error": "room not found"}


@pytest.mark.parametrize("name", ["a" * 65, "a.b", "a%20b", "caf%C3%A9", "a~b"])
async def test_admin_close_of_an_invalid_room_name_is_400(client: Client, name: str) -> None:
    response = await client.post(ADMIN_CLOSE.format(name))
    assert response.status == 400
    assert await json_body(response) == {"error": "invalid room name"}


async def test_admin_close_accepts_a_64_character_name(client: Client) -> None:
    response = await client.post(ADMIN_CLOSE.format("a" * 64))
    assert response.status == 404


ADMIN_ENV = {"ADMIN_TOKEN": "secret"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer secre"},
        {"Authorization": "Bearer secrets"},
        {"Authorization": "Basic secret"},
        {"Authorization": "secret"},
        {"X-Auth-Token": "wrong"},
    ],
    ids=["none", "wrong-bearer", "prefix", "longer", "basic", "no-scheme", "wrong-x-auth"],
)
async def test_admin_close_without_the_admin_token_is_401(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = await make_client(ADMIN_ENV)
    publisher, viewer = await live_room(client)
    response = await client.post(ADMIN_CLOSE.format("r1"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await json_body(response) == {"error": "unauthorized"}
    assert (publisher.closed, viewer.closed) == (None, None)
    assert len(await json_body(await client.get("/api/rooms"))) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer secret"},
        {"Authorization": "bearer secret"},
        {"X-Auth-Token": "secret"},
    ],
    ids=["bearer", "bearer-lower-case", "x-auth-token"],
)
async def test_admin_close_with_the_admin_token_works(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = await make_client(ADMIN_ENV)
    publisher, viewer = await live_room(client)
    response = await client.post(ADMIN_CLOSE.format("r1"), headers=headers)
    assert response.status == 200
    assert (publisher.closed, viewer.closed) == (EndReason.ADMIN_CLOSED, EndReason.ADMIN_CLOSED)
    response = await client.post(ADMIN_CLOSE.format("r1"), headers=headers)
    assert response.status == 404
    assert await json_body(response) == {"error": "room not found"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tok"}, {"X-Auth-Token": "tok"}],
    ids=["none", "bearer-auth-token", "x-auth-auth-token"],
)
async def test_admin_close_needs_admin_credentials_once_auth_is_configured(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = await make_client({"AUTH_TOKEN": "tok"})
    publisher, _ = await live_room(client)
    response = await client.post(ADMIN_CLOSE.format("r1"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await json_body(response) == {"error": "unauthorized"}
    assert publisher.closed is None


# --------------------------------------------------------------------------- JSON errors


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/no/such/route", 404, None),
        ("GET", "/api/nothing", 404, None),
        ("DELETE", "/healthz", 405, {"get", "head"}),
        ("POST", "/api/rooms", 405, {"get", "head"}),
        ("GET", ADMIN_CLOSE.format("r1"), 405, {"post"}),
    ],
)
async def test_errors_are_json(
    client: Client, method: str, path: str, status: int, allow: set[str] | None
) -> None:
    response = await client.request(method, path)
    assert response.status == status
    body = await json_body(response)
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    if allow is not None:
        assert header_list(response.headers.get("Allow")) == allow


# --------------------------------------------------------------------------- CORS


def assert_cors_lists(headers: Mapping[str, str]) -> None:
    assert {"location", "etag", "link"} <= header_list(headers.get("Access-Control-Expose-Headers"))
    assert {"get", "post", "patch", "delete", "options"} <= header_list(
        headers.get("Access-Control-Allow-Methods")
    )
    assert {"content-type", "authorization", "x-auth-token", "if-match"} <= header_list(
        headers.get("Access-Control-Allow-Headers")
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("GET", "/api/rooms"), ("GET", "/api/bootstrap"), ("GET", "/metrics")],
)
async def test_responses_carry_cors_headers(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path, headers={"Origin": "https://site.example"})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert_cors_lists(response.headers)


async def test_json_errors_from_handlers_carry_cors_headers(client: Client) -> None:
    response = await client.post(
        ADMIN_CLOSE.format("nobody"), headers={"Origin": "https://a.example"}
    )
    assert response.status == 404
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert_cors_lists(response.headers)


@pytest.mark.parametrize(("method", "path"), [("GET", "/no/such/route"), ("DELETE", "/healthz")])
async def test_router_errors_carry_cors_headers(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path, headers={"Origin": "https://a.example"})
    assert response.status >= 400
    assert response.headers.get("Access-Control-Allow-Origin") == "*"
    assert_cors_lists(response.headers)


async def test_preflight_is_answered_with_204(client: Client) -> None:
    response = await client.options(
        "/api/rooms",
        headers={
            "Origin": "https://site.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, if-match",
        },
    )
    assert response.status == 204
    assert await response.read() == b""
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert_cors_lists(response.headers)


async def test_preflight_for_the_admin_route_is_204(client: Client) -> None:
    response = await client.options(
        ADMIN_CLOSE.format("r1"),
        headers={"Origin": "https://site.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204
    assert_cors_lists(response.headers)


ORIGIN_ENV = {"ALLOWED_ORIGIN": "https://example.com"}


async def test_a_configured_origin_is_echoed(make_client: MakeClient) -> None:
    client = await make_client(ORIGIN_ENV)
    for request in (
        client.get("/api/rooms", headers={"Origin": "https://example.com"}),
        client.options(
            "/api/rooms",
            headers={"Origin": "https://example.com", "Access-Control-Request-Method": "GET"},
        ),
    ):
        response = await request
        assert response.status in {200, 204}
        assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"
        assert "origin" in header_list(response.headers.get("Vary"))
        assert_cors_lists(response.headers)


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Origin": "https://example.com.evil.example"}, {}],
    ids=["other-origin", "suffixed-origin", "no-origin"],
)
async def test_another_origin_gets_no_allow_origin(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = await make_client(ORIGIN_ENV)
    response = await client.get("/api/rooms", headers=headers)
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_options_on_an_unknown_route_is_a_json_404(client: Client) -> None:
    response = await client.options("/no/such/route", headers={"Origin": "https://a.example"})
    assert response.status == 404
    assert await response.json() == {"error": "not found"}
    assert response.headers.get("Access-Control-Allow-Origin") == "*"
