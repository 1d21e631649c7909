"""Recording end to end: a real aiortc publisher (VP8 or H.264, with Opus) through golive with
``RECORD_ENABLED=1``; every file judged by Debian's ffprobe and ffmpeg against what the
publisher sent. Loss the server cannot repair, and uploads to a real S3 server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import is_rtcp

from golive.media import hooks
from tests.media.clients import PatternTrack, close_all, delete, post_offer
from tests.recording.probe import decode_errors, probe
from tests.s3 import S3Server, free_port
from tests.support import ServerThread, eventually, metric_samples, running_server, wait_until
from tests.test_server import Golive, environment, python_m

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DEADLINE = 30.0
FPS = 30  # aiortc's VideoStreamTrack clock
BASE_ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    return tmp_path / "records"


@pytest.fixture
def recording_server(record_dir: Path) -> Iterator[ServerThread]:
    env = {**BASE_ENV, "RECORD_ENABLED": "1", "RECORD_DIR": str(record_dir)}
    with running_server(env) as running:
        yield running


@dataclass
class Sent:
    """What the publisher put on the wire, counted before SRTP."""

    video_frames: set[int] = field(default_factory=set)  # RTP timestamps with the marker bit
    audio_packets: int = 0
    video_ssrc: int = 0
    audio_ssrc: int = 0


@dataclass
class CountingPublisher:
    pc: RTCPeerConnection
    location: str
    sent: Sent
    video: RTCRtpSender


async def publish_counting(base_url: str, room: str, video_codec: str) -> CountingPublisher:
    """A WHIP publisher sending ``video_codec`` and Opus, counting what it sends."""
    pc = RTCPeerConnection()
    video = pc.addTransceiver(PatternTrack(160, 120), direction="sendonly")
    codecs = RTCRtpSender.getCapabilities("video").codecs
    video.setCodecPreferences(
        [c for c in codecs if c.mimeType.lower() in (video_codec.lower(), "video/rtx")]
    )
    audio = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    answer = await post_offer(base_url, f"/api/whip/publish/{room}", pc)
    assert answer.status == 201, answer.body
    sent = Sent(video_ssrc=video.sender._ssrc, audio_ssrc=audio.sender._ssrc)
    transport = video.sender.transport  # one bundled DTLS transport for both
    send_rtp = transport._send_rtp

    async def counting(data: bytes) -> None:
        if not is_rtcp(data):
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc == sent.video_ssrc and data[1] & 0x80:
                sent.video_frames.add(int.from_bytes(data[4:8], "big"))
            elif ssrc == sent.audio_ssrc:
                sent.audio_packets += 1
        await send_rtp(data)

    transport._send_rtp = counting  # type: ignore[method-assign]
    return CountingPublisher(pc, answer.location, sent, video.sender)


def recordings(directory: Path) -> dict[str, Path]:
    """The finished recordings by extension; nothing left marked as being recorded."""
    assert list((directory / ".golive" / "recording").iterdir()) == []
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return {p.suffix: p for p in files}


@pytest.mark.parametrize(("codec", "extension"), [("video/VP8", ".ivf"), ("video/H264", ".mkv")])
async def test_a_session_is_recorded_to_files_that_play(
    recording_server: ServerThread, record_dir: Path, codec: str, extension: str
) -> None:
    room = f"rec-{extension[1:]}"
    publisher = await publish_counting(recording_server.url, room, codec)
    try:
        await eventually(
            lambda: len(publisher.sent.video_frames) >= 3 * FPS,
            what="three seconds of video",
            seconds=DEADLINE,
        )
        # DELETE returns once the room has ended and its recorders have finalized their files.
        assert await delete(recording_server.url, publisher.location) == 200
    finally:
        await close_all(publisher.pc)
    files = recordings(record_dir)
    assert sorted(files) == sorted([extension, ".ogg"])
    for path in files.values():
        assert path.name.startswith(f"{room}_")
        assert decode_errors(path) == "", path.name

    sent = publisher.sent
    video = probe(files[extension])
    assert video.codec == codec.split("/")[1].lower()
    assert (video.width, video.height) == (160, 120)
    # Every frame sent is recorded but those still on their way when the publisher left.
    assert len(sent.video_frames) - 3 <= video.frames <= len(sent.video_frames)
    span = (max(sent.video_frames) - min(sent.video_frames)) / 90000
    assert video.duration == pytest.approx(span + 1 / FPS, abs=0.15)

    audio = probe(files[".ogg"])
    assert audio.codec == "opus"
    assert sent.audio_packets - 5 <= audio.frames <= sent.audio_packets
    assert audio.duration == pytest.approx(audio.frames * 0.020, abs=0.1)

    samples = metric_samples(
        (await asyncio.to_thread(recording_server.get, "/metrics"))[1].decode()
    )
    assert samples[("golive_recordings_started_total", (("codec", codec),))] == 1
    assert samples[("golive_recordings_finished_total", (("codec", "audio/opus"),))] == 1
    assert samples[("golive_recording_bytes_written_total", ())] > 0


async def test_a_publisher_taking_a_room_over_records_anew(
    recording_server: ServerThread, record_dir: Path
) -> None:
    """The publisher vanishes (no DELETE): its recordings are finalized as the room starts
    waiting. A publisher taking the room over is recorded in files of its own; none of its
    packets reach the first publisher's files."""
    room = "rec-takeover"
    first = await publish_counting(recording_server.url, room, "video/VP8")
    second: CountingPublisher | None = None
    try:
        await eventually(
            lambda: len(first.sent.video_frames) >= FPS, what="a second of video", seconds=DEADLINE
        )
        await first.pc.close()
        await eventually(
            lambda: b'"waiting": true' in recording_server.get("/api/rooms")[1],
            what="the room to wait",
        )
        second = await publish_counting(recording_server.url, room, "video/VP8")
        await eventually(
            lambda: len(second.sent.video_frames) >= FPS if second else False,
            what="a second of the new publisher's video",
            seconds=DEADLINE,
        )
        assert await delete(recording_server.url, second.location) == 200
    finally:
        await close_all(first.pc, *([second.pc] if second else []))
    assert second is not None
    videos, audios = finished(record_dir, ".ivf"), finished(record_dir, ".ogg")
    assert (len(videos), len(audios)) == (2, 2), (videos, audios)
    assert [decode_errors(path) for path in videos] == ["", ""]
    frames = sorted(probe(path).frames for path in videos)
    sent = sorted([len(first.sent.video_frames), len(second.sent.video_frames)])
    for recorded, count in zip(frames, sent, strict=True):
        assert count - 3 <= recorded <= count  # each file one publisher's frames, no more


