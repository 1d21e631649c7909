"""golive's HTTP layer (aiohttp): routes, JSON errors, CORS, auth. It only talks to actors."""

from golive.http.app import create_app

__all__ = ["create_app"]
