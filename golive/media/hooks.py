"""Everything golive does with aiortc's and aioice's private internals, in one place.

aiortc has no RTP passthrough: its receivers decode and its senders encode. golive keeps all
of aiortc's negotiation, ICE, DTLS and SRTP, and swaps in a receiver that hands the decrypted
packets to the forwarding code (starting no decoder) and a sender that sends packets it is
given (running no encoder). aiortc is pinned exactly; ``tests/test_aiortc_internals.py``
checks every private name used here and fails naming the one that moved.

Process-wide changes, made once by :func:`install` (golive owns its process):

- answers echo the offerer's payload types in 35-63 too (Chrome numbers AV1 there);
- aiortc's codec table gains what is forwarded but never coded: the H.264 profiles browsers
  and OBS offer (aiortc lists only constrained baseline), VP9 and AV1;
- aiortc's receivers make their bitrate estimator (1 000 objects) when they first use it,
  not when they are made: golive's receivers never use it;
- aioice's host address discovery returns ``ICE_HOST_ADDRESSES`` when set, and then
  includes 127.0.0.1 if asked (aioice always leaves loopback out);
- aioice's ``StunProtocol.datagram_received`` screens what reaches golive's own connections
  (:func:`screen_datagram`; any other connection in the process is left as it was).

Hostile input (see docs/operations.md, Threat model): aioice hands every datagram that does
not parse as STUN to the connection, whatever its source, and aiortc's DTLS receive loop dies
on the first exception it meets (``data[0]`` of an empty datagram, ``struct.error`` from a
malformed REMB in its RTCP routing), taking the session, and for a publisher the room, with
it. golive drops what is not from the session's peer before DTLS, SRTP or RTCP parsing sees
it, and keeps the receive loop alive through a packet that fails (:class:`GuardedDtlsTransport`).
Both are needed with aioice 0.13.0 and aiortc 1.16.0 (the pinned versions); neither has an
upstream fix yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
import aioice.stun
import pylibsrtp
import structlog
from aiortc import (
    RTCDtlsTransport,
    RTCIceCandidate,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc import codecs as aiortc_codecs
from aiortc import rtcrtpreceiver as aiortc_receiver
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    unwrap_rtx,
)
from pylibsrtp._binding import ffi as srtp_ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as srtp_lib

from golive.logs import Throttle
from golive.media._fanout import DROPPED, FAILED, NOT_READY, SENT, Output
from golive.media.limits import MAX_SSRCS_PER_TRACK, RTCP_BYTES_PER_SECOND, ByteBudget
from golive.media.rtp import RTP_HEADER, payload_offset
from golive.metrics import Metrics

log = structlog.get_logger(__name__)

# What goes out through asyncio's transport (RTCP, and RTP when golive is a client) is dropped
# once that much is queued unsent. (The server's RTP goes out through the C fan-out, which
# drops on a full kernel send buffer and queues nothing.)
SEND_BUFFER_LIMIT = 512 * 1024
RTCP_INTERVAL = 1.0
MAX_REPORT_BLOCKS = 31
_U32 = 0xFFFFFFFF

PacketSink = Callable[[RtpPacket, RTCRtpCodecParameters], None]


class Delivery(enum.Enum):
    SENT = "sent"
    DROPPED = "dropped"  # the viewer's socket is backed up: lost on purpose, counted
    NOT_READY = "not_ready"  # not connected (yet, or any more)
    FAILED = "failed"  # the send failed (counted on the viewer's output)


# -- process-wide setup ---------------------------------------------------------------------

_PASSTHROUGH_H264 = [
    # (profile-level-id, packetization-mode): what Chrome, Firefox, Safari and OBS offer.
    ("42001f", "0"),
    ("42e01f", "0"),
    ("4d001f", "1"),
    ("4d001f", "0"),
    ("64001f", "1"),
    ("64001f", "0"),
    ("640c1f", "1"),
]


def _video_feedback() -> list[RTCRtcpFeedback]:
    return [
        RTCRtcpFeedback(type="nack"),
        RTCRtcpFeedback(type="nack", parameter="pli"),
        RTCRtcpFeedback(type="ccm", parameter="fir"),
        RTCRtcpFeedback(type="goog-remb"),
    ]


def _extend_codecs() -> None:
    video = aiortc_codecs.CODECS["video"]
    if any(c.mimeType.lower() == "video/av1" for c in video):
        return  # installed already
    used = {c.payloadType for kind in aiortc_codecs.CODECS.values() for c in kind}
    free = iter(pt for pt in range(96, 128) if pt not in used)

    def add(mime: str, parameters: dict[str, str | int | None]) -> None:
        payload_type = next(free)
        video.append(
            RTCRtpCodecParameters(
                mimeType=mime,
                clockRate=90000,
                payloadType=payload_type,
                rtcpFeedback=_video_feedback(),
                parameters=dict(parameters),
            )
        )
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx",
                clockRate=90000,
                payloadType=next(free),
                parameters={"apt": payload_type},
            )
        )

    for profile, mode in _PASSTHROUGH_H264:
        add(
            "video/H264",
            {
                "level-asymmetry-allowed": "1",
                "packetization-mode": mode,
                "profile-level-id": profile,
            },
        )
    add("video/VP9", {"profile-id": "0"})
    add("video/VP9", {"profile-id": "2"})
    add("video/AV1", {})


# Browsers run out of 96-127 and number newer codecs (AV1, more H.264 profiles) in 35-63.
# aiortc answers with the offerer's payload type only inside 96-127 and otherwise with its
# own: the answer then names a type the offerer never meant, and nothing decodes.
PAYLOAD_TYPES_TO_ECHO = frozenset(range(35, 64)) | frozenset(range(96, 128))


def install(host_addresses: tuple[str, ...]) -> None:
    """Make aiortc and aioice fit for forwarding. Safe to call again (tests do)."""
    _extend_codecs()
    aiortc_rtp.DYNAMIC_PAYLOAD_TYPES = PAYLOAD_TYPES_TO_ECHO  # type: ignore[assignment]
    estimator: Any = getattr(aiortc_receiver, "RemoteBitrateEstimator")  # noqa: B009  not re-exported
    if estimator is not EstimatorOnFirstUse:
        EstimatorOnFirstUse.made = estimator
        setattr(aiortc_receiver, "RemoteBitrateEstimator", EstimatorOnFirstUse)  # noqa: B010  likewise
    _install_screen()
    original = getattr(aioice.ice.get_host_addresses, "golive_original", None)
    if original is None:
        original = aioice.ice.get_host_addresses

    def host_addresses_for(use_ipv4: bool, use_ipv6: bool) -> list[str]:  # noqa: FBT001  aioice's signature
        if not host_addresses:
            return list(original(use_ipv4, use_ipv6))
        return [a for a in host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    host_addresses_for.golive_original = original  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = host_addresses_for


class EstimatorOnFirstUse:
    """Stands for aiortc's ``RemoteBitrateEstimator`` in every receiver aiortc makes, and makes
    the real one when a packet is first fed to it: making it costs 1 000 small objects and
    about half a millisecond of the loop per viewer, and golive's receivers never feed it
    (aiortc's own, in a test's client, still do)."""

    __slots__ = ("_estimator",)
    made: Callable[[], Any]

    def __init__(self) -> None:
        self._estimator: Any = None

    def add(self, **packet: Any) -> Any:
        if self._estimator is None:
            self._estimator = self.made()
        return self._estimator.add(**packet)


# -- hostile datagrams: screened before aiortc sees them ------------------------------------

#: Shortest datagram that can be DTLS (a 13-byte record header), SRTP (a 12-byte RTP header
#: and its tag) or SRTCP: anything shorter is nothing golive could use.
MIN_MEDIA_DATAGRAM = 12
#: A DTLS transport whose receive loop fails this many times in a row (no datagram handled
#: in between) is broken, not attacked: it ends as aiortc would have ended it.
MAX_CONSECUTIVE_FAILURES = 100
_FAILURE_LOG_INTERVAL = 10.0


class MediaGuard:
    """What golive refuses on its media sockets, counted (and failures logged, throttled).

    One per :class:`~golive.media.peers.MediaHub`; every golive peer connection and its ICE
    connections carry it (``golive_guard``), which is what marks them as golive's."""

    def __init__(self, metrics: Metrics | None = None, *, loopback: bool = True) -> None:
        self._metrics = metrics
        self._throttle = Throttle(_FAILURE_LOG_INTERVAL)
        # Remote loopback candidates may be checked: this side gathers on loopback too. The
        # server says whether it does (MediaHub); a peer connection made without a hub (a
        # test's or a benchmark's client on this machine) is not kept from loopback.
        self.loopback = loopback

    def reachable(self, candidate: RTCIceCandidate) -> bool:
        """Whether the server may send connectivity checks to a remote candidate: never to a
        multicast, unspecified or reserved (broadcast) address or port 0, and to loopback
        only when the server itself gathers on loopback (else a client could aim the
        server's STUN checks at its own local services). Names (mDNS) are aioice's to
        resolve."""
        if not 0 < candidate.port < 65536:
            return False
        try:
            address = ipaddress.ip_address(candidate.ip)
        except ValueError:
            return True
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            return False
        return self.loopback or not address.is_loopback

    def dropped(self, reason: str) -> None:
        """A datagram dropped before aiortc saw it."""
        if self._metrics is not None:
            self._metrics.datagrams_dropped.labels(reason).inc()

    def dropped_packet(self, reason: str) -> None:
        """A publisher's RTP packet dropped rather than forwarded."""
        if self._metrics is not None:
            self._metrics.packets_dropped.labels(reason).inc()

    def failed(self, exc: Exception) -> None:
        """A datagram from the session's own peer made the receive path raise: dropped."""
        error = type(exc).__name__
        if self._metrics is not None:
            self._metrics.receive_errors.labels(error).inc()
        suppressed = self._throttle.allow()
        if suppressed is not None:
            log.warning(
                "media packet dropped: handling it failed",
                error=error,
                problem=str(exc)[:200],
                suppressed=suppressed,
                exc_info=exc,
            )


