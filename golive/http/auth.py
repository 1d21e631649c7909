"""Who may do what (contract section 7). Every comparison is constant-time.

So far: the admin check (``ADMIN_TOKEN``), and "open when nothing is configured". Room tokens,
the global token and JWTs for publish/play arrive with the security issue.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from golive.config import Config


def presented_token(request: web.Request) -> str | None:
    """The credential of a request: ``X-Auth-Token``, else ``Authorization: Bearer``."""
    token = request.headers.get("X-Auth-Token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def client_auth_configured(config: Config) -> bool:
    """Publishing and playing need credentials (what ``/api/bootstrap`` calls authEnabled)."""
    return bool(config.auth_token or config.room_tokens or config.jwt_secret)


def auth_configured(config: Config) -> bool:
    """Any credential at all is configured; with none, everything is open."""
    return client_auth_configured(config) or bool(config.admin_token)


def same_secret(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def admin_allowed(config: Config, request: web.Request) -> bool:
    if not auth_configured(config):
        return True
    token = presented_token(request)
    return bool(config.admin_token) and token is not None and same_secret(token, config.admin_token)
