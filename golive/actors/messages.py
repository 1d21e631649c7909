"""The typed, immutable vocabulary the actors speak.

Every message is a frozen, slotted dataclass of immutable values: pykka does not copy
messages between threads, so nothing in here may be mutated after it is sent. Two kinds:

- *Commands* are asked (the caller waits for a typed reply, always with a timeout). They are
  the arguments of the actors' proxy methods.
- *Events* are told (fire and forget) and dispatched by type in ``on_receive``.

Every command and event may carry ``trace``: the W3C trace-context carrier of the HTTP
request that caused it, so the actor's handling becomes a child span across the thread
boundary.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NewType

import pykka

RoomName = NewType("RoomName", str)
SessionId = NewType("SessionId", str)
TrackId = NewType("TrackId", str)

TraceCarrier = tuple[tuple[str, str], ...]
"""W3C trace-context headers (``traceparent``, ``tracestate``) as immutable pairs."""

ROOM_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SESSION_ID_BYTES = 16  # 128 bits from the OS CSPRNG


def parse_room_name(raw: str) -> RoomName | None:
    """The room name if ``raw`` is a valid one (``^[A-Za-z0-9_-]{1,64}$``), else None."""
    return RoomName(raw) if ROOM_NAME_RE.fullmatch(raw) else None


def new_session_id() -> SessionId:
    """An unguessable session id: 128 bits from ``secrets``, as 32 hex digits."""
    return SessionId(secrets.token_hex(SESSION_ID_BYTES))


class Role(StrEnum):
    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


class MediaKind(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


class EndReason(StrEnum):
    """Why a session or a room ended; logged and counted as is."""

    CLIENT_LEFT = "client_left"  # DELETE on the session resource
    PUBLISHER_LEFT = "publisher_left"  # the room's publisher ended its session
    ADMIN_CLOSED = "admin_closed"
    PUBLISH_FAILED = "publish_failed"  # negotiation of the publisher failed
    NEGOTIATION_FAILED = "negotiation_failed"  # negotiation of a subscriber failed
    ICE_FAILED = "ice_failed"  # ICE failure or consent expiry
    DTLS_CLOSED = "dtls_closed"
    SHUTDOWN = "shutdown"
    ROOM_FAILED = "room_failed"  # the room's actor crashed
    INTERNAL_ERROR = "internal_error"  # the session's own actor crashed
    PUBLISHER_REPLACED = "publisher_replaced"  # a new publisher took over the room
    PUBLISHER_GONE = "publisher_gone"  # the publisher vanished and no one took over in time
    CODEC_CHANGED = "codec_changed"  # the new publisher's codec is not the viewer's
    ORIGIN_GONE = "origin_gone"  # a relayed room's owner (node or worker) vanished
    RELAY_IDLE = "relay_idle"  # a relay room kept no viewer for RELAY_GRACE_SECONDS


class RoutePhase(StrEnum):
    """Where one subscriber stands on one published track."""

    WAITING_KEYFRAME = "waiting_keyframe"  # video: nothing is sent until a keyframe starts it
    FORWARDING = "forwarding"


class SubscriberPhase(StrEnum):
    NEGOTIATING = "negotiating"  # admitted, peer connection not up yet
    WAITING_KEYFRAME = "waiting_keyframe"  # connected, some video track not started yet
    ACTIVE = "active"  # every track forwarding
    CLOSED = "closed"


class Refusal(StrEnum):
    """Why a join was refused; the HTTP layer maps each to its status code."""

    ROOM_TAKEN = "room_taken"  # 409
    NO_PUBLISHER = "no_publisher"  # 404
    SUBSCRIBER_LIMIT = "subscriber_limit"  # 403
    UNKNOWN_SESSION = "unknown_session"  # 404
    NO_SUCH_ROOM = "no_such_room"  # 404
    SHUTTING_DOWN = "shutting_down"  # 503


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One published track as negotiated: its id, kind and codec (``video/VP8``, ...)."""

    track_id: TrackId
    kind: MediaKind
    codec: str


@dataclass(frozen=True, slots=True)
class TrackKey:
    """A published track, named across the process and across the room's incarnations: a room
    name freed by one publisher may be claimed again at once by another."""

    room: RoomName
    publisher: SessionId
    track_id: TrackId


@dataclass(frozen=True, slots=True)
class Route:
    session: SessionId
    phase: RoutePhase


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Who receives one track's packets: what a fanout publishes to the event loop.

    ``version`` grows with every change, so the loop ignores a table older than the one it
    holds; a ``retired`` table (empty) is the fanout's last: the track is gone.
    """

    track: TrackKey
    version: int
    routes: tuple[Route, ...]
    retired: bool = False
    fanout: pykka.ActorRef[Any] | None = None  # where the loop reports KeyframeDelivered
    recorder: pykka.ActorRef[Any] | None = None  # where the loop tells every packet to record

    def sessions(self) -> frozenset[SessionId]:
        return frozenset(route.session for route in self.routes)


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What ``GET /api/rooms`` shows of a room. The room's actor owns it and tells every change
    to the directory (:class:`RoomChanged`), which lists the rooms without asking each one."""

    name: RoomName
    has_publisher: bool
    tracks: tuple[TrackInfo, ...]
    subscribers: int
    waiting: bool = False  # its publisher vanished; viewers stay until one takes over
    relay: bool = False  # a relay room: pulled from its owner elsewhere in the cluster


# --- directory commands (asked) and replies -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimPublisher:
    """Create ``room`` with ``session`` (made by the caller) as its pending publisher, or take
    the room over: when its publisher is gone (the room is waiting), or when ``replaces``
    names its publisher, which the caller saw go silent."""

    room: RoomName
    session: SessionId
    replaces: SessionId | None = None
    trace: TraceCarrier = ()
    # The "publisher" is a relay: golive pulling the room from its owner elsewhere in the
    # cluster. A relay room never records, never waits for a publisher, is never taken
    # over, and ends once it has kept no viewer for RELAY_GRACE_SECONDS.
    relay: bool = False


