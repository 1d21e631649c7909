"""The recorder actor and the recording journal: file names, finalization, keyframe requests,
crashes that lose nothing, and recovery at the next start."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pykka
import pytest

from golive.actors.base import GoliveActor
from golive.actors.messages import (
    EndReason,
    MediaKind,
    RecorderCrashed,
    RecordPacket,
    RoomName,
    RoutingTable,
    SessionId,
    TrackId,
    TrackInfo,
    TrackKey,
    UploadRecording,
)
from golive.actors.recorder import RecorderActor, RecordingSettings, recover_interrupted
from golive.media.containers import finalize_ivf
from golive.metrics import Metrics, create_metrics
from golive.recordings import RecordingStore
from tests.disk import SmallFilesystem, small_filesystem
from tests.recording.probe import decode_errors, probe
from tests.recording.streams import (
    EncodedFrame,
    assembled,
    h264_frames,
    opus_frames,
    packetize,
    vp8_frames,
)
from tests.support import metric_samples, wait_until

TIMEOUT = 10.0
VIDEO = TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/VP8")
AUDIO = TrackInfo(TrackId("1"), MediaKind.AUDIO, "audio/opus")
NOW = 1_795_000_000.0


@dataclass
class Port:
    """The LoopPort as a recorder sees it: only keyframe requests matter here."""

    keyframe_requests: list[TrackKey] = field(default_factory=list)

    def publish_routes(self, table: RoutingTable) -> None:
        pass

    def close_session(self, session: SessionId, reason: EndReason) -> None:
        pass

    def request_keyframe(self, track: TrackKey) -> None:
        self.keyframe_requests.append(track)

    def room_ended(self, room: RoomName, reason: EndReason) -> None:
        pass


class Inbox(GoliveActor):
    """Stands in for a room (or an uploader): keeps what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.lock = threading.Lock()

    def handle(self, message: Any) -> None:
        with self.lock:
            self.received.append(message)

    def messages(self) -> list[Any]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "records")


@pytest.fixture
def inbox() -> Any:
    ref = Inbox.start()
    yield ref
    ref.stop()


def start_recorder(
    store: RecordingStore,
    info: TrackInfo,
    parent: pykka.ActorRef[Any],
    metrics: Metrics,
    port: Port,
    *,
    uploader: pykka.ActorRef[Any] | None = None,
    barrier: bool = True,
) -> pykka.ActorRef[Any]:
    settings = RecordingSettings(
        store, upload=uploader is not None, uploader=uploader, clock=lambda: NOW
    )
    key = TrackKey(RoomName("lobby"), SessionId("p"), info.track_id)
    ref = RecorderActor.start(
        key, info, settings=settings, parent=parent, port=port, metrics=metrics
    )
    if barrier:
        ref.proxy().ping().get(timeout=TIMEOUT)  # on_start (which creates the file) has run
    return ref


def files(store: RecordingStore) -> list[str]:
    return sorted(p.name for p in store.directory.iterdir() if p.is_file())


def test_a_recording_is_named_written_finalized_and_handed_to_the_uploader(
    store: RecordingStore, inbox: pykka.ActorRef[Any]
) -> None:
    metrics, port = create_metrics(), Port()
    recorder = start_recorder(store, VIDEO, inbox, metrics, port, uploader=inbox)
    name = f"lobby_0_{int(NOW)}.ivf"
    assert files(store) == [name]
    assert [p.name for p in store.interrupted()] == [name]  # marked while recording
    for packet in packetize(vp8_frames()):
        recorder.tell(RecordPacket(packet))
    recorder.stop(timeout=TIMEOUT)
    path = store.directory / name
    assert decode_errors(path) == ""
    assert probe(path).frames == 60
    assert store.interrupted() == []
    assert store.pending_uploads() == [path]
    assert inbox.proxy().messages().get(timeout=TIMEOUT) == [UploadRecording(path)]
    samples = metric_samples(metrics.render().decode())
    assert samples[("golive_recordings_started_total", (("codec", "video/VP8"),))] == 1
    assert samples[("golive_recordings_finished_total", (("codec", "video/VP8"),))] == 1
    assert samples[("golive_recording_bytes_written_total", ())] == path.stat().st_size
    assert port.keyframe_requests == []


