"""This worker's part in the cluster, for the HTTP handlers: where each request is served.

- **A publisher** (WHIP POST) claims its room in Redis: a room no one owns becomes this
  worker's; one this worker owns is decided by its own directory actor as always (409, or a
  takeover); one another worker owns is forwarded there, so that owner decides.
- **A viewer** (WHEP POST) is served where it lands. A room this worker has (its own, or one it
  relays already) is played locally; a room another worker owns is pulled once from it over
  WHEP into a local relay room (:class:`RelayPort`), which then serves every viewer here.
- **A session's resource** (PATCH, DELETE, GET) goes to the worker whose tag starts the
  session id.
- **An admin close** goes to the room's owner (which ends its relays through Redis).

A request from another worker (``Golive-Via`` with the cluster's secret) is always served
here: it was routed already.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Protocol

import structlog
from aiohttp import web

from golive.actors.messages import EndReason, Refused, RoomInfo, RoomName, SessionId
from golive.cluster.directory import Claim, ClusterDirectory, ClusterUnavailableError, Owner
from golive.cluster.forward import Forwarder
from golive.cluster.identity import WorkerIdentity, tag_of
from golive.cluster.relay import RelayUnavailableError
from golive.config import Config
from golive.http.auth import from_cluster
from golive.http.errors import json_error
from golive.rooms import RoomService
from golive.tasks import BackgroundTasks

log = structlog.get_logger(__name__)

#: A relay's pull of a room carries it (``node/worker`` of the relay).
RELAY_HEADER = "Golive-Relay"


def relay_pull(config: Config, request: web.Request) -> bool:
    """The request is another worker's relay pulling a room from here (a relay's WHEP offer)."""
    return RELAY_HEADER in request.headers and from_cluster(config, request)


#: A claim that has not become a room here within this long is released by the heartbeat.
PENDING_CLAIM_SECONDS = 30.0


class RelayPort(Protocol):
    """What the cluster asks of the relays (golive/cluster/relay.py)."""

    async def ensure(self, room: RoomName, origin_url: str) -> Refused | None: ...
    def end(self, room: RoomName, reason: EndReason) -> None: ...
    def relayed(self) -> frozenset[RoomName]: ...


def unavailable() -> web.Response:
    return json_error(503, "cluster directory unavailable", {"Retry-After": "5"})


class Cluster:
    """The cluster, as this worker's handlers see it. One per worker, on the loop."""

    def __init__(
        self,
        config: Config,
        identity: WorkerIdentity,
        rooms: RoomService,
        relays: RelayPort | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self._rooms = rooms
        self.relays = relays
        self.forwarder = Forwarder(config, identity)
        self.directory = ClusterDirectory(
            config.redis_url,
            identity,
            listing=self._listing,
            relayed=self._relayed,
            on_origin_ended=self._origin_ended,
        )
        self._relay_pulls: dict[SessionId, RoomName] = {}  # relays' sessions in rooms here
        self._claims: dict[RoomName, float] = {}  # pending claims, by loop time
        self._tasks = BackgroundTasks("releasing a room in Redis failed", level="warning")

    async def start(self) -> None:
        self._rooms.registry.room_observers.append(self._room_ended)
        await self.directory.start()

    async def close(self) -> None:
        await self._tasks.wait(5)
        await self.directory.close()
        await self.forwarder.close()

    # -- publish ------------------------------------------------------------------------------

    async def route_publish(
        self, request: web.Request, room: RoomName, body: bytes
    ) -> web.Response | Claim:
        """Claim ``room`` for a publisher here, or the answer to send instead: the owner's (the
        request forwarded there) or a 503 without Redis."""
        try:
            claim = await self.directory.claim(room)
        except ClusterUnavailableError:
            log.warning("publisher refused: the cluster directory is unavailable", room=room)
            return unavailable()
        if claim.mine:
            if claim.new:
                self._claims[room] = asyncio.get_running_loop().time()
            return claim
        if from_cluster(self.config, request):  # routed here, but the room moved meanwhile
            return json_error(503, "the room is moving to another worker", {"Retry-After": "1"})
        log.info("publisher forwarded to the room's owner", room=room, owner=claim.owner.node)
        return await self.forwarder.forward(request, claim.owner.url, body)

    async def published(self, room: RoomName, claim: Claim, *, answered: bool) -> None:
        """The publish that ``claim`` admitted is over: a new claim that made no room here is
        released at once."""
        self._claims.pop(room, None)
        if not claim.new or answered:
            return
        # (a relay of the room's previous owner, not ended yet, is not this claim's room)
        if room in set(self._relayed()) or not await self._rooms.has_room(room):
            await self.directory.release(room, EndReason.PUBLISH_FAILED)

    # -- play ---------------------------------------------------------------------------------

    async def route_play(
        self, request: web.Request, room: RoomName, body: bytes
    ) -> web.Response | Refused | None:
        """None when the viewer is served here (the room is here, or is relayed here now);
        else what to answer: a refusal, a 503, or the owner's answer."""
        if from_cluster(self.config, request) or await self._rooms.has_room(room):
            return None
        owner = await self._owner_elsewhere(room)
        if not isinstance(owner, Owner):
            return owner  # (None, no room anywhere: the local answer is the 404)
        if self.relays is None:
            return await self.forwarder.forward(request, owner.url, body)
        try:
            return await self.relays.ensure(room, owner.url)
        except RelayUnavailableError as exc:
            log.warning(
                "viewer refused: the room's owner is unreachable", room=room, error=str(exc)
            )
            return json_error(503, "the room's owner is unreachable", {"Retry-After": "5"})

    def played(self, request: web.Request, room: RoomName, session: SessionId) -> None:
        """A viewer was answered here: a relay's pull is not counted as an audience."""
        if relay_pull(self.config, request):
            self._relay_pulls[session] = room

    # -- resources ----------------------------------------------------------------------------

    async def route_session(self, request: web.Request, session: str) -> web.Response | None:
        """None when ``session`` is this worker's (or unknown); else the holder's answer."""
        tag = tag_of(session)
        if tag is None or tag == self.identity.tag or from_cluster(self.config, request):
            return None
        try:
            url = await self.directory.worker_url(tag)
        except ClusterUnavailableError:
            return unavailable()
        if url is None:
            return json_error(404, "session not found")
        return await self.forwarder.forward(request, url)

    async def route_room(self, request: web.Request, room: RoomName) -> web.Response | None:
        """None when ``room`` is this worker's (or no one's); else its owner's answer."""
        if from_cluster(self.config, request):
            return None
        owner = await self._owner_elsewhere(room)
        if not isinstance(owner, Owner):
            return owner
        return await self.forwarder.forward(request, owner.url)

    async def _owner_elsewhere(self, room: RoomName) -> Owner | web.Response | None:
        """The worker that owns ``room`` when it is another one; None when it is this one or
        no one; a 503 without Redis."""
        try:
            owner = await self.directory.owner(room)
        except ClusterUnavailableError:
            return unavailable()
        return None if owner is None or owner.tag == self.identity.tag else owner

    # -- recordings: each node has its own ----------------------------------------------------

    async def other_nodes(self) -> list[str]:
        """One worker's URL for each other live node (its workers share its recordings)."""
        try:
            leases = await self.directory.workers()
        except ClusterUnavailableError:
            return []
        urls: dict[str, str] = {}
        for lease in leases:
            if lease.get("node") != self.identity.node:
                urls.setdefault(lease["node"], lease["url"])
        return [urls[node] for node in sorted(urls)]

    async def records(self, request: web.Request) -> list[dict[str, object]]:
        """The recordings of the other nodes (each listing its own), each entry with its
        ``node``; none when the request was routed here already."""
        if from_cluster(self.config, request):
            return []
        answers = await asyncio.gather(
            *(self.forwarder.forward(request, url) for url in await self.other_nodes())
        )
        listed: list[dict[str, object]] = []
        for answer in answers:
            if answer.status == 200 and answer.text:
                listed.extend(json.loads(answer.text))
        return listed

    async def fetch_record(self, request: web.Request) -> web.StreamResponse | None:
        """The recording another node has, streamed through; None if no node has it."""
        if from_cluster(self.config, request):
            return None
        for url in await self.other_nodes():
            response = await self.forwarder.relay_file(request, url)
            if response is not None:
                return response
        return None

    # -- what the heartbeat reports -----------------------------------------------------------

    async def _listing(self) -> tuple[RoomInfo, ...]:
        """The rooms here with their audiences: relays' pulls are not viewers."""
        rooms = await self._rooms.rooms()
        registry = self._rooms.registry
        for session in [s for s in self._relay_pulls if registry.get(s) is None]:
            del self._relay_pulls[session]
        pulls: dict[RoomName, int] = {}
        for room in self._relay_pulls.values():
            pulls[room] = pulls.get(room, 0) + 1
        now = asyncio.get_running_loop().time()
        here = {info.name for info in rooms}
        for room, since in list(self._claims.items()):
            if room in here or now - since > PENDING_CLAIM_SECONDS:
                del self._claims[room]
        for room in self.directory.owned - here - set(self._claims):
            self._tasks.spawn(self.directory.release(room, EndReason.PUBLISH_FAILED))
        return tuple(
            RoomInfo(
                info.name,
                info.has_publisher,
                info.tracks,
                max(0, info.subscribers - pulls.get(info.name, 0)),
                info.waiting,
            )
            for info in rooms
        )

    def _relayed(self) -> Iterable[RoomName]:
        return () if self.relays is None else self.relays.relayed()

    def _origin_ended(self, room: RoomName, reason: EndReason) -> None:
        if self.relays is not None:
            self.relays.end(room, reason)

    def _room_ended(self, room: RoomName, reason: EndReason) -> None:
        if room in self.directory.owned:
            self._tasks.spawn(self.directory.release(room, reason))
