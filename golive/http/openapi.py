"""golive's HTTP API as an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

:data:`OPENAPI` describes every route golive serves: its parameters, request bodies, every
status code the contract (and the code) can answer with, the JSON error schema and the
response headers. It is built once, at import, and served as it is: public, no credential.
``tests/test_openapi.py`` checks it against the app's router both ways and validates it;
``tests/media/test_fuzz.py`` fuzzes the live server from it.

Credentials (contract section 7) are the security schemes ``bearer`` (``Authorization:
Bearer <token>``) and ``token`` (``X-Auth-Token: <token>``). An operation that takes them
also lists ``{}``: with no credential configured it is open. CORS (every response carries
the CORS headers; an ``OPTIONS`` preflight on any route answers ``204``) is described in
``info.description`` rather than repeated on every operation.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from golive import __version__
from golive.media.limits import (
    MAX_CANDIDATES_PER_SESSION,
    MAX_CODEC_LINES_PER_SECTION,
    MAX_FORMATS_PER_SECTION,
    MAX_MEDIA_SECTIONS,
    MAX_OFFER_LINES,
    MAX_SSRC_LINES,
)

__all__ = ["OPENAPI", "PATH", "add_routes"]

PATH: Final = "/api/openapi.json"

_ROOM_PATTERN: Final = "^[A-Za-z0-9_-]{1,64}$"
_SESSION_PATTERN: Final = "^[0-9a-f]{32}$"
_WEB_FILE_PATTERN: Final = "^[a-z0-9-]{1,64}\\.(html|js|css|svg)$"
_RECORD_PATTERN: Final = "^[A-Za-z0-9_-]{1,64}_[A-Za-z0-9_-]{1,64}_[0-9]{1,12}\\.(ivf|ogg|mkv)$"
_MAX_BODY: Final = 1 << 20
_SDP: Final = "application/sdp"
_TRICKLE: Final = "application/trickle-ice-sdpfrag"
_JSON: Final = "application/json"

# Who may call an operation: a credential in either header, or none when auth is off.
_CREDENTIALS: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"token": []}, {}]
_PUBLIC: Final[list[dict[str, list[str]]]] = []


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error(description: str, *headers: str) -> dict[str, Any]:
    """A JSON ``{"error": ...}`` response, with these component headers."""
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": _ref("schemas", "Error")}},
    }
    if headers:
        response["headers"] = {name: _ref("headers", name) for name in headers}
    return response


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _whip_whep(kind: str, base: str, tag: str) -> dict[str, Any]:
    """The paths of the WHIP (``kind="whip"``) or WHEP (``"whep"``) endpoint and resource."""
    whep = kind == "whep"
    post_responses: dict[str, Any] = {
        "201": {
            "description": (
                "Session created: the SDP answer ("
                + ("`sendonly`" if whep else "`recvonly`")
                + ", CRLF line endings, starts `v=0`)."
            ),
            "headers": {
                "Location": _ref("headers", "Location"),
                "ETag": _ref("headers", "ETag"),
                "Link": _ref("headers", "Link"),
            },
            "content": {_SDP: {"schema": _ref("schemas", "Sdp")}},
        },
        "400": _error('`{"error": "invalid room name"}` or `{"error": "invalid SDP"}`.'),
        "401": _ref("responses", "Unauthorized"),
        "408": _ref("responses", "RequestTimeout"),
        "413": _error(
            "The body is over 1 MiB, or the offer exceeds a cap (`golive.media.limits`): "
            f"more than {MAX_OFFER_LINES} lines, {MAX_MEDIA_SECTIONS} m-lines, "
            f"{MAX_FORMATS_PER_SECTION} payload types on an m-line, "
            f"{MAX_CODEC_LINES_PER_SECTION} rtpmap/fmtp/rtcp-fb lines in a media section, "
            f"{MAX_SSRC_LINES} ssrc lines or {MAX_CANDIDATES_PER_SESSION} candidates: "
            '`{"error": "offer too large: <the cap exceeded>"}`; nothing is left behind.'
        ),
        "415": _ref("responses", "UnsupportedMediaType"),
        "429": _ref("responses", "TooManyRequests"),
        "503": _ref("responses", "ServiceUnavailable"),
    }
    if whep:
        post_responses["403"] = _error('`{"error": "subscriber limit reached"}`.')
        post_responses["404"] = _error('`{"error": "no active publisher in room"}`.')
    else:
        post_responses["409"] = _error('`{"error": "publisher already exists in this room"}`.')
    what = "play" if whep else "publish"
    resource_params = [_ref("parameters", "room"), _ref("parameters", "session")]
    return {
        f"{base}/{{room}}": {
            "parameters": [_ref("parameters", "room")],
            "post": {
                "tags": [tag],
                "operationId": f"{kind}Post",
                "summary": (
                    "WHEP: play a room (SDP offer in, `sendonly` answer out)."
                    if whep
                    else "WHIP (RFC 9725): publish to a room (SDP offer in, answer out)."
                ),
                "description": (
                    "A failed offer leaves nothing behind. "
                    + (
                        "Errors are never 400/406 for reasons other than the room name or "
                        "the SDP (WHEP players read those as a mode switch)."
                        if whep
                        else "The first publish creates the room."
                    )
                ),
                "security": _CREDENTIALS,
                "requestBody": _ref("requestBodies", "SdpOffer"),
                "responses": dict(sorted(post_responses.items())),
            },
            "options": {
                "tags": [tag],
                "operationId": f"{kind}Options",
                "summary": f"What the {what} endpoint accepts.",
                "description": (
                    "`204` with `Accept-Post: application/sdp`, whoever asks; unless it is a "
                    "CORS preflight (`Access-Control-Request-Method`), also one `Link` per "
                    "STUN server and, when the request's credential admits the room (or no "
                    "credential is configured), one per TURN server with its credentials. "
                    "Without such a credential: STUN links only."
                ),
                "security": _PUBLIC,
                "parameters": [_ref("parameters", "AccessControlRequestMethod")],
                "responses": {
                    "204": {
                        "description": "What the endpoint accepts.",
                        "headers": {
                            "Accept-Post": _ref("headers", "Accept-Post"),
                            "Link": _ref("headers", "Link"),
                        },
                    },
                },
            },
        },
        f"{base}/{{room}}/{{session}}": {
            "parameters": resource_params,
            "patch": {
                "tags": [tag],
                "operationId": f"{kind}Trickle",
                "summary": "Trickle ICE: add the client's candidates (RFC 8840 fragment).",
                "description": (
                    "Unresolvable candidates are skipped silently. A fragment with a new "
                    "`a=ice-ufrag` is an ICE restart: `422`, and the session stays up."
                ),
                "security": _CREDENTIALS,
                "parameters": [_ref("parameters", "IfMatch")],
                "requestBody": _ref("requestBodies", "TrickleFragment"),
                "responses": {
                    "204": {"description": "Candidates added (no body, no ETag)."},
                    "401": _ref("responses", "Unauthorized"),
                    "403": _ref("responses", "NotOwner"),
                    "404": _ref("responses", "SessionNotFound"),
                    "408": _ref("responses", "RequestTimeout"),
                    "412": _error("`If-Match` does not match the session's `ETag`."),
                    "413": _error(
                        "The body is over 1 MiB, or its candidates would take the session "
                        f"past {MAX_CANDIDATES_PER_SESSION} (offer and trickle together): "
                        '`{"error": "too many candidates: ..."}`; none of them is added.'
                    ),
                    "415": _ref("responses", "UnsupportedMediaType"),
                    "422": _error('An ICE restart: `{"error": "ICE restarts are not supported"}`.'),
                    "428": _error('`{"error": "If-Match is required"}`.'),
                    "429": _ref("responses", "TooManyRequests"),
                },
            },
            "delete": {
                "tags": [tag],
                "operationId": f"{kind}Delete",
                "summary": (
                    "End the viewer's session."
                    if whep
                    else "End the publisher's session, and with it the room."
                ),
                "description": "Any `If-Match` is ignored.",
                "security": _CREDENTIALS,
                "responses": {
                    "200": {"description": "Session ended (no body)."},
                    "401": _ref("responses", "Unauthorized"),
                    "403": _ref("responses", "NotOwner"),
                    "404": _ref("responses", "SessionNotFound"),
                    "429": _ref("responses", "TooManyRequests"),
                    "503": _ref("responses", "ServiceUnavailable"),
                },
            },
            "get": {
                "tags": [tag],
                "operationId": f"{kind}Get",
                "summary": "Whether the session exists.",
                "security": _CREDENTIALS,
                "responses": {
                    "204": {"description": "The session exists (no body)."},
                    "401": _ref("responses", "Unauthorized"),
                    "403": _ref("responses", "NotOwner"),
                    "404": _ref("responses", "SessionNotFound"),
                },
            },
            "options": {
                "tags": [tag],
                "operationId": f"{kind}ResourceOptions",
                "summary": "What the session resource accepts.",
                "security": _PUBLIC,
                "responses": {
                    "204": {
                        "description": "`Accept-Post: application/sdp`.",
                        "headers": {"Accept-Post": _ref("headers", "Accept-Post")},
                    },
                },
            },
        },
    }


def _record_responses(*, head: bool) -> dict[str, Any]:
    """``GET``/``HEAD /records/{name}``: the file (aiohttp's FileResponse) or a JSON error."""
    media = {
        kind: {"schema": {"type": "string", "contentMediaType": kind}}
        for kind in ("video/x-ivf", "audio/ogg", "video/x-matroska")
    }
    body: dict[str, Any] = {} if head else {"content": media}
    file_headers = {
        "Content-Length": _ref("headers", "Content-Length"),
        "Accept-Ranges": _ref("headers", "Accept-Ranges"),
        "ETag": _ref("headers", "FileETag"),
        "Last-Modified": _ref("headers", "Last-Modified"),
        "Content-Disposition": _ref("headers", "Content-Disposition"),
        "Cache-Control": _ref("headers", "Cache-Control"),
    }
    return {
        "200": {
            "description": "The recording" + (" (headers only)." if head else "."),
            "headers": file_headers,
            **body,
        },
        "206": {
            "description": "The requested range of the recording.",
            "headers": {**file_headers, "Content-Range": _ref("headers", "Content-Range")},
            **body,
        },
        "304": {"description": "Not modified (`If-None-Match` / `If-Modified-Since`)."},
        "401": _ref("responses", "AdminUnauthorized"),
        "404": _error(
            '`{"error": "recording is disabled"}` or `{"error": "recording not found"}` '
            "(a name that is not a recording's is never looked up on disk)."
        ),
        "412": {"description": "`If-Match` / `If-Unmodified-Since` failed (empty body)."},
        "416": {
            "description": "Range not satisfiable (empty body).",
            "headers": {"Content-Range": _ref("headers", "Content-Range")},
        },
    }


def _record_operation(method: str) -> dict[str, Any]:
    head = method == "head"
    return {
        "tags": ["records"],
        "operationId": "recordHead" if head else "recordGet",
        "summary": ("A recording's headers." if head else "Download a recording (range requests)."),
        "description": (
            "Admin only. `404` when recording is off (checked before the credential). "
            "Supports `Range`, `If-Range`, `If-None-Match`, `If-Modified-Since`, `If-Match` "
            "and `If-Unmodified-Since`; never serves a precompressed sibling."
        ),
        "security": _CREDENTIALS,
        "parameters": [
            _ref("parameters", "Range"),
            _ref("parameters", "IfRange"),
            _ref("parameters", "IfNoneMatch"),
            _ref("parameters", "IfModifiedSince"),
        ],
        "responses": _record_responses(head=head),
    }


def _to_index(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "tags": ["web"],
        "operationId": operation_id,
        "summary": summary,
        "security": _PUBLIC,
        "responses": {
            "302": {
                "description": "Redirect to the rooms page.",
                "headers": {
                    "Location": {
                        "description": "`/web/index.html`.",
                        "schema": {"type": "string", "const": "/web/index.html"},
                    },
                },
            },
        },
    }


_SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "Every error from golive's own routes.",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "Sdp": {
        "type": "string",
        "description": "An SDP session description (RFC 8866).",
        "contentMediaType": _SDP,
        "examples": ["v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n..."],
    },
    "TrickleFragment": {
        "type": "string",
        "description": (
            "An RFC 8840 SDP fragment: optional `a=ice-ufrag`/`a=ice-pwd`, optional `m=` and "
            "`a=mid:` lines, any number of `a=candidate:` lines, optional `a=end-of-candidates`."
        ),
        "contentMediaType": _TRICKLE,
        "examples": [
            (
                "a=ice-ufrag:EsAw\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 "
                "192.0.2.1 50000 typ host\r\na=end-of-candidates\r\n"
            )
        ],
    },
    "Track": {
        "type": "object",
        "required": ["id", "kind", "codec"],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["audio", "video"]},
            "codec": {"type": "string", "examples": ["video/VP8", "audio/opus"]},
        },
    },
    "Room": {
        "type": "object",
        "required": [
            "name",
            "hasPublisher",
            "tracks",
            "subscribers",
            "waiting",
            "relay",
            "trackList",
        ],
        "properties": {
            "name": {"type": "string", "pattern": _ROOM_PATTERN},
            "hasPublisher": {"type": "boolean"},
            "tracks": {"type": "integer", "minimum": 0, "description": "How many tracks."},
            "subscribers": {"type": "integer", "minimum": 0},
            "waiting": {
                "type": "boolean",
                "description": "The publisher vanished without a DELETE: the viewers stay "
                "connected until a new publisher takes the room over, for at most "
                "PUBLISHER_RECONNECT_SECONDS.",
            },
            "relay": {
                "type": "boolean",
                "description": "The room is relayed here: pulled from its owner elsewhere in "
                "the cluster for viewers on this worker.",
            },
            "trackList": {"type": "array", "items": _ref("schemas", "Track")},
            "owner": {
                "type": "object",
                "description": "In a cluster (REDIS_URL): the node and worker that own the room "
                "(its publisher's). `subscribers` then counts every node's viewers.",
                "required": ["node", "worker"],
                "properties": {
                    "node": {"type": "string", "description": "`host:port` of its NODE_URL."},
                    "worker": {"type": "integer", "minimum": 0},
                },
            },
            "viewersByNode": {
                "type": "object",
                "description": "In a cluster: the room's viewers on each node (`host:port`).",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
        },
    },
    "IceServer": {
        "type": "object",
        "required": ["urls"],
        "properties": {
            "urls": {"type": "array", "items": {"type": "string"}},
            "username": {"type": "string"},
        },
    },
    "Bootstrap": {
        "type": "object",
        "description": "What a browser page needs to start; never a secret.",
        "required": ["authEnabled", "recordEnabled", "iceServers", "features"],
        "properties": {
            "authEnabled": {"type": "boolean"},
            "recordEnabled": {"type": "boolean"},
            "iceServers": {"type": "array", "items": _ref("schemas", "IceServer")},
            "features": {
                "type": "object",
                "additionalProperties": {"type": "boolean"},
                "examples": [{"rooms": True, "records": False, "adminClose": True}],
            },
        },
    },
    "RoomClosed": {
        "type": "object",
        "required": ["room", "closed"],
        "properties": {
            "room": {"type": "string", "pattern": _ROOM_PATTERN},
            "closed": {"const": True},
        },
    },
    "Recording": {
        "type": "object",
        "required": ["name", "size", "modTime", "url"],
        "properties": {
            "name": {"type": "string", "pattern": _RECORD_PATTERN},
            "size": {"type": "integer", "minimum": 0},
            "modTime": {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339, UTC, whole seconds: `2026-11-24T06:03:00Z`.",
            },
            "url": {"type": "string", "description": "`/records/{name}`."},
            "node": {
                "type": "string",
                "description": "In a cluster: the node (`host:port`) whose disk holds it; any "
                "node serves `url`.",
            },
        },
    },
}

