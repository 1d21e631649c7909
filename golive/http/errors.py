"""Every error from golive's own routes is JSON: ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
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
    except TimeoutError:
        log.error("an actor did not answer in time", path=request.path, method=request.method)
        return json_error(503, "server busy, try again", {"Retry-After": "1"})
    except Exception:
        log.exception("request failed", path=request.path, method=request.method)
        return json_error(500, "internal error")
