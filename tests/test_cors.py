"""``Vary: Origin`` (issue 12, finding 7): with a specific ``ALLOWED_ORIGIN`` the answer
depends on the request's ``Origin``, so every answer must say so, whatever the origin and
even without one, or a shared cache could hand one origin's answer to another. Against a real
server; the merge with a handler's own ``Vary`` on a minimal app."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from email.message import Message

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from golive.config import Config
from golive.http.cors import cors_middleware
from tests.support import ServerThread, running_server

ORIGIN_ENV = {"ALLOWED_ORIGIN": "https://example.com"}


def header_list(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def raw_request(
    server: ServerThread, method: str, path: str, headers: Mapping[str, str]
) -> tuple[int, Message]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status, response.headers
    finally:
        connection.close()


VARY_CASES = {
    "healthz": ("GET", "/healthz", {}),
    "rooms": ("GET", "/api/rooms", {}),
    "json-404": ("GET", "/no/such/route", {}),
    "json-401": ("POST", "/api/admin/rooms/r1/close", {}),
    "redirect": ("GET", "/", {}),
    "page": ("GET", "/web/index.html", {}),
    "preflight": ("OPTIONS", "/api/rooms", {"Access-Control-Request-Method": "GET"}),
    "whip-options": ("OPTIONS", "/api/whip/publish/r1", {}),
}


@pytest.mark.parametrize(
    "origin", [None, "https://example.com", "https://evil.example"], ids=["none", "ok", "other"]
)
def test_every_answer_varies_on_origin_with_a_specific_allowed_origin(origin: str | None) -> None:
    """Without ``Vary: Origin``, a shared cache could hand the allowed origin's answer (with
    its Access-Control-Allow-Origin) to another origin, or the reverse (issue 12, finding 7)."""
    env = {**ORIGIN_ENV, "ADMIN_TOKEN": "admin-t0ken", "STUN_URLS": ","}
    with running_server(env) as server:
        for method, path, extra in VARY_CASES.values():
            headers = {**extra, **({"Origin": origin} if origin else {})}
            status, response = raw_request(server, method, path, headers)
            assert header_list(response.get("Vary")) == {"origin"}, (method, path, status)
            allowed = response.get("Access-Control-Allow-Origin")
            assert allowed == ("https://example.com" if origin == "https://example.com" else None)


def test_no_vary_when_every_origin_is_allowed() -> None:
    with running_server({"STUN_URLS": ","}) as server:
        for method, path, extra in VARY_CASES.values():
            headers = {**extra, "Origin": "https://a.example"}
            _, response = raw_request(server, method, path, headers)
            assert response.get("Vary") is None, path
            assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ("Accept-Encoding", "Accept-Encoding, Origin"),
        ("accept-encoding, origin", "accept-encoding, origin"),
        ("*", "*"),
    ],
)
@pytest.mark.asyncio
async def test_vary_origin_is_merged_with_what_a_handler_set(
    aiohttp_client: AiohttpClient, existing: str, expected: str
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text="x", headers={"Vary": existing})

    app = web.Application(middlewares=[cors_middleware(Config.from_env(ORIGIN_ENV))])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    response = await client.get("/", headers={"Origin": "https://evil.example"})
    assert response.headers.getall("Vary") == [expected]
