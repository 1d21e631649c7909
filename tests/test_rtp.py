"""RTP without decoding: keyframe starts per codec, and each viewer's header rewrite (the C
output's numbering)."""

from __future__ import annotations

import struct

import pylibsrtp
from hypothesis import given
from hypothesis import strategies as st

from golive.media._fanout import Output
from golive.media.rtp import (
    SEQ_CONTINUITY,
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
    rewriter = Output(ssrc=0xCAFE, payload_type=101, first_seq=first_seq, first_ts=first_ts)
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


def viewer_srtp() -> pylibsrtp.Session:
    """The server's outbound SRTP towards a viewer, set up as aiortc sets it up."""
    policy = pylibsrtp.Policy(key=bytes(range(30)), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def numbers(packet: bytes) -> tuple[int, int]:
    seq, ts = struct.unpack_from("!HI", packet, 2)
    return seq, ts


def test_a_discontinuity_goes_on_from_the_viewers_newest_packet() -> None:
    """A stray packet of another SSRC far ahead of the stream, then the stream again: the
    viewer's numbering goes on one by one, and a NACK maps back only within the mapping
    that numbered the packet. (Unmapped, the stray packet pushed the viewer's numbering 5000
    ahead and the server's SRTP refused every packet after it, for every viewer.)"""
    rewriter = Output(ssrc=0xCAFE, payload_type=111, first_seq=100, first_ts=1000, clock_rate=48000)
    rewriter.start(rtp(7000, 50_000, b"a", ssrc=0xA), now=10.0)
    assert numbers(rewriter.rewrite(rtp(7000, 50_000, b"a", ssrc=0xA), now=10.0)) == (100, 1000)
    assert numbers(rewriter.rewrite(rtp(7001, 50_960, b"a", ssrc=0xA), now=10.02)) == (101, 1960)
    # Another SSRC, far ahead: right after the newest, its clock 0.5 s on.
    stray = rewriter.rewrite(rtp(12_001, 4_000_000, b"b", ssrc=0xB), now=10.52)
    assert numbers(stray) == (102, 1960 + 24_000)
    assert rewriter.publisher_seq(101) is None  # numbered by the mapping before
    assert rewriter.publisher_seq(102) == 12_001
    # The stream again: a discontinuity too.
    assert numbers(rewriter.rewrite(rtp(7002, 51_920, b"a", ssrc=0xA), now=10.54))[0] == 103
    assert numbers(rewriter.rewrite(rtp(7003, 52_880, b"a", ssrc=0xA), now=10.56))[0] == 104
    assert rewriter.follows(rtp(7003, 0, b"", ssrc=0xA))
    assert not rewriter.follows(rtp(7003, 0, b"", ssrc=0xB))
    # Late (reordered) and lost packets keep their spacing; a jump back does not.
    assert numbers(rewriter.rewrite(rtp(7010, 59_600, b"a", ssrc=0xA), now=10.7))[0] == 111
    assert numbers(rewriter.rewrite(rtp(7005, 54_800, b"a", ssrc=0xA), now=10.7))[0] == 106
    assert rewriter.publisher_seq(106) == 7005
    assert numbers(rewriter.rewrite(rtp(1000, 59_600, b"a", ssrc=0xA), now=10.72))[0] == 112
    assert rewriter.publisher_seq(111) is None


@given(
    first_seq=st.integers(0, 0xFFFF),
    start_seq=st.integers(0, 0xFFFF),
    packets=st.lists(
        st.tuples(
            st.sampled_from([0xA, 0xA, 0xA, 0xB]),
            st.one_of(st.integers(-600, 600), st.integers(-0x8000, 0x8000)),
        ),
        max_size=60,
    ),
)
def test_no_publisher_packet_makes_srtp_refuse_the_next(
    first_seq: int, start_seq: int, packets: list[tuple[int, int]]
) -> None:
    """Whatever the publisher sends on a track (any SSRC, any sequence number, late, early),
    the server's SRTP towards the viewer (aiortc's settings) protects every packet, and the
    viewer's numbering never moves more than :data:`SEQ_CONTINUITY` at once."""
    srtp = viewer_srtp()
    rewriter = Output(ssrc=0xCAFE, payload_type=101, first_seq=first_seq, first_ts=0)
    rewriter.start(rtp(start_seq, 0, b"", ssrc=0xA))
    newest, stream = first_seq, start_seq
    for ssrc, step in packets:
        if ssrc == 0xA:
            stream = (stream + step) & 0xFFFF
        out = rewriter.rewrite(rtp(stream if ssrc == 0xA else step & 0xFFFF, 0, b"x", ssrc=ssrc))
        srtp.protect(out)  # raises pylibsrtp.Error if the index is too old
        ahead = (numbers(out)[0] - newest) & 0xFFFF
        assert ahead <= SEQ_CONTINUITY or ahead >= 0x10000 - SEQ_CONTINUITY
        if 0 < ahead < 0x8000:
            newest = numbers(out)[0]
