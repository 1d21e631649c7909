"""WHIP (RFC 9725) publish and WHEP play: the session endpoints and their resources.

Handlers validate the request, then hand it to the :class:`MediaHub`, which asks the actors
for admission and negotiates the peer connection. They never change room state themselves.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from golive.actors.messages import (
    Done,
    EndReason,
    Refusal,
    Refused,
    Role,
    RoomName,
    SessionId,
    parse_room_name,
)
from golive.cluster.directory import Claim
from golive.cluster.node import relay_pull
from golive.config import Config
from golive.http.auth import NotOwnerError, forbidden, owns, room_principal, unauthorized
from golive.http.errors import Handler, json_error
from golive.http.keys import CLUSTER, CONFIG, LIMITS, MEDIA, METRICS, ROOMS
from golive.http.limits import Busy
from golive.http.turn import turn_credentials
from golive.media.limits import LimitExceededError
from golive.media.peers import Answered, IceRestartError, InvalidOfferError, PeerSession

log = structlog.get_logger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
MAX_BODY = 1 << 20

_REFUSALS: dict[Refusal, tuple[int, str]] = {
    Refusal.ROOM_TAKEN: (409, "publisher already exists in this room"),
    Refusal.NO_PUBLISHER: (404, "no active publisher in room"),
    Refusal.SUBSCRIBER_LIMIT: (403, "subscriber limit reached"),
    Refusal.SHUTTING_DOWN: (503, "server is shutting down"),
    Refusal.UNKNOWN_SESSION: (404, "session not found"),
    Refusal.NO_SUCH_ROOM: (404, "no active publisher in room"),
}


def refusal_response(refusal: Refusal) -> web.Response:
    status, message = _REFUSALS[refusal]
    headers = {"Retry-After": "5"} if status == 503 else None
    return json_error(status, message, headers)


def ice_server_links(config: Config, room: str | None) -> list[str]:
    """One ``Link: <uri>; rel="ice-server"`` value per STUN/TURN URL (RFC 9725 section 4.6).

    ``room`` is the room the request's credential admits, or None: then STUN only, since
    TURN URLs are of no use without credentials and credentials go to no one else.
    """
    links = [f'<{url}>; rel="ice-server"' for url in config.stun_urls]
    if room is None:
        return links
    credentials = turn_credentials(config, room)
    for url in config.turn_urls:
        link = f'<{url}>; rel="ice-server"'
        if credentials is not None:
            link += f'; username="{credentials.username}"; credential="{credentials.credential}"'
            link += '; credential-type="password"'
        links.append(link)
    return links


def _with_links(
    response: web.StreamResponse, config: Config, room: str | None
) -> web.StreamResponse:
    for link in ice_server_links(config, room):
        response.headers.add("Link", link)
    return response


def add_routes(app: web.Application, config: Config) -> None:
    for role, base in ((Role.PUBLISHER, "/api/whip/publish"), (Role.SUBSCRIBER, "/api/whep/play")):
        endpoint = f"{base}/{{room}}"
        resource = f"{base}/{{room}}/{{session}}"
        app.router.add_post(endpoint, _post(role, base, config))
        app.router.add_route("OPTIONS", endpoint, _options_endpoint(config))
        app.router.add_patch(resource, _patch(role, config))
        app.router.add_delete(resource, _delete(role, config))
        app.router.add_get(resource, _get(role, config))
        app.router.add_route("OPTIONS", resource, _options_resource)


def _options_endpoint(config: Config) -> Handler:
    async def options(request: web.Request) -> web.StreamResponse:
        """204 whoever asks; TURN links only when the credential admits the room."""
        response = web.Response(status=204, headers={"Accept-Post": SDP})
        if "Access-Control-Request-Method" not in request.headers:  # not a CORS preflight
            room = parse_room_name(request.match_info["room"])
            admitted = room is not None and room_principal(config, request, room) is not None
            _with_links(response, config, room if admitted else None)
        return response

    return options


async def _options_resource(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=204, headers={"Accept-Post": SDP})


def _post(role: Role, base: str, config: Config) -> Handler:
    async def post(request: web.Request) -> web.StreamResponse:  # noqa: PLR0911  an outcome each
        room = parse_room_name(request.match_info["room"])
        if room is None:
            return json_error(400, "invalid room name")
        principal = room_principal(config, request, room)
        if principal is None:
            log.info("unauthorized", room=room, role=role.value)
            return unauthorized()
        offer = await _read_offer(request)
        if isinstance(offer, web.Response):
            return offer
        cluster = request.app.get(CLUSTER)
        claim: Claim | None = None
        if cluster is not None:  # served here, or by the worker that holds the room
            routed = await (
                cluster.route_publish(request, room, offer.encode())
                if role is Role.PUBLISHER
                else cluster.route_play(request, room, offer.encode())
            )
            if isinstance(routed, web.Response):
                return routed
            if isinstance(routed, Refused):
                return refusal_response(routed.reason)
            claim = routed
        result: Answered | Refused | web.Response = Refused(Refusal.NO_PUBLISHER)
        try:
            result = await _negotiate(request, role, room, offer)
        finally:
            if cluster is not None and claim is not None:
                await cluster.published(room, claim, answered=isinstance(result, Answered))
        if isinstance(result, web.Response):
            return result
        if isinstance(result, Refused):
            return refusal_response(result.reason)
        peer = result.session
        peer.owner = principal.identity
        if cluster is not None and role is Role.SUBSCRIBER:
            cluster.played(request, room, peer.session)
        response = web.Response(
            status=201,
            body=result.answer.encode(),
            headers={
                "Content-Type": SDP,
                "Location": f"{base}/{room}/{peer.session}",
                "ETag": peer.etag,
            },
        )
        _with_links(response, config, room)  # the credential admitted the room
        return response

    return post


async def _negotiate(
    request: web.Request, role: Role, room: RoomName, offer: str
) -> Answered | Refused | web.Response:
    """Answer the offer here: the answer, a refusal, or the error response to send."""
    hub = request.app[MEDIA]
    try:
        with request.app[LIMITS].negotiation(len(request.app[ROOMS].registry)):
            if role is Role.PUBLISHER:
                return await hub.publish(room, offer)
            return await hub.play(room, offer, relay=relay_pull(request.app[CONFIG], request))
    except Busy as busy:
        request.app[METRICS].join_refusals.labels(role.value, busy.reason).inc()
        log.warning("offer refused: overloaded", room=room, role=role.value, why=busy.reason)
        return busy.response
    except LimitExceededError as exc:
        request.app[METRICS].join_refusals.labels(role.value, "offer_too_large").inc()
        log.info("offer refused: over a limit", room=room, role=role.value, problem=str(exc))
        return json_error(413, f"offer too large: {exc}")
    except InvalidOfferError as exc:
        log.info("offer refused", room=room, role=role.value, problem=str(exc))
        return json_error(400, "invalid SDP")


async def _read_offer(request: web.Request) -> str | web.Response:
    """The SDP offer of a POST, or the error response (415, 413, 400) to send instead."""
    if request.content_type != SDP:
        return json_error(415, f"Content-Type must be {SDP}")
    body = await read_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        return body.decode()
    except UnicodeDecodeError:
        return json_error(400, "invalid SDP")


async def read_body(request: web.Request) -> bytes | web.Response:
    """The whole body, or 413 once it exceeds :data:`MAX_BODY` (it arrives in chunks: one
    ``read`` may return only part of it)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return json_error(413, "request body too large")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return json_error(413, "request body too large")
    return b"".join(chunks)


