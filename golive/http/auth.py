"""Who may do what (contract section 7). Every secret comparison is constant-time.

Credentials come from ``Authorization: Bearer <t>`` or ``X-Auth-Token: <t>``. For a room:

1. a room token from ``ROOM_TOKENS`` admits that room only;
2. ``AUTH_TOKEN`` admits every room;
3. a JWT (HS256, ``JWT_SECRET``, through PyJWT) admits the room of its ``room`` claim, or every
   room without one (a ``room`` claim that is not a string, ``null`` included, admits none);
   ``exp`` and ``nbf`` are enforced when present, ``aud`` must match ``JWT_AUDIENCE`` when
   that is set; ``role=admin`` or ``admin=true`` grants admin (and every room);
4. with none of these configured, publishing and playing are open.

Admin routes (admin close, recordings) take ``ADMIN_TOKEN`` or an admin JWT, and are open only
when no credential of any kind is configured.

A session's resource (``PATCH``/``DELETE``/``GET`` on its ``Location``) belongs to whoever
created it: the request must carry the same identity (the same token, or a JWT with the same
``sub``) or an admin credential. With client auth off, the unguessable session URL is the
capability, as in RFC 9725.

Nothing here logs or returns a credential; refusals say only "unauthorized" / "forbidden".
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from dataclasses import dataclass
from typing import Any, Final

import jwt
from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning

from golive.config import Config
from golive.http.errors import json_error

CHALLENGE: Final = {"WWW-Authenticate": "Bearer"}
_JWT_ALGORITHMS: Final = ["HS256"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is, once its credential checked out."""

    identity: str  # a digest naming the credential's holder ("" when auth is off)
    admin: bool = False


OPEN: Final = Principal(identity="")


def presented_token(request: web.Request) -> str | None:
    """The credential of a request: ``X-Auth-Token``, else ``Authorization: Bearer``."""
    token = request.headers.get("X-Auth-Token", "").strip()
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    return token or None


def client_auth_configured(config: Config) -> bool:
    """Publishing and playing need credentials (what ``/api/bootstrap`` calls authEnabled)."""
    return bool(config.auth_token or config.room_tokens or config.jwt_secret)


def auth_configured(config: Config) -> bool:
    """Any credential at all is configured; with none, everything is open."""
    return client_auth_configured(config) or bool(config.admin_token)


def same_secret(presented: str, expected: str) -> bool:
    # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: encode them back
    # the same way rather than fail (such a token simply matches nothing).
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _digest(kind: str, value: str) -> str:
    # (a JWT's sub may hold lone surrogates: JSON allows "\ud800")
    return hashlib.sha256(f"{kind}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()


def _jwt_claims(config: Config, token: str) -> dict[str, Any] | None:
    """The claims of a valid JWT, or None (bad signature, expired, not yet valid, wrong
    audience, not a JWT at all)."""
    if not config.jwt_secret or not token.isascii() or token.count(".") != 2:
        return None
    try:
        with warnings.catch_warnings():
            # A short JWT_SECRET is the operator's choice (Go-Live accepts it too): PyJWT's
            # warning would repeat on every request.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                config.jwt_secret,
                algorithms=_JWT_ALGORITHMS,
                audience=config.jwt_audience or None,
                options={"verify_aud": bool(config.jwt_audience)},
            )
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _jwt_admin(claims: dict[str, Any]) -> bool:
    return claims.get("role") == "admin" or claims.get("admin") is True


def _jwt_principal(claims: dict[str, Any], token: str) -> Principal:
    subject = claims.get("sub")
    identity = _digest("sub", subject) if isinstance(subject, str) and subject else None
    return Principal(identity or _digest("token", token), admin=_jwt_admin(claims))


def _plain_token_admits(config: Config, token: str, room: str) -> bool:
    """A room token of ``room``, or ``AUTH_TOKEN``."""
    # Compared against every room token (not only this room's), so timing says nothing.
    room_match = False
    for name, expected in config.room_tokens.items():
        if same_secret(token, expected) and name == room:
            room_match = True
    return room_match or bool(config.auth_token and same_secret(token, config.auth_token))


#: Another worker or node of the cluster: ``Golive-Via: node/worker`` and, when
#: ``CLUSTER_SECRET`` is set, ``Golive-Cluster: <CLUSTER_SECRET>``.
VIA: Final = "Golive-Via"
CLUSTER_CREDENTIAL: Final = "Golive-Cluster"
CLUSTER: Final = Principal(identity=_digest("cluster", "golive"))


def from_cluster(config: Config, request: web.Request) -> bool:
    """The request comes from another worker or node of this cluster (a forwarded request or
    a relay's pull): it carries ``Golive-Via`` and, when ``CLUSTER_SECRET`` is set, the secret.
    (Without a secret, only possible where no credential is configured, the marker is
    believed: everything is open there anyway.)"""
    if not config.clustered or VIA not in request.headers:
        return False
    if not config.cluster_secret:
        return True
    return same_secret(request.headers.get(CLUSTER_CREDENTIAL, ""), config.cluster_secret)


def room_principal(  # noqa: PLR0911  a credential of each kind
    config: Config, request: web.Request, room: str
) -> Principal | None:
    """Who may publish or play ``room`` with this request's credential; None if nobody. A
    relay's pull presents the cluster's secret instead of a client's credential."""
    if not client_auth_configured(config):
        return OPEN
    if presented_token(request) is None and from_cluster(config, request):
        return CLUSTER
    token = presented_token(request)
    if token is None:
        return None
    if _plain_token_admits(config, token, room):
        return Principal(_digest("token", token))
    claims = _jwt_claims(config, token)
    if claims is None:
        return None
    if not _jwt_admits(claims, room):
        return None
    return _jwt_principal(claims, token)


def _jwt_admits(claims: dict[str, Any], room: str) -> bool:
    """An admin JWT admits every room; any other one the room of its ``room`` claim, or every
    room when it has none. A ``room`` claim that is not a string (``null``, a number, a list)
    admits no room: only an absent claim means "every room"."""
    if _jwt_admin(claims) or "room" not in claims:
        return True
    claimed = claims["room"]
    return isinstance(claimed, str) and claimed == room


def admin_principal(config: Config, request: web.Request) -> Principal | None:
    """An admin, or None: ``ADMIN_TOKEN`` or an admin JWT (open when nothing is configured)."""
    if not auth_configured(config):
        return Principal("", admin=True)
    token = presented_token(request)
    if token is None:
        return None
    if config.admin_token and same_secret(token, config.admin_token):
        return Principal(_digest("token", token), admin=True)
    claims = _jwt_claims(config, token)
    if claims is not None and _jwt_admin(claims):
        return _jwt_principal(claims, token)
    return None


def admin_allowed(config: Config, request: web.Request) -> bool:
    return admin_principal(config, request) is not None


def owns(config: Config, request: web.Request, room: str, owner: str) -> Principal | None:
    """The principal if this request may act on a session of ``room`` created by ``owner``
    (the creator's :attr:`Principal.identity`); None if it carries no valid credential.
    Raises :class:`NotOwner` when the credential is valid but someone else's."""
    if not client_auth_configured(config):
        return OPEN
    principal = room_principal(config, request, room) or admin_principal(config, request)
    if principal is None:
        return None
    if principal.admin or hmac.compare_digest(principal.identity, owner):
        return principal
    raise NotOwnerError


class NotOwnerError(Exception):
    """A valid credential, but not the session's owner's."""


def unauthorized() -> web.Response:
    return json_error(401, "unauthorized", CHALLENGE)


def forbidden() -> web.Response:
    return json_error(403, "forbidden: not this session's owner")
