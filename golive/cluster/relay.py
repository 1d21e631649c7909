"""Relays: rooms pulled from their owner elsewhere in the cluster, for viewers here.

A WHEP viewer that lands on a worker which does not own its room is served there: the worker
pulls the room once from its owner (the origin: another worker, here or on another node) over
WHEP, golive being the WHEP client, into a local *relay room*, and fans it out to every local
viewer. :class:`Relays` (one per worker, on the event loop) makes and ends those pulls:

- :meth:`Relays.ensure` makes sure a relay room exists for a room (one pull per room, shared
  by concurrent callers): the local directory claims the room as a relay
  (``ClaimPublisher.relay``), :meth:`MediaHub.pull` makes the offer (``recvonly`` audio and
  video, every codec golive forwards), the origin answers it as it answers any viewer, and
  the answer's tracks feed :class:`PublishedTrack`s exactly as a publisher's do. Local
  viewers then join the relay room with the usual ``MediaHub.play``.
- What the relay room does is the actors' to decide: it never records, never waits for a
  publisher (its transport to the origin failing ends it as ``origin_gone``), and once it has
  no viewer it waits ``RELAY_GRACE_SECONDS`` for one, then ends (``relay_idle``).
- :meth:`Relays.end` ends a relay room with its origin room's reason (the cluster tells it);
  every other end (idle, its transport, an admin close, shutdown) comes from the actors. Each
  end is told to the relay's session (``PeerSession.on_end``); the relay's WHEP session at the
  origin is then DELETEd, unless the origin ended it.

Keyframe requests and NACKs travel up by themselves: the relay's receiver is a publisher's
(``ForwardingReceiver``: it NACKs losses and passes keyframe requests to the origin, where
the relay is a viewer like any other: its NACKs are answered from the origin's packet cache,
its keyframe requests coalesced with the origin's other viewers'); the relay room's tracks
keep their own cache for the local viewers' NACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
import structlog

from golive.actors.messages import EndReason, Refusal, Refused, RoomName
from golive.media.peers import InvalidAnswerError, MediaHub, PeerSession
from golive.metrics import Metrics
from golive.rooms import RoomService
from golive.tasks import BackgroundTasks

log = structlog.get_logger(__name__)

SDP = "application/sdp"
#: How long a pull waits for the origin's answer, and a DELETE for the origin.
DEFAULT_RELAY_TIMEOUT_SECONDS = 10.0

Headers = Callable[[], Mapping[str, str]]


class RelayUnavailableError(Exception):
    """The origin could not be reached, timed out, answered an error other than 404 (5xx,
    401...) or an answer golive cannot use: no relay was made (and nothing left behind).
    Whoever asked for the relay answers 503 with ``Retry-After``."""


@dataclass(eq=False, slots=True)
class Relay:
    """One relay room: its origin, its session here, and its session's resource there."""

    room: RoomName
    origin: str  # the origin worker's base URL
    peer: PeerSession  # the relay room's "publisher"
    location: str  # the relay's WHEP session at the origin (an absolute URL)
    origin_ended: bool = False  # the origin said its room ended: nothing to DELETE there

    def age(self) -> float:
        return self.peer.age()


def _no_headers() -> Mapping[str, str]:
    return {}


