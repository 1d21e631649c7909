"""golive's HTTP API as an OpenAPI document, served at ``GET /api/openapi.json``.

To be written.
"""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register ``GET /api/openapi.json``."""
