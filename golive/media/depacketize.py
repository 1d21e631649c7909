"""From RTP packets back to whole frames, for recording: reordering, duplicates, loss, wrap-around.

A :class:`FrameAssembler` takes one track's RTP packets in arrival order and hands out the
frames they carry in timestamp order, each either complete or not at all: a frame any of
whose packets was lost is dropped, and a :class:`Gap` takes its place so that the writer can
wait for the next keyframe (the recorder asks the publisher for one).

Payload parsing is aiortc's where aiortc has it (``VpxPayloadDescriptor`` for VP8,
``H264PayloadDescriptor`` for H.264, which turns FU-A/STAP-A back into Annex B); aiortc has no
VP9, so RFC 9628's descriptor is skipped here. Opus payloads are frames as they are.

Why not aiortc's ``JitterBuffer``: it was written for a decoder that tolerates damage, and a
recording must not contain any. It hands on a frame whose first packets were lost when they
leave its window (the frame starts mid-partition and ffmpeg reports corrupt data), notices a
loss only when ``capacity`` more packets have arrived, and never releases the last frame of a
stream. Here a frame counts only from a packet that starts one (the codec's start flag) to a
packet that ends it (the marker bit, or the next packet carrying a new timestamp), with every
sequence number in between present.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

from golive.media.rtp import (
    RTP_HEADER,
    h264_keyframe_start,
    payload_end,
    payload_offset,
    vp8_keyframe_start,
    vp9_keyframe_start,
)

_SEQ_TS: Final = struct.Struct("!HI")

#: A missing packet counts as lost once packets this far ahead of it (in sequence numbers) or
#: this much later (in media time) have arrived, whichever comes first. Retransmissions the
#: server asked for arrive within about a round trip: well under either bound.
DEFAULT_REORDER_WINDOW: Final = 128
DEFAULT_MAX_DELAY: Final = 0.5  # seconds
_INCOMPLETE: Final = object()
_INVALID: Final = object()

#: A jump of the sequence number larger than this is a new stream (the publisher restarted
#: its encoder or switched source), not loss.
RESYNC_DISTANCE: Final = 3000


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame: its timestamp (RTP clock, unwrapped to 64 bits) and its bytes."""

    timestamp: int
    data: bytes
    keyframe: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """Frames were lost here: ``dropped`` frames' worth of packets were discarded."""

    dropped: int


@dataclass(frozen=True, slots=True)
class Payload:
    """What a codec's depacketizer reads from one packet's payload."""

    starts_frame: bool  # certainly the first packet of a frame
    data: bytes  # the frame's bytes this packet carries
    keyframe: bool  # (meaningful on a frame's first packet) it starts a keyframe
    may_start: bool = True  # could be a frame's first packet (if the previous one ended one)


Depacketizer = Callable[[bytes], Payload]


def vp8_payload(payload: bytes) -> Payload:
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    starts = bool(descriptor.partition_start) and descriptor.partition_id == 0
    return Payload(starts, data, starts and vp8_keyframe_start(payload), starts)


def vp9_descriptor_length(payload: bytes) -> int:
    """The length of a VP9 payload descriptor (RFC 9628 section 4.2), including the
    scalability structure a keyframe may carry."""
    flags = payload[0]
    picture_id, inter, layers, flexible, scalability = (
        flags & 0x80,
        flags & 0x40,
        flags & 0x20,
        flags & 0x10,
        flags & 0x02,
    )
    offset = 1
    if picture_id:
        offset += 2 if payload[offset] & 0x80 else 1
    if layers:
        offset += 1 if flexible else 2  # TID/U/SID/D, then TL0PICIDX in non-flexible mode
    if inter and flexible:
        while payload[offset] & 0x01:  # P_DIFF with N=1: another follows
            offset += 1
        offset += 1
    if scalability:
        ss = payload[offset]
        offset += 1
        spatial_layers, has_sizes, has_groups = (ss >> 5) + 1, ss & 0x10, ss & 0x08
        if has_sizes:
            offset += 4 * spatial_layers
        if has_groups:
            groups = payload[offset]
            offset += 1
            for _ in range(groups):
                references = (payload[offset] >> 2) & 0x03
                offset += 1 + references
    if offset > len(payload):
        raise ValueError("truncated VP9 payload descriptor")
    return offset


def vp9_payload(payload: bytes) -> Payload:
    if not payload:
        raise ValueError("empty VP9 payload")
    starts = bool(payload[0] & 0x08)  # B: beginning of a frame
    data = payload[vp9_descriptor_length(payload) :]
    return Payload(starts, data, starts and vp9_keyframe_start(payload), starts)