@dataclass(frozen=True, slots=True)
class HoldRelay:
    """A viewer is about to join the relay room ``room`` pulled by ``publisher``: keep it
    (an idle one waits for the viewer anew). Answered True if that relay is still there."""

    room: RoomName
    publisher: SessionId
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class EndRoom:
    """End ``room``; with ``publisher`` set, only if that session still publishes there."""

    room: RoomName
    reason: EndReason
    publisher: SessionId | None = None
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class PublisherLost:
    """The publisher's transport ended without a DELETE (loop → directory): the room waits
    for a new publisher, when reconnects are allowed, else it ends."""

    room: RoomName
    publisher: SessionId
    reason: EndReason
    connected: bool = True  # its transport had been up (media may have flowed)
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class EndAllRooms:
    reason: EndReason
    trace: TraceCarrier = ()


# --- room commands (asked) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublisherReady:
    """The publisher's offer was answered: these are its tracks; the room goes live."""

    session: SessionId
    tracks: tuple[TrackInfo, ...]
    trace: TraceCarrier = ()
    # After a takeover: the room's tracks (by id) whose codec the viewers cannot receive.
    changed: frozenset[TrackId] = frozenset()


@dataclass(frozen=True, slots=True)
class JoinSubscriber:
    session: SessionId  # made by the caller, so a join that times out can be undone
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class LeaveSubscriber:
    session: SessionId
    reason: EndReason
    trace: TraceCarrier = ()


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal


@dataclass(frozen=True, slots=True)
class Done:
    """A command that has nothing to return succeeded."""


@dataclass(frozen=True, slots=True)
class PublisherClaimed:
    """The room was created with this pending publisher session (or, ``takeover``, taken
    over: its tracks, fanouts and viewers are kept for the new publisher)."""

    room: RoomName
    session: SessionId
    room_actor: pykka.ActorRef[Any]
    takeover: bool = False


@dataclass(frozen=True, slots=True)
class SubscriberAdmitted:
    """A viewer session was admitted; ``subscriber`` is its actor."""

    room: RoomName
    session: SessionId
    tracks: tuple[TrackInfo, ...]
    subscriber: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class RoomEnding:
    """The room left the directory and was told to close; stop ``room_actor`` to wait for it."""

    room: RoomName
    room_actor: pykka.ActorRef[Any]


# --- events (told) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomCrashed:
    """A room actor died of an unexpected error (room → directory)."""

    room: RoomName
    actor_urn: str


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """What the room now shows in ``GET /api/rooms`` (room → directory, after every change:
    live with its tracks, a viewer in or out). ``publisher`` names the room's incarnation, so
    the directory ignores a late report from a room whose name was freed and claimed again."""

    publisher: SessionId
    info: RoomInfo


@dataclass(frozen=True, slots=True)
class FanoutCrashed:
    """A track's fanout died of an unexpected error (fanout → room): the room cannot go on."""

    track_id: TrackId


@dataclass(frozen=True, slots=True)
class CloseRoom:
    """End the room and every session in it (directory → room)."""

    reason: EndReason
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class TakeOver:
    """A new publisher takes the room over from ``previous`` (directory → room)."""

    session: SessionId
    previous: SessionId
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class PublisherGone:
    """The publisher is gone (directory → room): close its session, keep the viewers, wait."""

    session: SessionId
    reason: EndReason
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class ReconnectExpired:
    """A waiting room's reconnect window passed (timer → directory)."""

    room: RoomName
    publisher: SessionId


@dataclass(frozen=True, slots=True)
class RelayIdle:
    """A relay room's wait for a viewer passed (timer → directory): it ends if it is still
    that relay and still has no viewer."""

    room: RoomName
    publisher: SessionId


@dataclass(frozen=True, slots=True)
class SubscriberEnded:
    """A subscriber's session ended on its own (subscriber → room)."""

    session: SessionId
    reason: EndReason


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """The session's ICE and DTLS are up (event loop → session's actor)."""

    session: SessionId


@dataclass(frozen=True, slots=True)
class TracksNegotiated:
    """The viewer's answer carries these of the room's tracks, and no other (event loop →
    subscriber): it is routed on exactly them."""

    session: SessionId
    tracks: frozenset[TrackId]


@dataclass(frozen=True, slots=True)
class PeerFailed:
    """The session's transport ended: ICE failure, consent expiry, DTLS close."""

    session: SessionId
    reason: EndReason


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End this session (room → subscriber)."""

    reason: EndReason
    trace: TraceCarrier = ()


@dataclass(frozen=True, slots=True)
class RouteReady:
    """Start routing this track to the session (subscriber → fanout)."""

    session: SessionId
    subscriber: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class RouteGone:
    """Stop routing this track to the session (subscriber → fanout)."""

    session: SessionId


@dataclass(frozen=True, slots=True)
class KeyframeDelivered:
    """The loop started the session on a keyframe of this track (loop → fanout)."""

    session: SessionId


@dataclass(frozen=True, slots=True)
class TrackForwarding:
    """One of the session's tracks is now forwarding (fanout → subscriber)."""

    track_id: TrackId


# --- recording and upload -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadRecording:
    """A finished recording to upload (recorder → uploader); its upload marker exists."""

    path: Path


@dataclass(frozen=True, slots=True)
class RecordPacket:
    """One RTP packet of a recorded track, as received from the publisher (loop → recorder)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RecorderCrashed:
    """A track's recorder died (recorder → room): the recording failed, the room goes on."""

    track_id: TrackId