_HEADERS: Final[dict[str, Any]] = {
    "Location": {
        "description": "The session resource: `{endpoint}/{room}/{session}` (relative URL).",
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "The session's entity tag, for `If-Match` on trickle `PATCH`.",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": (
            'One `Link: <uri>; rel="ice-server"` per configured STUN/TURN URL (RFC 9725 '
            "section 4.6); TURN ones carry `username`, `credential` and `credential-type`, "
            "and are sent only to a request whose credential admits the room. With "
            "`TURN_SECRET` the pair is a TURN REST credential made for this answer: "
            "`username` is `<unix expiry>:<room>`, `credential` is "
            "base64(HMAC-SHA1(`TURN_SECRET`, `username`))."
        ),
        "schema": {"type": "string"},
    },
    "Accept-Post": {
        "description": "`application/sdp`.",
        "schema": {"type": "string", "const": _SDP},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": "`Bearer`.",
        "schema": {"type": "string", "const": "Bearer"},
    },
    "Content-Length": {"schema": {"type": "integer", "minimum": 0}},
    "Content-Range": {
        "description": "`bytes START-END/SIZE`, or `bytes */SIZE` on `416`.",
        "schema": {"type": "string"},
    },
    "Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}},
    "FileETag": {"description": "The file's entity tag.", "schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
    "Content-Disposition": {
        "description": '`inline; filename="NAME"`.',
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "`private`.", "schema": {"type": "string"}},
}

