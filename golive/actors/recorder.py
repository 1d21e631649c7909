"""One recorder per published track: the track's RTP in, a file that plays out.

The room starts a recorder for each track it can record (VP8, VP9, H.264, Opus) when the
publisher goes live, and hands it to the track's fanout, which names it in every routing table
it publishes. The event loop's :class:`~golive.media.forwarding.PublishedTrack` then *tells* it each
packet the publisher sends (:class:`RecordPacket`: one tell per packet per track, never per
viewer). Everything that touches the disk happens here, in the recorder's own thread:
reassembly, the keyframe gate and the writer (:class:`~golive.media.recording.TrackRecording`).

After loss the recording resumes at the next keyframe; the recorder asks the publisher for one
through the :class:`LoopPort` (the track's tap coalesces it with the viewers' requests).

When the publisher leaves, the room stops its recorders: each finalizes its file, marks it for
upload in the journal and tells the uploader. A recording in which no frame was written is
removed. Recordings the process died in the middle of are repaired at the next start
(:func:`recover_interrupted`).

A recording can fail in two ways, and neither ends the room or the stream:

- **The disk refuses** (an ``OSError`` while opening or writing the file: disk full,
  file system read-only, I/O error): the recording stops there. The recorder counts a failed
  recording, logs ``recording stopped: the disk refused a write`` with the ``errno``, keeps
  what was written (finalized as far as the disk still allows: an IVF header is rewritten in
  place, which needs no new space), tells the room (:class:`RecorderCrashed`) and stops. Not a
  bug: not counted in ``golive_actor_crashes_total``.
- **A bug** (any other exception): the recorder crashes: counted in both
  ``golive_recordings_failed_total`` and ``golive_actor_crashes_total``, the room told, what
  was written kept and finalized as far as possible.

Either may happen in :meth:`RecorderActor.on_start` (the file is created there), where pykka
calls neither ``on_failure`` nor ``on_stop``: the recorder reports it itself.
"""

from __future__ import annotations

import contextlib
import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import structlog

from golive.actors.base import GoliveActor, tell_quietly
from golive.actors.messages import (
    RecorderCrashed,
    RecordPacket,
    TrackInfo,
    TrackKey,
    UploadRecording,
)
from golive.actors.ports import LoopPort
from golive.media.containers import extension_for, repair_recording
from golive.media.recording import Progress, TrackRecording
from golive.metrics import Metrics
from golive.recordings import RecordingStore

log = structlog.get_logger(__name__)

#: At most one keyframe request per recorder per interval (the tap coalesces further).
KEYFRAME_REQUEST_INTERVAL = 1.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class RecordingSettings:
    """What every recorder of a server shares."""

    store: RecordingStore
    upload: bool = False  # mark finished recordings for upload
    uploader: pykka.ActorRef[Any] | None = None  # told each finished recording
    clock: Callable[[], float] = field(default=time.time)  # for the name's unix timestamp


def recordable(info: TrackInfo) -> bool:
    return extension_for(info.codec) is not None


def file_track_id(track_id: str) -> str:
    """A track id (an SDP ``mid``) as it may appear in a file name."""
    return _UNSAFE.sub("-", track_id)[:64] or "track"