def _from_peer(protocol: aioice.ice.StunProtocol, addr: tuple[str, int]) -> bool:
    """Whether ``addr`` is the peer this socket's session agreed on: the remote end of the
    nominated pair, or before nomination of a pair its checks validated (an authenticated
    USE-CANDIDATE, or a check of ours answered): the DTLS ClientHello may come first."""
    connection = protocol.receiver
    nominated = connection._nominated.get(protocol.local_candidate.component)
    if nominated is not None:
        return bool(nominated.protocol is protocol and nominated.remote_addr == addr)
    return any(
        pair.protocol is protocol
        and pair.remote_addr == addr
        and (pair.remote_nominated or pair.state == aioice.ice.CandidatePair.State.SUCCEEDED)
        for pair in connection._check_list
    )


def _usable_stun(data: bytes) -> bool:
    """Whether aioice can handle this STUN message without raising. (aioice parses it again:
    STUN is a check every few seconds per session, so that second parse is not worth a copy
    of aioice's dispatch.)"""
    try:
        message = aioice.stun.parse_message(data)
    except Exception:  # noqa: BLE001  aioice raises ValueError, struct.error, IndexError...
        return False
    # An authenticated check without PRIORITY (mandatory, RFC 8445 7.1.1): aioice answers
    # it, then its check_incoming raises KeyError (an ERROR with a traceback, for each one).
    # (Unauthenticated requests get aioice's 400 or 401 before that.)
    return not (
        message.message_class == aioice.stun.Class.REQUEST
        and message.message_method == aioice.stun.Method.BINDING
        and "MESSAGE-INTEGRITY" in message.attributes
        and "PRIORITY" not in message.attributes
    )


