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
- aioice's host address discovery returns ``ICE_HOST_ADDRESSES`` when set, and then
  includes 127.0.0.1 if asked (aioice always leaves loopback out).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import struct
from collections.abc import Callable
from typing import Any

import aioice.ice
import structlog
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc import codecs as aiortc_codecs
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
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

from golive.media.rtp import RTP_HEADER, payload_offset

log = structlog.get_logger(__name__)

# A viewer whose socket has this much unsent data loses packets instead of queueing more.
SEND_BUFFER_LIMIT = 512 * 1024
RTCP_INTERVAL = 1.0

PacketSink = Callable[[RtpPacket, RTCRtpCodecParameters], None]


class Delivery(enum.Enum):
    SENT = "sent"
    DROPPED = "dropped"  # the viewer's socket is backed up: lost on purpose, counted
    NOT_READY = "not_ready"  # not connected (yet, or any more)


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
    original = getattr(aioice.ice.get_host_addresses, "golive_original", None)
    if original is None:
        original = aioice.ice.get_host_addresses

    def host_addresses_for(use_ipv4: bool, use_ipv6: bool) -> list[str]:  # noqa: FBT001  aioice's signature
        if not host_addresses:
            return list(original(use_ipv4, use_ipv6))
        return [a for a in host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    host_addresses_for.golive_original = original  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = host_addresses_for


# -- receiving: the publisher's packets, decrypted, to the forwarding code ------------------


class ForwardingReceiver(RTCRtpReceiver):
    """Hands every decrypted RTP packet to ``sink``; starts no decoder, keeps no frames.

    Instances are made by aiortc as plain ``RTCRtpReceiver``s and adopted (class swapped) by
    :class:`ForwardingPeerConnection`, so all of aiortc's own set-up is kept.
    """

    sink: PacketSink | None
    on_sender_report: Callable[[RtcpSrPacket], None] | None

    def _adopt(self) -> None:
        self.sink = None
        self.on_sender_report = None
        self._golive_started = False
        self._golive_codecs: dict[int, RTCRtpCodecParameters] = {}
        self._golive_rtx: dict[int, int] = {}
        self._golive_streams: dict[int, StreamStatistics] = {}
        self._golive_nack = NackGenerator() if self.track_kind == "video" else None
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
            with contextlib.suppress(asyncio.CancelledError):
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
        if self._golive_nack is not None and self._golive_nack.add(packet):
            await self._send_rtcp_nack(packet.ssrc, sorted(self._golive_nack.missing))
        if self.sink is not None:
            self.sink(packet, codec)

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
        """Receiver reports to the publisher, about once a second."""
        rtcp_ssrc = self._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RTCP_INTERVAL * (0.5 + random.random()))  # noqa: S311  RTCP jitter
            reports = []
            for ssrc, stream in self._golive_streams.items():
                lsr, dlsr = 0, 0
                if ssrc in self._golive_lsr:
                    lsr, received = self._golive_lsr[ssrc]
                    dlsr = int((loop.time() - received) * 65536)
                reports.append(
                    RtcpReceiverInfo(
                        ssrc=ssrc,
                        fraction_lost=stream.fraction_lost,
                        packets_lost=stream.packets_lost,
                        highest_sequence=stream.max_seq or 0,
                        jitter=stream.jitter,
                        lsr=lsr,
                        dlsr=dlsr,
                    )
                )
            if reports and rtcp_ssrc is not None:
                await self._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))


# -- sending: packets given by the forwarding code, to one viewer ---------------------------


