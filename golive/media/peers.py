"""Peer connections for publishers and viewers, negotiated and wired to the packet path.

:class:`MediaHub` lives on the event loop (one per server). It answers a publisher's offer
(``recvonly``, one codec per track, DTLS server), creates one :class:`PublishedTrack` per published
track, answers a viewer's offer with only the codecs it offered that match the published ones
(``sendonly``), connects each viewer's senders to the taps once DTLS is up, and turns the
peer connections' state changes into events for the actors. It decides nothing about rooms:
admission and the end of sessions are the actors', through :class:`RoomService`.

It is also the offerer side of a relay (:meth:`MediaHub.pull`): golive pulling a room from its
owner elsewhere in the cluster over WHEP, the answer's tracks feeding a local relay room's
:class:`PublishedTrack`s exactly as a publisher's do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCSessionDescription
from aiortc.codecs import is_rtx
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from golive.actors.messages import (
    Done,
    EndReason,
    MediaKind,
    PublisherClaimed,
    Refusal,
    Refused,
    Role,
    RoomName,
    SessionId,
    SubscriberAdmitted,
    TrackId,
    TrackInfo,
    TrackKey,
)
from golive.config import DEFAULT_KEYFRAME_CACHE_BYTES, DEFAULT_SESSION_CONNECT_TIMEOUT_SECONDS
from golive.media.forwarding import PublishedTrack
from golive.media.garbage import SessionGarbage
from golive.media.hooks import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    MediaGuard,
    ice_closing,
)
from golive.media.limits import (
    MAX_CANDIDATES_PER_SESSION,
    LimitExceededError,
    check_offer,
    too_many_candidates,
)
from golive.metrics import Metrics
from golive.rooms import RoomService
from golive.tasks import BackgroundTasks
from golive.tracing import Tracing

log = structlog.get_logger(__name__)


class InvalidOfferError(ValueError):
    """The offer is not SDP, or offers nothing golive can forward: the client's error (400).
    Any other exception while an offer is answered is golive's (500)."""


#: How long a relay whose link to the room's owner closed waits for the owner's news of the
#: room's end (and its reason) before it ends as the link's failure (``origin_gone``).
RELAY_ORIGIN_NEWS_SECONDS = 1.0

#: A publisher that sent nothing for this long may be taken over by a new one.
PUBLISHER_SILENCE_SECONDS = 2.0


class InvalidAnswerError(ValueError):
    """A relay's origin answered its offer with SDP golive cannot use (or with no track)."""


class IceRestartError(ValueError):
    """A trickle fragment carries ICE credentials the session does not have: a restart."""


_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)

#: Ends that are failures (the session's span gets an error status): not a client leaving,
#: a room closing or a shutdown.
FAILURES = frozenset(
    {
        EndReason.PUBLISH_FAILED,
        EndReason.NEGOTIATION_FAILED,
        EndReason.ICE_FAILED,
        EndReason.ROOM_FAILED,
        EndReason.INTERNAL_ERROR,
    }
)


@dataclass(eq=False)
class PeerSession:
    """One WHIP or WHEP session: its peer connection and what the HTTP resource needs."""

    hub: MediaHub
    role: Role
    room: RoomName
    pc: ForwardingPeerConnection
    session: SessionId = field(default_factory=lambda: SessionId(""))
    etag: str = field(default_factory=lambda: '"' + secrets.token_hex(8) + '"')
    taps: list[PublishedTrack] = field(default_factory=list)  # published (publisher) or fed by
    ended: EndReason | None = None
    transport_end: EndReason | None = None  # why the transport went down, seen first
    owner: str = ""  # the creator's identity (golive.http.auth.Principal.identity)
    created: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    created_ns: int = field(default_factory=time.time_ns)  # the same instant, in span time
    connected: bool = False
    candidates: int = 0  # ICE candidates given so far, in the offer and trickled
    deadline: asyncio.TimerHandle | None = None  # ends the session if it never connects
    span: Span = trace.INVALID_SPAN  # the session's span, from its offer to its end
    on_end: Callable[[EndReason], None] | None = None  # told the session's end (a relay's)
    relay_link: bool = False  # a viewer that is another worker's relay of the room

    def age(self) -> float:
        """Seconds since the session's offer arrived, for the logs of its story."""
        return round(asyncio.get_running_loop().time() - self.created, 3)

    def tell(self, event: str, *, level: int = logging.INFO, **fields: str) -> None:
        """One step of the session's story: a log line an operator can filter by ``room`` and
        ``session`` (with the seconds since the offer, and the session span's ids), and the
        same step as an event on the session's span."""
        seconds = self.age()
        with trace.use_span(self.span, end_on_exit=False):
            log.log(
                level,
                event,
                room=self.room,
                session=self.session,
                role=self.role.value,
                seconds=seconds,
                **fields,
            )
        if self.span.is_recording():  # (not after the session's end)
            self.span.add_event(event, {"seconds": seconds, **fields})

    def close(self, reason: EndReason) -> None:
        """The session ended (the actors decided): detach and close the peer connection."""
        if self.ended is not None:
            return
        self.ended = reason
        if self.deadline is not None:
            self.deadline.cancel()
        self.tell("session ended", reason=reason.value)
        self.span.set_attribute("golive.end_reason", reason.value)
        if reason in FAILURES:
            self.span.set_status(Status(StatusCode.ERROR, reason.value))
        self.span.end()
        self.hub.closed(self)
        if self.on_end is not None:
            try:
                self.on_end(reason)
            except Exception:
                log.exception("a session's end handler failed", session=self.session)