def test_names_stay_unique_when_a_track_restarts_within_a_second(
    store: RecordingStore, inbox: pykka.ActorRef[Any]
) -> None:
    metrics, port = create_metrics(), Port()
    first = start_recorder(store, AUDIO, inbox, metrics, port)
    second = start_recorder(store, AUDIO, inbox, metrics, port)
    assert files(store) == [f"lobby_1_{int(NOW)}.ogg", f"lobby_1_{int(NOW) + 1}.ogg"]
    for packet in packetize(opus_frames()[:10]):
        first.tell(RecordPacket(packet))
    first.stop(timeout=TIMEOUT)
    second.stop(timeout=TIMEOUT)
    # The empty one is removed; the other one plays.
    assert files(store) == [f"lobby_1_{int(NOW)}.ogg"]
    assert decode_errors(store.directory / f"lobby_1_{int(NOW)}.ogg") == ""


def test_a_recording_waiting_for_a_keyframe_asks_for_one(
    store: RecordingStore, inbox: pykka.ActorRef[Any]
) -> None:
    metrics, port = create_metrics(), Port()
    recorder = start_recorder(store, VIDEO, inbox, metrics, port)
    packets = packetize(vp8_frames())
    for packet in packets[3:20]:  # joins after the keyframe
        recorder.tell(RecordPacket(packet))
    recorder.proxy().ping().get(timeout=TIMEOUT)
    key = TrackKey(RoomName("lobby"), SessionId("p"), TrackId("0"))
    assert port.keyframe_requests == [key]  # one: the recorder rate-limits them
    recorder.stop(timeout=TIMEOUT)
    assert files(store) == []  # nothing playable was written
    samples = metric_samples(metrics.render().decode())
    assert samples[("golive_recording_frames_dropped_total", (("reason", "before_keyframe"),))] > 0


def test_a_recorder_crash_keeps_the_file_tells_the_room_and_counts_it(
    store: RecordingStore, inbox: pykka.ActorRef[Any]
) -> None:
    metrics, port = create_metrics(), Port()
    recorder = start_recorder(store, VIDEO, inbox, metrics, port, uploader=inbox)
    for packet in packetize(vp8_frames())[:40]:
        recorder.tell(RecordPacket(packet))
    recorder.tell("not a message a recorder knows")  # the fault: the actor crashes
    # pykka marks the actor dead before its failure handling (release) has run: wait for
    # what that handling tells, the room's RecorderCrashed and the uploader's file.
    wait_until(lambda: len(inbox.proxy().messages().get(timeout=TIMEOUT)) == 2, timeout=TIMEOUT)
    messages = inbox.proxy().messages().get(timeout=TIMEOUT)
    assert RecorderCrashed(TrackId("0")) in messages
    [path] = [store.directory / name for name in files(store)]
    assert UploadRecording(path) in messages  # what was written is finalized and uploaded
    assert decode_errors(path) == ""
    assert probe(path).frames > 0
    samples = metric_samples(metrics.render().decode())
    assert samples[("golive_recordings_failed_total", (("codec", "video/VP8"),))] == 1
    assert samples[("golive_actor_crashes_total", (("actor", "recorder"),))] == 1


def test_interrupted_recordings_are_repaired_and_queued_at_the_next_start(
    store: RecordingStore,
) -> None:
    """The process died mid-recording: markers and half-written files are left behind."""
    from golive.media.containers import IvfWriter  # noqa: PLC0415

    store.prepare()
    video = store.create("lobby", "0", "ivf", NOW)
    writer = IvfWriter(video, "video/VP8")
    for frame in assembled("video/VP8"):
        writer.write(frame)
    assert writer._file is not None
    writer._file.close()
    cut = video.read_bytes()
    video.write_bytes(cut[: len(cut) - 7])  # and in the middle of a frame
    empty = store.create("lobby", "1", "ogg", NOW)  # opened, nothing written

    assert recover_interrupted(store, upload=True) == 1
    assert store.interrupted() == []
    assert store.pending_uploads() == [video]
    assert not empty.exists()
    assert decode_errors(video) == ""
    assert finalize_ivf(video) == 59  # the frame cut short is gone, the header says so


# --- faults: a recording fails, the room is told, nothing is lost -----------------------------


