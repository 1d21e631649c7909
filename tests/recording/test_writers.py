"""Recording files, judged by Debian's ffmpeg/ffprobe: clean decoding, frame counts, durations,
after loss and after the process dies mid-recording."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golive.media.containers import (
    IvfWriter,
    extension_for,
    finalize_ivf,
    opus_samples,
    repair_recording,
    truncate_matroska,
    vp8_dimensions,
    vp9_dimensions,
)
from golive.media.depacketize import Frame
from golive.media.recording import TrackRecording
from tests.recording.probe import decode_errors, probe
from tests.recording.streams import (
    CODECS,
    FPS,
    HEIGHT,
    WIDTH,
    assembled,
    h264_frames,
    opus_frames,
    packetize,
    vp8_frames,
    vp9_frames,
)
from tests.recording.test_assembler import shuffle_locally

EXPECTED_CODEC = {
    "video/VP8": "vp8",
    "video/VP9": "vp9",
    "video/H264": "h264",
    "audio/opus": "opus",
}


def record(path: Path, codec: str, packets: list[bytes]) -> TrackRecording:
    path.touch()
    recording = TrackRecording(path, codec)
    for packet in packets:
        recording.push(packet)
    recording.close()
    return recording


def new_path(directory: Path, codec: str, name: str = "room_0_1") -> Path:
    extension = extension_for(codec)
    assert extension is not None
    return directory / f"{name}.{extension}"


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_whole_stream_plays_with_every_frame_and_the_right_duration(
    tmp_path: Path, codec: str
) -> None:
    encoded = CODECS[codec]()
    path = new_path(tmp_path, codec)
    recording = record(path, codec, packetize(encoded, first_seq=65_000, first_ts=2**32 - 9_000))
    assert decode_errors(path) == ""
    found = probe(path)
    assert found.codec == EXPECTED_CODEC[codec]
    assert found.frames == len(encoded) == recording.frames
    step_seconds = encoded[0].step / (48000 if codec.startswith("audio") else 90000)
    assert found.duration == pytest.approx(len(encoded) * step_seconds, abs=0.03)
    if codec.startswith("video"):
        assert (found.width, found.height) == (WIDTH, HEIGHT)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    codec=st.sampled_from(sorted(CODECS)),
    lost=st.sets(st.integers(0, 10_000), min_size=1, max_size=8),
    first_seq=st.integers(0, 0xFFFF),
    first_ts=st.integers(0, 0xFFFFFFFF),
    swaps=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 12)), max_size=20),
    duplicates=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_loss_reordering_and_duplicates_still_give_a_clean_file(  # noqa: PLR0917  drawn by hypothesis
    tmp_path: Path,
    codec: str,
    lost: set[int],
    first_seq: int,
    first_ts: int,
    swaps: list[tuple[int, int]],
    duplicates: list[int],
) -> None:
    packets = packetize(CODECS[codec](), first_seq=first_seq, first_ts=first_ts)
    lost_indexes = {1 + index % (len(packets) - 1) for index in lost}  # the start survives
    kept = shuffle_locally([p for i, p in enumerate(packets) if i not in lost_indexes], swaps)
    for index in duplicates:
        kept.insert(min(len(kept), index % len(kept) + 3), kept[index % len(kept)])
    path = new_path(tmp_path, codec, f"loss_{first_seq}_{len(lost)}")
    recording = record(path, codec, kept)
    if recording.frames == 0:  # every keyframe was hit: nothing playable (the recorder drops it)
        assert path.stat().st_size <= 32
    else:
        assert decode_errors(path) == ""
        assert probe(path).frames == recording.frames
    path.unlink()


def test_video_resumes_at_the_next_keyframe_after_loss(tmp_path: Path) -> None:
    encoded = vp8_frames()  # keyframes at 0 and 30
    packets = packetize(encoded)
    # Lose a packet of frame 5: frames 5..29 cannot be decoded, 30.. can.
    first_of_frame_5 = sum(len(f.payloads) for f in encoded[:5])
    kept = packets[:first_of_frame_5] + packets[first_of_frame_5 + 1 :]
    path = new_path(tmp_path, "video/VP8")
    recording = record(path, "video/VP8", kept)
    assert recording.frames == 5 + (len(encoded) - 30)
    assert decode_errors(path) == ""


def test_a_video_recording_starts_at_a_keyframe(tmp_path: Path) -> None:
    encoded = h264_frames()
    packets = packetize(encoded)
    start = sum(len(f.payloads) for f in encoded[:3])  # joins at frame 3, a delta frame
    path = new_path(tmp_path, "video/H264")
    recording = record(path, "video/H264", packets[start:])
    assert recording.frames == len(encoded) - 30
    assert decode_errors(path) == ""


# -------------------------------------------------------------------------------- IVF header


def ivf_header(path: Path) -> tuple[int, int, int, int, int]:
    """(width, height, rate, scale, frame count) of an IVF file."""
    fields = struct.unpack_from("<4sHH4sHHIIII", path.read_bytes())
    return fields[4], fields[5], fields[6], fields[7], fields[8]


def test_ivf_header_holds_the_frame_count_and_the_duration_alike(tmp_path: Path) -> None:
    path = new_path(tmp_path, "video/VP8")
    record(path, "video/VP8", packetize(vp8_frames()))
    width, height, rate, scale, count = ivf_header(path)
    assert (width, height, count) == (WIDTH, HEIGHT, 60)
    # The count read as a duration in time-base units (libavformat before 2023) is right too.
    assert count * scale / rate == pytest.approx(60 / FPS, rel=1e-6)


def test_finalizing_twice_changes_nothing(tmp_path: Path) -> None:
    path = new_path(tmp_path, "video/VP9")
    record(path, "video/VP9", packetize(vp9_frames()))
    before = path.read_bytes()
    assert finalize_ivf(path) == 60
    assert path.read_bytes() == before


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 100_000))
def test_an_ivf_cut_anywhere_is_repaired(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut_0_1.ivf"
    path.touch()
    writer = IvfWriter(path, "video/VP8")
    for index, frame in enumerate(vp8_frames()):
        writer.write(Frame(index * 3000, assembled("video/VP8")[index].data, frame.keyframe))
    writer._file.close()  # type: ignore[union-attr]
    data = path.read_bytes()
    path.write_bytes(data[: 32 + cut % (len(data) - 32)])
    repair_recording(path)
    if path.stat().st_size > 32:
        assert decode_errors(path) == ""
    assert finalize_ivf(path) == ivf_header(path)[4]


MATROSKA_CLUSTER = bytes.fromhex("1f43b675")  # a cluster's element ID


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 1_000_000))
def test_a_matroska_file_cut_anywhere_is_cut_back_to_whole_clusters_in_place(
    tmp_path: Path, cut: int
) -> None:
    """A full disk cuts a cluster short: the repair that needs no free space (no remux) leaves
    a file that decodes without error, every complete cluster kept."""
    whole = tmp_path / "whole_0_1.mkv"
    record(whole, "video/H264", packetize(h264_frames(count=90)))
    assert truncate_matroska(whole) == whole.stat().st_size  # a whole file is left alone
    data = whole.read_bytes()
    path = tmp_path / "cut_0_1.mkv"
    path.write_bytes(data[: cut % len(data)])
    size = truncate_matroska(path)
    assert path.stat().st_size == size
    assert truncate_matroska(path) == size  # idempotent
    if MATROSKA_CLUSTER not in path.read_bytes():  # cut before the first cluster ended
        return
    assert decode_errors(path) == ""
    assert 0 < probe(path).frames <= 90


# ------------------------------------------------------------------ the process dies mid-write

CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from golive.media.recording import TrackRecording
    from tests.recording.streams import packetize, vp8_frames, h264_frames, opus_frames
    codec, path = sys.argv[1], Path(sys.argv[2])
    frames = {"video/VP8": vp8_frames, "video/H264": h264_frames, "audio/opus": opus_frames}
    packets = packetize(frames[codec](count=150) if codec != "audio/opus" else frames[codec](250))
    path.touch()
    recording = TrackRecording(path, codec)
    for packet in packets[: len(packets) * 2 // 3]:
        recording.push(packet)
    sys.stdout.write(str(recording.frames))
    sys.stdout.flush()
    os._exit(9)  # no close, no flush: as if killed
    """
)


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264", "audio/opus"])
def test_a_recording_survives_the_process_dying(tmp_path: Path, codec: str) -> None:
    path = new_path(tmp_path, codec)
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, codec, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 9, result.stderr
    written = int(result.stdout)
    repair_recording(path)
    assert decode_errors(path) == ""
    found = probe(path)
    # What the format could not keep: at most the page (Ogg) or cluster (Matroska) in progress.
    step = 0.02 if codec.startswith("audio") else 1 / FPS
    assert written - 1.1 / step <= found.frames <= written
    assert found.duration == pytest.approx(found.frames * step, abs=0.1)


