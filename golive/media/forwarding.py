"""The packet path: one :class:`PublishedTrack` per published track, on the event loop.

The track object holds what forwarding needs, in one place: the fanout actor's latest
:class:`RoutingTable` for the track (who receives it; installed by the session registry), the
viewers' outputs, the keyframe requester and the recorder. For every packet the publisher
sends, one call into C (:class:`~golive.media._fanout.Fanout`) rewrites the header for each
viewer (:class:`~golive.media._fanout.Output`: its own SSRC, payload type, sequence numbers
and timestamps), SRTP-protects it with the viewer's session and sends it on the viewer's
socket. Keyframe gating is the output's: one not started yet starts on the first packet of a
keyframe, and the fanout is told. Keyframe requests to the publisher are coalesced (one per
interval however many viewers wait or ask) and deferred rather than dropped.

Every packet is kept in a ring (indexed by sequence number) so a viewer's NACK can be
answered: each sequence number once per NACK, at most
:data:`~golive.media.limits.MAX_NACK_SEQUENCES` of them, none resent to the same viewer twice
within :data:`~golive.media.limits.RTX_RESEND_INTERVAL`, and within the viewer's
retransmission budget (:class:`RetransmissionBudget`), so a hostile NACK cannot make the
server send more than a share of the stream. Retransmissions and sender reports are Python.

The track lives as long as its fanout: the fanout's last (retired) table closes it. Its
source, the publisher's receiver, may change meanwhile: a publisher taking the room over
feeds the same track (:meth:`PublishedTrack.switch_source`), and every viewer's output
starts again on the new publisher's first keyframe, its numbering continued.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pykka
import structlog
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from golive.actors.base import tell_quietly
from golive.actors.messages import (
    KeyframeDelivered,
    MediaKind,
    RecordPacket,
    RoutingTable,
    SessionId,
    TrackId,
    TrackInfo,
    TrackKey,
)
from golive.config import DEFAULT_KEYFRAME_CACHE_BYTES
from golive.logs import Throttle
from golive.media._fanout import DROPPED, FAILED, SENT, Fanout, Output
from golive.media.hooks import Delivery, PacketSink
from golive.media.keyframes import (
    CATCH_UP_MIN_RATE,
    CATCH_UP_SPEED,
    CATCH_UP_TICK,
    REPLAY_INTERVAL,
    RETIMED_KEEP_SECONDS,
    CatchUp,
    Change,
    KeyframeCache,
)
from golive.media.limits import (
    MAX_NACK_SEQUENCES,
    RTX_BUDGET_MIN_RATE,
    RTX_BUDGET_SECONDS,
    RTX_BUDGET_SHARE,
    RTX_RESEND_INTERVAL,
    ByteBudget,
)
from golive.media.rtp import keyframe_start
from golive.metrics import Metrics
from golive.sessions import SessionRegistry

log = structlog.get_logger(__name__)

CACHE_PACKETS = 1024  # about 4 s of 2 Mbit/s video
KEYFRAME_REQUEST_INTERVAL = 1.0  # at most one keyframe request per track per second
SEND_FAILURE_LOG_INTERVAL = 10.0  # at most one line per track about failed sends


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


class TrackSource(Protocol):
    """What a track needs of its publisher's receiver (a ``ForwardingReceiver``)."""

    sink: PacketSink | None
    on_sender_report: Callable[[RtcpSrPacket], None] | None

    def request_keyframe(self) -> None: ...


class ViewerSender(Protocol):
    """What a track needs of a viewer's sender (a ``ForwardingSender``)."""

    on_keyframe_request: Callable[[], None] | None
    on_nack: Callable[[list[int]], None] | None

    def new_output(self, first_seq: int, first_ts: int) -> Output: ...
    def bind(self) -> bool: ...
    def send_rtx(self, data: bytes) -> Delivery: ...
    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> bool: ...


