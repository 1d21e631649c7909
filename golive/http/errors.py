"""Every error from golive's own routes is JSON: ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from golive.actors.base import ActorTimeoutError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTimeoutError(TimeoutError):
    """A request's body did not arrive within ``HTTP_BODY_TIMEOUT_SECONDS`` of its headers
    (raised by the body's reads; see ``golive.http.connections``). A ``TimeoutError``, so
    that aiohttp's own read of an unread body stops at it quietly."""


_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    413: "request body too large",
    415: "unsupported media type",
    429: "too many requests",
    500: "internal error",
    503: "service unavailable",
}


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's own errors (unknown route, wrong method, ...) and crashes into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {
            name: value
            for name, value in exc.headers.items()
            if name.lower() in {"allow", "retry-after", "www-authenticate"}
        }
        return json_error(exc.status, _REASONS.get(exc.status, exc.reason.lower()), headers)
    except BodyTimeoutError:
        response = json_error(408, "request body not received in time")
        response.force_close()
        return response
    except ActorTimeoutError:
        # (only an ask of an actor: any other TimeoutError is a bug, answered 500 below)
        log.error("an actor did not answer in time", path=request.path, method=request.method)
        return json_error(503, "server busy, try again", {"Retry-After": "1"})
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # The client closed its connection mid-request (a body cut short): its doing,
            # not a bug; the answer goes nowhere.
            log.debug("client went away", path=request.path, method=request.method)
            return json_error(400, "connection lost")
        log.exception("request failed", path=request.path, method=request.method)
        return json_error(500, "internal error")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
