"""Rate limiting: a token bucket per client IP on POST, PATCH and DELETE (contract section 7).

To be written.
"""

from __future__ import annotations

from aiohttp import web

from golive.config import Config
from golive.http.errors import Handler


def rate_limit_middleware(config: Config) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    return middleware