@dataclass(frozen=True, slots=True)
class Feed:
    """One track a publisher's answer receives: what it will be known as, its codec, its
    receiver and, for a publisher taking a room over, the room's track it feeds (and whether
    that track's viewers can decode its codec)."""

    info: TrackInfo
    codec: RTCRtpCodecParameters
    receiver: ForwardingReceiver
    track: PublishedTrack | None = None
    compatible: bool = True


@dataclass(frozen=True, slots=True)
class Answered:
    session: PeerSession
    answer: str


def parse_offer(sdp: str) -> SessionDescription:
    """The offer, parsed; :class:`InvalidOfferError` if it is not usable SDP,
    :class:`LimitExceededError` if it asks for more than a cap allows (checked first, in one
    pass: aiortc's parser is quadratic in places)."""
    if not sdp.startswith("v=0"):
        raise InvalidOfferError("an SDP offer starts with v=0")
    check_offer(sdp)
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser asserts, and raises anything on garbage
        raise InvalidOfferError(f"unparsable SDP: {type(exc).__name__}: {exc}") from exc
    _check_sections(parsed)
    mids = {m.rtp.muxId for m in parsed.media if m.rtp.muxId}
    # The sections aiortc makes a transport for: each audio and video one, and the first
    # application one (its one SCTP transport). A BUNDLE group led by any other leaves the
    # bundled sections without a transport: the connect task, and later the close, die on it
    # unreported, and the session never connects nor fails.
    transported = {m.rtp.muxId for m in parsed.media if m.kind in ("audio", "video")}
    applications = [m for m in parsed.media if m.kind == "application"]
    if applications:
        transported.add(applications[0].rtp.muxId)
    for group in parsed.group:
        if group.semantic != "BUNDLE" or not group.items:
            continue
        items = [str(item) for item in group.items]
        if not set(items) <= mids:
            raise InvalidOfferError("a BUNDLE group names a media section that does not exist")
        if items[0] not in transported:
            raise InvalidOfferError("a BUNDLE group is led by a section without a transport")
    return parsed


def _check_sections(parsed: SessionDescription) -> None:
    """:class:`InvalidOfferError` unless every media section is one aiortc can answer."""
    media = [m for m in parsed.media if m.kind in ("audio", "video")]
    if not media:
        raise InvalidOfferError("no audio or video section")
    # aiortc answers any other kind as if it were a data channel, and fails on it.
    for section in parsed.media:
        if section.kind not in ("audio", "video", "application"):
            raise InvalidOfferError(f"a media section of unknown kind {section.kind[:20]!r}")
    for section in media:
        if section.direction is None:  # aiortc fails on it when it answers
            raise InvalidOfferError("a media section has no direction")
        # Without these aiortc accepts the offer and its connect task dies unreported,
        # leaving a session (and a room) that never connects nor fails.
        if section.dtls is None or not section.dtls.fingerprints:
            raise InvalidOfferError("a media section has no DTLS fingerprint or setup")
        if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
            raise InvalidOfferError("a media section has no ICE credentials")


