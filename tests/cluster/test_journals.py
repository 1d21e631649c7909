"""Workers of one node share RECORD_DIR, each with its own journal: a worker that (re)starts
repairs and uploads only what it left, never what a sibling is recording or uploading."""

from __future__ import annotations

from pathlib import Path

from golive.actors.recorder import recover_interrupted
from golive.recordings import JOURNAL_DIR, RecordingStore, journal_of


def test_each_worker_recovers_only_its_own(tmp_path: Path) -> None:
    first, second = (RecordingStore(tmp_path, journal_of(i)) for i in (0, 1))
    for store in (first, second):
        store.prepare()
    recording = first.create("stage", "0", "ivf", 1764000000.0)
    recording.write_bytes(b"DKIF")
    assert second.interrupted() == []
    assert recover_interrupted(second, upload=True) == 0  # worker 1 restarting
    assert first.interrupted() == [recording]  # still worker 0's, still recording
    first.finish(recording.name, upload=True)
    assert second.pending_uploads() == []
    assert first.pending_uploads() == [recording]
    # Worker 0 keeps the journal a single process had: nothing is lost going to WORKERS > 1.
    assert journal_of(0) == JOURNAL_DIR
    # Both workers' recordings are listed and served from the one directory.
    assert [f.name for f in second.files()] == [recording.name]
