"""RTP on the wire, without decoding: where payloads start and which packets start keyframes.

Pure functions over bytes. The header rewrite that gives each viewer its own continuous stream
is on the packet path, in C (:class:`golive.media._fanout.Output`).
"""

from __future__ import annotations

from golive.media import _fanout

RTP_HEADER = 12


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
#:
#: Each viewer's numbering is a :class:`golive.media._fanout.Output` (C, on the packet path):
#: its first packet maps to ``first_seq``/``first_ts``, everything after keeps the publisher's
#: spacing, so the viewer sees one continuous stream; a discontinuity re-bases the mapping, the
#: viewer's numbering going on right after its newest packet and its clock by the time that
#: passed. Header extensions are dropped (their ids were negotiated with the publisher).
SEQ_CONTINUITY = _fanout.SEQ_CONTINUITY