def screen_datagram(
    protocol: aioice.ice.StunProtocol, data: bytes, addr: tuple[str, int]
) -> str | None:
    """Why a datagram on a golive ICE socket must be dropped, or None to let it through.

    STUN (first byte 0-3, RFC 7983) goes to aioice if it parses; DTLS (20-63) and SRTP/SRTCP
    (128-191) only from the session's peer and long enough to be anything; all else (TURN
    channel data, which golive never asked for, and the rest) is dropped."""
    if not data:
        return "short"
    first = data[0]
    if first < 4:
        return None if _usable_stun(data) else "malformed_stun"
    if not (19 < first < 64 or 127 < first < 192):
        return "not_media"
    if len(data) < MIN_MEDIA_DATAGRAM:
        return "short"
    return None if _from_peer(protocol, addr) else "off_path"


def _install_screen() -> None:
    stun_protocol = aioice.ice.StunProtocol
    original = getattr(stun_protocol.datagram_received, "golive_original", None)
    if original is None:
        original = stun_protocol.datagram_received

    def datagram_received(self: aioice.ice.StunProtocol, data: Any, addr: Any) -> None:
        guard: MediaGuard | None = getattr(self.receiver, "golive_guard", None)
        if guard is None:
            original(self, data, addr)
            return
        reason = screen_datagram(self, data, (addr[0], addr[1]))
        if reason is not None:
            guard.dropped(reason)
            return
        try:
            original(self, data, addr)
        except Exception as exc:  # noqa: BLE001  one datagram, never a traceback per datagram
            guard.failed(exc)

    datagram_received.golive_original = original  # type: ignore[attr-defined]
    stun_protocol.datagram_received = datagram_received  # type: ignore[method-assign]


#: How long a connection waits for the peer's checks once it has no candidate pair left to
#: check (RFC 8863's patience timer, at its recommended 39.5 s: a STUN transaction's timeout).
#: In golive a session's connect deadline (``SESSION_CONNECT_TIMEOUT_SECONDS``, 30 s by
#: default) usually ends it first.
PATIENCE_SECONDS = 39.5