@dataclass(slots=True, eq=False)
class Viewer:
    """One viewer of this track: its sender, and its output (numbering and socket)."""

    session: SessionId
    sender: ViewerSender
    output: Output
    created: float  # when the viewer's offer arrived (loop time)
    first_keyframe: Callable[[TrackId], None] | None  # tells the session's story
    budget: RetransmissionBudget
    failures_seen: int = 0  # the output's send errors already logged
    told: bool = False  # its first keyframe was told (the fanout, the session's story)
    catch_up: CatchUp | None = None  # being brought up to live from the keyframe cache
    # the timestamps its catch-up gave frames (the publisher's -> its own), for NACKs of them
    retimed: dict[int, int] | None = None
    live_since: float = 0.0  # when its catch-up ended
    replayed: float = -math.inf  # when it was last sent the cache again (it asked)


class PublishedTrack:
    def __init__(
        self,
        key: TrackKey,
        info: TrackInfo,
        codec: RTCRtpCodecParameters,
        receiver: TrackSource,
        *,
        registry: SessionRegistry,
        metrics: Metrics,
        on_close: Callable[[PublishedTrack], None] | None = None,
        keyframe_cache_bytes: int = DEFAULT_KEYFRAME_CACHE_BYTES,
    ) -> None:
        self.key = key
        self.info = info
        self.codec = codec
        self.publisher = key.publisher  # the session whose receiver feeds the track now
        self.closed = False
        self._on_close = on_close
        self._receiver = receiver
        self._registry = registry
        self._fanout = Fanout()
        self._viewers: dict[SessionId, Viewer] = {}
        self._by_output: dict[Output, Viewer] = {}
        self._table: RoutingTable | None = None
        self._routed: frozenset[SessionId] = frozenset()  # the sessions the table routes to
        self._waiting = 0  # outputs not started (waiting for a keyframe), as last counted
        self._cache: list[bytes | None] = [None] * CACHE_PACKETS  # by sequence number
        self._video = info.kind is MediaKind.VIDEO
        self._keyframes = KeyframeCache(
            keyframe_cache_bytes if self._video else 0,
            info.codec,
            gauge=metrics.keyframe_cache_bytes,
            dropped=metrics.keyframe_cache_dropped,
        )
        self._catching_up: dict[SessionId, Viewer] = {}
        self._pacer: asyncio.TimerHandle | None = None
        self._last_request = -KEYFRAME_REQUEST_INTERVAL
        self._deferred: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.last_packet = self._loop.time()  # when the publisher last sent (or took over)
        self._metrics = metrics
        self._packets = metrics.rtp_packets.labels(key.room)
        self._bytes = metrics.rtp_bytes.labels(key.room)
        self._dropped = metrics.packets_dropped.labels("backpressure")
        self._failed = metrics.packets_dropped.labels("send_failed")
        self._too_large = metrics.packets_dropped.labels("too_large")
        self._rtx_refused = {
            reason: metrics.retransmissions_refused.labels(reason)
            for reason in ("duplicate", "too_many", "not_cached", "recent", "budget")
        }
        self._failure_log = Throttle(SEND_FAILURE_LOG_INTERVAL, self._loop.time)
        self._window_bytes = 0  # bytes received since _window_start, for the incoming rate
        self._window_start = self._loop.time()
        self._incoming_rate = 0.0  # bytes a second, as last measured
        self.keyframe_requests = 0
        self._dead_recorder: pykka.ActorRef[Any] | None = None
        receiver.sink = self.on_packet
        receiver.on_sender_report = self.on_sender_report
        registry.add_track(self)

    # -- routes and viewers -------------------------------------------------------------------

    def install(self, table: RoutingTable) -> None:
        """The fanout's latest decision of who receives the track (called by the registry).
        The fanout's retired table, its last, closes the track."""
        if self._table is not None and table.version <= self._table.version:
            return
        if table.retired:
            self.close()
            return
        self._table = table
        self._route()

    def switch_source(
        self,
        receiver: TrackSource,
        codec: RTCRtpCodecParameters,
        info: TrackInfo,
        publisher: SessionId,
        *,
        compatible: bool,
    ) -> None:
        """A new publisher feeds the track (it took the room over). Every viewer's output
        waits for its first keyframe, then goes on with its numbering. Viewers who cannot
        decode the new codec (not ``compatible``) get nothing more: the room ends them."""
        self.drop_source(self._receiver)
        self._receiver = receiver
        self.codec, self.info, self.publisher = codec, info, publisher
        receiver.sink = self.on_packet
        receiver.on_sender_report = self.on_sender_report
        self._cache = [None] * CACHE_PACKETS  # the old publisher's numbering
        self._end_catch_ups()
        self._keyframes.clear()
        self._keyframes.codec = info.codec
        self.last_packet = self._loop.time()
        if self._deferred is not None:  # the new publisher is asked at once, not in turn
            self._deferred.cancel()
            self._deferred = None
        self._last_request = -KEYFRAME_REQUEST_INTERVAL
        if not compatible:
            for session in list(self._viewers):
                self.detach(session)
        for viewer in self._viewers.values():
            viewer.output.restart()
        self._waiting = sum(1 for output in self._fanout.outputs if not output.started)
        if self._waiting:
            self.want_keyframe()

    def drop_source(self, receiver: object) -> None:
        """``receiver`` (a publisher's, closing) feeds the track no more, if it did."""
        if receiver is self._receiver:
            receiver.sink = None
            receiver.on_sender_report = None

    def attach(
        self,
        session: SessionId,
        sender: ViewerSender,
        *,
        created: float,
        first_keyframe: Callable[[TrackId], None] | None = None,
        replays: bool = True,
    ) -> None:
        """The viewer's sender for this track is connected: it may now be forwarded to, from
        the first keyframe on. ``first_keyframe`` is called once, when that is sent.
        ``replays``: the viewer's keyframe requests are answered from the keyframe cache
        (:meth:`keyframe_asked`); without, they only ask the publisher (a relay's link: the
        requests are its viewers', and a replay would rewind every one of them)."""
        self.detach(session)
        output = sender.new_output(
            random.randrange(0, 0x8000),  # noqa: S311  RTP needs unpredictable, not secret
            random.randrange(0, 0x80000000),  # noqa: S311
        )
        viewer = Viewer(
            session,
            sender,
            output,
            created,
            first_keyframe,
            RetransmissionBudget(self._loop.time()),
        )
        self._viewers[session] = viewer
        self._by_output[output] = viewer
        sender.on_keyframe_request = (
            (lambda: self.keyframe_asked(session)) if replays else self.want_keyframe
        )
        sender.on_nack = lambda lost: self.retransmit(session, lost)
        if session in self._routed:  # routed already (the table came first): add its output
            self._route()

    def detach(self, session: SessionId) -> None:
        viewer = self._viewers.pop(session, None)
        if viewer is None:
            return
        self._catching_up.pop(session, None)
        del self._by_output[viewer.output]
        viewer.sender.on_keyframe_request = None
        viewer.sender.on_nack = None
        viewer.output.unbind()
        if session in self._routed:  # (its output leaves the fan-out; nothing else changes)
            gone = viewer.output
            self._fanout.outputs = tuple(o for o in self._fanout.outputs if o is not gone)
            if not gone.started and not gone.held:
                self._waiting -= 1

    def _route(self) -> None:
        """Hand the C fan-out the outputs of the viewers the table routes to, in its order."""
        table, viewers = self._table, self._viewers
        self._routed = frozenset() if table is None else table.sessions()
        outputs = (
            ()
            if table is None
            else tuple(v.output for r in table.routes if (v := viewers.get(r.session)) is not None)
        )
        self._fanout.outputs = outputs
        self._waiting = sum(1 for output in outputs if not output.started and not output.held)
        if self._waiting and self._keyframes.packets is not None:
            self._start_from_cache(self._loop.time())

    # -- packets ------------------------------------------------------------------------------

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:  # noqa: ARG002  the receiver's sink signature
        data = packet.serialize()  # once per packet; without the publisher's header extensions
        self._window_bytes += len(data)
        self._cache[packet.sequence_number % CACHE_PACKETS] = data
        self.last_packet = now = self._loop.time()
        keyframe, change = self._keep(data, now)
        try:
            sent, sent_bytes, dropped, failed, waiting, started = self._fanout.forward(
                data, keyframe, now
            )
        except ValueError:  # longer than any MTU, or not RTP: no viewer can take it
            self._too_large.inc(len(self._fanout.outputs))
        else:
            self._waiting = waiting
            self._count(sent, sent_bytes, dropped, failed)
            if started is not None:
                for output in started:
                    self._started(self._by_output[output], "keyframe")
            if waiting and self._keyframes.packets is not None:
                self._start_from_cache(now)
            elif waiting:
                self.want_keyframe()
        if change is Change.STARTED and self._catching_up:
            self._skip_to_live(now)
        elif change is Change.DROPPED:
            self._cache_dropped()
        self._record(data)

    def _keep(self, data: bytes, now: float) -> tuple[bool, Change]:
        """Keep a video packet in the keyframe cache. Returns whether the fan-out may start
        a viewer on it (any audio packet; a keyframe when the cache is off: with it, viewers
        start from the cache) and what it did to the cache."""
        if not self._video:
            return True, Change.KEPT
        cache = self._keyframes
        if not cache.enabled:
            return self._waiting > 0 and keyframe_start(self.info.codec, data), Change.KEPT
        change = cache.add(data, now)
        if change is Change.STARTED:
            self._cache_started(now)
        return False, change

    def _count(self, sent: int, sent_bytes: int, dropped: int, failed: int) -> None:
        """Count packets delivered to viewers (and their bytes), lost to full sockets, and
        failed (those also logged)."""
        if sent:
            self._packets.inc(sent)
            self._bytes.inc(sent_bytes)
        if dropped:
            self._dropped.inc(dropped)
        if failed:
            self._send_failed(failed)

    def _record(self, data: bytes) -> None:
        """Tell the track's recorder (if it has one) the packet: one tell per packet, on the
        loop; the recorder does the disk work in its own thread."""
        recorder = None if self._table is None else self._table.recorder
        if recorder is None or recorder is self._dead_recorder:
            return
        try:
            recorder.tell(RecordPacket(data))
        except pykka.ActorDeadError:  # stopped or crashed: the room knows, stop telling it
            self._dead_recorder = recorder

    def _started(self, viewer: Viewer, start: str) -> None:
        """A viewer's output started (``start``: on the cached keyframe, or on a keyframe
        as it passed): for video, tell the fanout it started on a keyframe (once: an output
        starts again after a takeover, told no more)."""
        if not self._video or viewer.told:
            return
        viewer.told = True
        self._metrics.viewer_starts.labels(start).inc()
        seconds = self._loop.time() - viewer.created
        self._metrics.session_setup.labels("subscriber", "first_keyframe").observe(seconds)
        if viewer.first_keyframe is not None:
            viewer.first_keyframe(self.key.track_id)
        table = self._table
        if table is not None and table.fanout is not None:
            tell_quietly(table.fanout, KeyframeDelivered(viewer.session))

    def _send_failed(self, count: int) -> None:
        """Sending to some viewers failed (not a full socket: an error). Counted; logged per
        viewer, at most once per :data:`SEND_FAILURE_LOG_INTERVAL` for the track. Every other
        viewer got the packet."""
        self._failed.inc(count)
        held = self._failure_log.allow()
        if held is None:
            return
        for viewer in self._viewers.values():
            errors = viewer.output.send_errors
            if errors > viewer.failures_seen:
                code = viewer.output.last_errno
                log.warning(
                    "sending to a viewer failed",
                    room=self.key.room,
                    track=self.key.track_id,
                    session=viewer.session,
                    error=errno.errorcode.get(code, "protect") if code else "protect",
                    message=os.strerror(code) if code else "SRTP protection failed",
                    failures=errors - viewer.failures_seen,
                    lines_held_back=held,
                )
                viewer.failures_seen = errors

    def on_sender_report(self, report: RtcpSrPacket) -> None:
        """Translate the publisher's NTP-RTP mapping into each viewer's RTP clock and pass it
        on, so players keep audio and video in sync. (Each viewer's binding is checked too:
        should ICE nominate another pair, packets follow within a report interval.)"""
        info = report.sender_info
        for viewer in self._viewers.values():
            output = viewer.output
            if (
                output.started
                and not output.held  # (catching up: its timestamps are not the mapping's yet)
                and output.source == report.ssrc
                and viewer.sender.bind()
            ):
                rtp = (info.rtp_timestamp + output.ts_offset) & 0xFFFFFFFF
                viewer.sender.send_sender_report(info.ntp_timestamp, rtp)

    def retransmit(self, session: SessionId, lost: list[int]) -> None:
        """Answer a viewer's NACK from the cache (in that viewer's numbering): each sequence
        number once, the first :data:`MAX_NACK_SEQUENCES` of them, within the viewer's
        :class:`RetransmissionBudget`; what is not resent is counted by reason."""
        self._metrics.nacks.inc()
        viewer = self._viewers.get(session)
        if viewer is None or not viewer.output.started:
            return
        output = viewer.output
        # (aiortc's NACK parser does not wrap: a sequence number may come as 65536 or more)
        wanted = list(dict.fromkeys(seq & 0xFFFF for seq in lost))
        refused = dict.fromkeys(self._rtx_refused, 0)
        refused["duplicate"] = len(lost) - len(wanted)
        if len(wanted) > MAX_NACK_SEQUENCES:
            refused["too_many"] = len(wanted) - MAX_NACK_SEQUENCES
            del wanted[MAX_NACK_SEQUENCES:]
        now = self._loop.time()
        budget = viewer.budget
        rate = self._measured_rate(now)
        resent = 0
        for viewer_seq in wanted:
            seq = output.publisher_seq(viewer_seq)
            data = None if seq is None else self._cached(seq)
            if seq is None or data is None or not output.follows(data):
                refused["not_cached"] += 1
            elif budget.resent_lately(seq, now):
                refused["recent"] += 1
            elif not budget.take(seq, len(data), rate, now):
                refused["budget"] += 1
            elif viewer.sender.send_rtx(self._as_sent(viewer, data)) is Delivery.SENT:
                resent += 1
        if resent:
            self._metrics.retransmitted.inc(resent)
        for reason, count in refused.items():
            if count:
                self._rtx_refused[reason].inc(count)

    @staticmethod
    def _as_sent(viewer: Viewer, data: bytes) -> bytes:
        """``data`` as it was sent to ``viewer``: renumbered, and for a frame of its catch-up
        the timestamp that frame was given."""
        renumbered = viewer.output.renumber(data)
        retimed = viewer.retimed
        ts = None if retimed is None else retimed.get(int.from_bytes(data[4:8], "big"))
        if ts is None:
            return renumbered
        return renumbered[:4] + ts.to_bytes(4, "big") + renumbered[8:]

    def _cached(self, seq: int) -> bytes | None:
        data = self._cache[seq % CACHE_PACKETS]
        if data is None or int.from_bytes(data[2:4], "big") != seq:
            return None  # overwritten by a newer packet since
        return data

    def _measured_rate(self, now: float) -> float:
        """The track's incoming bytes a second, over the last second or more."""
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._incoming_rate = self._window_bytes / elapsed
            self._window_bytes = 0
            self._window_start = now
        return self._incoming_rate

    # -- instant start: the keyframe cache ----------------------------------------------------

    def _start_from_cache(self, now: float) -> None:
        """Start every viewer waiting for video on the cached keyframe, at once: its first
        frame now, the rest of the cache paced (:meth:`_pace`). The publisher is still asked
        for a keyframe (one that answers gives everyone a fresh one sooner)."""
        packets = self._keyframes.packets
        if packets is None:
            return
        rate = self._catch_up_rate(now)
        for output in self._fanout.outputs:
            if output.started or output.held or not output.bound:
                continue
            viewer = self._by_output[output]
            viewer.retimed = {}  # a start (or a restart: another publisher's clock) from scratch
            self._catch_up(viewer, CatchUp(packets, now), rate)
            if viewer.output.started:  # (on the first cached packet)
                self._started(viewer, "cache")
        self._waiting = sum(1 for o in self._fanout.outputs if not o.started and not o.held)
        self._schedule_pacer()
        self.want_keyframe()

    def keyframe_asked(self, session: SessionId) -> None:
        """A viewer asks for a keyframe (a PLI or FIR: it cannot decode). The publisher is
        asked (coalesced); and the viewer is sent the cached keyframe again at once, then the
        cache as at its start, its numbering going on: a publisher that ignores the request
        (OBS) would otherwise leave it frozen until the next keyframe. That is how a viewer
        recovers when its first packets were lost: Chromium drops what arrives in the
        moment between its DTLS handshake and its receive stream, and asks after 200 ms.
        At most once per :data:`REPLAY_INTERVAL` a viewer."""
        self.want_keyframe()
        viewer = self._viewers.get(session)
        packets = self._keyframes.packets
        if viewer is None or packets is None or not viewer.output.started:
            return
        now = self._loop.time()
        if now - viewer.replayed < REPLAY_INTERVAL or not viewer.output.bound:
            return
        viewer.replayed = now
        self._metrics.keyframe_cache_replays.inc()
        self._catch_up(viewer, CatchUp(packets, now, rebase=True), self._catch_up_rate(now))
        self._schedule_pacer()

    def _catch_up(self, viewer: Viewer, catch_up: CatchUp, rate: float) -> None:
        """Hold ``viewer`` out of the fan-out and bring it up to live from the cache: what its
        pace allows now (at least the keyframe), the rest from the pacer."""
        viewer.output.held = True
        viewer.catch_up = catch_up
        if viewer.retimed is None:
            viewer.retimed = {}
        self._catching_up[viewer.session] = viewer
        self._send_cached(viewer, catch_up.refilled, rate)

    def _send_cached(self, viewer: Viewer, now: float, rate: float) -> None:
        """Send ``viewer`` what its pace allows of the cache: whole frames while its tokens
        are not negative (a frame goes out back to back, as the publisher sent it), each
        timed as it is sent (:meth:`Output.catch_up`). Once it has been sent everything
        cached, it is live: the fan-out takes over with the next packet."""
        catch_up, output = viewer.catch_up, viewer.output
        assert catch_up is not None
        retimed = viewer.retimed
        assert retimed is not None
        catch_up.tokens = min(
            catch_up.tokens + (now - catch_up.refilled) * rate, rate * CATCH_UP_TICK * 4
        )
        catch_up.refilled = now
        packets = catch_up.packets
        sent = sent_bytes = dropped = failed = 0
        while catch_up.tokens >= 0 and catch_up.index < len(packets):
            ts = packets[catch_up.index][4:8]
            while catch_up.index < len(packets) and packets[catch_up.index][4:8] == ts:
                data = packets[catch_up.index]
                catch_up.index += 1
                catch_up.tokens -= len(data)
                try:
                    delivery = output.catch_up(data, now, catch_up.rebase)
                except ValueError:  # longer than any MTU: no viewer can take it
                    self._too_large.inc()
                    continue
                catch_up.rebase = False
                if delivery == SENT:
                    sent += 1
                    sent_bytes += len(data) - 12
                elif delivery == DROPPED:
                    dropped += 1
                elif delivery == FAILED:
                    failed += 1
            if output.started:
                retimed[int.from_bytes(ts, "big")] = output.last_ts
        self._count(sent, sent_bytes, dropped, failed)
        if catch_up.index >= len(packets):
            self._live(viewer, now)

    def _live(self, viewer: Viewer, now: float) -> None:
        """``viewer`` has been sent the whole cache: live packets follow (the fan-out's), its
        numbering and clock going on from the last cached packet it was sent. (Its first
        time is a stage of its setup; a replay's is not.)"""
        viewer.output.held = False
        viewer.catch_up = None
        first = viewer.live_since == 0.0
        viewer.live_since = now
        self._catching_up.pop(viewer.session, None)
        if first:
            seconds = now - viewer.created
            self._metrics.session_setup.labels("subscriber", "live").observe(seconds)

    def _pace(self) -> None:
        self._pacer = None
        if self.closed or not self._catching_up:
            return
        now = self._loop.time()
        rate = self._catch_up_rate(now)
        for viewer in list(self._catching_up.values()):
            self._send_cached(viewer, now, rate)
        self._schedule_pacer()

    def _schedule_pacer(self) -> None:
        if self._catching_up and self._pacer is None and not self.closed:
            self._pacer = self._loop.call_later(CATCH_UP_TICK, self._pace)

    def _catch_up_rate(self, now: float) -> float:
        """Bytes a second a viewer catching up is sent: :data:`CATCH_UP_SPEED` times the
        track's rate (as measured, or as the cache holds it when that is more)."""
        cache = self._keyframes
        held = cache.size / max(1.0, now - cache.started_at)
        return max(CATCH_UP_MIN_RATE, CATCH_UP_SPEED * max(self._measured_rate(now), held))

    def _cache_started(self, now: float) -> None:
        """A keyframe: the cache starts again on its access unit. Viewers catching up go on
        in it (skipping older frames); the timestamps given to earlier catch-ups are
        forgotten once they no longer matter to NACKs."""
        cache = self._keyframes
        for viewer in self._catching_up.values():
            assert viewer.catch_up is not None
            viewer.catch_up.follow(cache)
        cache.settled()
        for viewer in self._viewers.values():
            if viewer.catch_up is None and now - viewer.live_since > RETIMED_KEEP_SECONDS:
                viewer.retimed = None

    def _skip_to_live(self, now: float) -> None:
        """A keyframe came while viewers were catching up, and they skipped to it
        (:meth:`_cache_started`): all they have left to send is its access unit so far, which
        goes out now, whatever their pace owes for the frames before, and they are live (the
        rest of the keyframe comes as the publisher sends it). Paced behind the debt of the
        frames before, the keyframe came a few hundred milliseconds late, and the picture
        froze meanwhile."""
        packets = self._keyframes.packets
        rate = self._catch_up_rate(now)
        for viewer in list(self._catching_up.values()):
            catch_up = viewer.catch_up
            assert catch_up is not None
            if catch_up.packets is packets:
                catch_up.tokens, catch_up.refilled = max(catch_up.tokens, 0.0), now
                self._send_cached(viewer, now, rate)

    def _cache_dropped(self) -> None:
        """The cache grew past its bound and was emptied: viewers catching up wait for the
        next keyframe, their numbering continued (as after a takeover)."""
        restarted = list(self._catching_up.values())
        self._end_catch_ups()
        for viewer in restarted:
            viewer.output.restart()
        self._waiting = sum(1 for o in self._fanout.outputs if not o.started and not o.held)
        if self._waiting:
            self.want_keyframe()

    def _end_catch_ups(self) -> None:
        for viewer in self._catching_up.values():
            viewer.output.held = False
            viewer.catch_up = None
        self._catching_up.clear()
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None

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
        if self.closed:
            return
        self.closed = True
        self._registry.remove_track(self.key, self)
        self.drop_source(self._receiver)
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        self._end_catch_ups()
        self._keyframes.clear()
        self._table, self._routed = None, frozenset()
        self._fanout.outputs = ()
        for session in list(self._viewers):
            self.detach(session)
        self._cache = [None] * CACHE_PACKETS
        if self._on_close is not None:
            self._on_close(self)
