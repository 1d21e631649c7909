"""Faults from the machine while a room is recorded (issue 14, item 4): a disk that fills up
mid-recording, a disk that is read-only when the publisher arrives. A real aiortc publisher
and real viewers through golive; the recording directory is a real tmpfs of its own
(tests/disk.py), so every failure is the kernel's. The stream goes on for the viewers, the
failure is counted and logged, and what was recorded is kept, judged by ffmpeg."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.disk import SmallFilesystem, small_filesystem
from tests.media.clients import Viewer, close_all, delete, view
from tests.media.test_recording import BASE_ENV, FPS, publish_counting
from tests.recording.probe import decode_errors, probe
from tests.support import ServerThread, eventually, labelled, metric_samples, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DEADLINE = 30.0
VIEWERS = 2
CODECS = ("video/VP8", "audio/opus")
STOPPED = "recording stopped: the disk refused a write"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    with small_filesystem(tmp_path / "disk", size=2 * 1024 * 1024) as filesystem:
        yield filesystem


@pytest.fixture
def server(disk: SmallFilesystem) -> Iterator[ServerThread]:
    env = {**BASE_ENV, "RECORD_ENABLED": "1", "RECORD_DIR": str(disk.path / "records")}
    with running_server(env) as running:
        yield running


async def samples(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())


async def failed_recordings(server: ServerThread) -> dict[str, float]:
    return labelled(await samples(server), "golive_recordings_failed_total", "codec")


async def room_live_with_viewers(server: ServerThread, room: str) -> bool:
    rooms = json.loads((await asyncio.to_thread(server.get, "/api/rooms"))[1])
    return any(
        r["name"] == room and r["hasPublisher"] and r["subscribers"] == VIEWERS for r in rooms
    )


async def viewers_go_on(viewers: list[Viewer]) -> None:
    """Every viewer decodes another second of video from now on."""
    counts = [v.frames["video"] for v in viewers]
    await eventually(
        lambda: all(v.frames["video"] >= c + FPS for v, c in zip(viewers, counts, strict=True)),
        what="a second more of video at every viewer",
        seconds=DEADLINE,
    )


@pytest.mark.parametrize("fault", ["full while recording", "read-only before the publisher"])
async def test_a_disk_fault_stops_the_recording_not_the_stream(
    server: ServerThread, disk: SmallFilesystem, fault: str
) -> None:
    room = "disk-fault"
    records = disk.path / "records"
    if fault == "read-only before the publisher":
        await asyncio.to_thread(disk.remount_read_only)
    logs: list[MutableMapping[str, Any]]
    with structlog.testing.capture_logs() as logs:
        publisher = await publish_counting(server.url, room, "video/VP8")
        viewers: list[Viewer] = []
        try:
            viewers = [await view(server.url, room) for _ in range(VIEWERS)]
            for viewer in viewers:
                assert viewer.answer.status == 201, viewer.answer.body
            await eventually(
                lambda: all(v.got_video.is_set() for v in viewers),
                what="video at every viewer",
                seconds=DEADLINE,
            )
            if fault == "full while recording":
                await eventually(
                    lambda: len(publisher.sent.video_frames) >= FPS,
                    what="a second recorded",
                    seconds=DEADLINE,
                )
                assert await asyncio.to_thread(disk.fill) > 0

            async def both_failed() -> bool:
                return await failed_recordings(server) == dict.fromkeys(CODECS, 1.0)

            await eventually(both_failed, what="both recordings to fail", seconds=DEADLINE)
            # The stream goes on: every viewer keeps receiving, the room is still live.
            await viewers_go_on(viewers)
            assert await room_live_with_viewers(server, room)
            assert await delete(server.url, publisher.location) == 200
        finally:
            await close_all(publisher.pc, *viewers)

    errno = "ENOSPC" if fault == "full while recording" else "EROFS"
    stopped = [e for e in logs if e["event"] == STOPPED]
    assert sorted(e["codec"] for e in stopped) == sorted(CODECS)
    assert all(e["errno"] == errno and e["log_level"] == "error" for e in stopped)
    metrics = await samples(server)
    assert labelled(metrics, "golive_actor_crashes_total", "actor").get("recorder", 0) == 0
    assert labelled(metrics, "golive_recordings_finished_total", "codec") == {}

    assert list((records / ".golive" / "recording").iterdir()) == []  # nothing left to repair
    files = sorted(p for p in records.iterdir() if p.is_file())
    if fault == "read-only before the publisher":
        assert files == []
        return
    # What was recorded before the disk filled up is kept, and plays.
    assert [p.suffix for p in files] == [".ivf", ".ogg"]
    for path in files:
        assert decode_errors(path) == "", path.name
    assert probe(files[0]).frames >= FPS // 2