class PromptConnection(aioice.ice.Connection):
    """aioice's ICE connection, whose ``connect()`` returns as soon as every component has a
    nominated pair, and which waits for peer-reflexive candidates before it fails.

    Prompt: aioice starts checks from a loop that sleeps 20 ms (its pacing timer, Ta) between
    rounds and looks at the check list only after each sleep: a check list completed just
    after a round was seen up to 20 ms later, and DTLS started that much later, on both sides
    of every session (at one join a second, about 20 of a viewer's 55 ms from POST to first
    RTP). Here ``connect()`` returns when the check list completes too; aioice's loop ends by
    itself at its next round (it cancels what checks remain and starts consent freshness, as
    it always did), and :meth:`close` ends it first if it is still running then.

    Patient (RFC 8445 7.3.1.3, RFC 8863): a client may signal end-of-candidates with no
    candidate its checks can use (none at all, behind a NAT, or only names that do not
    resolve); its checks then reveal its address as a peer-reflexive candidate. aioice fails
    such a connection at once ("no candidate pairs": it even drops the component the offer
    gave no candidate for), and the session stayed up, dead, until its connect deadline.
    Here the connection fails only once :data:`PATIENCE_SECONDS` have passed since
    ``connect()`` with no pair left to check; a check from the client before then makes a
    pair and connects."""

    def _golive_adopt(self) -> None:
        self._golive_complete = False
        self._golive_completed: asyncio.Future[None] | None = None  # while connect() waits
        self._golive_checks: asyncio.Future[None] | None = None  # aioice's connect()
        self._golive_patient = True  # until PATIENCE_SECONDS after connect()
        self._golive_patience: asyncio.TimerHandle | None = None

    def _check_list_maybe_complete(self) -> bool:
        complete = bool(super()._check_list_maybe_complete())
        if complete:
            self._golive_complete = True
            if self._golive_completed is not None and not self._golive_completed.done():
                self._golive_completed.set_result(None)
        return complete

    def _remote_candidates_expected(self) -> bool:
        # aioice keeps checking, and does not fail the check list, while this holds.
        return self._golive_patient or bool(super()._remote_candidates_expected())

    def _prune_components(self) -> None:
        # aioice drops each component the peer gave no candidate for once it signals
        # end-of-candidates: with none at all, the one component, and no check could ever
        # complete the check list. Its checks may still give it one.
        if not self._golive_patient:
            super()._prune_components()

    def _golive_lose_patience(self) -> None:
        """No check made a pair in time: from now on the check list fails as aioice would."""
        self._golive_patience = None
        self._golive_patient = False
        if not super()._remote_candidates_expected() and not self._check_list_done:
            self._end_remote_candidates()  # prunes, then completes or fails the check list

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._golive_patience = loop.call_later(PATIENCE_SECONDS, self._golive_lose_patience)
        checks = self._golive_checks = asyncio.ensure_future(super().connect())
        completed = self._golive_completed = loop.create_future()
        try:
            await asyncio.wait((checks, completed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled, or closed with its loop: leave nothing running
            with contextlib.suppress(RuntimeError):  # (a closed loop cancels nothing)
                checks.cancel()
            raise
        finally:
            self._golive_completed = None
            self._golive_stop_waiting()
        if checks.done():
            checks.result()  # aioice's outcome: None, or its ConnectionError
            return
        checks.add_done_callback(_ended_quietly)

    def _golive_stop_waiting(self) -> None:
        if self._golive_patience is not None:
            self._golive_patience.cancel()
            self._golive_patience = None

    async def close(self) -> None:
        self._golive_stop_waiting()
        checks = self._golive_checks
        if checks is not None and self._golive_complete and not checks.done():
            checks.cancel()  # (before it could start consent checks on a closed connection)
            with contextlib.suppress(asyncio.CancelledError):
                await checks
        await super().close()


def _ended_quietly(task: asyncio.Future[None]) -> None:
    """Collect the outcome of aioice's check loop once ``connect()`` has returned without it
    (cancelled by a close, or done)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("ICE checks ended with an error after completing", error=repr(task.exception()))


class GuardedIceTransport(RTCIceTransport):
    """aiortc's ICE transport, which skips remote candidates the server must not check
    (:meth:`MediaGuard.reachable`), whether they come in the offer or trickled."""

    _golive_guard: MediaGuard

    async def addRemoteCandidate(self, candidate: RTCIceCandidate | None) -> None:  # noqa: N802  aiortc's name
        if candidate is not None and not self._golive_guard.reachable(candidate):
            log.debug("remote candidate skipped", address=candidate.ip, port=candidate.port)
            return
        await super().addRemoteCandidate(candidate)


class GuardedDtlsTransport(RTCDtlsTransport):
    """aiortc's DTLS transport, whose receive loop survives a datagram it fails to handle.

    aiortc's loop ends the transport (and so the session) on any exception but
    ``ConnectionError``: a malformed RTCP packet from the peer (aiortc's REMB routing raises
    ``struct.error``) or a bug in a forwarding hook. Here such a datagram is dropped, counted
    and logged (throttled); only a loop that fails :data:`MAX_CONSECUTIVE_FAILURES` times in
    a row, handling nothing in between, ends as before."""

    def _golive_adopt(self, guard: MediaGuard) -> None:
        self._golive_guard = guard
        self._golive_failures = 0
        self._golive_rtcp = ByteBudget(RTCP_BYTES_PER_SECOND, 1.0, time.monotonic())

    async def _handle_rtcp_data(self, data: bytes) -> None:
        """RTCP from the peer (decrypted and authenticated), within its byte budget: beyond
        :data:`RTCP_BYTES_PER_SECOND` it is dropped unparsed (handling NACKs costs the
        loop about 0.5 ms per kB)."""
        if not self._golive_rtcp.take(len(data), RTCP_BYTES_PER_SECOND, time.monotonic()):
            self._golive_guard.dropped("rtcp_over_budget")
            return
        await super()._handle_rtcp_data(data)

    async def _recv_next(self) -> None:
        try:
            await super()._recv_next()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._golive_failures += 1
            if self._golive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise
            self._golive_guard.failed(exc)
        else:
            self._golive_failures = 0


# -- receiving: the publisher's packets, decrypted, to the forwarding code ------------------


class MissingPackets:
    """The publisher's sequence numbers not received yet, for NACKs (RFC 4585).

    aiortc's ``NackGenerator`` walks every sequence number of a gap, up to 32 767 steps for
    one packet that jumps ahead; here a jump marks at most :data:`HISTORY` of them, and only
    those within :data:`HISTORY` of the newest are kept."""

    HISTORY = 128

    def __init__(self) -> None:
        self.newest: int | None = None
        self.missing: set[int] = set()

    def add(self, seq: int) -> bool:
        """Note ``seq`` as received; True if it revealed packets missing."""
        if self.newest is None:
            self.newest = seq
            return False
        ahead = (seq - self.newest) & 0xFFFF
        if ahead == 0 or ahead >= 0x8000:  # a duplicate, or late (perhaps a retransmission)
            self.missing.discard(seq)
            return False
        self.newest = seq
        if ahead == 1:
            return False
        # (kept for NACKs sent when a gap shows: older entries are dropped only then)
        self.missing = {lost for lost in self.missing if (seq - lost) & 0xFFFF <= self.HISTORY}
        self.missing.update((seq - back) & 0xFFFF for back in range(1, min(ahead, self.HISTORY)))
        return True


class ForwardingReceiver(RTCRtpReceiver):
    """Hands every decrypted RTP packet to ``sink``; starts no decoder, keeps no frames.

    Instances are made by aiortc as plain ``RTCRtpReceiver``s and adopted (class swapped) by
    :class:`ForwardingPeerConnection`, so all of aiortc's own set-up is kept.
    """

    sink: PacketSink | None
    on_sender_report: Callable[[RtcpSrPacket], None] | None

    def _adopt(self, guard: MediaGuard) -> None:
        self.sink = None
        self.on_sender_report = None
        self._golive_guard = guard
        self._golive_started = False
        self._golive_codecs: dict[int, RTCRtpCodecParameters] = {}
        self._golive_rtx: dict[int, int] = {}
        self._golive_streams: dict[int, StreamStatistics] = {}  # at most MAX_SSRCS_PER_TRACK
        self._golive_nack = MissingPackets() if self.track_kind == "video" else None
        self._golive_rtcp: asyncio.Task[None] | None = None
        self._golive_lsr: dict[int, tuple[int, float]] = {}
        self._golive_pending: set[asyncio.Future[None]] = set()
        self._golive_fir_sequence = 0
        self.media_ssrc: int | None = None

    @property
    def track_kind(self) -> str:
        return str(self._RTCRtpReceiver__kind)  # type: ignore[attr-defined]

    @property
    def codecs(self) -> dict[int, RTCRtpCodecParameters]:
        return self._golive_codecs

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        if self._golive_started:
            return
        for codec in parameters.codecs:
            if codec.payloadType is not None:
                self._golive_codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._golive_rtx[encoding.rtx.ssrc] = encoding.ssrc
        self.transport._register_rtp_receiver(self, parameters)
        self._golive_started = True
        self._golive_rtcp = asyncio.ensure_future(self._golive_reports())

    async def stop(self) -> None:
        if self._golive_started:
            self.transport._unregister_rtp_receiver(self)
            self._golive_started = False
        if self._golive_rtcp is not None:
            self._golive_rtcp.cancel()
            # (whatever ended the task, the receiver stops: else the peer connection's close
            # would abort and the session could never end)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._golive_rtcp
            self._golive_rtcp = None

    def _handle_disconnect(self) -> None:
        """aiortc would stop the decoder here; there is none."""

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            ntp_middle = (packet.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
            self._golive_lsr[packet.ssrc] = (ntp_middle, asyncio.get_running_loop().time())
            if self.on_sender_report is not None:
                self.on_sender_report(packet)

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:  # noqa: ARG002  aiortc's signature
        codec = self._golive_codecs.get(packet.payload_type)
        if codec is None:
            return
        stream = self._golive_streams.get(packet.ssrc)
        if stream is None:
            if len(self._golive_streams) >= MAX_SSRCS_PER_TRACK:
                self._refuse_ssrc(packet.ssrc)
                return
            stream = self._golive_streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if is_rtx(codec):
            original_ssrc = self._golive_rtx.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or not isinstance(apt, int) or len(packet.payload) < 2:
                return
            if apt not in self._golive_codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = self._golive_codecs[apt]
        self.media_ssrc = packet.ssrc
        if self._golive_nack is not None and self._golive_nack.add(packet.sequence_number):
            await self._send_rtcp_nack(packet.ssrc, sorted(self._golive_nack.missing))
        if self.sink is not None:
            self.sink(packet, codec)

    def _refuse_ssrc(self, ssrc: int) -> None:
        """A packet of one SSRC too many: dropped, counted, and no state kept for it (aiortc's
        router has just learned the SSRC from the payload type; it forgets it again)."""
        self._golive_guard.dropped_packet("ssrc_limit")
        table = self.transport._rtp_router.ssrc_table
        if table.get(ssrc) is self:
            del table[ssrc]

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe: PLI, or FIR where only that was negotiated."""
        if self.media_ssrc is None:
            return
        feedback = {
            (f.type, f.parameter)
            for codec in self._golive_codecs.values()
            for f in codec.rtcpFeedback
        }
        if ("nack", "pli") in feedback or ("ccm", "fir") not in feedback:
            request = self._send_rtcp_pli(self.media_ssrc)
        else:
            self._golive_fir_sequence = (self._golive_fir_sequence + 1) & 0xFF
            rtcp_ssrc = self._RTCRtpReceiver__rtcp_ssrc or 0  # type: ignore[attr-defined]
            fir = RtcpPsfbPacket(
                fmt=RTCP_PSFB_FIR,
                ssrc=rtcp_ssrc,
                media_ssrc=0,
                fci=struct.pack("!IB3x", self.media_ssrc, self._golive_fir_sequence),
            )
            request = self._send_rtcp(fir)
        task = asyncio.ensure_future(request)
        self._golive_pending.add(task)
        task.add_done_callback(self._golive_pending.discard)

    async def _golive_reports(self) -> None:
        """Receiver reports to the publisher, about once a second (a failure is counted and
        logged; the reports go on)."""
        while True:
            await asyncio.sleep(RTCP_INTERVAL * (0.5 + random.random()))  # noqa: S311  RTCP jitter
            try:
                await self._golive_report()
            except Exception as exc:  # noqa: BLE001  whatever the publisher sent, reports go on
                self._golive_guard.failed(exc)

    async def _golive_report(self) -> None:
        rtcp_ssrc = self._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if rtcp_ssrc is None:
            return
        now = asyncio.get_running_loop().time()
        reports = []
        for ssrc, stream in self._golive_streams.items():
            if stream.max_seq is None:
                continue
            lsr, dlsr = 0, 0
            if ssrc in self._golive_lsr:
                lsr, received = self._golive_lsr[ssrc]
                dlsr = min(int((now - received) * 65536), _U32)
            reports.append(
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    # Each field within its width whatever the publisher sent (RFC 3550
                    # 6.4.1): struct.pack would raise and end the reports for good.
                    fraction_lost=min(stream.fraction_lost, 255),
                    packets_lost=stream.packets_lost,
                    highest_sequence=(stream.cycles + stream.max_seq) & _U32,
                    jitter=min(stream.jitter, _U32),
                    lsr=lsr,
                    dlsr=dlsr,
                )
            )
        # At most 31 report blocks fit one RR (its 5-bit count).
        for start in range(0, len(reports), MAX_REPORT_BLOCKS):
            chunk = reports[start : start + MAX_REPORT_BLOCKS]
            await self._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc, reports=chunk))


