"""RTP on the wire, without decoding: where frames start, which are keyframes, and the header
rewrite that gives each viewer its own continuous stream.

Pure functions over bytes; nothing here allocates more than the rewritten packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_HEADER = 12
_SEQ_TS_SSRC = struct.Struct("!HII")


def payload_offset(packet: bytes) -> int:
    """Where the payload of an RTP packet starts (after CSRCs and header extensions)."""
    csrc_count = packet[0] & 0x0F
    offset = RTP_HEADER + 4 * csrc_count
    if packet[0] & 0x10:  # header extension
        if len(packet) < offset + 4:
            raise ValueError("truncated RTP header extension")
        length = int.from_bytes(packet[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * length
    if offset > len(packet):
        raise ValueError("truncated RTP header")
    return offset


def payload_end(packet: bytes) -> int:
    """Where the payload ends (before RTP padding)."""
    if packet[0] & 0x20 and len(packet) > RTP_HEADER:
        return len(packet) - packet[-1]
    return len(packet)


def vp8_keyframe_start(payload: bytes) -> bool:
    """The first packet of a VP8 keyframe (RFC 7741: S=1, PID=0, and P=0 in the frame header)."""
    if len(payload) < 1:
        return False
    first = payload[0]
    start, partition = first & 0x10, first & 0x07
    if not start or partition != 0:
        return False
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            offset += 1
    return len(payload) > offset and payload[offset] & 0x01 == 0


def vp9_keyframe_start(payload: bytes) -> bool:
    """The first packet of a VP9 keyframe: B=1 (start of frame), P=0 (not inter-predicted),
    and for a spatially layered stream the base layer."""
    if len(payload) < 1:
        return False
    first = payload[0]
    inter_predicted, layers, begins = first & 0x40, first & 0x20, first & 0x08
    if inter_predicted or not begins:
        return False
    if not layers:
        return True
    offset = 1
    if first & 0x80:  # I: picture id
        if len(payload) <= offset:
            return False
        offset += 2 if payload[offset] & 0x80 else 1
    if len(payload) <= offset:
        return False
    spatial_id = (payload[offset] >> 1) & 0x07
    return spatial_id == 0


_H264_IDR, _H264_SPS, _H264_STAP_A, _H264_FU_A = 5, 7, 24, 28


def h264_keyframe_start(payload: bytes) -> bool:
    """A packet that starts an H.264 IDR access unit: an SPS or IDR NAL unit, alone, first in
    a STAP-A aggregate, or the start fragment of an FU-A (RFC 6184)."""
    if len(payload) < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_H264_SPS, _H264_IDR):
        return True
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 3 <= len(payload):
            size = int.from_bytes(payload[offset : offset + 2], "big")
            unit_type = payload[offset + 2] & 0x1F
            if unit_type in (_H264_SPS, _H264_IDR):
                return True
            offset += 2 + size
        return False
    if nal_type == _H264_FU_A and len(payload) >= 2:
        header = payload[1]
        return bool(header & 0x80) and header & 0x1F in (_H264_SPS, _H264_IDR)
    return False


def av1_keyframe_start(payload: bytes) -> bool:
    """The first packet of a new AV1 coded video sequence (aggregation header N=1, Z=0)."""
    return len(payload) >= 1 and bool(payload[0] & 0x08) and not payload[0] & 0x80


def keyframe_start(codec: str, packet: bytes) -> bool:
    """Whether ``packet`` starts a keyframe of ``codec`` (a mime type such as ``video/VP8``).
    Audio packets are all "keyframes": a viewer may start on any of them."""
    kind, _, name = codec.lower().partition("/")
    if kind == "audio":
        return True
    detect = _KEYFRAME_STARTS.get(name)
    try:
        payload = packet[payload_offset(packet) : payload_end(packet)]
    except (ValueError, IndexError):
        return False
    return detect is not None and detect(payload)


_KEYFRAME_STARTS = {
    "vp8": vp8_keyframe_start,
    "vp9": vp9_keyframe_start,
    "h264": h264_keyframe_start,
    "av1": av1_keyframe_start,
}


#: How far (in sequence numbers, either way) a publisher's packet may be from the newest one
#: forwarded and keep its spacing in a viewer's stream. Further is a discontinuity: another
#: SSRC on the track, a restarted sender, a stray packet or a retransmission of nothing recent.
#: Well inside the 1024-packet SRTP replay window (aiortc's, both ends; browsers'), so that no
#: packet moves a viewer's numbering where SRTP refuses the packets after it as too old (the
#: server's own SRTP did, for every viewer, until the publisher's numbering caught up).
SEQ_CONTINUITY = 512
# How far back a NACK may name a packet of the current mapping (more than any cache holds).
_MAPPED_SPAN = 0x4000


@dataclass(slots=True)
class Rewriter:
    """One viewer's view of one published track: its own SSRC, payload type, sequence numbers
    and timestamps. The first packet forwarded maps to ``first_seq``/``first_ts``; everything
    after keeps the publisher's spacing, so the viewer sees one continuous stream. A
    discontinuity (a packet of another SSRC, or more than :data:`SEQ_CONTINUITY` from the
    newest) re-bases the mapping: the viewer's numbering goes on right after its newest
    packet, and its clock by the time that passed."""

    ssrc: int
    payload_type: int
    first_seq: int
    first_ts: int
    clock_rate: int = 90000
    seq_offset: int = 0
    ts_offset: int = 0
    started: bool = False
    source: int = 0  # the publisher's SSRC the mapping is for
    newest: int = 0  # the newest sequence number forwarded, in the publisher's numbering
    last_seq: int = 0  # the newest sequence number sent, in the viewer's numbering
    last_ts: int = 0  # its timestamp, in the viewer's clock
    last_time: float = 0.0  # when it was forwarded (the caller's clock, seconds)
    mapped_from: int = 0  # the first sequence number of the current mapping, the viewer's

    def start(self, packet: bytes, now: float = 0.0) -> None:
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        self.seq_offset = (self.first_seq - seq) & 0xFFFF
        self.ts_offset = (self.first_ts - ts) & 0xFFFFFFFF
        self.source, self.newest = ssrc, seq
        self.last_seq = self.mapped_from = self.first_seq
        self.last_ts, self.last_time = self.first_ts, now
        self.started = True

    def rewrite(self, packet: bytes, now: float = 0.0) -> bytes:
        """The packet as this viewer receives it, without the publisher's header extensions
        (their ids were negotiated with the publisher, not with this viewer)."""
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        ahead = (seq - self.newest) & 0xFFFF
        if ssrc != self.source or SEQ_CONTINUITY < ahead < 0x10000 - SEQ_CONTINUITY:
            ticks = max(1, round((now - self.last_time) * self.clock_rate))
            self.seq_offset = (self.last_seq + 1 - seq) & 0xFFFF
            self.ts_offset = (self.last_ts + ticks - ts) & 0xFFFFFFFF
            self.source = ssrc
            self.mapped_from = (self.last_seq + 1) & 0xFFFF
            ahead = 1
        if 0 < ahead < 0x8000:  # the newest yet (else late, a retransmission perhaps)
            self.newest = seq
            self.last_seq = (seq + self.seq_offset) & 0xFFFF
            self.last_ts = (ts + self.ts_offset) & 0xFFFFFFFF
            self.last_time = now
            if (self.last_seq - self.mapped_from) & 0xFFFF > _MAPPED_SPAN:  # (serial numbers)
                self.mapped_from = (self.last_seq - _MAPPED_SPAN) & 0xFFFF
        return self._renumbered(packet, seq, ts)

    def renumber(self, packet: bytes) -> bytes:
        """:meth:`rewrite` by the current mapping, changing nothing (for a resent packet)."""
        seq, ts, _ = _SEQ_TS_SSRC.unpack_from(packet, 2)
        return self._renumbered(packet, seq, ts)

    def _renumbered(self, packet: bytes, seq: int, ts: int) -> bytes:
        header = bytearray(packet[: RTP_HEADER + 4 * (packet[0] & 0x0F)])
        header[0] &= 0xEF  # no extension
        header[1] = (packet[1] & 0x80) | self.payload_type
        out_seq, out_ts = (seq + self.seq_offset) & 0xFFFF, (ts + self.ts_offset) & 0xFFFFFFFF
        _SEQ_TS_SSRC.pack_into(header, 2, out_seq, out_ts, self.ssrc)
        return bytes(header) + packet[payload_offset(packet) :]

    def publisher_seq(self, viewer_seq: int) -> int | None:
        """The publisher's sequence number of a packet this viewer knows as ``viewer_seq``, or
        None if the current mapping did not number it (before a discontinuity, or not yet)."""
        if (self.last_seq - viewer_seq) & 0xFFFF > (self.last_seq - self.mapped_from) & 0xFFFF:
            return None
        return (viewer_seq - self.seq_offset) & 0xFFFF

    def follows(self, packet: bytes) -> bool:
        """Whether ``packet`` is of the publisher's SSRC the current mapping is for."""
        return bool(_SEQ_TS_SSRC.unpack_from(packet, 2)[2] == self.source)
