"""The event loop's way into the actors: join, leave, list, close.

:class:`RoomService` is what HTTP handlers (and the media layer) call. It never changes room
state itself: every decision is an actor's, asked with a timeout and awaited without blocking
the loop (:func:`golive.actors.base.reply_of`). It keeps the loop's session registry in step
with the actors' answers.

Session ids are made here, on the loop, and sent with the claim or the join: an ask that
times out is undone by a compensating command for that id (``EndRoom``,
``LeaveSubscriber``), which the actor handles after the late claim or join (its inbox is in
order) and which does nothing if that was refused. Nothing is left admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pykka
import structlog

from golive.actors.base import barrier, reply_of, tell_quietly
from golive.actors.directory import DirectoryProxy
from golive.actors.messages import (
    ClaimPublisher,
    Done,
    EndAllRooms,
    EndReason,
    EndRoom,
    HoldRelay,
    JoinSubscriber,
    LeaveSubscriber,
    PeerConnected,
    PeerFailed,
    PublisherClaimed,
    PublisherLost,
    PublisherReady,
    Refusal,
    Refused,
    Role,
    RoomEnding,
    RoomInfo,
    RoomName,
    SessionId,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
    TracksNegotiated,
    new_session_id,
)
from golive.actors.room import room_proxy
from golive.metrics import Metrics
from golive.sessions import SessionEndpoint, SessionRecord, SessionRegistry
from golive.tasks import BackgroundTasks
from golive.tracing import Tracing

log = structlog.get_logger(__name__)


class RoomService:
    def __init__(
        self,
        directory: DirectoryProxy,
        registry: SessionRegistry,
        *,
        timeout: float,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        session_ids: Callable[[], SessionId] = new_session_id,
    ) -> None:
        """``session_ids`` makes each new session's id (a cluster's worker prefixes its tag)."""
        self._new_session_id = session_ids
        self._directory = directory
        self._tracing = tracing if tracing is not None else Tracing.disabled()
        self._registry = registry
        self._timeout = timeout
        self._metrics = metrics
        self._tasks = BackgroundTasks("background session work failed")

    @property
    def registry(self) -> SessionRegistry:
        return self._registry

    # -- publish ------------------------------------------------------------------------------

    async def publish(
        self,
        room: RoomName,
        endpoint: SessionEndpoint,
        *,
        replaces: SessionId | None = None,
        relay: bool = False,
    ) -> PublisherClaimed | Refused:
        """Claim ``room`` for a new publisher (pending until :meth:`publisher_ready`), or take
        it over: from a publisher that vanished, or from ``replaces``, its publisher, gone
        silent. ``relay``: the publisher is a relay pulling the room from its owner."""
        session = self._new_session_id()
        claim = ClaimPublisher(room, session, replaces, self._tracing.carrier(), relay=relay)
        try:
            reply = await reply_of(self._directory.claim_publisher(claim), self._timeout)
        except TimeoutError:
            self.abandon_publisher(room, session)
            raise
        if isinstance(reply, PublisherClaimed):
            self._registry.add(
                SessionRecord(reply.session, room, Role.PUBLISHER, endpoint, reply.room_actor)
            )
        return reply

    async def publisher_ready(
        self,
        session: SessionId,
        tracks: tuple[TrackInfo, ...],
        changed: frozenset[TrackId] = frozenset(),
    ) -> Done | Refused:
        """The publisher's offer was answered: the room goes live with ``tracks``."""
        record = self._registry.get(session)
        if record is None or record.role is not Role.PUBLISHER:
            return Refused(Refusal.UNKNOWN_SESSION)
        try:
            return await reply_of(
                room_proxy(record.room_actor).publisher_ready(
                    PublisherReady(session, tracks, self._tracing.carrier(), changed)
                ),
                self._timeout,
            )
        except pykka.ActorDeadError:
            return Refused(Refusal.UNKNOWN_SESSION)

    def abandon_publisher(self, room: RoomName, session: SessionId) -> None:
        """Undo a claim whose answer did not come in time, without waiting: the room ends
        (or, taken over, waits again) once the directory gets to it; nothing if the claim
        was refused."""
        log.warning("publish abandoned: the directory did not answer in time", room=room)
        self._directory.end_room(
            EndRoom(room, EndReason.PUBLISH_FAILED, session, self._tracing.carrier())
        )

    async def hold_relay(self, room: RoomName, publisher: SessionId) -> bool:
        """A viewer is about to join the relay room ``room`` pulled by ``publisher``: True if
        that relay is still there (kept for the viewer: an idle one waits for it anew)."""
        hold = HoldRelay(room, publisher, self._tracing.carrier())
        return await reply_of(self._directory.hold_relay(hold), self._timeout)

    # -- play ---------------------------------------------------------------------------------

    async def subscribe(
        self, room: RoomName, endpoint: SessionEndpoint
    ) -> SubscriberAdmitted | Refused:
        ref = await reply_of(self._directory.lookup(room), self._timeout)
        if ref is None:  # (a room that exists counts its own refusals)
            if self._metrics is not None:
                labels = (Role.SUBSCRIBER.value, Refusal.NO_PUBLISHER.value)
                self._metrics.join_refusals.labels(*labels).inc()
            return Refused(Refusal.NO_PUBLISHER)
        session = self._new_session_id()
        room_actor = room_proxy(ref)
        try:
            reply = await reply_of(
                room_actor.join_subscriber(JoinSubscriber(session, self._tracing.carrier())),
                self._timeout,
            )
        except pykka.ActorDeadError:  # the room ended between the lookup and the join
            return Refused(Refusal.NO_PUBLISHER)
        except TimeoutError:  # undone once the room gets to it (nothing if it refused)
            log.warning("join abandoned: the room did not answer in time", room=room)
            with contextlib.suppress(pykka.ActorDeadError):
                room_actor.leave_subscriber(
                    LeaveSubscriber(session, EndReason.NEGOTIATION_FAILED, self._tracing.carrier())
                )
            raise
        if isinstance(reply, SubscriberAdmitted):
            self._registry.add(
                SessionRecord(reply.session, room, Role.SUBSCRIBER, endpoint, ref, reply.subscriber)
            )
        return reply

    # -- leave --------------------------------------------------------------------------------

    async def leave(self, session: SessionId, reason: EndReason) -> Done | Refused:
        """End a session. A publisher leaving ends its room and every session in it.

        Returns once the session (and, for a publisher, the room) is fully ended.
        """
        record = self._registry.get(session)
        if record is None:
            return Refused(Refusal.UNKNOWN_SESSION)
        if record.role is Role.PUBLISHER:
            room_reason = EndReason.PUBLISHER_LEFT if reason is EndReason.CLIENT_LEFT else reason
            reply = await reply_of(
                self._directory.end_room(
                    EndRoom(record.room, room_reason, session, self._tracing.carrier())
                ),
                self._timeout,
            )
            if isinstance(reply, Refused | Done):  # (Done: a failed takeover, the room waits)
                return reply
            await self._stopped(reply)
            return Done()
        try:
            return await reply_of(
                room_proxy(record.room_actor).leave_subscriber(
                    LeaveSubscriber(session, reason, self._tracing.carrier())
                ),
                self._timeout,
            )
        except pykka.ActorDeadError:
            return Refused(Refusal.UNKNOWN_SESSION)

    async def close_room(self, room: RoomName, reason: EndReason) -> bool:
        """End ``room`` whoever publishes in it (admin close). False if there is none."""
        reply = await reply_of(
            self._directory.end_room(EndRoom(room, reason, None, self._tracing.carrier())),
            self._timeout,
        )
        if not isinstance(reply, RoomEnding):
            return False
        await self._stopped(reply)
        return True

    # -- peer connection events (from the media layer, on the loop) ---------------------------

    def peer_connected(self, session: SessionId) -> None:
        record = self._registry.get(session)
        if record is not None and record.actor is not None:
            tell_quietly(record.actor, PeerConnected(session))

    def tracks_negotiated(self, session: SessionId, tracks: frozenset[TrackId]) -> None:
        """A viewer's offer is matched: its answer carries ``tracks`` (maybe not all the room's)."""
        record = self._registry.get(session)
        if record is not None and record.actor is not None:
            tell_quietly(record.actor, TracksNegotiated(session, tracks))

    def peer_failed(self, session: SessionId, reason: EndReason, *, connected: bool = True) -> None:
        """The session's transport ended by itself (ICE failure, consent lost, DTLS close);
        ``connected``: it had been up."""
        record = self._registry.get(session)
        if record is None:
            return
        if record.actor is not None:
            tell_quietly(record.actor, PeerFailed(session, reason))
        else:
            self._tasks.spawn(self._publisher_lost(record, reason, connected=connected))

    async def _publisher_lost(
        self, record: SessionRecord, reason: EndReason, *, connected: bool
    ) -> None:
        """The publisher vanished (no DELETE): its room waits for another, or ends."""
        lost = PublisherLost(
            record.room, record.session, reason, connected, self._tracing.carrier()
        )
        reply = await reply_of(
            self._directory.publisher_lost(lost),
            self._timeout,
        )
        if isinstance(reply, RoomEnding):
            await self._stopped(reply)

    # -- listing ------------------------------------------------------------------------------

    async def has_room(self, room: RoomName) -> bool:
        """``room`` is in this process's directory (live, pending or waiting)."""
        return await reply_of(self._directory.lookup(room), self._timeout) is not None

    async def rooms(self) -> tuple[RoomInfo, ...]:
        """Every room with a publisher, by name: one ask, to the directory, which keeps what
        each room last reported of itself. No room is asked, so a listing costs one thread
        round trip however many rooms there are, and a busy or stalled room delays nothing.
        The same tuple comes back until a room comes, goes or changes."""
        return await reply_of(self._directory.listing(), self._timeout)

    # -- shutdown -----------------------------------------------------------------------------

    async def shutdown(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        """Refuse new publishers, end every room, wait for them and for background work."""
        endings = await reply_of(
            self._directory.end_all(EndAllRooms(reason, self._tracing.carrier())), self._timeout
        )
        await asyncio.gather(*(self._stopped(ending) for ending in endings))
        await self._tasks.wait(self._timeout)

    async def _stopped(self, ending: RoomEnding) -> None:
        """Wait until the ended room has closed every session and stopped every child."""
        await barrier(ending.room_actor, self._timeout)