_H264_AU_STARTS: Final = frozenset({7, 9})  # SPS, access unit delimiter
_H264_STAP_A: Final = 24


def h264_payload(payload: bytes) -> Payload:
    """H.264 marks no frame start in its payload: a NAL unit may start in any packet, and an
    access unit is the packets of one timestamp. Only an access unit delimiter or an SPS
    (which encoders put first in an access unit) starts one for certain."""
    descriptor, data = H264PayloadDescriptor.parse(payload)
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_STAP_A and len(payload) > 3:
        nal_type = payload[3] & 0x1F  # the first aggregated unit's
    certain = descriptor.first_fragment and nal_type in _H264_AU_STARTS
    return Payload(
        certain,
        data,
        descriptor.first_fragment and h264_keyframe_start(payload),
        descriptor.first_fragment,
    )


def opus_payload(payload: bytes) -> Payload:
    return Payload(True, payload, True)


DEPACKETIZERS: Final[dict[str, Depacketizer]] = {
    "video/vp8": vp8_payload,
    "video/vp9": vp9_payload,
    "video/h264": h264_payload,
    "audio/opus": opus_payload,
}


def depacketizer_for(codec: str) -> Depacketizer | None:
    """The depacketizer of a mime type (``video/VP8``...), None if golive cannot record it."""
    return DEPACKETIZERS.get(codec.lower())


@dataclass(frozen=True, slots=True)
class _Packet:
    timestamp: int  # 32-bit RTP timestamp
    marker: bool
    payload: Payload


