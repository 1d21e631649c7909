"""The packet path: one :class:`TrackTap` per published track, on the event loop.

For every packet the publisher sends on the track, the tap asks the session registry who
receives it (the fanout actor's latest routing table, resolved to live sessions) and, for each
viewer, rewrites the header (:class:`~golive.media.rtp.Rewriter`), SRTP-protects and sends it
with plain calls. A viewer waiting for a keyframe is started on the first packet of one, and
the fanout is told; keyframe requests to the publisher are coalesced (one per interval however
many viewers wait or ask) and deferred rather than dropped. Every packet is kept in a small
cache so a viewer's NACK can be answered: each sequence number once per NACK, at most
:data:`~golive.media.limits.MAX_NACK_SEQUENCES` of them, none resent to the same viewer twice
within :data:`~golive.media.limits.RTX_RESEND_INTERVAL`, and within the viewer's
retransmission budget (:class:`RetransmissionBudget`), so a hostile NACK cannot make the
server send more than a share of the stream.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from golive.actors.base import tell_quietly
from golive.actors.messages import (
    KeyframeDelivered,
    MediaKind,
    RecordPacket,
    RoutePhase,
    SessionId,
    TrackId,
    TrackInfo,
    TrackKey,
)
from golive.media.hooks import Delivery, ForwardingReceiver, ForwardingSender
from golive.media.limits import (
    MAX_NACK_SEQUENCES,
    RTX_BUDGET_MIN_RATE,
    RTX_BUDGET_SECONDS,
    RTX_BUDGET_SHARE,
    RTX_RESEND_INTERVAL,
    ByteBudget,
)
from golive.media.rtp import RTP_HEADER, Rewriter, keyframe_start
from golive.metrics import Metrics
from golive.sessions import SessionRegistry

CACHE_PACKETS = 1024  # about 4 s of 2 Mbit/s video
KEYFRAME_REQUEST_INTERVAL = 1.0  # at most one keyframe request per track per second


class RetransmissionBudget:
    """What one viewer may have resent of one track: a :class:`ByteBudget` refilled at
    :data:`RTX_BUDGET_SHARE` of the track's incoming rate (at least
    :data:`RTX_BUDGET_MIN_RATE`), holding at most :data:`RTX_BUDGET_SECONDS` of it; and
    when each packet was last resent, so that none is resent twice within
    :data:`RTX_RESEND_INTERVAL`."""

    __slots__ = ("_bytes", "_resent")

    def __init__(self, now: float) -> None:
        self._bytes = ByteBudget(RTX_BUDGET_MIN_RATE, RTX_BUDGET_SECONDS, now)
        self._resent: dict[int, float] = {}  # publisher sequence number -> when

    def resent_lately(self, seq: int, now: float) -> bool:
        last = self._resent.get(seq)
        return last is not None and now - last < RTX_RESEND_INTERVAL

    def take(self, seq: int, size: int, incoming_rate: float, now: float) -> bool:
        """Spend ``size`` bytes on resending ``seq`` if the budget allows."""
        rate = max(RTX_BUDGET_MIN_RATE, RTX_BUDGET_SHARE * incoming_rate)
        if not self._bytes.take(size, rate, now):
            return False
        if len(self._resent) >= 2 * MAX_NACK_SEQUENCES:  # keep only what still matters
            self._resent = {s: t for s, t in self._resent.items() if now - t < RTX_RESEND_INTERVAL}
        self._resent[seq] = now
        return True


@dataclass(slots=True)
class Output:
    """One viewer's sender for this track, and that viewer's numbering of it."""

    sender: ForwardingSender
    rewriter: Rewriter
    created: float  # when the viewer's offer arrived (loop time)
    first_keyframe: Callable[[TrackId], None] | None  # tells the session's story
    budget: RetransmissionBudget
    told_fanout: bool = False


class TrackTap:
    def __init__(
        self,
        key: TrackKey,
        info: TrackInfo,
        codec: RTCRtpCodecParameters,
        receiver: ForwardingReceiver,
        *,
        registry: SessionRegistry,
        metrics: Metrics,
    ) -> None:
        self.key = key
        self.info = info
        self.codec = codec
        self._receiver = receiver
        self._registry = registry
        self._outputs: dict[SessionId, Output] = {}
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._video = info.kind is MediaKind.VIDEO
        self._last_request = -KEYFRAME_REQUEST_INTERVAL
        self._deferred: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._metrics = metrics
        self._packets = metrics.rtp_packets.labels(key.room)
        self._bytes = metrics.rtp_bytes.labels(key.room)
        self._dropped = metrics.packets_dropped.labels("backpressure")
        self._rtx_refused = {
            reason: metrics.retransmissions_refused.labels(reason)
            for reason in ("duplicate", "too_many", "not_cached", "recent", "budget")
        }
        self._window_bytes = 0  # bytes received since _window_start, for the incoming rate
        self._window_start = self._loop.time()
        self._incoming_rate = 0.0  # bytes a second, as last measured
        self.keyframe_requests = 0
        self.packets_in = 0
        self._dead_recorder: pykka.ActorRef[Any] | None = None
        receiver.sink = self.on_packet
        receiver.on_sender_report = self.on_sender_report
        registry.add_keyframe_source(key, self.want_keyframe)

    # -- viewers ------------------------------------------------------------------------------

    def attach(
        self,
        session: SessionId,
        sender: ForwardingSender,
        *,
        created: float,
        first_keyframe: Callable[[TrackId], None] | None = None,
    ) -> None:
        """The viewer's sender for this track is connected: it may now be forwarded to.
        ``first_keyframe`` is called once, when the viewer's first packet is sent."""
        assert sender.codec is not None
        assert sender.codec.payloadType is not None
        rewriter = Rewriter(
            ssrc=sender.ssrc,
            payload_type=sender.codec.payloadType,
            first_seq=random.randrange(0, 0x8000),  # noqa: S311  RTP needs unpredictable, not secret
            first_ts=random.randrange(0, 0x80000000),  # noqa: S311
            clock_rate=sender.codec.clockRate,
        )
        self._outputs[session] = Output(
            sender, rewriter, created, first_keyframe, RetransmissionBudget(self._loop.time())
        )
        sender.on_keyframe_request = self.want_keyframe
        sender.on_nack = lambda lost: self.retransmit(session, lost)

    def detach(self, session: SessionId) -> None:
        output = self._outputs.pop(session, None)
        if output is not None:
            output.sender.on_keyframe_request = None
            output.sender.on_nack = None

    # -- packets ------------------------------------------------------------------------------

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:  # noqa: ARG002  the receiver's sink signature
        self.packets_in += 1
        data = packet.serialize()  # once per packet; without the publisher's header extensions
        self._window_bytes += len(data)
        self._cache[packet.sequence_number] = data
        if len(self._cache) > CACHE_PACKETS:
            self._cache.popitem(last=False)
        starts_keyframe: bool | None = None
        waiting = sent = sent_bytes = dropped = 0
        now = self._loop.time()
        for record, phase in self._registry.targets(self.key):
            output = self._outputs.get(record.session)
            if output is None:
                continue  # not connected yet
            rewriter = output.rewriter
            if not rewriter.started:
                if starts_keyframe is None:
                    starts_keyframe = keyframe_start(self.info.codec, data)
                if not starts_keyframe:
                    waiting += 1
                    continue
                rewriter.start(data, now)
            if not output.told_fanout and phase is RoutePhase.WAITING_KEYFRAME:
                self._started_on_keyframe(output, record.session)
            out = rewriter.rewrite(data, now)
            delivery = output.sender.send_rtp(out)
            if delivery is Delivery.SENT:
                sent += 1
                sent_bytes += len(out) - RTP_HEADER
            elif delivery is Delivery.DROPPED:
                dropped += 1
        if sent:
            self._packets.inc(sent)
            self._bytes.inc(sent_bytes)
        if dropped:
            self._dropped.inc(dropped)
        if waiting:
            self.want_keyframe()
        self._record(data)

    def _record(self, data: bytes) -> None:
        """Tell the track's recorder (if it has one) the packet: one tell per packet, on the
        loop; the recorder does the disk work in its own thread."""
        table = self._registry.routes(self.key)
        recorder = None if table is None else table.recorder
        if recorder is None or recorder is self._dead_recorder:
            return
        try:
            recorder.tell(RecordPacket(data))
        except pykka.ActorDeadError:  # stopped or crashed: the room knows, stop telling it
            self._dead_recorder = recorder

    def on_sender_report(self, report: RtcpSrPacket) -> None:
        """Translate the publisher's NTP-RTP mapping into each viewer's RTP clock and pass it
        on, so players keep audio and video in sync."""
        info = report.sender_info
        for output in self._outputs.values():
            if output.rewriter.started and output.rewriter.source == report.ssrc:
                rtp = (info.rtp_timestamp + output.rewriter.ts_offset) & 0xFFFFFFFF
                output.sender.send_sender_report(info.ntp_timestamp, rtp)

    def _started_on_keyframe(self, output: Output, session: SessionId) -> None:
        """Tell the fanout that ``session`` started on a keyframe (once)."""
        output.told_fanout = True
        seconds = self._loop.time() - output.created
        self._metrics.session_setup.labels("subscriber", "first_keyframe").observe(seconds)
        if output.first_keyframe is not None:
            output.first_keyframe(self.key.track_id)
        table = self._registry.routes(self.key)
        if table is not None and table.fanout is not None:
            tell_quietly(table.fanout, KeyframeDelivered(session))

    def retransmit(self, session: SessionId, lost: list[int]) -> None:
        """Answer a viewer's NACK from the cache (in that viewer's numbering): each sequence
        number once, the first :data:`MAX_NACK_SEQUENCES` of them, within the viewer's
        :class:`RetransmissionBudget`; what is not resent is counted by reason."""
        self._metrics.nacks.inc()
        output = self._outputs.get(session)
        if output is None or not output.rewriter.started:
            return
        # (aiortc's NACK parser does not wrap: a sequence number may come as 65536 or more)
        wanted = list(dict.fromkeys(seq & 0xFFFF for seq in lost))
        refused = dict.fromkeys(self._rtx_refused, 0)
        refused["duplicate"] = len(lost) - len(wanted)
        if len(wanted) > MAX_NACK_SEQUENCES:
            refused["too_many"] = len(wanted) - MAX_NACK_SEQUENCES
            del wanted[MAX_NACK_SEQUENCES:]
        now = self._loop.time()
        budget = output.budget
        rate = self._measured_rate(now)
        resent = 0
        for viewer_seq in wanted:
            seq = output.rewriter.publisher_seq(viewer_seq)
            data = None if seq is None else self._cache.get(seq)
            if seq is None or data is None or not output.rewriter.follows(data):
                refused["not_cached"] += 1
            elif budget.resent_lately(seq, now):
                refused["recent"] += 1
            elif not budget.take(seq, len(data), rate, now):
                refused["budget"] += 1
            elif output.sender.send_rtx(output.rewriter.renumber(data)) is Delivery.SENT:
                resent += 1
        if resent:
            self._metrics.retransmitted.inc(resent)
        for reason, count in refused.items():
            if count:
                self._rtx_refused[reason].inc(count)

    def _measured_rate(self, now: float) -> float:
        """The track's incoming bytes a second, over the last second or more."""
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._incoming_rate = self._window_bytes / elapsed
            self._window_bytes = 0
            self._window_start = now
        return self._incoming_rate

    # -- keyframes ----------------------------------------------------------------------------

    def want_keyframe(self) -> None:
        """Ask the publisher for a keyframe: now if none was asked for lately, else once the
        interval has passed. Never dropped, never more than one per interval."""
        if not self._video or self._deferred is not None:
            return
        wait = self._last_request + KEYFRAME_REQUEST_INTERVAL - self._loop.time()
        if wait <= 0:
            self._request_keyframe()
        else:
            self._deferred = self._loop.call_later(wait, self._request_keyframe)

    def _request_keyframe(self) -> None:
        self._deferred = None
        self._last_request = self._loop.time()
        self.keyframe_requests += 1
        self._metrics.keyframe_requests.inc()
        self._receiver.request_keyframe()

    def close(self) -> None:
        self._registry.remove_keyframe_source(self.key)
        self._receiver.sink = None
        self._receiver.on_sender_report = None
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        for session in list(self._outputs):
            self.detach(session)
        self._cache.clear()