class RecorderActor(GoliveActor):
    actor_kind = "recorder"

    def __init__(
        self,
        track: TrackKey,
        info: TrackInfo,
        *,
        settings: RecordingSettings,
        parent: pykka.ActorRef[Any],
        port: LoopPort,
        metrics: Metrics,
    ) -> None:
        super().__init__()
        self._track = track
        self._info = info
        self._settings = settings
        self._parent = parent
        self._port = port
        self._metrics = metrics
        self._path: Path | None = None  # the file, once created
        self._recording: TrackRecording | None = None
        self._last_request = -KEYFRAME_REQUEST_INTERVAL
        self._started = 0.0
        self._log = structlog.get_logger(__name__).bind(
            room=track.room, track=track.track_id, codec=info.codec
        )

    def on_start(self) -> None:
        # pykka calls neither on_failure nor on_stop when on_start raises: a failure here is
        # reported here, and the actor stops.
        try:
            self._open()
        except OSError as exc:
            self._disk_failed(exc)
        except Exception as exc:
            self._crashed(exc)  # counted, the room told, what was created released
            raise  # pykka logs the traceback and stops the actor

    def _open(self) -> None:
        extension = extension_for(self._info.codec)
        if extension is None:
            raise ValueError(f"golive cannot record {self._info.codec}")
        self._path = self._settings.store.create(
            self._track.room, file_track_id(self._track.track_id), extension, self._settings.clock()
        )
        self._recording = TrackRecording(self._path, self._info.codec)
        self._started = time.monotonic()
        self._metrics.recordings_started.labels(self._info.codec).inc()
        self._log.info("recording started", file=self._path.name)

    def handle(self, message: Any) -> None:
        match message:
            case RecordPacket(data=data):
                if self._recording is None:  # stopped by a disk error: the rest is dropped
                    return
                try:
                    progress = self._recording.push(data)
                except OSError as exc:
                    self._disk_failed(exc)
                    return
                self._count(progress)
                if progress.want_keyframe:
                    self._want_keyframe()
            case _:
                super().handle(message)

    def _count(self, progress: Progress) -> None:
        if progress.bytes_written:
            self._metrics.recording_bytes.inc(progress.bytes_written)
        if progress.dropped_damaged:
            self._metrics.recording_frames_dropped.labels("damaged").inc(progress.dropped_damaged)
            self._log.debug("frames lost", frames=progress.dropped_damaged)
        if progress.dropped_waiting:
            self._metrics.recording_frames_dropped.labels("before_keyframe").inc(
                progress.dropped_waiting
            )

    def _want_keyframe(self) -> None:
        now = time.monotonic()
        if now - self._last_request >= KEYFRAME_REQUEST_INTERVAL:
            self._last_request = now
            self._port.request_keyframe(self._track)

    def _disk_failed(self, exc: OSError) -> None:
        """The disk refused to open or write the file: the recording stops here, what was
        written is kept (see the module's docstring), the room is told, the actor stops."""
        self._metrics.recordings_failed.labels(self._info.codec).inc()
        self._log.error(
            "recording stopped: the disk refused a write",
            file=None if self._path is None else self._path.name,
            errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            error=f"{type(exc).__name__}: {exc}",
        )
        tell_quietly(self._parent, RecorderCrashed(self._track.track_id))
        self._release_once(crashed=True)
        self.stop()  # the packets already told are dropped (see handle)

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()
        self._metrics.recordings_failed.labels(self._info.codec).inc()
        tell_quietly(self._parent, RecorderCrashed(self._track.track_id))

    def release(self, *, crashed: bool) -> None:
        recording, self._recording = self._recording, None
        store = self._settings.store
        if recording is None:
            if self._path is not None:  # created, but its writer could not be opened
                self._discard(self._path.name)
            return
        name = recording.path.name
        try:
            self._count(recording.close())
        except Exception:  # noqa: BLE001  logged; the file is repaired as far as it can be
            if crashed:  # finalize as far as possible; the crash is counted already
                self._log.exception("finalizing a failed recording failed", file=name)
            else:
                self._metrics.recordings_failed.labels(self._info.codec).inc()
                self._log.exception("finalizing the recording failed", file=name)
            with contextlib.suppress(Exception):
                repair_recording(recording.path)
        if recording.frames == 0:
            self._discard(name)
            self._log.info("recording empty, removed", file=name)
            return
        try:
            store.finish(name, upload=self._settings.upload)
        except OSError as exc:  # the file is kept, still marked as being recorded
            self._log.error(
                "the recording journal could not be updated; the next start repairs and "
                "queues the recording",
                file=name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        if not crashed:
            self._metrics.recordings_finished.labels(self._info.codec).inc()
        self._log.info(
            "recording finished",
            file=name,
            frames=recording.frames,
            bytes=recording.path.stat().st_size,
            seconds=round(time.monotonic() - self._started, 3),
        )
        if self._settings.upload and self._settings.uploader is not None:
            tell_quietly(self._settings.uploader, UploadRecording(recording.path))

    def _discard(self, name: str) -> None:
        try:
            self._settings.store.discard(name)
        except OSError as exc:  # marked as being recorded: the next start removes it
            self._log.error(
                "an empty recording could not be removed",
                file=name,
                error=f"{type(exc).__name__}: {exc}",
            )


def recover_interrupted(store: RecordingStore, *, upload: bool) -> int:
    """At start: repair the recordings the last process died in the middle of, and queue them
    for upload like any finished one. Blocks on the disk. The number recovered."""
    recovered = 0
    for path in store.interrupted():
        if not path.exists() or path.stat().st_size == 0:
            store.discard(path.name)
            continue
        try:
            repair_recording(path)
        except Exception:  # a file too damaged to repair is kept as it is
            log.exception("repairing an interrupted recording failed", file=path.name)
        store.finish(path.name, upload=upload)
        recovered += 1
        log.warning("recovered an interrupted recording", file=path.name)
    return recovered