# ------------------------------------------------------------------------------ small parsers


def test_opus_packet_durations() -> None:
    assert opus_samples(bytes([0xFC])) == 960  # CELT 20 ms, one frame
    assert opus_samples(bytes([(1 << 3) | 0])) == 960  # SILK NB 20 ms
    assert opus_samples(bytes([(3 << 3) | 1])) == 2 * 2880  # SILK 60 ms, two frames
    assert opus_samples(bytes([(16 << 3) | 3, 0x04])) == 4 * 120  # CELT 2.5 ms, code 3, 4 frames
    assert opus_samples(b"") == 960
    for frame in opus_frames():
        assert opus_samples(frame.payloads[0]) == 960


def test_keyframe_dimensions() -> None:
    assert vp8_dimensions(assembled("video/VP8")[0].data) == (WIDTH, HEIGHT)
    assert vp8_dimensions(assembled("video/VP8")[1].data) == (0, 0)  # not a keyframe
    assert vp9_dimensions(assembled("video/VP9")[0].data) == (WIDTH, HEIGHT)
    assert vp9_dimensions(assembled("video/VP9")[1].data) == (0, 0)
    assert vp9_dimensions(b"\x82") == (0, 0)


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264", "audio/opus"])
def test_a_publisher_restarting_its_stream_leaves_no_hole_in_the_file(
    tmp_path: Path, codec: str
) -> None:
    """New sequence numbers and timestamps mid-recording (an encoder restart): the file goes
    on one frame later instead of jumping hours ahead or back."""
    encoded = CODECS[codec]()
    half = len(encoded) // 2
    if codec.startswith("video"):
        half = 30  # the second keyframe
    first = packetize(encoded[:half], first_seq=10, first_ts=1_000)
    second = packetize(encoded[half:], first_seq=30_000, first_ts=3_000_000_000)
    path = new_path(tmp_path, codec)
    recording = record(path, codec, first + second)
    assert recording.frames == len(encoded)
    assert decode_errors(path) == ""
    step = encoded[0].step / (48000 if codec.startswith("audio") else 90000)
    assert probe(path).duration == pytest.approx(len(encoded) * step, abs=0.05)