# -- sending: packets given by the forwarding code, to one viewer ---------------------------


class ForwardingSender(RTCRtpSender):
    """Sends a viewer the packets of one track; encodes nothing.

    Packets go out through the sender's :class:`~golive.media._fanout.Output` (C: rewrite,
    SRTP protection with this DTLS transport's session, send on the nominated pair's socket),
    which :meth:`bind` points at the transport once DTLS is up. RTCP (sender reports) goes
    through aiortc's SRTP session here. Keyframe requests and NACKs from the viewer go to
    ``on_keyframe_request`` / ``on_nack``.
    """

    on_keyframe_request: Callable[[], None] | None
    on_nack: Callable[[list[int]], None] | None
    on_ready: Callable[[ForwardingSender], None] | None  # DTLS is up: it may be fed packets

    def _adopt(self) -> None:
        self.on_keyframe_request = None
        self.on_nack = None
        self.on_ready = None
        self._golive_started = False
        self._golive_pair: Any = None  # the candidate pair the output is bound to
        self.codec: RTCRtpCodecParameters | None = None
        self.rtx_payload_type: int | None = None
        self.cname: str | None = None
        self.output: Output | None = None
        self._rtx_sequence = random.randrange(0, 0x10000)  # noqa: S311  RTP, not a secret

    @property
    def ssrc(self) -> int:
        return int(self._ssrc)

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        if self._golive_started:
            return
        self.codec = parameters.codecs[0]
        self.cname = parameters.rtcp.cname
        for codec in parameters.codecs:
            if is_rtx(codec) and codec.parameters.get("apt") == self.codec.payloadType:
                self.rtx_payload_type = codec.payloadType
        self.transport._register_rtp_sender(self, parameters)
        self._golive_started = True
        if self.on_ready is not None:
            self.on_ready(self)

    async def stop(self) -> None:
        self.unbind()
        if self._golive_started:
            self.transport._unregister_rtp_sender(self)
            self._golive_started = False

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            if self.on_keyframe_request is not None:
                self.on_keyframe_request()
        elif (
            isinstance(packet, RtcpRtpfbPacket)
            and packet.fmt == RTCP_RTPFB_NACK
            and self.on_nack is not None
        ):
            self.on_nack(list(packet.lost))

    def new_output(self, first_seq: int, first_ts: int) -> Output:
        """This viewer's numbering of the track, starting at ``first_seq``/``first_ts``,
        bound to the transport if DTLS is up (:meth:`bind`)."""
        codec = self.codec
        assert codec is not None, "the sender has not started"
        assert codec.payloadType is not None
        self.output = Output(
            ssrc=self.ssrc,
            payload_type=codec.payloadType,
            first_seq=first_seq,
            first_ts=first_ts,
            clock_rate=codec.clockRate,
        )
        self.bind()
        return self.output

    def bind(self) -> bool:
        """Point the output at the nominated candidate pair's socket and the DTLS transport's
        SRTP session, if it moved (or was not yet). False if there is none (not connected)."""
        output = self.output
        if output is None:
            return False
        connected = self._connected()
        if connected is None:
            self.unbind()
            return False
        srtp, pair, udp = connected
        if pair is not self._golive_pair or not output.bound:
            sock = udp.get_extra_info("socket")
            host, port = pair.remote_addr[:2]
            output.bind(sock.fileno(), (host, port), srtp_session(srtp), SRTP_PROTECT, srtp)
            self._golive_pair = pair
        return True

    def unbind(self) -> None:
        """Send nothing more (the transport is closing)."""
        if self.output is not None:
            self.output.unbind()
        self._golive_pair = None

    def send_rtx(self, data: bytes) -> Delivery:
        """Resend a packet (as this viewer numbered it) on the RTX stream when one was
        negotiated (RFC 4588: original sequence number first in the payload), else as is."""
        if self.output is None:
            return Delivery.NOT_READY
        if self.rtx_payload_type is None:
            return _DELIVERY[self.output.send(data)]
        offset = payload_offset(data)
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        header = bytearray(data[: RTP_HEADER + 4 * (data[0] & 0x0F)])
        header[0] &= 0xEF  # no header extension
        header[1] = (data[1] & 0x80) | self.rtx_payload_type
        header[2:4] = self._rtx_sequence.to_bytes(2, "big")
        header[8:12] = int(self._rtx_ssrc).to_bytes(4, "big")
        return _DELIVERY[self.output.send(bytes(header) + data[2:4] + data[offset:])]

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> bool:
        """An RTCP SR (with SDES CNAME) mapping this viewer's RTP clock to wall-clock time,
        with the output's packet and octet counts."""
        output = self.output
        if output is None:
            return False
        report = RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_timestamp,
                rtp_timestamp=rtp_timestamp,
                packet_count=output.packets_sent & _U32,
                octet_count=output.bytes_sent & _U32,
            ),
        )
        data = bytes(report)
        if self.cname is not None:
            chunk = RtcpSourceInfo(ssrc=self.ssrc, items=[(1, self.cname.encode())])
            data += bytes(RtcpSdesPacket(chunks=[chunk]))
        return self._send_now(data, rtcp=True)

    def send_rtp(self, data: bytes) -> Delivery:
        """Protect and send one RTP packet now through aiortc's SRTP session: for golive used
        as a client (the bench's publisher). The server's packets go through the output."""
        return Delivery.SENT if self._send_now(data, rtcp=False) else Delivery.NOT_READY

    def _send_now(self, data: bytes, *, rtcp: bool) -> bool:
        connected = self._connected()
        if connected is None:
            return False
        srtp, pair, udp = connected
        # aioice ignores pause_writing: look at the socket's backlog and drop, never queue.
        backlog: int = udp.get_write_buffer_size()  # type: ignore[attr-defined]
        if backlog > SEND_BUFFER_LIMIT:
            return False
        udp.sendto(srtp.protect_rtcp(data) if rtcp else srtp.protect(data), pair.remote_addr)
        return True

    def _connected(self) -> tuple[pylibsrtp.Session, Any, asyncio.DatagramTransport] | None:
        """The DTLS transport's SRTP session, the nominated candidate pair and its socket's
        transport, if the sender has started and DTLS is up; else None."""
        if not self._golive_started:
            return None
        dtls = self.transport
        srtp = dtls._tx_srtp
        pair = dtls.transport._connection._nominated.get(1)
        udp = None if pair is None else pair.protocol.transport
        if dtls._state != DtlsState.CONNECTED or srtp is None or pair is None or udp is None:
            return None
        return srtp, pair, udp