def samples_of(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples(metrics.render().decode())


def counted(metrics: Metrics, name: str, label: tuple[str, str] | None = None) -> float:
    return samples_of(metrics).get((name, () if label is None else (label,)), 0.0)


def told(inbox: pykka.ActorRef[Any], count: int) -> list[Any]:
    """What ``inbox`` was told, once it holds ``count`` messages."""
    wait_until(
        lambda: len(inbox.proxy().messages().get(timeout=TIMEOUT)) >= count,
        timeout=TIMEOUT,
        what=f"{count} messages",
    )
    messages: list[Any] = inbox.proxy().messages().get(timeout=TIMEOUT)
    return messages


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    with small_filesystem(tmp_path / "small", size=512 * 1024, inodes=64) as filesystem:
        yield filesystem


@pytest.mark.parametrize("fault", ["read-only", "no inode left"])
def test_a_recorder_whose_file_cannot_be_created_reports_it_and_stops(
    small_fs: SmallFilesystem, inbox: pykka.ActorRef[Any], fault: str
) -> None:
    """Review bug 2: the file is created in on_start, where pykka calls neither on_failure nor
    on_stop. The disk refuses for real (a tmpfs remounted read-only, or out of inodes)."""
    store = RecordingStore(small_fs.path / "records")
    store.prepare()
    if fault == "read-only":
        small_fs.remount_read_only()
    else:
        assert small_fs.fill_inodes("records") > 0
    metrics, port = create_metrics(), Port()
    recorder = start_recorder(store, VIDEO, inbox, metrics, port, barrier=False)
    assert told(inbox, 1) == [RecorderCrashed(TrackId("0"))]
    wait_until(lambda: not recorder.is_alive(), timeout=TIMEOUT, what="the recorder to stop")
    codec = ("codec", "video/VP8")
    assert counted(metrics, "golive_recordings_failed_total", codec) == 1
    assert counted(metrics, "golive_recordings_started_total", codec) == 0
    # A full or read-only disk is not a bug: no actor crash is counted.
    assert counted(metrics, "golive_actor_crashes_total", ("actor", "recorder")) == 0
    assert store.interrupted() == []  # no marker left behind
    assert not [p for p in store.directory.iterdir() if p.suffix == ".ivf"]


def test_a_recorder_whose_start_hits_a_bug_crashes_and_reports_it(
    store: RecordingStore, inbox: pykka.ActorRef[Any]
) -> None:
    """Any other exception in on_start is a crash, counted as one (pykka alone would only log
    it): here a codec the recorder cannot record (the room never asks for one)."""
    metrics, port = create_metrics(), Port()
    av1 = TrackInfo(TrackId("2"), MediaKind.VIDEO, "video/AV1")
    recorder = start_recorder(store, av1, inbox, metrics, port, barrier=False)
    assert told(inbox, 1) == [RecorderCrashed(TrackId("2"))]
    wait_until(lambda: not recorder.is_alive(), timeout=TIMEOUT, what="the recorder to stop")
    assert counted(metrics, "golive_recordings_failed_total", ("codec", "video/AV1")) == 1
    # pykka marks the actor dead before its failure handling ends: wait for the count.
    wait_until(
        lambda: counted(metrics, "golive_actor_crashes_total", ("actor", "recorder")) == 1,
        timeout=TIMEOUT,
        what="the crash to be counted",
    )


STREAMS: dict[str, tuple[TrackInfo, Callable[[], tuple[EncodedFrame, ...]]]] = {
    "ivf": (VIDEO, vp8_frames),
    "mkv": (TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/H264"), partial(h264_frames, 90)),
    "ogg": (AUDIO, partial(opus_frames, 150)),
}


@pytest.mark.parametrize("extension", sorted(STREAMS))
def test_a_disk_that_fills_up_stops_the_recording_and_keeps_what_was_written(
    small_fs: SmallFilesystem, inbox: pykka.ActorRef[Any], extension: str
) -> None:
    info, frames = STREAMS[extension]
    encoded = frames()
    store = RecordingStore(small_fs.path / "records")
    store.prepare()
    metrics, port = create_metrics(), Port()
    recorder = start_recorder(store, info, inbox, metrics, port, uploader=inbox)
    packets = packetize(encoded)
    half = len(packets) // 2
    for packet in packets[:half]:
        recorder.tell(RecordPacket(packet))
    recorder.proxy().ping().get(timeout=TIMEOUT)
    assert small_fs.fill() > 0  # the disk is full from here on
    for packet in packets[half:]:
        recorder.tell(RecordPacket(packet))
    messages = told(inbox, 2)
    wait_until(lambda: not recorder.is_alive(), timeout=TIMEOUT, what="the recorder to stop")
    [path] = [p for p in store.directory.iterdir() if p.suffix == f".{extension}"]
    assert messages == [RecorderCrashed(info.track_id), UploadRecording(path)]
    # Kept, finalized as far as the full disk allows, and queued for upload.
    assert store.interrupted() == []
    assert store.pending_uploads() == [path]
    assert decode_errors(path) == ""
    assert 0 < probe(path).frames < len(encoded)
    assert counted(metrics, "golive_recordings_failed_total", ("codec", info.codec)) == 1
    assert counted(metrics, "golive_recordings_finished_total", ("codec", info.codec)) == 0
    assert counted(metrics, "golive_actor_crashes_total", ("actor", "recorder")) == 0