_PARAMETERS: Final[dict[str, Any]] = {
    "room": {
        "name": "room",
        "in": "path",
        "required": True,
        "description": "The room's name; any other name is `400 invalid room name`.",
        "schema": {"type": "string", "pattern": _ROOM_PATTERN},
    },
    "session": {
        "name": "session",
        "in": "path",
        "required": True,
        "description": "The session id from `Location`: 128 random bits as 32 hex digits.",
        "schema": {"type": "string", "pattern": _SESSION_PATTERN},
    },
    "recordName": {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "`{room}_{trackID}_{unix_ts}.{ivf|ogg|mkv}`; any other name is `404`.",
        "schema": {"type": "string", "pattern": _RECORD_PATTERN},
    },
    "webFile": {
        "name": "file",
        "in": "path",
        "required": True,
        "description": "A file of the pages (`index.html`, `player.js`...); any other: `404`.",
        "schema": {"type": "string", "pattern": _WEB_FILE_PATTERN},
    },
    "IfMatch": {
        "name": "If-Match",
        "in": "header",
        "required": True,
        "description": "The session's `ETag`, or `*`. Missing: `428`; not matching: `412`.",
        "schema": {"type": "string"},
    },
    "AccessControlRequestMethod": {
        "name": "Access-Control-Request-Method",
        "in": "header",
        "required": False,
        "description": "Present on a CORS preflight, which gets no `Link` headers.",
        "schema": {"type": "string"},
    },
    "Range": {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "One byte range, e.g. `bytes=0-1023` or `bytes=-512`.",
        "schema": {"type": "string"},
    },
    "IfRange": {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    },
    "IfModifiedSince": {
        "name": "If-Modified-Since",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
    },
}

