"""CORS as Go-Live does it, with what WHIP/WHEP browsers need on top (contract section 2)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from golive.config import Config
from golive.http.errors import Handler

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Auth-Token, If-Match"
EXPOSE_HEADERS = "Location, ETag, Link"


def cors_headers(config: Config, origin: str | None) -> dict[str, str]:
    allowed = config.allowed_origin
    headers = {
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
    }
    if allowed == "*":
        headers["Access-Control-Allow-Origin"] = "*"
    elif origin is not None and origin == allowed:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Vary"] = "Origin"
    return headers


def cors_middleware(config: Config) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = cors_headers(config, request.headers.get("Origin"))
        preflight = (
            request.method == "OPTIONS"
            and request.match_info.route.method != "OPTIONS"
            and not isinstance(request.match_info.http_exception, web.HTTPNotFound)
        )
        if preflight:  # a CORS preflight (or plain OPTIONS) on a route that exists
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    return middleware
