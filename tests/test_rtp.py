"""RTP without decoding: keyframe starts per codec, and each viewer's header rewrite."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from golive.media.rtp import (
    Rewriter,
    av1_keyframe_start,
    h264_keyframe_start,
    keyframe_start,
    payload_offset,
    vp8_keyframe_start,
    vp9_keyframe_start,
)


def rtp(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    pt: int = 96,
    marker: bool = False,
    ssrc: int = 0x1234,
    extension: bytes = b"",
    csrcs: tuple[int, ...] = (),
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension else 0)
    header = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension:
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return header + payload


def test_vp8() -> None:
    assert vp8_keyframe_start(bytes([0x10, 0x00]))  # S=1, PID=0; frame header P=0
    assert not vp8_keyframe_start(bytes([0x10, 0x01]))  # an interframe
    assert not vp8_keyframe_start(bytes([0x00, 0x00]))  # not the start of a partition
    assert not vp8_keyframe_start(bytes([0x11, 0x00]))  # partition 1
    # X with a 15-bit picture id, TL0PICIDX and TID/KEYIDX: the frame header comes after.
    assert vp8_keyframe_start(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x00]))
    assert not vp8_keyframe_start(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x01]))
    assert not vp8_keyframe_start(b"")


def test_h264() -> None:
    assert h264_keyframe_start(bytes([0x65, 0x88]))  # IDR
    assert h264_keyframe_start(bytes([0x67, 0x42]))  # SPS
    assert not h264_keyframe_start(bytes([0x41, 0x9A]))  # non-IDR slice
    stap = bytes([0x78]) + (2).to_bytes(2, "big") + bytes([0x67, 0x42])
    assert h264_keyframe_start(stap)
    assert not h264_keyframe_start(bytes([0x78]) + (2).to_bytes(2, "big") + bytes([0x41, 0x00]))
    assert h264_keyframe_start(bytes([0x7C, 0x85]))  # FU-A start of an IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05]))  # FU-A continuation
    assert not h264_keyframe_start(bytes([0x7C, 0x81]))  # FU-A start of a non-IDR slice


def test_vp9_and_av1() -> None:
    assert vp9_keyframe_start(bytes([0x08]))  # B=1, P=0
    assert not vp9_keyframe_start(bytes([0x48]))  # inter-predicted
    assert not vp9_keyframe_start(bytes([0x00]))  # not the beginning of a frame
    assert vp9_keyframe_start(bytes([0x28, 0x00]))  # layered, spatial layer 0
    assert not vp9_keyframe_start(bytes([0x28, 0x02]))  # layered, spatial layer 1
    assert av1_keyframe_start(bytes([0x68]))  # N=1: a new coded video sequence
    assert not av1_keyframe_start(bytes([0x60]))
    assert not av1_keyframe_start(bytes([0x88]))  # continues an OBU from the last packet


def test_keyframe_start_reads_past_the_header() -> None:
    packet = rtp(1, 2, bytes([0x10, 0x00]), extension=b"\x10\xff\x00\x00", csrcs=(7,))
    assert payload_offset(packet) == 12 + 4 + 8
    assert keyframe_start("video/VP8", packet)
    assert keyframe_start("audio/opus", rtp(1, 2, b"\x01"))
    assert not keyframe_start("video/VP8", packet[:14])  # truncated extension
    assert not keyframe_start("video/H265", packet)


@given(
    first_seq=st.integers(0, 0xFFFF),
    first_ts=st.integers(0, 0xFFFFFFFF),
    start_seq=st.integers(0, 0xFFFF),
    start_ts=st.integers(0, 0xFFFFFFFF),
    steps=st.lists(st.integers(1, 6000), min_size=1, max_size=40),
)
def test_rewrite_gives_one_continuous_stream(
    first_seq: int, first_ts: int, start_seq: int, start_ts: int, steps: list[int]
) -> None:
    """Whatever the numbering on both sides, and across wrap-around, the viewer's sequence
    numbers are consecutive, timestamps keep their spacing, and NACKs map back."""
    rewriter = Rewriter(ssrc=0xCAFE, payload_type=101, first_seq=first_seq, first_ts=first_ts)
    seq, ts = start_seq, start_ts
    packet = rtp(seq, ts, b"first", pt=96, marker=True, extension=b"\x10\xff\x00\x00")
    rewriter.start(packet)
    out = rewriter.rewrite(packet)
    assert struct.unpack("!HII", out[2:12]) == (first_seq, first_ts, 0xCAFE)
    assert out[1] == 0x80 | 101  # marker kept, payload type rewritten
    assert out[0] & 0x10 == 0  # the publisher's header extensions are not passed on
    assert out[12:] == b"first"
    expected_seq, expected_ts = first_seq, first_ts
    for step in steps:
        seq, ts = (seq + 1) & 0xFFFF, (ts + step) & 0xFFFFFFFF
        out = rewriter.rewrite(rtp(seq, ts, b"x"))
        expected_seq, expected_ts = (expected_seq + 1) & 0xFFFF, (expected_ts + step) & 0xFFFFFFFF
        assert struct.unpack("!HI", out[2:8]) == (expected_seq, expected_ts)
        assert rewriter.publisher_seq(expected_seq) == seq
