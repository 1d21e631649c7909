"""FrameAssembler, property-tested on real encoded streams: reordering, duplicates, loss, and
sequence-number and timestamp wrap-around."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golive.media.depacketize import (
    DEFAULT_REORDER_WINDOW,
    Frame,
    FrameAssembler,
    Gap,
    depacketizer_for,
    vp9_descriptor_length,
)
from tests.recording.streams import CODECS, packetize, vp8_frames

codecs = st.sampled_from(sorted(CODECS))
seqs = st.integers(0, 0xFFFF)
stamps = st.integers(0, 0xFFFFFFFF)


def assembler(codec: str) -> FrameAssembler:
    depacketize = depacketizer_for(codec)
    assert depacketize is not None
    return FrameAssembler(depacketize, single_packet_frames=codec.startswith("audio"))


def run(codec: str, packets: list[bytes]) -> list[Frame | Gap]:
    frames = assembler(codec)
    out: list[Frame | Gap] = []
    for packet in packets:
        out.extend(frames.push(packet))
    out.extend(frames.flush())
    return out


def reference(codec: str, first_seq: int, first_ts: int) -> list[Frame]:
    """The frames of the undisturbed stream."""
    out = run(codec, packetize(CODECS[codec](), first_seq=first_seq, first_ts=first_ts))
    assert all(isinstance(item, Frame) for item in out)
    return [item for item in out if isinstance(item, Frame)]


def shuffle_locally(packets: list[bytes], swaps: list[tuple[int, int]]) -> list[bytes]:
    """Packets reordered by swapping pairs at most ``distance`` apart, each packet moved at
    most once (so no packet ends up further from its place than one swap takes it). The first
    packet stays first: nothing can tell that an earlier one is still on its way when a
    stream starts."""
    out = list(packets)
    moved: set[int] = set()
    for index, distance in swaps:
        i = 1 + index % (len(out) - 1)
        j = min(len(out) - 1, i + distance)
        if i in moved or j in moved:
            continue
        moved |= {i, j}
        out[i], out[j] = out[j], out[i]
    return out


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_an_undisturbed_stream_gives_every_frame_in_order(codec: str) -> None:
    encoded = CODECS[codec]()
    frames = reference(codec, 0, 0)
    assert len(frames) == len(encoded)
    assert [f.keyframe for f in frames] == [e.keyframe for e in encoded]
    stamps_seen = [f.timestamp for f in frames]
    assert stamps_seen == sorted(stamps_seen)
    assert frames[0].keyframe


@settings(max_examples=80, deadline=None)
@given(
    codec=codecs,
    first_seq=seqs,
    first_ts=stamps,
    # At most 6 packets apart: even a late packet and an early one together stay under the
    # assembler's 0.5 s wait in every stream here (15 frames of 1-packet video).
    swaps=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 6)), max_size=60),
    duplicates=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_reordering_and_duplicates_lose_nothing(
    codec: str, first_seq: int, first_ts: int, swaps: list[tuple[int, int]], duplicates: list[int]
) -> None:
    packets = packetize(CODECS[codec](), first_seq=first_seq, first_ts=first_ts)
    disturbed = shuffle_locally(packets, swaps)
    for index in duplicates:  # a copy arrives again a little later
        i = index % len(disturbed)
        disturbed.insert(min(len(disturbed), i + 1 + index % 7), disturbed[i])
    out = run(codec, disturbed)
    assert out == reference(codec, first_seq, first_ts)


@settings(max_examples=80, deadline=None)
@given(
    codec=codecs,
    first_seq=seqs,
    first_ts=stamps,
    lost=st.sets(st.integers(0, 10_000), min_size=1, max_size=25),
    swaps=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 20)), max_size=20),
)
def test_loss_drops_whole_frames_and_says_so(
    codec: str, first_seq: int, first_ts: int, lost: set[int], swaps: list[tuple[int, int]]
) -> None:
    packets = packetize(CODECS[codec](), first_seq=first_seq, first_ts=first_ts)
    lost_indexes = {index % len(packets) for index in lost}
    kept = [p for i, p in enumerate(packets) if i not in lost_indexes]
    out = run(codec, shuffle_locally(kept, swaps))
    # (Unwrapped timestamps count from the first frame handed on: compare them modulo 2^32.)
    expected = {f.timestamp & 0xFFFFFFFF: f for f in reference(codec, first_seq, first_ts)}
    frames = [item for item in out if isinstance(item, Frame)]
    # Every frame handed on is one of the stream's, whole, byte for byte, in order.
    for frame in frames:
        original = expected[frame.timestamp & 0xFFFFFFFF]
        assert (original.data, original.keyframe) == (frame.data, frame.keyframe)
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)
    # A frame that lost a packet is never handed on, and a loss is reported (unless the
    # stream merely started later or ended sooner).
    assert len(frames) < len(expected)
    kept_indexes = set(range(len(packets))) - lost_indexes
    if kept_indexes and any(min(kept_indexes) < i < max(kept_indexes) for i in lost_indexes):
        assert any(isinstance(item, Gap) for item in out)


def test_sequence_numbers_jumping_far_start_a_new_stream() -> None:
    first = packetize(vp8_frames()[:30], first_seq=100, first_ts=1000)
    second = packetize(vp8_frames()[:30], first_seq=40_000, first_ts=5_000_000)
    out = run("video/VP8", first + second)
    frames = [item for item in out if isinstance(item, Frame)]
    assert len(frames) == 60


def test_a_stream_without_markers_still_gives_whole_frames() -> None:
    packets = [
        bytes([p[0], p[1] & 0x7F]) + p[2:]
        for p in packetize(vp8_frames()[:10], first_seq=5, first_ts=5)
    ]
    out = run("video/VP8", packets)
    frames = [item for item in out if isinstance(item, Frame)]
    # The last frame has no successor to end it, so it is dropped at the end.
    assert len(frames) == 9
    assert out[-1] == Gap(1)


def test_memory_stays_bounded_when_no_frame_starts() -> None:
    frames = assembler("video/VP8")
    # Continuation packets only (S=0): never a frame start to resynchronise on.
    for seq in range(5 * DEFAULT_REORDER_WINDOW):
        frames.push(bytes([0x80, 0x60]) + seq.to_bytes(2, "big") + bytes(8) + b"\x00abc")
    assert len(frames._packets) <= 4 * DEFAULT_REORDER_WINDOW + 1


def test_malformed_packets_are_counted_not_fatal() -> None:
    frames = assembler("video/H264")
    assert frames.push(b"\x80") == []
    assert frames.push(bytes([0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]) + b"\x1f\x00") == []
    assert frames.malformed == 2


def test_vp9_descriptor_with_scalability_structure() -> None:
    # I=1 (15-bit picture id), V=1: SS with one spatial layer, sizes, and one group of two
    # references.
    descriptor = bytes([0x8A, 0x80, 0x01, 0x18, 0x01, 0x40, 0x00, 0xF0, 0x01, 0x08, 0x01, 0x02])
    assert vp9_descriptor_length(descriptor + b"frame") == len(descriptor)


def test_a_loss_is_noticed_after_half_a_second_of_media_not_at_the_end() -> None:
    """One packet per frame: 128 packets would be four seconds; the wait is bounded in media
    time too, so a recorder can ask for its keyframe at once."""
    packets = packetize(vp8_frames())
    lost = 35  # one packet of a delta frame
    frames = assembler("video/VP8")
    noticed_at = None
    for index, packet in enumerate(packets):
        if index == lost:
            continue
        if any(isinstance(item, Gap) for item in frames.push(packet)):
            noticed_at = index
            break
    assert noticed_at is not None

    def seconds(index: int) -> float:
        return int.from_bytes(packets[index][4:8], "big") / 90000

    assert seconds(noticed_at) - seconds(lost) <= 0.5 + 2 / 30