def finished(directory: Path, suffix: str) -> list[Path]:
    """The finished recordings with ``suffix``; nothing left marked as being recorded."""
    assert list((directory / ".golive" / "recording").iterdir()) == []
    return sorted(directory.glob(f"*{suffix}"))


async def test_loss_the_server_cannot_repair_still_gives_a_clean_file(
    recording_server: ServerThread, record_dir: Path
) -> None:
    """Mid-stream, the publisher's network loses video packets *and* their retransmissions:
    the recording drops the damaged frames, asks for a keyframe and resumes there."""
    publisher = await publish_counting(recording_server.url, "rec-loss", "video/VP8")
    ice = publisher.video.transport.transport
    network = ice._send
    dropped: set[int] = set()
    video_ssrc = publisher.sent.video_ssrc
    rtx_ssrc = publisher.video._rtx_ssrc

    async def lossy(data: bytes) -> None:  # after SRTP: the header is still readable
        if 127 < data[0] < 192 and not is_rtcp(data):
            ssrc = int.from_bytes(data[8:12], "big")
            frames = len(publisher.sent.video_frames)
            if ssrc == video_ssrc and frames >= FPS and len(dropped) < 4:
                dropped.add(int.from_bytes(data[2:4], "big"))
                return
            if ssrc == rtx_ssrc and dropped:  # no retransmission gets through
                return
        await network(data)

    ice._send = lossy
    try:
        await eventually(
            lambda: len(publisher.sent.video_frames) >= 4 * FPS,
            what="four seconds of video",
            seconds=DEADLINE,
        )
        assert len(dropped) == 4
        assert await delete(recording_server.url, publisher.location) == 200
    finally:
        await close_all(publisher.pc)
    video_file = recordings(record_dir)[".ivf"]
    assert decode_errors(video_file) == ""
    recorded = probe(video_file).frames
    assert FPS // 2 < recorded < len(publisher.sent.video_frames) - 2
    samples = metric_samples(
        (await asyncio.to_thread(recording_server.get, "/metrics"))[1].decode()
    )
    assert samples[("golive_recording_frames_dropped_total", (("reason", "damaged"),))] >= 1
    assert samples[("golive_keyframe_requests_total", ())] >= 1


