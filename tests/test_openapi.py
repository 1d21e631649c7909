"""The OpenAPI document (``GET /api/openapi.json``): valid OpenAPI 3.1, the app's routes
exactly (both ways), consistent with the contract's rules, and served as it is."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from golive.actors.messages import MediaKind, RoomInfo, RoomName, TrackId, TrackInfo
from golive.config import Config
from golive.http.app import create_app, room_json
from golive.http.openapi import OPENAPI, PATH
from golive.http.ratelimit import LIMITED_METHODS, LIMITED_READS
from golive.http.records import record_json
from golive.recordings import RecordingFile
from tests.support import running_server

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Where credentials apply (contract section 7): publishing, playing, sessions, admin, records.
AUTHENTICATED = {
    ("POST", "/api/whip/publish/{room}"),
    ("POST", "/api/whep/play/{room}"),
    ("POST", "/api/admin/rooms/{room}/close"),
    ("GET", "/api/records"),
    ("GET", "/records/{name}"),
    ("HEAD", "/records/{name}"),
} | {
    (method, f"{base}/{{room}}/{{session}}")
    for method in ("PATCH", "DELETE", "GET")
    for base in ("/api/whip/publish", "/api/whep/play")
}


def rate_limited(method: str, path: str) -> bool:
    """Whether the rate-limiting middleware takes a token for this operation."""
    return method in LIMITED_METHODS or (method in {"GET", "HEAD"} and path in LIMITED_READS)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = OPENAPI
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def responses(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(code): resolve(response) for code, response in operation["responses"].items()}


def valid(name: str, instance: object) -> bool:
    """Whether ``instance`` fits ``#/components/schemas/{name}`` (references resolved)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return bool(OAS31Validator(schema).is_valid(instance))


def test_the_document_is_valid_openapi_3_1() -> None:
    assert OPENAPI["openapi"].startswith("3.1.")
    validate(OPENAPI, cls=OpenAPIV31SpecValidator)
    json.dumps(OPENAPI)  # plain JSON: no tuples, sets or other Python-only values


def test_every_route_is_documented_and_nothing_else() -> None:
    app = create_app(Config())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {(method, path) for method, path, _ in operations()}
    # aiohttp answers HEAD for every GET route by itself; only the recordings' HEAD is part
    # of the API (range requests, sizes), and that one must be documented.
    auto_head = {("HEAD", path) for method, path in served if method == "GET"}
    assert ("HEAD", "/records/{name}") in documented
    assert served - auto_head - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_operations_say_what_the_contract_says() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for method, path, operation in operations():
        where = f"{method} {path}"
        codes = responses(operation)
        security = operation["security"]
        if (method, path) in AUTHENTICATED:
            assert {"bearer": []} in security, where
            assert {"token": []} in security, where
            assert {} in security, where  # open when no credential is configured
            assert 401 in codes, where
            assert "WWW-Authenticate" in codes[401]["headers"], where
        else:
            assert security == [], where
        if rate_limited(method, path):
            assert 429 in codes, where
            assert "Retry-After" in codes[429]["headers"], where
        else:
            assert 429 not in codes, where
        if 503 in codes:
            assert "Retry-After" in codes[503]["headers"], where
        for code, response in codes.items():
            if code >= 400 and not (path.startswith("/records/") and code in (412, 416)):
                # every error is JSON, but aiohttp's own 412/416 of a file (empty bodies)
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (where, code)


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("POST", "/api/whip/publish/{room}", {201, 400, 401, 408, 409, 413, 415, 429, 503}),
        ("POST", "/api/whep/play/{room}", {201, 400, 401, 403, 404, 408, 413, 415, 429, 503}),
        ("PATCH", "/api/whip/publish/{room}/{session}", {204, 404, 408, 412, 415, 422, 428, 429}),
        ("DELETE", "/api/whep/play/{room}/{session}", {200, 401, 403, 404, 429}),
        ("GET", "/api/whip/publish/{room}/{session}", {204, 404}),
        ("OPTIONS", "/api/whip/publish/{room}", {204}),
        ("POST", "/api/admin/rooms/{room}/close", {200, 400, 401, 404}),
        ("GET", "/api/records", {200, 401, 404}),
        ("GET", "/records/{name}", {200, 206, 304, 401, 404, 416}),
        ("HEAD", "/records/{name}", {200, 206, 304, 401, 404, 416}),
        ("GET", "/healthz", {200}),
        ("GET", "/api/rooms", {200, 429, 503}),
    ],
)
def test_status_codes_of_the_contract(method: str, path: str, codes: set[int]) -> None:
    operation = OPENAPI["paths"][path][method.lower()]
    assert codes <= set(responses(operation))


def test_whip_and_whep_details() -> None:
    for base in ("/api/whip/publish", "/api/whep/play"):
        post = OPENAPI["paths"][f"{base}/{{room}}"]["post"]
        created = responses(post)[201]
        assert set(created["headers"]) == {"Location", "ETag", "Link"}
        assert set(created["content"]) == {"application/sdp"}
        offer = resolve(post["requestBody"])
        assert offer["required"] is True
        assert set(offer["content"]) == {"application/sdp"}
        assert offer["content"]["application/sdp"]["schema"]["maxLength"] == 1 << 20
        options = OPENAPI["paths"][f"{base}/{{room}}"]["options"]
        assert set(responses(options)[204]["headers"]) == {"Accept-Post", "Link"}
        patch = OPENAPI["paths"][f"{base}/{{room}}/{{session}}"]["patch"]
        assert set(resolve(patch["requestBody"])["content"]) == {"application/trickle-ice-sdpfrag"}
        if_match = [resolve(p) for p in patch["parameters"]]
        assert [(p["name"], p["in"], p["required"]) for p in if_match] == [
            ("If-Match", "header", True)
        ]
        assert "ETag" not in responses(patch)[204].get("headers", {})
    parameters = OPENAPI["components"]["parameters"]
    assert parameters["room"]["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    assert parameters["session"]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    schemes = OPENAPI["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["token"] == {
        **schemes["token"],
        "type": "apiKey",
        "in": "header",
        "name": "X-Auth-Token",
    }


def test_schemas_match_real_bodies() -> None:
    assert valid("Error", {"error": "invalid room name"})
    assert not valid("Error", {"error": 1})
    assert not valid("Error", {"message": "x"})
    assert not valid("Room", {"name": "a.b"})
    video = TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/VP8")
    room = RoomInfo(RoomName("r1"), has_publisher=True, tracks=(video,), subscribers=2)
    assert valid("Room", room_json(room))
    assert valid("Recording", record_json(RecordingFile("r1_0_1795503143.ivf", 3, 1.5e9)))
    assert not valid("Recording", record_json(RecordingFile("../x", 3, 1.5e9)))


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  loopback URL built here
        return response.status, response.headers.get_content_type(), response.read()


def test_served_by_a_running_server_as_it_is() -> None:
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        # public even when every kind of credential is configured
        "AUTH_TOKEN": "a-token",
        "ADMIN_TOKEN": "an-admin-token",
        "JWT_SECRET": "a-jwt-secret-0123456789abcdef0123",
    }
    with running_server(env) as server:
        status, content_type, body = fetch(server.url + PATH)
        _, _, bootstrap = fetch(server.url + "/api/bootstrap")
        _, _, rooms = fetch(server.url + "/api/rooms")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == OPENAPI
    assert valid("Bootstrap", json.loads(bootstrap))
    assert json.loads(rooms) == []
