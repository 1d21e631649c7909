"""``create_app(config)``: golive's aiohttp application.

Everything the app needs lives in :class:`web.AppKey` slots (no module globals). The actors
start in the app's ``cleanup_ctx`` (so on the running loop) and stop there, after every room
has been ended, when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from golive.actors.messages import EndReason, RoomInfo, new_session_id, parse_room_name
from golive.actors.system import ActorSystem
from golive.cluster.directory import ClusterRoom, ClusterUnavailableError
from golive.cluster.identity import WorkerIdentity
from golive.cluster.node import Cluster
from golive.cluster.relay import Relays
from golive.config import Config
from golive.http.auth import (
    CLUSTER_CREDENTIAL,
    VIA,
    admin_allowed,
    client_auth_configured,
    unauthorized,
)
from golive.http.connections import Connections, HttpLimits, connection_middleware
from golive.http.cors import cors_middleware
from golive.http.debug import add_routes as add_debug_routes
from golive.http.errors import error_middleware, json_error
from golive.http.keys import (
    CLUSTER,
    CONFIG,
    CONNECTIONS,
    IDENTITY,
    LIMITS,
    MEDIA,
    METRICS,
    RELAYS,
    ROOMS,
    TRACING,
)
from golive.http.limits import AdmissionLimits
from golive.http.openapi import add_routes as add_openapi_routes
from golive.http.ratelimit import rate_limit_middleware
from golive.http.records import add_routes as add_record_routes
from golive.http.tracing import tracing_middleware
from golive.http.web import add_routes as add_web_routes
from golive.http.whip import add_routes as add_whip_routes
from golive.media import hooks
from golive.media.peers import MediaHub
from golive.media.ports import restrict_udp_ports
from golive.metrics import ClusterScope, Metrics, create_metrics, watch_loop_lag
from golive.recordings import journal_of
from golive.rooms import RoomService
from golive.sessions import SessionRegistry
from golive.tracing import Tracing

log = structlog.get_logger(__name__)


def create_app(
    config: Config,
    *,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    identity: WorkerIdentity | None = None,
) -> web.Application:
    """The app for ``config``. ``tracing`` defaults to what the configuration asks for (OTLP
    export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set); the app shuts it down at cleanup.
    ``identity``: this worker of its cluster (with ``REDIS_URL``); every response then names
    the worker that made it (``Golive-Worker: node/worker``)."""
    tracing = tracing if tracing is not None else Tracing.from_config(config, identity)
    # CORS is outermost, so that errors (JSON, from error_middleware) carry its headers too;
    # rate limiting runs before any handler does work. With tracing on, a server span wraps
    # them all. Outermost of all, the connection middleware marks where each request starts
    # and ends on its connection, and runs the body timeout (golive/http/connections.py).
    if metrics is None:
        scope = (
            None
            if identity is None
            else ClusterScope(identity.node, identity.worker, config.workers)
        )
        metrics = create_metrics(scope)
    connections = Connections(HttpLimits.from_config(config), metrics)
    middlewares = [cors_middleware(config), error_middleware, rate_limit_middleware(config)]
    if tracing.enabled:
        middlewares.insert(0, tracing_middleware(tracing))
    middlewares.insert(0, connection_middleware(connections))
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[CONFIG] = config
    if identity is not None:
        app[IDENTITY] = identity
        app.on_response_prepare.append(_name_worker)
    app[TRACING] = tracing
    app[METRICS] = metrics
    app[CONNECTIONS] = connections
    app[LIMITS] = AdmissionLimits(
        max_sessions=config.max_sessions, max_pending=config.max_pending_negotiations
    )
    app.cleanup_ctx.append(_tracing)  # first in, last out: spans of the shutdown are exported
    app.cleanup_ctx.append(_actors)
    app.cleanup_ctx.append(_relays)  # (ended before the actors stop)
    app.cleanup_ctx.append(_loop_lag)
    app.router.add_get("/healthz", healthz)
    # prometheus-client's own handler: the text format or OpenMetrics by the scraper's
    # Accept, gzip by its Accept-Encoding, `name[]=` filters.
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/api/rooms", RoomsListing().handle)
    app.router.add_get("/api/bootstrap", bootstrap)
    app.router.add_post("/api/admin/rooms/{room}/close", admin_close_room)
    add_whip_routes(app, config)
    add_record_routes(app, config)
    add_openapi_routes(app)
    add_debug_routes(app, config)
    add_web_routes(app)
    return app


async def _actors(app: web.Application) -> AsyncIterator[None]:
    """Start the actor system on this loop; at shutdown end every room, then stop it."""
    config = app[CONFIG]
    registry = SessionRegistry(asyncio.get_running_loop())
    identity = app.get(IDENTITY)
    system = ActorSystem(
        port=registry,
        metrics=app[METRICS],
        max_subscribers=config.max_subs_per_room,
        timeout=config.actor_timeout_seconds,
        config=config,
        tracing=app[TRACING],
        journal=journal_of(0 if identity is None else identity.worker),
    )
    await asyncio.to_thread(system.start)
    app[ROOMS] = RoomService(
        system.directory,
        registry,
        timeout=config.actor_timeout_seconds,
        metrics=app[METRICS],
        tracing=app[TRACING],
        session_ids=new_session_id if identity is None else identity.new_session_id,
    )
    hooks.install(config.ice_host_addresses)
    restrict_udp_ports(asyncio.get_running_loop(), config.ice_port_min, config.ice_port_max)
    app[MEDIA] = MediaHub(
        app[ROOMS],
        metrics=app[METRICS],
        tracing=app[TRACING],
        connect_timeout=config.session_connect_timeout_seconds,
        loopback=any(ipaddress.ip_address(a).is_loopback for a in config.ice_host_addresses),
        keyframe_cache_bytes=config.keyframe_cache_bytes,
    )
    if identity is not None:
        app[CLUSTER] = Cluster(config, identity, app[ROOMS])
        await app[CLUSTER].start()
    try:
        yield
    finally:
        try:
            await app[ROOMS].shutdown(EndReason.SHUTDOWN)
            await app[MEDIA].shutdown()
        finally:
            # The rooms are released in Redis and the lease dropped while the actors that
            # the heartbeat lists still run.
            if identity is not None:
                await app[CLUSTER].close()
            await asyncio.to_thread(system.stop)
        log.info("rooms ended and actors stopped")


async def _relays(app: web.Application) -> AsyncIterator[None]:
    """The worker's relays (rooms pulled from their owner elsewhere in the cluster); at
    shutdown each leaves its origin before the actors end every room."""
    identity = app.get(IDENTITY)
    secret = app[CONFIG].cluster_secret
    headers: dict[str, str] = {}
    if identity is not None:  # a pull is served where it lands (Via), by the owner
        headers[VIA] = headers["Golive-Relay"] = identity.name
    if secret:
        headers[CLUSTER_CREDENTIAL] = secret

    def relay_headers() -> Mapping[str, str]:
        return headers

    app[RELAYS] = Relays(
        app[MEDIA],
        app[ROOMS],
        metrics=app[METRICS],
        headers=relay_headers,
        timeout=app[CONFIG].actor_timeout_seconds,
    )
    if CLUSTER in app:  # a viewer of a room owned elsewhere is served from a relay here
        app[CLUSTER].relays = app[RELAYS]
    try:
        yield
    finally:
        await app[RELAYS].close()


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await asyncio.to_thread(app[TRACING].shutdown)  # flushes the last batch (network)


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """The loop-lag watch, and with WORKERS > 1 the worker's samples for the node's metrics."""
    loop, metrics = asyncio.get_running_loop(), app[METRICS]
    tasks = [loop.create_task(watch_loop_lag(metrics.loop_lag))]
    if metrics.sampler is not None:
        tasks.append(loop.create_task(metrics.sampler.run()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _name_worker(request: web.Request, response: web.StreamResponse) -> None:
    # (a forwarded answer keeps the name of the worker that made it)
    response.headers.setdefault("Golive-Worker", request.app[IDENTITY].name)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def room_json(info: RoomInfo) -> dict[str, object]:
    """A room as Go-Live lists it (``tracks`` is a count), plus golive's ``waiting`` (its
    publisher vanished; viewers stay until another takes over), ``relay`` (the room is
    pulled from its owner elsewhere in the cluster) and ``trackList``."""
    return {
        "name": info.name,
        "hasPublisher": info.has_publisher,
        "tracks": len(info.tracks),
        "subscribers": info.subscribers,
        "waiting": info.waiting,
        "relay": info.relay,
        "trackList": [
            {"id": t.track_id, "kind": t.kind.value, "codec": t.codec} for t in info.tracks
        ],
    }


def cluster_room_json(room: ClusterRoom) -> dict[str, object]:
    """A room of the cluster: as :func:`room_json`, ``subscribers`` summed over the nodes,
    plus its ``owner`` and its viewers on each node (``viewersByNode``)."""
    return {
        "name": room.name,
        "hasPublisher": room.has_publisher,
        "tracks": len(room.tracks),
        "subscribers": room.subscribers,
        "waiting": room.waiting,
        "trackList": list(room.tracks),
        "owner": {"node": room.owner.node, "worker": room.owner.worker},
        "viewersByNode": dict(room.viewers),
    }


class RoomsListing:
    """``GET /api/rooms``: one ask to the directory, and the JSON rendered once per listing.

    The directory hands out the same tuple until a room comes, goes or changes, so the text
    rendered for it is kept and a repeated listing costs the loop no encoding (300 rooms take
    about 0.6 ms to render). One per app, on the loop only.
    """

    def __init__(self) -> None:
        self._rendered: tuple[tuple[RoomInfo, ...], str] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        cluster = request.app.get(CLUSTER)
        if cluster is not None:
            try:
                listed = await cluster.directory.rooms()
            except ClusterUnavailableError:
                log.warning(
                    "listing this worker's rooms only: the cluster directory is unavailable"
                )
            else:
                return web.json_response([cluster_room_json(room) for room in listed])
        rooms = await request.app[ROOMS].rooms()
        if self._rendered is None or self._rendered[0] is not rooms:
            self._rendered = (rooms, json.dumps([room_json(info) for info in rooms]))
        return web.Response(text=self._rendered[1], content_type="application/json")


async def bootstrap(request: web.Request) -> web.Response:
    """What a browser page needs to start: never a secret (TURN passwords go in Link headers)."""
    config = request.app[CONFIG]
    ice_servers: list[dict[str, object]] = []
    if config.stun_urls:
        ice_servers.append({"urls": list(config.stun_urls)})
    if config.turn_urls:
        turn: dict[str, object] = {"urls": list(config.turn_urls)}
        if config.turn_username:
            turn["username"] = config.turn_username
        ice_servers.append(turn)
    return web.json_response(
        {
            "authEnabled": client_auth_configured(config),
            "recordEnabled": config.record_enabled,
            "iceServers": ice_servers,
            "features": {"rooms": True, "records": config.record_enabled, "adminClose": True},
        }
    )


async def admin_close_room(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if not admin_allowed(config, request):
        return unauthorized()
    room = parse_room_name(request.match_info["room"])
    if room is None:
        return json_error(400, "invalid room name")
    cluster = request.app.get(CLUSTER)
    if cluster is not None:
        routed = await cluster.route_room(request, room)
        if routed is not None:  # another worker owns the room
            return routed
    if not await request.app[ROOMS].close_room(room, EndReason.ADMIN_CLOSED):
        return json_error(404, "room not found")
    log.info("room closed by admin", room=room)
    return web.json_response({"room": room, "closed": True})
