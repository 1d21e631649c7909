"""Nothing is lost across restarts: a server that starts finds the recordings its predecessor
left unfinished or not uploaded, repairs them and uploads them (by ``S3_*`` settings only)."""

from __future__ import annotations

import uuid
from pathlib import Path

from golive.media.containers import IvfWriter
from golive.recordings import RecordingStore
from tests.recording.probe import decode_errors
from tests.recording.streams import assembled
from tests.s3 import S3Server, free_port
from tests.support import running_server, wait_until

NOW = 1_795_000_000.0


def test_a_restart_repairs_and_uploads_what_the_last_process_left(tmp_path: Path) -> None:
    record_dir = tmp_path / "records"
    store = RecordingStore(record_dir)
    store.prepare()
    # 1. A recording the last process died in the middle of (header never fixed up).
    interrupted = store.create("lobby", "0", "ivf", NOW)
    writer = IvfWriter(interrupted, "video/VP8")
    for frame in assembled("video/VP8"):
        writer.write(frame)
    assert writer._file is not None
    writer._file.close()
    # 2. A finished recording whose upload had not been confirmed.
    finished = store.create("lobby", "0", "ivf", NOW + 60)
    writer = IvfWriter(finished, "video/VP8")
    for frame in assembled("video/VP8"):
        writer.write(frame)
    writer.close()
    store.finish(finished.name, upload=True)

    s3 = S3Server(free_port())
    s3.start()
    bucket = f"golive-{uuid.uuid4().hex[:12]}"
    env = {
        **s3.settings(bucket),
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
        "UPLOAD_RECORDINGS": "1",
        "LOG_LEVEL": "warning",
    }
    try:
        with running_server(env):
            client = s3.client()

            def uploaded() -> set[str]:
                if not client.bucket_exists(bucket_name=bucket):
                    return set()
                return {o.object_name or "" for o in client.list_objects(bucket_name=bucket)}

            wait_until(lambda: uploaded() == {interrupted.name, finished.name}, timeout=30)
            wait_until(lambda: store.pending_uploads() == [], timeout=10)
        assert store.interrupted() == []
        for path in (interrupted, finished):  # kept (no DELETE_RECORDING_AFTER_UPLOAD)
            assert decode_errors(path) == ""
            assert (
                client.get_object(bucket_name=bucket, object_name=path.name).read()
                == path.read_bytes()
            )
    finally:
        s3.reset()
        s3.stop()