class FrameAssembler:
    """Whole frames from one track's packets. Not thread-safe: one recorder owns it.

    ``single_packet_frames`` (audio): every packet is a frame of its own, so a loss costs only
    the lost packets and never needs a keyframe.
    """

    def __init__(
        self,
        depacketize: Depacketizer,
        *,
        window: int = DEFAULT_REORDER_WINDOW,
        clock_rate: int = 90000,
        max_delay: float = DEFAULT_MAX_DELAY,
        single_packet_frames: bool = False,
    ) -> None:
        self._depacketize = depacketize
        self._window = window
        self._max_delay_ticks = int(clock_rate * max_delay)
        self._newest_ts = 0  # RTP timestamp of the packet with the highest sequence number
        self._settled_ts = 0  # RTP timestamp of the last frame handed on (or the first packet)
        self._single = single_packet_frames
        self._packets: dict[int, _Packet] = {}  # by extended sequence number
        self._head: int | None = None  # extended sequence number of the next frame's start
        self._highest = 0  # highest extended sequence number seen
        self._last_ts: int | None = None  # unwrapped timestamp of the last frame handed on
        self._boundary = False  # the packet at the head follows the end of a frame
        self.malformed = 0  # packets whose payload could not be parsed

    def push(self, packet: bytes) -> list[Frame | Gap]:
        """Add one RTP packet; the frames (and gaps) it completes, in order."""
        if len(packet) < RTP_HEADER or packet[0] >> 6 != 2:
            self.malformed += 1
            return []
        seq, timestamp = _SEQ_TS.unpack_from(packet, 2)
        try:
            payload = self._depacketize(packet[payload_offset(packet) : payload_end(packet)])
        except (ValueError, IndexError):
            self.malformed += 1
            return []
        out: list[Frame | Gap] = []
        ext = self._extend(seq, timestamp, out)
        if ext is None:
            return out
        self._packets.setdefault(ext, _Packet(timestamp, bool(packet[1] & 0x80), payload))
        if ext > self._highest:
            self._highest = ext
            self._newest_ts = timestamp
        self._drain(out)
        return out

    def flush(self) -> list[Frame | Gap]:
        """The end of the stream: hand on what is complete, drop the rest."""
        out: list[Frame | Gap] = []
        self._drain(out, final=True)
        if self._packets:
            out.append(Gap(self._count_frames(self._packets)))
            self._packets.clear()
        return out

    # -- sequence numbers ---------------------------------------------------------------------

    def _extend(self, seq: int, timestamp: int, out: list[Frame | Gap]) -> int | None:
        """The packet's extended sequence number, or None if it is late or a duplicate."""
        if self._head is None:
            self._head = self._highest = seq
            self._boundary = False
            self._settled_ts = self._newest_ts = timestamp
            return seq
        delta = (seq - self._highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000  # behind the highest: reordered, retransmitted or duplicated
        ext = self._highest + delta
        if abs(delta) > RESYNC_DISTANCE:
            out.extend(self.flush())  # a new stream: what was pending of the old one is lost
            self._head = self._highest = ext
            self._boundary = False
            self._settled_ts = self._newest_ts = timestamp
            return ext
        if ext < self._head:
            return None  # its frame was handed on or given up already
        return ext

    # -- frames -------------------------------------------------------------------------------

    def _drain(self, out: list[Frame | Gap], *, final: bool = False) -> None:
        while self._head is not None and self._packets:
            frame_end = self._complete_frame()
            if isinstance(frame_end, int):
                out.append(self._take(frame_end))
                continue
            waiting = frame_end is _INCOMPLETE and not self._overdue()
            if (waiting and not final) or not self._skip_damaged(out):
                return

    def _overdue(self) -> bool:
        """Whether what is missing at the head has waited long enough to count as lost."""
        assert self._head is not None
        if self._highest - self._head >= self._window:
            return True
        ahead = (self._newest_ts - self._settled_ts) & 0xFFFFFFFF
        return ahead < 0x80000000 and ahead > self._max_delay_ticks

    def _complete_frame(self) -> int | object:
        """The last sequence number of the frame at the head if it is complete; else
        ``_INCOMPLETE`` (a packet may still arrive) or ``_INVALID`` (its start is unknown)."""
        assert self._head is not None
        first = self._packets.get(self._head)
        if first is None:
            return _INCOMPLETE
        if not (first.payload.starts_frame or (first.payload.may_start and self._boundary)):
            return _INVALID
        ext = self._head
        packet = first
        while not (self._single or packet.marker):
            following = self._packets.get(ext + 1)
            if following is None:
                return _INCOMPLETE
            if following.timestamp != first.timestamp:
                return ext  # no marker (a sender may omit it), but the next frame has begun
            ext += 1
            packet = following
        return ext

    def _take(self, last: int) -> Frame:
        assert self._head is not None
        parts = [self._packets.pop(ext) for ext in range(self._head, last + 1)]
        self._head = last + 1
        self._boundary = True  # the next packet starts a frame, whatever its payload says
        first = parts[0]
        self._settled_ts = first.timestamp
        return Frame(
            self._unwrap(first.timestamp),
            b"".join(p.payload.data for p in parts),
            first.payload.keyframe,
        )

    def _skip_damaged(self, out: list[Frame | Gap]) -> bool:
        """Drop the damaged frame at the head: every packet before the next one known to
        start another frame. False if there is none yet."""
        assert self._head is not None
        present = sorted(self._packets)
        if self._single:  # the missing packets were frames of their own: nothing else is lost
            self._drop_before(present[0], out)
            return True
        head = self._packets.get(self._head)
        if head is not None:
            damaged: int | None = head.timestamp
        else:
            # The first packet after the hole belongs to the damaged frame unless it certainly
            # starts one of its own.
            after = self._packets[present[0]]
            damaged = None if after.payload.starts_frame else after.timestamp
        for ext in present:
            packet = self._packets[ext]
            if ext < self._head or (ext == self._head and head is not None):
                continue
            if packet.timestamp == damaged:
                continue
            previous = self._packets.get(ext - 1)
            follows_a_frame = previous is not None and previous.timestamp != packet.timestamp
            if packet.payload.starts_frame or (packet.payload.may_start and follows_a_frame):
                self._drop_before(ext, out)
                return True
        if len(self._packets) > 4 * self._window:  # no frame start in sight: bound the memory
            self._drop_before(present[-1] + 1, out)
            self._boundary = False
            return True
        return False

    def _drop_before(self, ext: int, out: list[Frame | Gap]) -> None:
        dropped = {e: p for e, p in self._packets.items() if e < ext}
        for e in dropped:
            del self._packets[e]
        out.append(Gap(max(1, self._count_frames(dropped))))
        self._head = ext
        following = self._packets.get(ext)
        if following is not None:
            self._settled_ts = following.timestamp
        self._boundary = True  # skipped to a packet known to start a frame

    @staticmethod
    def _count_frames(packets: dict[int, _Packet]) -> int:
        return len({p.timestamp for p in packets.values()})

    def _unwrap(self, timestamp: int) -> int:
        """The 32-bit RTP timestamp, unwrapped against the last frame's (64-bit, monotonic
        across wrap-around)."""
        if self._last_ts is None:
            self._last_ts = timestamp
            return timestamp
        delta = (timestamp - self._last_ts) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last_ts += delta
        return self._last_ts