async def add_candidates(pc: Any, fragment: str, *, session: str = "") -> None:
    """Add every candidate of an RFC 8840 fragment to ``pc``; skip what cannot be resolved."""
    mid: str | None = None
    index = -1
    for raw in fragment.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line[len("a=") :])
            except (ValueError, IndexError, AssertionError):  # aiortc asserts on some garbage
                continue
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = max(index, 0) if mid is None else None
            try:
                await pc.addIceCandidate(candidate)
            except (ValueError, OSError) as exc:  # e.g. an mDNS name that does not resolve
                log.debug("candidate skipped", session=session, problem=str(exc))
        elif line == "a=end-of-candidates":
            await pc.addIceCandidate(None)


async def _set_offer(pc: ForwardingPeerConnection, offer_sdp: str) -> None:
    """Hand aiortc the client's offer. What aiortc refuses in it (no codec in common, no RTCP
    multiplexing, a candidate it cannot take...) is the client's error."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except (ValueError, InvalidAccessError, OperationError) as exc:
        raise InvalidOfferError(f"offer refused: {type(exc).__name__}: {exc}") from exc


def _negotiation_failed(
    peer: PeerSession, exc: Exception, ended: EndReason | None
) -> Refused | None:
    """What to answer when answering ``peer``'s offer raised ``exc`` (its session has been
    ended since): the refusal to answer if the actors had ended the session meanwhile (its
    room ended, an admin close, a shutdown: aiortc then fails on a closed peer connection),
    else None: the caller re-raises, a client's error (:class:`InvalidOfferError`, 400) or a
    bug (anything else: 500, with its traceback in the log)."""
    if isinstance(exc, InvalidOfferError):
        return None
    if ended is not None:
        peer.tell("negotiation ended with the session", reason=ended.value)
        if ended is EndReason.SHUTDOWN:
            return Refused(Refusal.SHUTTING_DOWN)
        return Refused(
            Refusal.UNKNOWN_SESSION if peer.role is Role.PUBLISHER else Refusal.NO_PUBLISHER
        )
    peer.tell("negotiation failed", level=logging.ERROR, error=repr(exc)[:200])
    return None


def _dtls_server(pc: ForwardingPeerConnection, offer: SessionDescription) -> None:
    """Answer as DTLS server (``a=setup:passive``) unless the offer insists on being it."""
    remote_roles = {m.dtls.role for m in offer.media if m.dtls is not None}
    role = "client" if remote_roles == {"server"} else "server"
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls._role == "auto":  # noqa: SLF001  aiortc has no public DTLS role setter
            dtls._set_role(role)  # noqa: SLF001


def _with_rtx(
    codec: RTCRtpCodecParameters, offered: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    rtx = [c for c in offered if is_rtx(c) and c.parameters.get("apt") == codec.payloadType]
    return [codec, *rtx[:1]]


class MediaHub:
    def __init__(
        self,
        rooms: RoomService,
        *,
        metrics: Metrics,
        tracing: Tracing | None = None,
        ice_servers: RTCConfiguration | None = None,
        connect_timeout: float = DEFAULT_SESSION_CONNECT_TIMEOUT_SECONDS,
        loopback: bool = False,
        keyframe_cache_bytes: int = DEFAULT_KEYFRAME_CACHE_BYTES,
    ) -> None:
        """``loopback``: the server gathers candidates on a loopback address, so clients'
        loopback candidates may be checked (else they are skipped). ``keyframe_cache_bytes``:
        each video track's keyframe cache bound (0: none)."""
        self._rooms = rooms
        self._keyframe_cache_bytes = keyframe_cache_bytes
        self._connect_timeout = connect_timeout
        self._metrics = metrics
        self._tracing = tracing if tracing is not None else Tracing.disabled()
        self._configuration = ice_servers or RTCConfiguration(iceServers=[])
        self._guard = MediaGuard(metrics, loopback=loopback)
        self._room_taps: dict[RoomName, list[PublishedTrack]] = {}
        self._tasks = BackgroundTasks("closing a peer connection failed", level="warning")
        self._garbage = SessionGarbage()

    def sessions(self) -> list[PeerSession]:
        """Every live session."""
        return [r.endpoint for r in self._rooms.registry if isinstance(r.endpoint, PeerSession)]

    def session(self, session: SessionId) -> PeerSession | None:
        """The live session ``session`` (the loop's one map of sessions is the registry's)."""
        record = self._rooms.registry.get(session)
        endpoint = None if record is None else record.endpoint
        return endpoint if isinstance(endpoint, PeerSession) else None

    def taps(self, room: RoomName) -> list[PublishedTrack]:
        return list(self._room_taps.get(room, ()))

    # -- publish ------------------------------------------------------------------------------

    async def publish(self, room: RoomName, offer_sdp: str) -> Answered | Refused:
        """Answer a publisher's offer. Raises :class:`InvalidOfferError` (the room is left as it
        was: a failed publish leaves nothing behind; a failed takeover leaves the room
        waiting)."""
        offer = parse_offer(offer_sdp)
        claimed = await self._admit(Role.PUBLISHER, room, offer)
        if isinstance(claimed, Refused):
            return claimed
        peer, takeover = claimed
        room_tracks = self.taps(room) if takeover else []
        try:
            answer, feeds = await self._answer_publisher(peer, offer_sdp, offer, room_tracks)
        except Exception as exc:
            ended = peer.ended
            await self._rooms.leave(peer.session, EndReason.PUBLISH_FAILED)
            refused = _negotiation_failed(peer, exc, ended)
            if refused is None:
                raise
            return refused
        if peer.ended is not None:  # closed while its answer was made (admin close, shutdown)
            return Refused(Refusal.UNKNOWN_SESSION)
        tracks = tuple(feed.info for feed in feeds)
        changed = frozenset(feed.info.track_id for feed in feeds if not feed.compatible)
        # The room's tracks, from now until their fanouts retire them; known to the loop
        # before the room can be seen live, so a viewer admitted the moment it is finds them.
        made = [] if takeover else [self._new_track(peer, feed) for feed in feeds]
        if made:
            self._room_taps[room] = list(made)
        ready = await self._go_live(peer, made, tracks, changed)
        if not isinstance(ready, Done):  # ended meanwhile (admin close, shutdown)
            return ready
        if takeover:
            for feed in feeds:
                assert feed.track is not None
                feed.track.switch_source(
                    feed.receiver,
                    feed.codec,
                    feed.info,
                    peer.session,
                    compatible=feed.compatible,
                )
            peer.taps = room_tracks
            peer.tell("session took the room over", codec_changed=",".join(sorted(changed)))
        else:
            peer.taps = made
        self._watch(peer)
        peer.tell("session answered")
        return Answered(peer, answer)

    async def _go_live(
        self,
        peer: PeerSession,
        made: list[PublishedTrack],
        tracks: tuple[TrackInfo, ...],
        changed: frozenset[TrackId] = frozenset(),
    ) -> Done | Refused:
        """Tell the room its publisher (or relay) was answered: it goes live with ``tracks``.
        ``made``, the tracks made for it, are closed unless it does; a timeout is undone."""
        try:
            ready = await self._rooms.publisher_ready(peer.session, tracks, changed)
        except BaseException:
            self._close_tracks(made)
            self._rooms.abandon_publisher(peer.room, peer.session)
            raise
        if not isinstance(ready, Done):
            self._close_tracks(made)
        return ready

    def _new_track(self, peer: PeerSession, feed: Feed) -> PublishedTrack:
        return PublishedTrack(
            TrackKey(peer.room, peer.session, feed.info.track_id),
            feed.info,
            feed.codec,
            feed.receiver,
            registry=self._rooms.registry,
            metrics=self._metrics,
            on_close=self._track_closed,
            keyframe_cache_bytes=self._keyframe_cache_bytes,
        )

    def _track_closed(self, track: PublishedTrack) -> None:
        """A track closed (its fanout retired it, or its publish failed): the room's list of
        tracks forgets it."""
        tracks = self._room_taps.get(track.key.room)
        if tracks is not None and track in tracks:
            tracks.remove(track)
            if not tracks:
                del self._room_taps[track.key.room]

    @staticmethod
    def _close_tracks(tracks: list[PublishedTrack]) -> None:
        for track in tracks:
            track.close()

    async def _answer_publisher(
        self,
        peer: PeerSession,
        offer_sdp: str,
        offer: SessionDescription,
        room_tracks: list[PublishedTrack],
    ) -> tuple[str, list[Feed]]:
        """Answer a publisher: ``recvonly``, one codec per track. A publisher taking a room
        over (``room_tracks``) feeds the room's tracks, matched by kind in order, each with
        the codec its viewers have if the offer has it; a section no track of the room
        matches is answered ``inactive``."""
        pc = peer.pc
        await _set_offer(pc, offer_sdp)
        feeds: list[Feed] = []
        unmatched = list(room_tracks)
        for transceiver, media in zip(pc.getTransceivers(), offer.media, strict=False):
            codecs = [c for c in transceiver._codecs if not is_rtx(c)]  # noqa: SLF001
            track = None
            if room_tracks:
                track = next((t for t in unmatched if t.info.kind.value == transceiver.kind), None)
            if (
                media.direction not in ("sendonly", "sendrecv")
                or not codecs
                or not transceiver.mid
                or (room_tracks and track is None)
            ):
                transceiver.direction = "inactive"
                continue
            transceiver.direction = "recvonly"
            codec = codecs[0]
            compatible = True
            if track is not None:
                unmatched.remove(track)
                same = [c for c in codecs if is_codec_compatible(c, track.codec)]
                codec, compatible = (same[0], True) if same else (codecs[0], False)
            transceiver._codecs = _with_rtx(codec, transceiver._codecs)  # noqa: SLF001  one codec per track
            track_id = TrackId(transceiver.mid) if track is None else track.info.track_id
            info = TrackInfo(track_id, MediaKind(transceiver.kind), codec.mimeType)
            assert isinstance(transceiver.receiver, ForwardingReceiver)
            feeds.append(Feed(info, codec, transceiver.receiver, track, compatible))
        if not feeds:
            raise InvalidOfferError(
                "the offer sends none of the room's tracks"
                if room_tracks
                else "the offer sends no audio or video golive can forward"
            )
        _dtls_server(pc, offer)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp, feeds

    # -- play ---------------------------------------------------------------------------------

    async def play(
        self, room: RoomName, offer_sdp: str, *, relay: bool = False
    ) -> Answered | Refused:
        """Answer a viewer's offer. Raises :class:`InvalidOfferError` if it matches no track.
        ``relay``: the viewer is another worker's relay of the room (its keyframe requests are
        its viewers', whom its own keyframe cache serves: they are passed on, never answered
        from the cache here)."""
        offer = parse_offer(offer_sdp)
        admitted = await self._admit(Role.SUBSCRIBER, room, offer)
        if isinstance(admitted, Refused):
            return admitted
        peer, _ = admitted
        peer.relay_link = relay
        taps = self.taps(room)
        if not taps:  # the publisher left between the admission and now
            await self._rooms.leave(peer.session, EndReason.NEGOTIATION_FAILED)
            return Refused(Refusal.NO_PUBLISHER)
        try:
            answer = await self._answer_viewer(peer, offer_sdp, offer, taps)
        except Exception as exc:
            ended = peer.ended
            await self._rooms.leave(peer.session, EndReason.NEGOTIATION_FAILED)
            refused = _negotiation_failed(peer, exc, ended)
            if refused is None:
                raise
            return refused
        self._watch(peer)
        peer.tell("session answered")
        return Answered(peer, answer)

    async def _answer_viewer(
        self,
        peer: PeerSession,
        offer_sdp: str,
        offer: SessionDescription,
        taps: list[PublishedTrack],
    ) -> str:
        pc = peer.pc
        await _set_offer(pc, offer_sdp)
        unassigned = list(taps)
        for transceiver, media in zip(pc.getTransceivers(), offer.media, strict=False):
            match = None
            if media.direction in ("recvonly", "sendrecv"):
                match = self._match(transceiver._codecs, transceiver.kind, unassigned)  # noqa: SLF001
            if match is None:
                transceiver.direction = "inactive"
                continue
            tap, codec = match
            unassigned.remove(tap)
            transceiver.direction = "sendonly"
            transceiver._codecs = _with_rtx(codec, transceiver._codecs)  # noqa: SLF001  what the publisher sends
            sender = transceiver.sender
            assert isinstance(sender, ForwardingSender)
            sender.on_ready = lambda ready, tap=tap: self._sender_ready(peer, tap, ready)
            peer.taps.append(tap)
        if not peer.taps:
            raise InvalidOfferError("the offer accepts none of the published codecs")
        # Routed on exactly these (maybe not all the room's), asked now: the routes reach the
        # loop while the answer is made and the client connects.
        self._rooms.tracks_negotiated(peer.session, frozenset(t.info.track_id for t in peer.taps))
        _dtls_server(pc, offer)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    @staticmethod
    def _match(
        offered: list[RTCRtpCodecParameters], kind: str, taps: list[PublishedTrack]
    ) -> tuple[PublishedTrack, RTCRtpCodecParameters] | None:
        for tap in taps:
            if tap.info.kind.value != kind:
                continue
            for codec in offered:
                if not is_rtx(codec) and is_codec_compatible(codec, tap.codec):
                    return tap, codec
        return None

    def _sender_ready(
        self, peer: PeerSession, tap: PublishedTrack, sender: ForwardingSender
    ) -> None:
        if peer.ended is None and tap in self._room_taps.get(peer.room, ()):
            tap.attach(
                peer.session,
                sender,
                created=peer.created,
                first_keyframe=lambda track: peer.tell("first keyframe sent", track=track),
                replays=not peer.relay_link,
            )

    # -- relay: golive as a WHEP client --------------------------------------------------------

    async def pull(
        self,
        room: RoomName,
        fetch: Callable[[str], Awaitable[str | Refused]],
        *,
        kinds: Sequence[str] = ("video", "audio"),
    ) -> PeerSession | Refused:
        """Pull ``room`` from its owner into a local relay room, golive being the offerer:
        one ``recvonly`` section per kind of ``kinds``, offering every codec golive forwards;
        ``fetch`` hands the offer to the owner (a WHEP POST) and returns its answer, or why it
        refused. The room is claimed first, as a relay (refused if the name is taken here);
        each track of the answer feeds a :class:`PublishedTrack` exactly as a publisher's
        does, and the room goes live with them. Returns the relay's session once the room is
        live (media flows once it connects). Whatever fails or is refused ends the room
        (``publish_failed``): nothing is left behind; the exception (``fetch``'s own, or
        :class:`InvalidAnswerError` for an answer golive cannot use) is the caller's."""
        pc = ForwardingPeerConnection(
            RTCConfiguration(
                iceServers=self._configuration.iceServers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
            ),
            guard=self._guard,
        )
        for kind in kinds:
            pc.addTransceiver(kind, direction="recvonly")
        claimed = await self._admit(Role.PUBLISHER, room, None, relay=pc)
        if isinstance(claimed, Refused):
            return claimed
        peer, _ = claimed
        try:
            feeds = await self._offer_relay(peer, fetch)
        except Exception:
            await self._rooms.leave(peer.session, EndReason.PUBLISH_FAILED)
            raise
        except BaseException:  # cancelled: undone once the directory gets to it
            self._rooms.abandon_publisher(room, peer.session)
            raise
        if isinstance(feeds, Refused) or peer.ended is not None:
            await self._rooms.leave(peer.session, EndReason.PUBLISH_FAILED)
            return feeds if isinstance(feeds, Refused) else Refused(Refusal.UNKNOWN_SESSION)
        made = [self._new_track(peer, feed) for feed in feeds]
        self._room_taps[room] = list(made)
        ready = await self._go_live(peer, made, tuple(f.info for f in feeds))
        if not isinstance(ready, Done):  # ended meanwhile (admin close, shutdown)
            return ready
        peer.taps = made
        self._watch(peer)
        peer.tell("relay answered")
        return peer

    async def _offer_relay(
        self, peer: PeerSession, fetch: Callable[[str], Awaitable[str | Refused]]
    ) -> list[Feed] | Refused:
        """Make the relay's offer, have it answered, and name a track for each section the
        answer sends (its first codec: the one the owner forwards)."""
        pc = peer.pc
        await pc.setLocalDescription(await pc.createOffer())
        answer = await fetch(pc.localDescription.sdp)
        if isinstance(answer, Refused):
            return answer
        if not answer.startswith("v=0"):
            raise InvalidAnswerError("an SDP answer starts with v=0")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc's parser asserts, and raises anything on garbage
            raise InvalidAnswerError(f"answer refused: {type(exc).__name__}: {exc}") from exc
        feeds: list[Feed] = []
        for transceiver in pc.getTransceivers():
            codecs = [c for c in transceiver._codecs if not is_rtx(c)]  # noqa: SLF001  as answered
            if transceiver.currentDirection != "recvonly" or not codecs or not transceiver.mid:
                continue
            codec = codecs[0]
            info = TrackInfo(TrackId(transceiver.mid), MediaKind(transceiver.kind), codec.mimeType)
            assert isinstance(transceiver.receiver, ForwardingReceiver)
            feeds.append(Feed(info, codec, transceiver.receiver))
        if not feeds:
            raise InvalidAnswerError("the answer sends no track")
        return feeds

    # -- trickle ICE --------------------------------------------------------------------------

    async def trickle(self, peer: PeerSession, fragment: str) -> None:
        """Add the candidates of an RFC 8840 fragment; skip what cannot be resolved.

        Raises :class:`IceRestartError` if the fragment carries an ICE ufrag the session does
        not have, :class:`LimitExceededError` if its candidates would take the session past
        :data:`MAX_CANDIDATES_PER_SESSION` (nothing is added then)."""
        remote = peer.pc.remoteDescription
        known = set(_UFRAG.findall(remote.sdp)) if remote is not None else set()
        if set(_UFRAG.findall(fragment)) - known:
            raise IceRestartError("ICE restarts are not supported")
        lines = fragment.splitlines()
        offered = sum(1 for line in lines if line.strip().startswith("a=candidate:"))
        if peer.candidates + offered > MAX_CANDIDATES_PER_SESSION:
            raise LimitExceededError(too_many_candidates())
        peer.candidates += offered
        await add_candidates(peer.pc, fragment, session=peer.session)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _admit(
        self,
        role: Role,
        room: RoomName,
        offer: SessionDescription | None,
        *,
        relay: ForwardingPeerConnection | None = None,
    ) -> tuple[PeerSession, bool] | Refused:
        """Ask the actors to admit a new session of ``role`` (before any negotiation); with
        whether it takes the room over (a publisher). ``relay``: the session is a relay's
        (a publisher pulling the room from its owner), on this peer connection."""
        pc = relay or ForwardingPeerConnection(self._configuration, guard=self._guard)
        peer = PeerSession(self, role, room, pc)
        reply: PublisherClaimed | SubscriberAdmitted | Refused
        try:
            if relay is not None:
                reply = await self._rooms.publish(room, peer, relay=True)
            elif role is Role.PUBLISHER:
                reply = await self._rooms.publish(room, peer, replaces=self._gone_publisher(room))
            else:
                reply = await self._rooms.subscribe(room, peer)
        except BaseException:  # (a timeout: the admission is undone by the room service)
            self._tasks.spawn(peer.pc.close())
            raise
        if isinstance(reply, Refused):
            self._tasks.spawn(peer.pc.close())
            return reply
        peer.session = reply.session
        if offer is not None:
            peer.candidates = sum(len(media.ice_candidates) for media in offer.media)
        name = "relay" if relay is not None else "whip" if role is Role.PUBLISHER else "whep"
        # A child of the request's span, outliving it: the session's story is told on it.
        peer.span = self._tracing.start_session(
            f"{name} session",
            peer.created_ns,
            {"golive.room": room, "golive.session": peer.session, "golive.role": role.value},
        )
        peer.tell("session requested")
        return peer, isinstance(reply, PublisherClaimed) and reply.takeover

    def _gone_publisher(self, room: RoomName) -> SessionId | None:
        """The publisher of ``room``, if it is here and gone in all but name: it sent nothing
        for :data:`PUBLISHER_SILENCE_SECONDS` or its transport is down. A new publisher may
        take the room over from it (the directory decides)."""
        tracks = self.taps(room)
        if not tracks:
            return None
        peer = self.session(tracks[0].publisher)
        if peer is None or peer.role is not Role.PUBLISHER or peer.ended is not None:
            return None
        silent = self._loop_time() - max(t.last_packet for t in tracks)
        down = peer.connected and peer.pc.connectionState != "connected"
        return peer.session if silent >= PUBLISHER_SILENCE_SECONDS or down else None

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _watch(self, peer: PeerSession) -> None:
        pc = peer.pc
        remaining = max(0.0, self._connect_timeout - peer.age())
        peer.deadline = asyncio.get_running_loop().call_later(
            remaining, self._never_connected, peer
        )
        for dtls in {t.receiver.transport for t in pc.getTransceivers()}:
            self._watch_transport(peer, dtls)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            log.debug(
                "peer connection state", session=peer.session, role=peer.role.value, state=state
            )
            if peer.ended is not None:
                return
            if state == "connected":
                if not peer.connected:
                    peer.connected = True
                    if peer.deadline is not None:
                        peer.deadline.cancel()
                    self._metrics.session_setup.labels(peer.role.value, "connected").observe(
                        asyncio.get_running_loop().time() - peer.created
                    )
                self._rooms.peer_connected(peer.session)
            elif state in ("failed", "closed") and peer.on_end is not None:
                # A relay's link to the room's owner: when the owner ended the room, its
                # reason comes through the cluster a moment after the link closes; the
                # relay ends with it, and only without it as the link's failure.
                asyncio.get_running_loop().call_later(
                    RELAY_ORIGIN_NEWS_SECONDS, self._relay_link_lost, peer
                )
            elif state in ("failed", "closed"):
                self._rooms.peer_failed(
                    peer.session,
                    peer.transport_end or EndReason.ICE_FAILED,
                    connected=peer.connected,
                )

        if pc.connectionState == "failed":  # (it failed while its offer was being answered)
            on_state()

    def _relay_link_lost(self, peer: PeerSession) -> None:
        if peer.ended is None:
            self._rooms.peer_failed(
                peer.session, peer.transport_end or EndReason.ICE_FAILED, connected=peer.connected
            )

    def _never_connected(self, peer: PeerSession) -> None:
        """The session is still not connected, its deadline passed: end it as an ICE failure
        (a client that trickles and vanishes before sending a candidate would otherwise hold
        it, and for a publisher its room, forever: ICE waits for candidates without limit)."""
        if peer.ended is not None or peer.connected or peer.pc.connectionState == "connected":
            return
        peer.tell("session not connected in time", level=logging.WARNING)
        self._rooms.peer_failed(peer.session, EndReason.ICE_FAILED, connected=False)

    @staticmethod
    def _watch_transport(peer: PeerSession, dtls: Any) -> None:
        """Tell a remote DTLS close (ICE still up) from ICE failure or lost consent (RFC 7675:
        ICE went down first), at the moment DTLS ends."""

        @dtls.transport.on("statechange")  # type: ignore[untyped-decorator]
        def on_ice_state() -> None:
            state = str(dtls.transport.state)
            if state == "completed":
                peer.tell("ice connected")
            else:
                peer.tell("ice state", level=logging.DEBUG, state=state)

        @dtls.on("statechange")  # type: ignore[untyped-decorator]
        def on_dtls_state() -> None:
            state = str(dtls.state)
            if state == "connected":
                peer.tell("dtls connected")
            else:
                peer.tell("dtls state", level=logging.DEBUG, state=state)
            if dtls.state not in ("closed", "failed"):
                return
            for sender in {t.sender for t in peer.pc.getTransceivers()}:
                if isinstance(sender, ForwardingSender):
                    sender.unbind()  # its socket may close any moment: send nothing more
            if peer.transport_end is not None:
                return
            ice_down = dtls.transport.state in ("closed", "failed") or ice_closing(dtls)
            peer.transport_end = EndReason.ICE_FAILED if ice_down else EndReason.DTLS_CLOSED

    def closed(self, peer: PeerSession) -> None:
        """A session ended: unhook it from the packet path and close its peer connection.
        (A publisher's tracks are the room's: they close when their fanouts retire them, and
        a publisher taking the room over feeds them meanwhile.)"""
        if peer.role is Role.PUBLISHER:
            for transceiver in peer.pc.getTransceivers():
                for tap in peer.taps:
                    tap.drop_source(transceiver.receiver)
        else:
            for tap in peer.taps:
                tap.detach(peer.session)
        self._tasks.spawn(self._close(peer))

    async def _close(self, peer: PeerSession) -> None:
        await peer.pc.close()
        self._garbage.session_ended(live=len(self._rooms.registry))

    async def shutdown(self) -> None:
        """Wait for peer connections being closed (sessions are ended by the actors)."""
        await self._tasks.wait(10)
        self._garbage.close()
