"""The cluster's room directory, in Redis (redis-py's asyncio client), on the event loop.

Each worker of each node keeps here:

- ``golive:worker:{tag}``: its lease, a hash (node, worker, url), set again on every heartbeat
  (:data:`HEARTBEAT_SECONDS`) with a time to live of :data:`LEASE_SECONDS`; ``golive:workers``
  indexes the tags. A worker killed with ``kill -9`` is forgotten once its lease runs out.
- ``golive:room:{name}``: the owner of each room it accepted the publisher of, a JSON string
  (owner node, worker, tag and URL, whether the publisher is there, the tracks), claimed with
  ``SET NX`` (so one worker in the whole cluster owns a name) and held on the same lease as
  the worker's, renewed by the owner only (compare and set, in Lua). ``golive:rooms`` indexes
  the names.
- ``golive:load:{tag}``: the viewers it serves in each room (its own rooms and the ones it
  relays), on the same lease; the listing sums them per node.
- channel ``golive:events``: a room ended, and why, so the workers relaying it end their
  viewers at once with the same reason.

Redis is the only thing shared: a worker that loses it keeps serving the rooms and viewers it
has, refuses what needs the directory (a new publisher: :class:`ClusterUnavailableError`, a 503),
and on its first heartbeat after Redis comes back writes its lease and its rooms again (Redis may
have restarted empty). Every Redis call has a short timeout, so an outage slows no request for
long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from redis.typing import EncodableT

from golive.actors.messages import EndReason, RoomInfo, RoomName
from golive.cluster.identity import WorkerIdentity

log = structlog.get_logger(__name__)

#: How often a worker renews its lease and its rooms, and checks the rooms it relays.
HEARTBEAT_SECONDS: Final = 1.0
#: How long a lease (and the rooms on it) outlives the last heartbeat: a node killed with
#: ``kill -9`` is gone from the directory this long after, and its relays end a heartbeat later.
LEASE_SECONDS: Final = 5.0
#: A Redis call that takes longer than this fails (an outage must not hold requests).
REDIS_TIMEOUT_SECONDS: Final = 1.0

PREFIX: Final = "golive:"
WORKERS_KEY: Final = PREFIX + "workers"
ROOMS_KEY: Final = PREFIX + "rooms"
EVENTS: Final = PREFIX + "events"

# KEYS[1] the room, ARGV[1] the owner's tag, ARGV[2] the new value, ARGV[3] the lease (ms).
# Renews the room if this tag owns it, claims it if no one does: "owned", "claimed", or the
# value of the owner it belongs to.
_RENEW: Final = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 'claimed'
end
local owner = cjson.decode(current)
if owner['tag'] == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 'owned'
end
return current
"""
# KEYS[1] the room, ARGV[1] the owner's tag: deletes the room if this tag owns it (1), else 0.
_RELEASE: Final = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['tag'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class ClusterUnavailableError(Exception):
    """Redis cannot be reached: what needs the directory is refused (503) until it is back."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The worker that owns a room, as the directory has it."""

    node: str
    worker: int
    tag: str
    url: str


@dataclass(frozen=True, slots=True)
class ClusterRoom:
    """A room of the cluster, as ``GET /api/rooms`` lists it."""

    name: RoomName
    owner: Owner
    has_publisher: bool
    waiting: bool
    tracks: tuple[dict[str, str], ...]
    viewers: Mapping[str, int]  # per node

    @property
    def subscribers(self) -> int:
        return sum(self.viewers.values())


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claiming a room: ``new`` (this worker just claimed it), or owned by
    ``owner`` (maybe this worker: ``mine``)."""

    owner: Owner
    new: bool
    mine: bool


#: What the heartbeat asks of the worker: its rooms as the directory actor lists them, and the
#: rooms it relays.
Listing = Callable[[], Awaitable[tuple[RoomInfo, ...]]]


class ClusterDirectory:
    """This worker's view of, and part in, the directory in Redis. One per worker, on the loop.

    ``listing`` gives the worker's rooms (its directory actor's listing); ``relayed`` the names
    of those that are relays; ``on_origin_ended(room, reason)`` is called for a relayed room
    whose owner ended it (its event) or vanished (its lease ran out: ``origin_gone``).
    """

    def __init__(
        self,
        url: str,
        identity: WorkerIdentity,
        *,
        listing: Listing,
        relayed: Callable[[], Iterable[RoomName]] = frozenset,
        on_origin_ended: Callable[[RoomName, EndReason], None] | None = None,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry_on_timeout=False,
            decode_responses=True,
        )
        self.identity = identity
        self._listing = listing
        self._relayed = relayed
        self._on_origin_ended = on_origin_ended
        self._lease_ms = int(lease_seconds * 1000)
        self._heartbeat_seconds = heartbeat_seconds
        self._owned: set[RoomName] = set()  # rooms this worker claimed and has not released
        self._available = False
        self._tasks: list[asyncio.Task[None]] = []
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._beat = asyncio.Event()  # set after each heartbeat (for tests and start-up)
        self._events_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """The last heartbeat reached Redis."""
        return self._available

    async def start(self) -> None:
        """Register (if Redis answers; else keep trying in the background) and start the
        heartbeat and the event listener."""
        loop = asyncio.get_running_loop()
        await self.heartbeat()
        self._tasks.append(loop.create_task(self._heartbeats(), name="cluster heartbeat"))
        self._tasks.append(loop.create_task(self._events(), name="cluster events"))

    async def close(self) -> None:
        """Stop the heartbeat, release what this worker still owns and its lease (a clean
        shutdown leaves nothing to expire), close the connections."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(RedisError, OSError):
            for room in list(self._owned):
                await self.release(room, EndReason.SHUTDOWN)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._worker_key(self.identity.tag), self._load_key(self.identity.tag))
                pipe.srem(WORKERS_KEY, self.identity.tag)
                await pipe.execute()
        await self._redis.aclose()

    async def wait_heartbeat(self) -> None:
        """Until the next heartbeat has run (tests)."""
        self._beat.clear()
        await self._beat.wait()

    # -- rooms --------------------------------------------------------------------------------

    async def claim(self, room: RoomName) -> Claim:
        """Claim ``room`` for this worker, or learn who owns it. Raises
        :class:`ClusterUnavailableError` when Redis cannot be reached."""
        mine = self._owner_of_me()
        value = self._room_value(RoomInfo(room, False, (), 0))
        try:
            for _ in range(3):  # (an owner may expire between the SET and the GET)
                if await self._redis.set(self._room_key(room), value, nx=True, px=self._lease_ms):
                    self._owned.add(room)
                    await self._redis.sadd(ROOMS_KEY, room)
                    return Claim(mine, new=True, mine=True)
                current = await self._redis.get(self._room_key(room))
                if current is not None:
                    owner = _owner(_text(current))
                    if owner.tag == mine.tag:
                        self._owned.add(room)
                    return Claim(owner, new=False, mine=owner.tag == mine.tag)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        raise ClusterUnavailableError("the room's owner changed three times while claiming it")

    async def owner(self, room: RoomName) -> Owner | None:
        """Who owns ``room``, or None. Raises :class:`ClusterUnavailableError`."""
        try:
            current = await self._redis.get(self._room_key(room))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return None if current is None else _owner(_text(current))

    async def release(self, room: RoomName, reason: EndReason) -> None:
        """``room`` ended here: forget it in Redis (if this worker still owns it) and tell the
        workers relaying it why."""
        self._owned.discard(room)
        try:
            if await self._release(keys=[self._room_key(room)], args=[self.identity.tag]):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.srem(ROOMS_KEY, room)
                    pipe.publish(
                        EVENTS,
                        json.dumps(
                            {"room": room, "reason": reason.value, "tag": self.identity.tag}
                        ),
                    )
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            # The heartbeat no longer renews it: it expires with the lease.
            log.warning("could not release a room in Redis", room=room, error=str(exc))

    def forget(self, room: RoomName) -> None:
        """Stop renewing ``room`` (a claim that led nowhere is released by :meth:`release`)."""
        self._owned.discard(room)

    @property
    def owned(self) -> frozenset[RoomName]:
        return frozenset(self._owned)

    async def worker_url(self, tag: str) -> str | None:
        """The URL of the live worker with ``tag``, or None. Raises
        :class:`ClusterUnavailableError`."""
        try:
            url = await self._redis.hget(self._worker_key(tag), "url")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return None if url is None else _text(url)

    async def workers(self) -> list[dict[str, str]]:
        """Every live worker's lease (node, worker, url, tag). Raises
        :class:`ClusterUnavailableError`."""
        try:
            tags = sorted(_texts(await self._redis.smembers(WORKERS_KEY)))
            async with self._redis.pipeline(transaction=False) as pipe:
                for tag in tags:
                    pipe.hgetall(self._worker_key(tag))
                leases = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return [{**lease, "tag": tag} for tag, lease in zip(tags, leases, strict=True) if lease]

    async def rooms(self) -> list[ClusterRoom]:
        """Every room of the cluster with its owner and viewers per node, by name. Raises
        :class:`ClusterUnavailableError`."""
        try:
            names = sorted(_texts(await self._redis.smembers(ROOMS_KEY)))
            tags = sorted(_texts(await self._redis.smembers(WORKERS_KEY)))
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.get(self._room_key(name))
                for tag in tags:
                    pipe.hgetall(self._worker_key(tag))
                    pipe.hgetall(self._load_key(tag))
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        values, rest = replies[: len(names)], replies[len(names) :]
        viewers: dict[str, dict[str, int]] = {}  # room -> node -> viewers
        for lease, load in zip(rest[::2], rest[1::2], strict=True):
            if not lease:
                continue
            for room, count in load.items():
                per_node = viewers.setdefault(room, {})
                per_node[lease["node"]] = per_node.get(lease["node"], 0) + int(count)
        listed = []
        for name, value in zip(names, values, strict=True):
            if value is None:
                continue  # its lease ran out (its index is cleaned by the next heartbeat)
            data = json.loads(value)
            listed.append(
                ClusterRoom(
                    RoomName(name),
                    _owner(value),
                    bool(data.get("publisher")),
                    bool(data.get("waiting")),
                    tuple(data.get("tracks", ())),
                    viewers.get(name, {}),
                )
            )
        return listed

    # -- heartbeat ----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew this worker's lease, its rooms and its load; end the relays whose origin is
        gone. Never raises: an outage is logged once, and the first heartbeat after it writes
        everything again."""
        try:
            await self._heartbeat()
        except (RedisError, OSError) as exc:
            if self._available:
                log.error(
                    "lost Redis: serving the rooms here, refusing new publishers until it is back",
                    error=str(exc),
                )
            self._available = False
        except Exception:
            log.exception("cluster heartbeat failed")
        finally:
            self._beat.set()

    async def _heartbeat(self) -> None:
        me = self.identity
        rooms = await self._listing()
        relayed = set(self._relayed())
        local = {info.name: info for info in rooms}
        # Rooms claimed here that have no local room yet are pending publishers: kept.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                self._worker_key(me.tag),
                mapping={"node": me.node, "worker": str(me.worker), "url": me.url},
            )
            pipe.pexpire(self._worker_key(me.tag), self._lease_ms)
            pipe.sadd(WORKERS_KEY, me.tag)
            pipe.delete(self._load_key(me.tag))
            load: dict[EncodableT, EncodableT] = {
                str(name): info.subscribers for name, info in local.items()
            }
            if load:
                pipe.hset(self._load_key(me.tag), mapping=load)
                pipe.pexpire(self._load_key(me.tag), self._lease_ms)
            await pipe.execute()
        owned = sorted(self._owned)
        for room in owned:
            info = local.get(room, RoomInfo(room, False, (), 0))
            result = await self._renew(
                keys=[self._room_key(room)],
                args=[me.tag, self._room_value(info), self._lease_ms],
            )
            if result == "claimed":
                await self._redis.sadd(ROOMS_KEY, room)
                log.info("room registered in Redis again", room=room)
            elif result != "owned":
                log.error(
                    "another worker claimed this room while Redis was out of reach: "
                    "requests for it now go there",
                    room=room,
                    owner=_owner(str(result)).node,
                )
                self._owned.discard(room)
        await self._check_relays(relayed)
        await self._clean_indexes()
        if not self._available:
            log.info("registered in Redis", node=me.node, worker=me.worker, url=me.url, rooms=owned)
        self._available = True

    async def _check_relays(self, relayed: set[RoomName]) -> None:
        """A relayed room whose owner's lease ran out (its node was killed) ends here."""
        if not relayed or self._on_origin_ended is None:
            return
        names = sorted(relayed)
        values = await self._redis.mget([self._room_key(name) for name in names])
        for name, value in zip(names, values, strict=True):
            if value is None:
                log.warning(
                    "relayed room is gone from the directory: its owner vanished", room=name
                )
                self._on_origin_ended(name, EndReason.ORIGIN_GONE)

    async def _clean_indexes(self) -> None:
        """Drop index entries whose key expired (a worker or room killed, not released)."""
        tags = sorted(_texts(await self._redis.smembers(WORKERS_KEY)))
        names = sorted(_texts(await self._redis.smembers(ROOMS_KEY)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.exists(self._worker_key(tag))
            for name in names:
                pipe.exists(self._room_key(name))
            alive = await pipe.execute()
        dead_tags = [tag for tag, live in zip(tags, alive, strict=False) if not live]
        dead_rooms = [n for n, live in zip(names, alive[len(tags) :], strict=True) if not live]
        if dead_tags:
            await self._redis.srem(WORKERS_KEY, *dead_tags)
        if dead_rooms:
            await self._redis.srem(ROOMS_KEY, *dead_rooms)

    # -- events -------------------------------------------------------------------------------

    async def _events(self) -> None:
        """Listen to room ends (reconnecting after an outage) for the rooms relayed here."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(EVENTS)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._heartbeat_seconds
                        )
                        if message is not None:
                            self._event(message)
            except (RedisError, OSError):
                await asyncio.sleep(self._heartbeat_seconds)

    def _event(self, message: Mapping[str, Any]) -> None:
        try:
            data = json.loads(message["data"])
            room, reason = RoomName(data["room"]), EndReason(data["reason"])
        except (KeyError, ValueError, TypeError):
            log.warning("malformed cluster event", data=str(message.get("data"))[:200])
            return
        if data.get("tag") == self.identity.tag or self._on_origin_ended is None:
            return
        if room in set(self._relayed()):
            self._on_origin_ended(room, reason)

    # -- helpers ------------------------------------------------------------------------------

    def _owner_of_me(self) -> Owner:
        me = self.identity
        return Owner(me.node, me.worker, me.tag, me.url)

    def _room_value(self, info: RoomInfo) -> str:
        me = self.identity
        return json.dumps(
            {
                "node": me.node,
                "worker": me.worker,
                "tag": me.tag,
                "url": me.url,
                "publisher": info.has_publisher,
                "waiting": info.waiting,
                "tracks": [
                    {"id": t.track_id, "kind": t.kind.value, "codec": t.codec} for t in info.tracks
                ],
            }
        )

    def _unavailable(self, exc: BaseException) -> ClusterUnavailableError:
        if self._available:
            log.error("lost Redis", error=str(exc))
        self._available = False
        return ClusterUnavailableError(str(exc) or type(exc).__name__)

    @staticmethod
    def _room_key(room: str) -> str:
        return f"{PREFIX}room:{room}"

    @staticmethod
    def _worker_key(tag: str) -> str:
        return f"{PREFIX}worker:{tag}"

    @staticmethod
    def _load_key(tag: str) -> str:
        return f"{PREFIX}load:{tag}"


def _owner(value: str) -> Owner:
    data = json.loads(value)
    return Owner(str(data["node"]), int(data["worker"]), str(data["tag"]), str(data["url"]))


def _text(value: bytes | str) -> str:
    """A reply as text (the client decodes replies; the types allow bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[bytes | str]) -> list[str]:
    return [_text(value) for value in values]