async def _route_session(request: web.Request) -> web.Response | None:
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return None
    return await cluster.route_session(request, request.match_info["session"])


def _session(request: web.Request, role: Role) -> PeerSession | None:
    peer = request.app[MEDIA].session(SessionId(request.match_info["session"]))
    if peer is None or peer.role is not role or peer.room != request.match_info["room"]:
        return None
    return peer


def _owned_session(request: web.Request, role: Role, config: Config) -> PeerSession | web.Response:
    """The session of a resource request, or the answer to send instead: 404 unknown, 401 no
    valid credential, 403 someone else's (an admin may act on any)."""
    peer = _session(request, role)
    if peer is None:
        return json_error(404, "session not found")
    try:
        principal = owns(config, request, peer.room, peer.owner)
    except NotOwnerError:
        return forbidden()
    return unauthorized() if principal is None else peer


def _patch(role: Role, config: Config) -> Handler:
    async def patch(request: web.Request) -> web.StreamResponse:  # noqa: PLR0911  an outcome each
        routed = await _route_session(request)
        if routed is not None:  # another worker holds the session
            return routed
        peer = _owned_session(request, role, config)
        if isinstance(peer, web.Response):
            return peer
        if request.content_type != TRICKLE:
            return json_error(415, f"Content-Type must be {TRICKLE}")
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return json_error(428, "If-Match is required")
        if if_match not in ("*", peer.etag):
            return json_error(412, "ETag does not match")
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            await request.app[MEDIA].trickle(peer, body.decode(errors="replace"))
        except IceRestartError as exc:
            return json_error(422, str(exc))
        except LimitExceededError as exc:
            log.info("trickle refused: over a limit", session=peer.session, problem=str(exc))
            return json_error(413, f"too many candidates: {exc}")
        return web.Response(status=204)

    return patch


def _delete(role: Role, config: Config) -> Handler:
    async def delete(request: web.Request) -> web.StreamResponse:
        routed = await _route_session(request)
        if routed is not None:  # another worker holds the session
            return routed
        peer = _owned_session(request, role, config)
        if isinstance(peer, web.Response):
            return peer
        reply = await request.app[ROOMS].leave(peer.session, EndReason.CLIENT_LEFT)
        if isinstance(reply, Done):
            return web.Response(status=200)
        return refusal_response(reply.reason)

    return delete


def _get(role: Role, config: Config) -> Handler:
    async def get(request: web.Request) -> web.StreamResponse:
        routed = await _route_session(request)
        if routed is not None:  # another worker holds the session
            return routed
        peer = _owned_session(request, role, config)
        if isinstance(peer, web.Response):
            return peer
        return web.Response(status=204)

    return get