def srtp_session(session: pylibsrtp.Session) -> int:
    """The address of the ``srtp_t`` a pylibsrtp session holds (its keys and rollover
    counters), for the C fan-out to protect with; valid while ``session`` lives."""
    return int(srtp_ffi.cast("uintptr_t", session._srtp[0]))


#: The address of libsrtp's ``srtp_protect`` inside pylibsrtp (libsrtp 2's signature,
#: ``srtp_err_status_t srtp_protect(srtp_t, void *, int *)``, checked by the tests).
SRTP_PROTECT = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_protect")))

_DELIVERY = {
    SENT: Delivery.SENT,
    DROPPED: Delivery.DROPPED,
    NOT_READY: Delivery.NOT_READY,
    FAILED: Delivery.FAILED,
}


# -- the peer connection ---------------------------------------------------------------------


def ice_closing(dtls: Any) -> bool:
    """Whether the ICE connection under ``dtls`` is closing by itself (consent to send expired,
    RFC 7675) rather than still up (DTLS was closed by the remote end)."""
    return bool(dtls.transport._connection._closing)


class ForwardingPeerConnection(RTCPeerConnection):
    """An ``RTCPeerConnection`` whose transceivers forward instead of coding, and whose
    transports are guarded (:class:`MediaGuard`)."""

    def __init__(self, configuration: Any = None, *, guard: MediaGuard | None = None) -> None:
        self._golive_guard = guard if guard is not None else MediaGuard()
        super().__init__(configuration)

    def _RTCPeerConnection__createDtlsTransport(self) -> Any:  # noqa: N802  overrides aiortc's private method
        dtls = RTCPeerConnection._RTCPeerConnection__createDtlsTransport(self)  # type: ignore[attr-defined]
        dtls.__class__ = GuardedDtlsTransport
        dtls._golive_adopt(self._golive_guard)
        dtls.transport.__class__ = GuardedIceTransport
        dtls.transport._golive_guard = self._golive_guard
        # Marks the ICE connection as golive's, before it opens a socket: screen_datagram.
        connection = dtls.transport._connection
        connection.golive_guard = self._golive_guard
        connection.__class__ = PromptConnection
        connection._golive_adopt()
        return dtls

    def _RTCPeerConnection__createTransceiver(  # noqa: N802  overrides aiortc's private method
        self, direction: str, kind: str, sender_track: Any = None
    ) -> Any:
        transceiver = RTCPeerConnection._RTCPeerConnection__createTransceiver(  # type: ignore[attr-defined]
            self, direction, kind, sender_track
        )
        transceiver.receiver.__class__ = ForwardingReceiver
        transceiver.receiver._adopt(self._golive_guard)
        transceiver.sender.__class__ = ForwardingSender
        transceiver.sender._adopt()
        return transceiver
