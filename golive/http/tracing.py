"""A server span for every HTTP request, child of the caller's ``traceparent`` if it sent one.

Installed only when tracing is on. Outermost, so that refusals made by other middlewares
(CORS preflights, rate limiting, JSON errors) are traced too. The span is current while the
handler runs: the carriers the handler's asks write into their messages name it as parent,
and its log lines carry its ids.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import SpanKind, Status, StatusCode

from golive.http.errors import Handler
from golive.tracing import Tracing

SERVER_ERROR = 500


def route_of(request: web.Request) -> str | None:
    """The matched route's template (``/api/whip/publish/{room}``): low-cardinality, unlike
    the path. None when nothing matched."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def tracing_middleware(tracing: Tracing) -> Middleware:
    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        name = request.method if route is None else f"{request.method} {route}"
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
            "network.protocol.version": f"{request.version.major}.{request.version.minor}",
        }
        if route is not None:
            attributes["http.route"] = route
        if request.remote is not None:
            attributes["client.address"] = request.remote
        if "User-Agent" in request.headers:
            attributes["user_agent.original"] = request.headers["User-Agent"]
        with tracing.tracer.start_as_current_span(
            name,
            context=tracing.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a raised response (a redirect): not an error
                span.set_attribute("http.response.status_code", exc.status)
                raise
            except BaseException as exc:  # a crash, or the client went away (cancelled)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= SERVER_ERROR:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return trace_request
