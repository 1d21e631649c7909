"""The recorder actor and the recording journal: file names, finalization, keyframe requests,
crashes that lose nothing, and recovery at the next start."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
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
from tests.recording.probe import decode_errors, probe
from tests.recording.streams import assembled, opus_frames, packetize, vp8_frames
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
) -> pykka.ActorRef[Any]:
    settings = RecordingSettings(
        store, upload=uploader is not None, uploader=uploader, clock=lambda: NOW
    )
    key = TrackKey(RoomName("lobby"), SessionId("p"), info.track_id)
    ref = RecorderActor.start(
        key, info, settings=settings, parent=parent, port=port, metrics=metrics
    )
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
