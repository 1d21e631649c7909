"""SIGTERM under load with recording on (issue 14, item 4): a real golive process, two rooms
each with a publisher (VP8 or H.264, with Opus) and several viewers, more viewers still
connecting, a client stalled in the middle of its offer's body, every track recorded, uploads
waiting for an S3 server that is down. The operator sends SIGTERM: golive ends every session
(the connected viewers see their connection close), finalizes every recording (ffmpeg judges
each file), keeps every upload pending for the next start, and exits 0 within
``SHUTDOWN_TIMEOUT_SECONDS``: the stalled request has half of it, not all of it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from golive.media import hooks
from tests.media.clients import Viewer, close_all, view
from tests.media.test_recording import FPS, CountingPublisher, publish_counting
from tests.recording.probe import decode_errors, probe
from tests.s3 import S3Server, free_port
from tests.support import eventually
from tests.test_server import Golive, environment, python_m, records

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]
DEADLINE = 60.0  # two cores, a dozen peers and a server: generous
SHUTDOWN_TIMEOUT_SECONDS = 6
ROOMS = {"load-vp8": ("video/VP8", ".ivf"), "load-h264": ("video/H264", ".mkv")}
VIEWERS_PER_ROOM = 3
LATE_VIEWERS_PER_ROOM = 2


async def stalled_offer(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WHIP offer whose body stops coming after its first line, its request being handled
    (golive answered its ``Expect: 100-continue``, which it does once it has routed it)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/whip/publish/stalled HTTP/1.1\r\nHost: golive\r\n"
        b"Content-Type: application/sdp\r\nContent-Length: 2000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"v=0\r\n")
    await writer.drain()
    return reader, writer


async def test_sigterm_under_load_ends_every_session_and_finalizes_every_recording(
    tmp_path: Path,
) -> None:
    s3_down = S3Server(free_port())  # nothing listens there: every upload attempt fails
    env = environment(
        {
            "RECORD_ENABLED": "1",
            "UPLOAD_RECORDINGS": "1",
            **s3_down.settings("golive-shutdown"),
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "STUN_URLS": ",",
            "SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
        }
    )
    hooks.install(("127.0.0.1",))  # this process's aiortc peers gather on loopback too
    golive = Golive(python_m(), env, tmp_path)
    publishers: dict[str, CountingPublisher] = {}
    viewers: list[Viewer] = []
    connected: list[Viewer] = []
    stalled: asyncio.StreamWriter | None = None
    try:
        url = await asyncio.to_thread(golive.wait_listening)
        for room, (codec, _) in ROOMS.items():
            publishers[room] = await publish_counting(url, room, codec)
            for _ in range(VIEWERS_PER_ROOM):
                viewer = await view(url, room)
                assert viewer.answer.status == 201, viewer.answer.body
                viewers.append(viewer)
        await eventually(
            lambda: all(v.got_video.is_set() for v in viewers),
            what="video at every viewer",
            seconds=DEADLINE,
        )
        await eventually(
            lambda: all(len(p.sent.video_frames) >= 2 * FPS for p in publishers.values()),
            what="two seconds from every publisher",
            seconds=DEADLINE,
        )
        connected = list(viewers)
        # More viewers join: answered, their connections still being set up at the signal.
        for room in ROOMS:
            for _ in range(LATE_VIEWERS_PER_ROOM):
                viewer = await view(url, room)
                assert viewer.answer.status == 201, viewer.answer.body
                viewers.append(viewer)
        _, stalled = await stalled_offer(url)
        signalled = time.monotonic()
        status = await asyncio.to_thread(golive.stop, signal.SIGTERM, SHUTDOWN_TIMEOUT_SECONDS + 20)
        elapsed = time.monotonic() - signalled
        # Every connected viewer sees its session end (the server closed it), publishers too;
        # the late ones (not connected yet) are seen ending in the server's log below.
        peers = [v.pc for v in connected] + [p.pc for p in publishers.values()]
        await eventually(
            lambda: all(pc.connectionState in {"closed", "failed"} for pc in peers),
            what="every peer connection to be closed by the server",
            seconds=DEADLINE,
        )
    finally:
        await close_all(*viewers, *(p.pc for p in publishers.values()))
        if stalled is not None:
            stalled.close()
        golive.kill()

    assert status == 0, golive.stderr()
    assert elapsed < SHUTDOWN_TIMEOUT_SECONDS, f"exited {elapsed:.1f}s after SIGTERM"
    assert golive.stderr() == []
    logged = records(golive.stdout)
    assert logged[-1]["event"] == "golive stopped"
    assert not [r for r in logged if r["level"] in {"error", "critical"}]
    ended = [r for r in logged if r["event"] == "session ended"]
    assert Counter((r["role"], r["reason"]) for r in ended) == {
        ("publisher", "shutdown"): len(ROOMS),
        ("subscriber", "shutdown"): len(ROOMS) * (VIEWERS_PER_ROOM + LATE_VIEWERS_PER_ROOM),
    }
    rooms_ended = {r["room"]: r for r in logged if r["event"] == "room ended"}
    assert set(rooms_ended) == set(ROOMS)
    assert all(r["reason"] == "shutdown" for r in rooms_ended.values())
    assert all(
        r["subscribers_closed"] == VIEWERS_PER_ROOM + LATE_VIEWERS_PER_ROOM
        for r in rooms_ended.values()
    )

    # Every track's recording finalized, playing, nothing left to repair at the next start,
    # and every upload still pending (S3 was down): nothing lost.
    directory = tmp_path / "records"
    assert list((directory / ".golive" / "recording").iterdir()) == []
    files = sorted(p for p in directory.iterdir() if p.is_file())
    assert sorted(p.name for p in (directory / ".golive" / "upload").iterdir()) == [
        p.name for p in files
    ]
    for room, (_, extension) in ROOMS.items():
        mine = {p.suffix: p for p in files if p.name.startswith(f"{room}_")}
        assert sorted(mine) == sorted([extension, ".ogg"])
        for path in mine.values():
            assert decode_errors(path) == "", path.name
        sent = len(publishers[room].sent.video_frames)
        assert probe(mine[extension]).frames >= sent - FPS  # at most a second in flight


async def test_a_shutdown_that_cannot_finish_in_time_is_abandoned_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """SHUTDOWN_TIMEOUT_SECONDS far too short for ending a recorded room: golive gives up at
    the deadline (status 1, logged) rather than overrun it, and the next start repairs what
    it left unfinished."""
    env = environment(
        {
            "RECORD_ENABLED": "1",
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "STUN_URLS": ",",
            "SHUTDOWN_TIMEOUT_SECONDS": "0.001",
        }
    )
    hooks.install(("127.0.0.1",))
    golive = Golive(python_m(), env, tmp_path)
    publisher: CountingPublisher | None = None
    try:
        url = await asyncio.to_thread(golive.wait_listening)
        publisher = await publish_counting(url, "late", "video/H264")
        await eventually(
            lambda: len(publisher.sent.video_frames) >= 2 * FPS if publisher else False,
            what="two seconds of video",
            seconds=DEADLINE,
        )
        signalled = time.monotonic()
        status = await asyncio.to_thread(golive.stop, signal.SIGTERM, 20)
        elapsed = time.monotonic() - signalled
    finally:
        if publisher is not None:
            await close_all(publisher.pc)
        golive.kill()
    assert status == 1
    assert elapsed < 5, f"exited {elapsed:.1f}s after SIGTERM"
    [abandoned] = [r for r in records(golive.stdout) if r["level"] == "error"]
    assert abandoned["event"].startswith("shutdown did not finish within SHUTDOWN_TIMEOUT")

    # Whatever the forced exit cut short (the recorders may or may not have finalized their
    # files by then), the next start repairs, and every recording plays.
    directory = tmp_path / "records"
    golive = Golive(python_m(), environment({"RECORD_ENABLED": "1"}), tmp_path)
    try:
        await asyncio.to_thread(golive.wait_listening)
        assert await asyncio.to_thread(golive.stop) == 0
    finally:
        golive.kill()
    assert list((directory / ".golive" / "recording").iterdir()) == []
    files = sorted(p for p in directory.iterdir() if p.is_file())
    assert sorted(p.suffix for p in files) == [".mkv", ".ogg"]
    for path in files:
        assert decode_errors(path) == "", path.name