class ForwardingSender(RTCRtpSender):
    """Sends RTP packets it is handed (already rewritten for this viewer); encodes nothing.

    Keyframe requests and NACKs from the viewer go to ``on_keyframe_request`` / ``on_nack``.
    """

    on_keyframe_request: Callable[[], None] | None
    on_nack: Callable[[list[int]], None] | None
    on_ready: Callable[[ForwardingSender], None] | None  # DTLS is up: it may be fed packets

    def _adopt(self) -> None:
        self.on_keyframe_request = None
        self.on_nack = None
        self.on_ready = None
        self._golive_started = False
        self.codec: RTCRtpCodecParameters | None = None
        self.rtx_payload_type: int | None = None
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_dropped = 0
        self.cname: str | None = None
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

    def send_rtp(self, data: bytes) -> Delivery:
        """SRTP-protect and send one RTP packet now, or say why not."""
        delivery = self._send(data, rtcp=False)
        if delivery is Delivery.SENT:
            self.packets_sent += 1
            self.bytes_sent += len(data) - RTP_HEADER
        return delivery

    def send_rtx(self, data: bytes) -> Delivery:
        """Resend a packet (as this viewer numbered it) on the RTX stream when one was
        negotiated (RFC 4588: original sequence number first in the payload), else as is."""
        if self.rtx_payload_type is None:
            return self.send_rtp(data)
        offset = payload_offset(data)
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        header = bytearray(data[: RTP_HEADER + 4 * (data[0] & 0x0F)])
        header[0] &= 0xEF  # no header extension
        header[1] = (data[1] & 0x80) | self.rtx_payload_type
        header[2:4] = self._rtx_sequence.to_bytes(2, "big")
        header[8:12] = int(self._rtx_ssrc).to_bytes(4, "big")
        return self._send(bytes(header) + data[2:4] + data[offset:], rtcp=False)

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> bool:
        """An RTCP SR (with SDES CNAME) mapping this viewer's RTP clock to wall-clock time."""
        report = RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp_timestamp,
                rtp_timestamp=rtp_timestamp,
                packet_count=self.packets_sent & 0xFFFFFFFF,
                octet_count=self.bytes_sent & 0xFFFFFFFF,
            ),
        )
        data = bytes(report)
        if self.cname is not None:
            chunk = RtcpSourceInfo(ssrc=self.ssrc, items=[(1, self.cname.encode())])
            data += bytes(RtcpSdesPacket(chunks=[chunk]))
        return self._send(data, rtcp=True) is Delivery.SENT

    def _send(self, data: bytes, *, rtcp: bool) -> Delivery:
        if not self._golive_started:
            return Delivery.NOT_READY
        dtls = self.transport
        if dtls._state != DtlsState.CONNECTED or dtls._tx_srtp is None:
            return Delivery.NOT_READY
        pair = dtls.transport._connection._nominated.get(1)
        udp = None if pair is None else pair.protocol.transport
        if pair is None or udp is None:
            return Delivery.NOT_READY
        # aioice ignores pause_writing: look at the socket's backlog and drop, never queue.
        backlog: int = udp.get_write_buffer_size()  # type: ignore[attr-defined]
        if backlog > SEND_BUFFER_LIMIT:
            self.packets_dropped += 1
            return Delivery.DROPPED
        srtp = dtls._tx_srtp
        udp.sendto(srtp.protect_rtcp(data) if rtcp else srtp.protect(data), pair.remote_addr)
        return Delivery.SENT


# -- the peer connection ---------------------------------------------------------------------


def ice_closing(dtls: Any) -> bool:
    """Whether the ICE connection under ``dtls`` is closing by itself (consent to send expired,
    RFC 7675) rather than still up (DTLS was closed by the remote end)."""
    return bool(dtls.transport._connection._closing)


class ForwardingPeerConnection(RTCPeerConnection):
    """An ``RTCPeerConnection`` whose transceivers forward instead of coding."""

    def _RTCPeerConnection__createTransceiver(  # noqa: N802  overrides aiortc's private method
        self, direction: str, kind: str, sender_track: Any = None
    ) -> Any:
        transceiver = RTCPeerConnection._RTCPeerConnection__createTransceiver(  # type: ignore[attr-defined]
            self, direction, kind, sender_track
        )
        transceiver.receiver.__class__ = ForwardingReceiver
        transceiver.receiver._adopt()
        transceiver.sender.__class__ = ForwardingSender
        transceiver.sender._adopt()
        return transceiver
