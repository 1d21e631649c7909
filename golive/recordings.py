"""The recording directory: file names, and the journal that makes recordings survive crashes.

Recordings are written straight to their final names in ``RECORD_DIR``
(``{room}_{trackID}_{unix_ts}.{ext}``, contract section 8). Beside them, a hidden ``.golive``
directory holds one empty marker file per recording that still needs something done:

- ``.golive/recording/NAME``: the recorder has the file open. A marker left at start-up means
  the process died mid-recording: the file is repaired as far as its format allows and then
  treated as finished.
- ``.golive/upload/NAME``: the file is finished and waits for its upload (only with
  ``UPLOAD_RECORDINGS=1``). The uploader removes it once the object is confirmed in the
  bucket, and only then may the file be deleted. A marker left at start-up is an upload that
  did not finish: it is uploaded again.

A marker is created before the state it stands for begins and removed after it ends, so a
crash at any point leaves at worst a redundant marker (a repair that changes nothing, an
upload made twice), never a lost recording. Every method may block on the disk: call them
from an actor's thread (or ``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Final

JOURNAL_DIR: Final = ".golive"
RECORDING: Final = "recording"
UPLOAD: Final = "upload"

#: What a recording's name may be: the only names served or deleted.
NAME_PATTERN: Final = re.compile(
    r"[A-Za-z0-9_-]{1,64}_[A-Za-z0-9_-]{1,64}_[0-9]{1,12}\.(ivf|ogg|mkv)"
)


def journal_of(worker: int) -> str:
    """The journal of worker ``worker`` of a node: worker 0 (and a node of one process) keeps
    ``.golive``, so a node that grows from one worker to several recovers what it left."""
    return JOURNAL_DIR if worker == 0 else f"{JOURNAL_DIR}/worker-{worker}"


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """A finished (or in-progress) recording as ``GET /api/records`` lists it."""

    name: str
    size: int
    mtime: float  # seconds since the epoch


class RecordingStore:
    def __init__(self, directory: Path, journal: str = JOURNAL_DIR) -> None:
        """``journal``: where the markers live, under ``directory``. Each worker of a node
        (``WORKERS`` > 1) keeps its own (:func:`journal_of`): a worker that starts must repair
        only what it was recording when it died, never what its siblings are recording."""
        self.directory = directory
        self._journal = directory / journal

    def prepare(self) -> None:
        """Create the directory and its journal (at start-up; idempotent)."""
        for state in (RECORDING, UPLOAD):
            (self._journal / state).mkdir(parents=True, exist_ok=True)

    # -- recording ----------------------------------------------------------------------------

    def create(self, room: str, track_id: str, extension: str, now: float) -> Path:
        """Create an empty recording file and mark it as being recorded.

        The name carries the start time in seconds; should it be taken (the same track of the
        same room restarted within a second), the next free second is used, so names keep
        Go-Live's format.
        """
        self.prepare()
        stamp = int(now)
        while True:
            name = f"{room}_{track_id}_{stamp}.{extension}"
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"not a valid recording name: {name!r}")
            path = self.directory / name
            self._mark(RECORDING, name)
            try:
                with path.open("xb"):
                    pass
            except FileExistsError:
                self._unmark(RECORDING, name)
                stamp += 1
                continue
            except OSError:  # the disk refused (full, read-only): no marker left behind
                with contextlib.suppress(OSError):
                    self._unmark(RECORDING, name)
                raise
            return path

    def finish(self, name: str, *, upload: bool) -> None:
        """The recording is finalized: queue it for upload (if asked), then unmark it."""
        if upload:
            self._mark(UPLOAD, name)
        self._unmark(RECORDING, name)

    def discard(self, name: str) -> None:
        """Remove a recording that holds nothing worth keeping (no frame was written)."""
        (self.directory / name).unlink(missing_ok=True)
        self._unmark(RECORDING, name)

    def interrupted(self) -> list[Path]:
        """Recordings whose process died before finalizing them (at start-up only)."""
        return [self.directory / name for name in self._marked(RECORDING)]

    # -- upload -------------------------------------------------------------------------------

    def pending_uploads(self) -> list[Path]:
        """Finished recordings not confirmed uploaded yet, oldest first."""
        return [self.directory / name for name in self._marked(UPLOAD)]

    def upload_pending(self, name: str) -> bool:
        """Whether ``name`` still waits for its upload: one look at its marker, whatever the
        size of the backlog."""
        return (self._journal / UPLOAD / name).exists()

    def uploaded(self, name: str, *, delete: bool) -> None:
        """The upload of ``name`` is confirmed: unmark it, then delete the file if asked."""
        self._unmark(UPLOAD, name)
        if delete:
            (self.directory / name).unlink(missing_ok=True)

    def forget_upload(self, name: str) -> None:
        """The file to upload is gone (deleted by hand): nothing left to do for it."""
        self._unmark(UPLOAD, name)

    # -- serving ------------------------------------------------------------------------------

    def files(self) -> list[RecordingFile]:
        """Every recording in the directory, newest first."""
        files: list[RecordingFile] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not NAME_PATTERN.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted meanwhile (uploaded and removed)
                continue
            if stat.st_nlink != 1:  # see find()
                continue
            files.append(RecordingFile(entry.name, stat.st_size, stat.st_mtime))
        files.sort(key=lambda f: (f.mtime, f.name), reverse=True)
        return files

    def find(self, name: str) -> Path | None:
        """The path of recording ``name``, or None: only names of the recording pattern, only
        regular files directly in the directory (no traversal, no symlinks), with no other
        hard link. golive never links a recording (each is a file it created, or a repaired
        copy renamed over it): a second link is someone who can write ``RECORD_DIR`` making
        another file of golive's user (a key, a config) look like a recording."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        path = self.directory / name
        try:
            stat = path.lstat()
        except OSError:
            return None
        if not S_ISREG(stat.st_mode) or stat.st_nlink != 1:
            return None
        return path

    # -- markers ------------------------------------------------------------------------------

    def _mark(self, state: str, name: str) -> None:
        (self._journal / state).mkdir(parents=True, exist_ok=True)
        (self._journal / state / name).touch()

    def _unmark(self, state: str, name: str) -> None:
        (self._journal / state / name).unlink(missing_ok=True)

    def _marked(self, state: str) -> list[str]:
        folder = self._journal / state
        try:
            entries = [e for e in os.scandir(folder) if NAME_PATTERN.fullmatch(e.name)]
        except FileNotFoundError:
            return []
        dated: list[tuple[float, str]] = []
        for entry in entries:
            try:
                dated.append((entry.stat().st_mtime, entry.name))
            except FileNotFoundError:  # unmarked meanwhile (by another thread): no longer marked
                continue
        return [name for _, name in sorted(dated)]