_RESPONSES: Final[dict[str, Any]] = {
    "Unauthorized": _error(
        'Missing or bad credential: `{"error": "unauthorized"}`.', "WWW-Authenticate"
    ),
    "AdminUnauthorized": _error(
        'No admin credential (`ADMIN_TOKEN` or an admin JWT): `{"error": "unauthorized"}`.',
        "WWW-Authenticate",
    ),
    "NotOwner": _error(
        "A valid credential, but not the one that created the session (nor an admin's)."
    ),
    "SessionNotFound": _error(
        '`{"error": "session not found"}`: no such session in this room and role.'
    ),
    "RequestTimeout": _error(
        "The body did not arrive within `HTTP_BODY_TIMEOUT_SECONDS` of the headers: "
        '`{"error": "request body not received in time"}`; the connection is closed.'
    ),
    "PayloadTooLarge": _error(f"The body is over 1 MiB ({_MAX_BODY} bytes)."),
    "UnsupportedMediaType": _error("Wrong `Content-Type`."),
    "TooManyRequests": _error(
        'Rate limited (`RATE_LIMIT_RPS` per client IP): `{"error": "too many requests"}`.',
        "Retry-After",
    ),
    "ServiceUnavailable": _error(
        "Shutting down, overloaded (`MAX_SESSIONS`, `MAX_PENDING_NEGOTIATIONS`) or an actor "
        "did not answer in time.",
        "Retry-After",
    ),
}