# ------------------------------------------------------------------------------------ upload


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server(free_port())
    server.start()
    try:
        yield server
    finally:
        server.reset()
        server.stop()


async def test_recordings_are_uploaded_and_deleted_by_s3_settings_alone(
    tmp_path: Path, s3: S3Server
) -> None:
    bucket = f"golive-{uuid.uuid4().hex[:12]}"
    record_dir = tmp_path / "records"
    env = {
        **BASE_ENV,
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
        "UPLOAD_RECORDINGS": "1",
        "DELETE_RECORDING_AFTER_UPLOAD": "1",
        **s3.settings(bucket),
        "S3_PREFIX": "golive/recordings/",
    }
    with running_server(env) as server:
        publisher = await publish_counting(server.url, "upload", "video/VP8")
        try:
            await eventually(
                lambda: len(publisher.sent.video_frames) >= FPS,
                what="a second of video",
                seconds=DEADLINE,
            )
            assert await delete(server.url, publisher.location) == 200
        finally:
            await close_all(publisher.pc)
        client = s3.client()

        def uploaded() -> list[str]:
            if not client.bucket_exists(bucket_name=bucket):
                return []
            return sorted(
                o.object_name or "" for o in client.list_objects(bucket_name=bucket, recursive=True)
            )

        await asyncio.to_thread(wait_until, lambda: len(uploaded()) == 2, timeout=DEADLINE)
        keys = uploaded()
        assert all(key.startswith("golive/recordings/upload_") for key in keys)
        assert sorted(Path(key).suffix for key in keys) == [".ivf", ".ogg"]
        # Deleted locally only once confirmed, and nothing is left pending.
        await asyncio.to_thread(
            wait_until, lambda: not [p for p in record_dir.iterdir() if p.is_file()]
        )
        assert list((record_dir / ".golive" / "upload").iterdir()) == []
        for key in keys:
            data = client.get_object(bucket_name=bucket, object_name=key).read()
            local = tmp_path / Path(key).name
            local.write_bytes(data)
            assert decode_errors(local) == ""


# ------------------------------------------------------------------ golive as `make run` runs it


async def test_a_golive_process_stopped_mid_stream_leaves_recordings_that_play(
    tmp_path: Path,
) -> None:
    """`RECORD_ENABLED=1 make run` on its defaults (RECORD_DIR=records, relative), a publisher
    still sending when the operator stops golive with SIGTERM: the shutdown finalizes every
    file, and each plays."""
    env = environment({"RECORD_ENABLED": "1", "ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ","})
    hooks.install(("127.0.0.1",))  # this process's aiortc publisher gathers on loopback too
    golive = Golive(python_m(), env, tmp_path)
    try:
        url = await asyncio.to_thread(golive.wait_listening)
        publisher = await publish_counting(url, "live", "video/VP8")
        try:
            await eventually(
                lambda: len(publisher.sent.video_frames) >= 2 * FPS,
                what="two seconds",
                seconds=DEADLINE,
            )
            assert await asyncio.to_thread(golive.stop) == 0
        finally:
            await close_all(publisher.pc)
    finally:
        golive.kill()
    files = recordings(tmp_path / "records")
    assert sorted(files) == [".ivf", ".ogg"]
    for path in files.values():
        assert path.name.startswith("live_")
        assert decode_errors(path) == "", path.name
    assert probe(files[".ivf"]).frames >= 2 * FPS - 3