class Relays:
    """The relay rooms of this worker, and the pulls under way. On the event loop only."""

    def __init__(
        self,
        hub: MediaHub,
        rooms: RoomService,
        *,
        metrics: Metrics,
        headers: Headers = _no_headers,
        timeout: float = DEFAULT_RELAY_TIMEOUT_SECONDS,
    ) -> None:
        """``headers`` gives the headers of every request to an origin (the cluster's
        credential, ``Golive-Relay``); they are never logged."""
        self._hub = hub
        self._rooms = rooms
        self._metrics = metrics
        self._headers = headers
        self._timeout = timeout
        self._relays: dict[RoomName, Relay] = {}
        self._pulls: dict[RoomName, asyncio.Task[Refused | None]] = {}
        self._tasks = BackgroundTasks("relay work failed", level="warning")
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    def relayed(self) -> frozenset[RoomName]:
        """The rooms relayed here now."""
        return frozenset(self._relays)

    # -- making relays ------------------------------------------------------------------------

    async def ensure(self, room: RoomName, origin_url: str) -> Refused | None:
        """Make sure ``room`` is relayed here from ``origin_url`` (the owner worker's base
        URL). None once local viewers can join (the relay room is live with the origin's
        tracks); ``Refused(NO_PUBLISHER)`` if the origin has no publisher (404),
        ``Refused(SUBSCRIBER_LIMIT)`` if it admits no more viewers (403). Raises
        :class:`RelayUnavailableError` when the origin cannot be reached, answers another
        error or times out. Concurrent callers for one room share one pull."""
        if self._closed:
            raise RelayUnavailableError("the server is shutting down")
        relay = self._relays.get(room)
        if relay is not None:
            if relay.origin == origin_url:
                if await self._rooms.hold_relay(room, relay.peer.session):
                    return None
            else:  # the room moved to another owner: the old pull ends, a new one starts
                log.info("relay origin moved", room=room, origin=relay.origin, new=origin_url)
                await self._rooms.leave(relay.peer.session, EndReason.ORIGIN_GONE)
            if self._relays.get(room) is relay:  # (it ended; its end is still on its way)
                self._forget(relay)
        pull = self._pulls.get(room)
        if pull is None:
            pull = asyncio.get_running_loop().create_task(self._pull(room, origin_url))
            pull.add_done_callback(_retrieved)
            self._pulls[room] = pull
        return await asyncio.shield(pull)

    async def _pull(self, room: RoomName, origin: str) -> Refused | None:
        made: list[str] = []  # the relay's session resource at the origin, once it has one

        async def fetch(offer: str) -> str | Refused:
            return await self._post(room, origin, offer, made)

        try:
            result = await self._hub.pull(room, fetch)
        except (RelayUnavailableError, InvalidAnswerError) as exc:
            self._pull_failed(room, origin, made, "unavailable", str(exc))
            if isinstance(exc, RelayUnavailableError):
                raise
            raise RelayUnavailableError(f"the origin's answer cannot be used: {exc}") from exc
        except BaseException as exc:  # cancelled, an actor's timeout, a bug: the caller's
            problem = "cancelled" if isinstance(exc, asyncio.CancelledError) else repr(exc)
            self._pull_failed(room, origin, made, "unavailable", problem[:200])
            raise
        finally:
            self._pulls.pop(room, None)
        if isinstance(result, Refused):
            self._pull_failed(room, origin, made, result.reason.value, "refused")
            if result.reason in (Refusal.NO_PUBLISHER, Refusal.SUBSCRIBER_LIMIT):
                return result
            raise RelayUnavailableError(
                "the server is shutting down"
                if result.reason is Refusal.SHUTTING_DOWN
                else f"the room cannot be relayed here ({result.reason.value})"
            )
        if result.ended is not None:  # (an admin close, a shutdown, as it went live)
            problem = f"the relay room ended as it started ({result.ended.value})"
            self._pull_failed(room, origin, made, "unavailable", problem)
            raise RelayUnavailableError(problem)
        relay = Relay(room, origin, result, made[0])
        self._relays[room] = relay
        result.on_end = lambda reason: self._ended(relay, reason)
        self._metrics.relays_started.inc()
        self._metrics.relays.set(len(self._relays))
        log.info(
            "relay started",
            room=room,
            origin=origin,
            session=result.session,
            tracks=[tap.info.codec for tap in result.taps],
            seconds=relay.age(),
        )
        return None

    def _pull_failed(
        self, room: RoomName, origin: str, made: list[str], reason: str, problem: str
    ) -> None:
        """A pull that made no relay: counted, logged, its session at the origin DELETEd."""
        self._metrics.relay_pulls_failed.labels(reason).inc()
        log.warning("relay pull failed", room=room, origin=origin, reason=reason, problem=problem)
        if made:
            self._tasks.spawn(self._delete(room, made[0]))

    async def _post(
        self, room: RoomName, origin: str, offer: str, made: list[str]
    ) -> str | Refused:
        """The WHEP POST of the relay's offer to the origin: its answer (the session's
        resource noted in ``made``), or why the origin refused it."""
        url = f"{origin.rstrip('/')}/api/whep/play/{room}"
        headers = {**self._headers(), "Content-Type": SDP}
        try:
            async with self._session().post(
                url, data=offer, headers=headers, timeout=aiohttp.ClientTimeout(self._timeout)
            ) as response:
                body = await response.read()
                location = response.headers.get("Location")
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RelayUnavailableError(
                f"the origin could not be reached: {type(exc).__name__}: {exc}"
            ) from exc
        if status == 201 and location:
            made.append(urljoin(origin.rstrip("/") + "/", location))
            return body.decode(errors="replace")
        if status == 404:
            return Refused(Refusal.NO_PUBLISHER)
        if status == 403:
            return Refused(Refusal.SUBSCRIBER_LIMIT)
        raise RelayUnavailableError(
            f"the origin answered {status}: {body[:200].decode(errors='replace')}"
        )

    # -- ending relays ------------------------------------------------------------------------

    def end(self, room: RoomName, reason: EndReason) -> None:
        """The origin's room ended (``reason``): the relay room ends, its viewers with that
        reason. Nothing if ``room`` is not relayed here."""
        relay = self._relays.get(room)
        if relay is None or relay.peer.ended is not None:
            return
        relay.origin_ended = True
        log.info("relay's origin room ended", room=room, origin=relay.origin, reason=reason.value)
        self._tasks.spawn(self._rooms.leave(relay.peer.session, reason))

    def _ended(self, relay: Relay, reason: EndReason) -> None:
        """The relay room ended (its session was closed by the actors): forget it, and leave
        the origin unless it ended the room itself."""
        self._forget(relay)
        self._metrics.relays_ended.labels(reason.value).inc()
        log.info(
            "relay ended",
            room=relay.room,
            origin=relay.origin,
            reason=reason.value,
            session=relay.peer.session,
            seconds=relay.age(),
        )
        if not relay.origin_ended:
            self._tasks.spawn(self._delete(relay.room, relay.location))

    def _forget(self, relay: Relay) -> None:
        if self._relays.get(relay.room) is relay:
            del self._relays[relay.room]
            self._metrics.relays.set(len(self._relays))

    async def _delete(self, room: RoomName, location: str) -> None:
        """End the relay's WHEP session at the origin (it may be gone already: 404)."""
        try:
            async with self._session().delete(
                location,
                headers=dict(self._headers()),
                timeout=aiohttp.ClientTimeout(self._timeout),
            ) as response:
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("relay could not leave its origin", room=room, problem=repr(exc)[:200])
            return
        log.debug("relay left its origin", room=room, status=status)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """End every relay (shutdown: each leaves its origin) and every pull under way."""
        self._closed = True
        pulls = list(self._pulls.values())
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        for relay in list(self._relays.values()):
            if relay.peer.ended is None:
                self._tasks.spawn(self._rooms.leave(relay.peer.session, EndReason.SHUTDOWN))
        for _ in range(3):  # the ends, then the DELETEs they start
            await self._tasks.wait(self._timeout)
        if self._http is not None:
            await self._http.close()
            self._http = None


def _retrieved(task: asyncio.Task[Refused | None]) -> None:
    """A pull's outcome is its callers'; one nobody waits for any more is not an error."""
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
