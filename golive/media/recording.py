"""One track being recorded: packets → whole frames → keyframe gate → file. No threads here.

:class:`TrackRecording` is what a recorder actor owns. A video recording starts at a keyframe
and, after any loss, resumes at the next one: frames in between reference what was lost, so
they are dropped rather than written damaged, and :attr:`Progress.want_keyframe` tells the
recorder to ask the publisher for a keyframe. Audio frames stand alone: a loss costs only the
lost frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from golive.media.containers import TrackWriter, open_writer
from golive.media.depacketize import Frame, FrameAssembler, Gap, depacketizer_for


@dataclass(slots=True)
class Progress:
    """What one packet changed."""

    bytes_written: int = 0
    frames_written: int = 0
    dropped_damaged: int = 0  # frames lost or incomplete
    dropped_waiting: int = 0  # whole frames dropped while waiting for a keyframe
    want_keyframe: bool = False


class TrackRecording:
    def __init__(self, path: Path, codec: str, writer: TrackWriter | None = None) -> None:
        depacketize = depacketizer_for(codec)
        if depacketize is None:
            raise ValueError(f"golive cannot record {codec}")
        self.path = path
        self.codec = codec
        self.video = codec.lower().startswith("video/")
        self._assembler = FrameAssembler(
            depacketize,
            clock_rate=90000 if self.video else 48000,
            single_packet_frames=not self.video,
        )
        self._writer = writer if writer is not None else open_writer(path, codec)
        self._waiting = self.video  # a video recording starts at a keyframe
        self.bytes_written = 0
        self.frames_written = 0

    @property
    def frames(self) -> int:
        return self._writer.frames

    def push(self, packet: bytes) -> Progress:
        return self._consume(self._assembler.push(packet))

    def close(self) -> Progress:
        """Write what is complete and finalize the file."""
        progress = self._consume(self._assembler.flush())
        progress.want_keyframe = False
        self._writer.close()
        return progress

    def _consume(self, items: list[Frame | Gap]) -> Progress:
        progress = Progress()
        for item in items:
            if isinstance(item, Gap):
                progress.dropped_damaged += item.dropped
                if self.video:
                    self._waiting = True
                    progress.want_keyframe = True
                continue
            if self._waiting:
                if not item.keyframe:
                    progress.dropped_waiting += 1
                    progress.want_keyframe = True
                    continue
                self._waiting = False
            written = self._writer.write(item)
            progress.bytes_written += written
            progress.frames_written += 1
        self.bytes_written += progress.bytes_written
        self.frames_written += progress.frames_written
        return progress