_REQUEST_BODIES: Final[dict[str, Any]] = {
    "SdpOffer": {
        "required": True,
        "description": (
            f"An SDP offer with at least one audio or video section, at most 1 MiB "
            f"({_MAX_BODY} bytes: more is `413`). Any other `Content-Type` is `415`."
        ),
        "content": {_SDP: {"schema": {**_ref("schemas", "Sdp"), "maxLength": _MAX_BODY}}},
    },
    "TrickleFragment": {
        "required": True,
        "description": f"At most 1 MiB ({_MAX_BODY} bytes). Any other `Content-Type` is `415`.",
        "content": {
            _TRICKLE: {"schema": {**_ref("schemas", "TrickleFragment"), "maxLength": _MAX_BODY}}
        },
    },
}

_DESCRIPTION: Final = """\
golive is a WebRTC SFU: one publisher per room pushes media over WHIP (RFC 9725), any number
of viewers pull it over WHEP, and RTP is forwarded unchanged.

Errors from golive's own routes (unknown routes and wrong methods included) are JSON:
`{"error": "..."}`. Room names match `^[A-Za-z0-9_-]{1,64}$`.

**Auth.** A credential comes in `Authorization: Bearer <token>` or `X-Auth-Token: <token>`:
a room token (`ROOM_TOKENS`), `AUTH_TOKEN`, or an HS256 JWT (`JWT_SECRET`). With none
configured, publishing and playing are open. Admin routes take `ADMIN_TOKEN` or an admin JWT,
and are open only when no credential at all is configured. A session's resource belongs to
whoever created it (or an admin): someone else's credential gets `403`.

**Rate limiting.** With `RATE_LIMIT_RPS`, every `POST`, `PATCH` and `DELETE` takes a token
from its client IP's bucket, and `GET /api/rooms` one from a second bucket of that IP (same
rate and burst): `429` with `Retry-After` when there is none. Other reads are never limited.

**CORS.** Every response carries `Access-Control-Allow-Origin` (`ALLOWED_ORIGIN`), allows
`GET, POST, PATCH, DELETE, OPTIONS` and the headers `Content-Type, Authorization,
X-Auth-Token, If-Match`, and exposes `Location, ETag, Link`; with a specific
`ALLOWED_ORIGIN`, every response also says `Vary: Origin`. An `OPTIONS` preflight on any
route answers `204`.

**Connections.** A request that is not valid HTTP (request line, headers, a line or header
over 8190 bytes) is answered `400` with `{"error": ...}` on any path, and the connection
closed. A connection whose request line and headers are not complete within
`HTTP_HEADER_TIMEOUT_SECONDS` of its opening (or of the request's first byte), or that stays
idle `HTTP_KEEPALIVE_TIMEOUT_SECONDS` after a response, is closed without an answer; a body
not complete within `HTTP_BODY_TIMEOUT_SECONDS` gets `408`. Beyond `HTTP_MAX_CONNECTIONS`
open connections, a new one is closed as soon as it is accepted.
"""

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "golive",
        "version": __version__,
        "summary": "WebRTC SFU for live streaming: WHIP in, WHEP out.",
        "description": _DESCRIPTION,
        "license": {"name": "MIT", "identifier": "MIT"},
    },
    "servers": [{"url": "/"}],
    "tags": [
        {"name": "health", "description": "Liveness and metrics."},
        {"name": "rooms", "description": "Rooms and what a page needs to start."},
        {"name": "whip", "description": "Publishing (RFC 9725)."},
        {"name": "whep", "description": "Playing."},
        {"name": "admin", "description": "Admin actions."},
        {"name": "records", "description": "Recordings on disk."},
        {"name": "meta", "description": "This document."},
        {"name": "web", "description": "The pages: rooms, publish, watch, recordings."},
    ],
    "paths": {
        "/healthz": {
            "get": {
                "tags": ["health"],
                "operationId": "healthz",
                "summary": "Liveness.",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "`ok`.",
                        "content": {"text/plain": {"schema": {"type": "string", "const": "ok"}}},
                    },
                },
            },
        },
        "/metrics": {
            "get": {
                "tags": ["health"],
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "description": (
                    "`live_rooms`, `live_subscribers{room}`, `live_rtp_bytes_total{room}`, "
                    "`live_rtp_packets_total{room}` (as Go-Live), plus `golive_*`."
                ),
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            },
        },
        "/api/rooms": {
            "get": {
                "tags": ["rooms"],
                "operationId": "listRooms",
                "summary": "The live rooms.",
                "description": (
                    "Rate limited per client IP (`RATE_LIMIT_RPS`) in a bucket of its own, "
                    "apart from `POST`, `PATCH` and `DELETE`."
                ),
                "security": _PUBLIC,
                "responses": {
                    "200": _json(
                        "Every room (`tracks` is a count, `trackList` the tracks).",
                        {"type": "array", "items": _ref("schemas", "Room")},
                    ),
                    "429": _ref("responses", "TooManyRequests"),
                    "503": _ref("responses", "ServiceUnavailable"),
                },
            },
        },
        "/api/bootstrap": {
            "get": {
                "tags": ["rooms"],
                "operationId": "bootstrap",
                "summary": "What a browser page needs to start (never a secret).",
                "security": _PUBLIC,
                "responses": {"200": _json("The settings.", _ref("schemas", "Bootstrap"))},
            },
        },
        PATH: {
            "get": {
                "tags": ["meta"],
                "operationId": "openapi",
                "summary": "This OpenAPI document.",
                "security": _PUBLIC,
                "responses": {
                    "200": _json("The document.", {"type": "object"}),
                },
            },
        },
        "/api/admin/rooms/{room}/close": {
            "parameters": [_ref("parameters", "room")],
            "post": {
                "tags": ["admin"],
                "operationId": "adminCloseRoom",
                "summary": "End a room and every session in it.",
                "security": _CREDENTIALS,
                "responses": {
                    "200": _json("The room is closed.", _ref("schemas", "RoomClosed")),
                    "400": _error('`{"error": "invalid room name"}`.'),
                    "401": _ref("responses", "AdminUnauthorized"),
                    "404": _error('`{"error": "room not found"}`.'),
                    "429": _ref("responses", "TooManyRequests"),
                    "503": _ref("responses", "ServiceUnavailable"),
                },
            },
        },
        **_whip_whep("whip", "/api/whip/publish", "whip"),
        **_whip_whep("whep", "/api/whep/play", "whep"),
        "/api/records": {
            "get": {
                "tags": ["records"],
                "operationId": "listRecords",
                "summary": "The recordings, newest first.",
                "description": "Admin only. `404` when recording is off.",
                "security": _CREDENTIALS,
                "responses": {
                    "200": _json(
                        "Every recording.", {"type": "array", "items": _ref("schemas", "Recording")}
                    ),
                    "401": _ref("responses", "AdminUnauthorized"),
                    "404": _error('`{"error": "recording is disabled"}`.'),
                },
            },
        },
        "/records/{name}": {
            "parameters": [_ref("parameters", "recordName")],
            "get": _record_operation("get"),
            "head": _record_operation("head"),
        },
        "/": {"get": _to_index("webRoot", "The server's root: its rooms page.")},
        "/web": {"get": _to_index("webFolder", "The pages' folder: its rooms page.")},
        "/web/": {"get": _to_index("webDirectory", "The pages' folder: its rooms page.")},
        "/web/{file}": {
            "parameters": [_ref("parameters", "webFile")],
            "get": {
                "tags": ["web"],
                "operationId": "webFile",
                "summary": "One file of the pages (HTML, ES module, stylesheet, icon).",
                "description": (
                    "The pages ship inside the package and are served from memory: "
                    "`index.html` (live rooms), `publisher.html` (publish the camera over "
                    "WHIP), `player.html` (watch over WHEP), `records.html` (recordings, "
                    "admin), their modules and stylesheet. Public: the credentials typed into "
                    "a page go only into its API calls. Pages carry a "
                    "`Content-Security-Policy` that runs only the server's own scripts."
                ),
                "security": _PUBLIC,
                "parameters": [_ref("parameters", "IfNoneMatch")],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "headers": {
                            "ETag": _ref("headers", "FileETag"),
                            "Cache-Control": {
                                "description": "`no-cache`: revalidated on every load.",
                                "schema": {"type": "string", "const": "no-cache"},
                            },
                            "Content-Security-Policy": {
                                "description": "On pages only.",
                                "schema": {"type": "string"},
                            },
                        },
                        "content": {
                            kind: {"schema": {"type": "string"}}
                            for kind in (
                                "text/html",
                                "text/javascript",
                                "text/css",
                                "image/svg+xml",
                            )
                        },
                    },
                    "304": {"description": "Not modified (`If-None-Match`)."},
                    "404": _error('`{"error": "not found"}`: no such file.'),
                },
            },
        },
    },
    "components": {
        "schemas": _SCHEMAS,
        "headers": _HEADERS,
        "parameters": _PARAMETERS,
        "responses": _RESPONSES,
        "requestBodies": _REQUEST_BODIES,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "`Authorization: Bearer <token>`: a room token, `AUTH_TOKEN`, `ADMIN_TOKEN` "
                    "or an HS256 JWT."
                ),
            },
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Auth-Token",
                "description": "The same credentials in `X-Auth-Token` (tried first).",
            },
        },
    },
}

_BODY: Final = json.dumps(OPENAPI, indent=1).encode()


def add_routes(app: web.Application) -> None:
    """Register ``GET /api/openapi.json``."""
    app.router.add_get(PATH, _serve)


async def _serve(_request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
