"""Nothing is lost across restarts: a server that starts finds the recordings its predecessor
left unfinished or not uploaded, repairs them and uploads them (by ``S3_*`` settings only)."""

from __future__ import annotations

import uuid
from pathlib import Path

from golive.media.containers import IvfWriter
from golive.media.depacketize import Frame, FrameAssembler, depacketizer_for
from golive.recordings import RecordingStore
from tests.recording.probe import decode_errors
from tests.recording.streams import packetize, vp8_frames
from tests.s3 import ACCESS_KEY, SECRET_KEY, S3Server, free_port
from tests.support import running_server, wait_until

NOW = 1_795_000_000.0


def vp8_payloads() -> list[Frame]:
    depacketize = depacketizer_for("video/VP8")
    assert depacketize is not None
    assembler = FrameAssembler(depacketize)
    out = [f for p in packetize(vp8_frames()) for f in assembler.push(p) if isinstance(f, Frame)]
    return out + [f for f in assembler.flush() if isinstance(f, Frame)]


def test_a_restart_repairs_and_uploads_what_the_last_process_left(tmp_path: Path) -> None:
    record_dir = tmp_path / "records"
    store = RecordingStore(record_dir)
    store.prepare()
    # 1. A recording the last process died in the middle of (header never fixed up).
    interrupted = store.create("lobby", "0", "ivf", NOW)
    writer = IvfWriter(interrupted, "video/VP8")
    for frame in vp8_payloads():
        writer.write(frame)
    assert writer._file is not None
    writer._file.close()
    # 2. A finished recording whose upload had not been confirmed.
    finished = store.create("lobby", "0", "ivf", NOW + 60)
    writer = IvfWriter(finished, "video/VP8")
    for frame in vp8_payloads():
        writer.write(frame)
    writer.close()
    store.finish(finished.name, upload=True)

    s3 = S3Server(free_port())
    s3.start()
    bucket = f"golive-{uuid.uuid4().hex[:12]}"
    env = {
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
        "UPLOAD_RECORDINGS": "1",
        "S3_ENDPOINT": s3.endpoint,
        "S3_USE_SSL": "0",
        "S3_REGION": "us-east-1",
        "S3_BUCKET": bucket,
        "S3_ACCESS_KEY": ACCESS_KEY,
        "S3_SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "warning",
    }
    try:
        with running_server(env):
            client = s3.client()

            def uploaded() -> set[str]:
                if not client.bucket_exists(bucket):
                    return set()
                return {o.object_name or "" for o in client.list_objects(bucket)}

            wait_until(lambda: uploaded() == {interrupted.name, finished.name}, timeout=30)
            wait_until(lambda: store.pending_uploads() == [], timeout=10)
        assert store.interrupted() == []
        for path in (interrupted, finished):  # kept (no DELETE_RECORDING_AFTER_UPLOAD)
            assert decode_errors(path) == ""
            assert client.get_object(bucket, path.name).read() == path.read_bytes()
    finally:
        s3.reset()
        s3.stop()
