"""CORS as Go-Live does it, with what WHIP/WHEP browsers need on top (contract section 2).

With a specific ``ALLOWED_ORIGIN`` the answer depends on the request's ``Origin`` (only the
allowed origin gets ``Access-Control-Allow-Origin``), so every response says
``Vary: Origin``, whatever the request's origin and even without one: a shared cache must not
hand one origin's answer to another. With ``*`` every origin gets the same answer.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from golive.config import Config
from golive.http.errors import Handler

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Auth-Token, If-Match"
EXPOSE_HEADERS = "Location, ETag, Link"


def cors_headers(config: Config, origin: str | None) -> dict[str, str]:
    """The CORS headers of an answer to a request from ``origin`` (``Vary`` is separate:
    see :func:`add_vary`)."""
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
    return headers


def add_vary(response: web.StreamResponse, field: str) -> None:
    """Add ``field`` to the response's ``Vary``, keeping what is there (``*`` covers all)."""
    present = [
        item.strip()
        for value in response.headers.getall(hdrs.VARY, ())
        for item in value.split(",")
        if item.strip()
    ]
    if "*" in present or field.lower() in {item.lower() for item in present}:
        return
    response.headers[hdrs.VARY] = ", ".join([*present, field])


def cors_middleware(config: Config) -> Middleware:
    varies = config.allowed_origin != "*"

    def finish(response: web.StreamResponse, headers: dict[str, str]) -> None:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        if varies:
            add_vary(response, "Origin")

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
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a redirect raised (errors come back as JSON)
                finish(exc, headers)
                raise
        finish(response, headers)
        return response

    return middleware
