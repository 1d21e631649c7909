"""GStreamer's WHIP client (Debian ``simple-whip-client``: webrtcbin + libnice) publishes VP8 and
Opus with trickle ICE; an aiortc viewer decodes it; the client's own DELETE ends the room."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from golive.actors.messages import RoomName
from golive.http.keys import MEDIA
from golive.media.peers import PeerSession
from tests.media.clients import close_all, view
from tests.recording.probe import decode_errors, probe
from tests.support import ServerThread, eventually, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

SHIMS = Path(__file__).parent / "gst"
AUDIO = (
    "audiotestsrc is-live=true ! audioconvert ! audioresample ! queue ! opusenc ! "
    "rtpopuspay pt=100 ssrc=1 ! queue ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=100"
)
VIDEO = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240 ! videoconvert ! "
    "queue ! vp8enc deadline=1 ! rtpvp8pay pt=96 ssrc=2 ! queue ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96"
)
DEADLINE = 30.0


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the two shims whip-client needs here (see the C files for why)."""
    if shutil.which("whip-client") is None or shutil.which("gcc") is None:
        pytest.fail("whip-client and gcc are needed: `make test` installs them")
    built = tmp_path_factory.mktemp("gst-shims")

    def build(library: str, source: str, *flags: str) -> None:
        command = ["gcc", "-shared", "-fPIC", "-O2", "-o", str(built / library), *flags]
        subprocess.run([*command, str(SHIMS / source), "-ldl"], check=True)

    build("libgupnp-igd-1.0.so.4", "gupnp_igd_stub.c", "-Wl,-soname,libgupnp-igd-1.0.so.4")
    build("loopback_ifaddrs.so", "loopback_ifaddrs.c")
    return built


async def rooms(server: ServerThread) -> list[dict[str, object]]:
    _, body = await asyncio.to_thread(server.get, "/api/rooms")
    listed = json.loads(body)
    assert isinstance(listed, list)
    return listed


async def wait_rooms(server: ServerThread, predicate: str) -> list[dict[str, object]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        listed = await rooms(server)
        if eval(predicate, {}, {"rooms": listed}):  # noqa: S307  a literal predicate of this file
            return listed
        assert loop.time() < deadline, (predicate, listed)
        await asyncio.sleep(0.1)


async def test_gstreamer_publishes_with_trickle_and_a_viewer_decodes(
    server: ServerThread, shims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trickled: list[str] = []
    hub = server.app[MEDIA]
    trickle = hub.trickle

    async def spy(peer: PeerSession, fragment: str) -> None:
        trickled.append(fragment)
        await trickle(peer, fragment)

    monkeypatch.setattr(hub, "trickle", spy)
    offers: list[str] = []
    publish = hub.publish

    async def record_offer(room: RoomName, offer_sdp: str) -> object:
        offers.append(offer_sdp)
        return await publish(room, offer_sdp)

    monkeypatch.setattr(hub, "publish", record_offer)
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(shims),
        "LD_PRELOAD": str(shims / "loopback_ifaddrs.so"),
    }
    client = await asyncio.create_subprocess_exec(
        "whip-client",
        "-u",
        f"{server.url}/api/whip/publish/gst",
        "-A",
        AUDIO,
        "-V",
        VIDEO,
        "-o",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    viewer = None
    try:
        [room] = await wait_rooms(server, "len(rooms) == 1 and rooms[0]['tracks'] == 2")
        assert room["name"] == "gst"
        codecs = sorted(t["codec"] for t in room["trackList"])  # type: ignore[attr-defined]
        assert codecs == ["audio/opus", "video/VP8"]
        viewer = await view(server.url, "gst")
        assert viewer.answer.status == 201
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        assert viewer.frames["video"] >= 5
        assert viewer.first_video_packet_is_keyframe is True
        # whip-client trickles the candidates it gathers after its POST (PATCH); when a slow
        # machine delays the POST past gathering, they ride in the offer instead. ICE may
        # connect before they arrive (the server's candidates are enough on loopback): wait
        # for them before stopping the client, or its PATCH finds the session gone.
        [offer] = offers
        await eventually(
            lambda: "a=candidate:" in offer or any("a=candidate:" in f for f in trickled),
            what="a candidate in the offer or trickled",
            seconds=DEADLINE,
        )
        # Stop it the way an operator does; whip-client then DELETEs its session.
        client.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(client.communicate(), DEADLINE)
        log = output.decode(errors="replace")
        assert "PeerConnection connected" in log, log
        await wait_rooms(server, "rooms == []")
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        if viewer is not None:
            await close_all(viewer)


# The H.264 that OBS sends over WHIP: x264 in its high profile, no B-frames, SPS/PPS before
# every IDR.
OBS_LIKE_VIDEO = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
    "videoconvert ! queue ! "
    "x264enc tune=zerolatency bframes=0 key-int-max=60 speed-preset=veryfast ! "
    "video/x-h264,profile=high ! rtph264pay pt=102 ssrc=2 config-interval=-1 "
    "aggregate-mode=zero-latency ! queue ! "
    "application/x-rtp,media=video,encoding-name=H264,payload=102"
)


async def test_obs_like_h264_from_gstreamer_is_recorded_to_a_file_that_plays(
    shims: Path, tmp_path: Path
) -> None:
    record_dir = tmp_path / "records"
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
    }
    with running_server(env) as server:
        client = await asyncio.create_subprocess_exec(
            "whip-client",
            "-u",
            f"{server.url}/api/whip/publish/obs",
            "-A",
            AUDIO,
            "-V",
            OBS_LIKE_VIDEO,
            "-o",
            env={
                **os.environ,
                "LD_LIBRARY_PATH": str(shims),
                "LD_PRELOAD": str(shims / "loopback_ifaddrs.so"),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await wait_rooms(server, "len(rooms) == 1 and rooms[0]['tracks'] == 2")
            video = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while video is None or video.stat().st_size < 50_000:  # a few seconds of video
                assert loop.time() < deadline, "no video recorded"
                await asyncio.sleep(0.2)
                video = next(iter(record_dir.glob("obs_*.mkv")), None)
            client.send_signal(signal.SIGINT)  # whip-client DELETEs its session
            await asyncio.wait_for(client.communicate(), DEADLINE)
            await wait_rooms(server, "rooms == []")
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
    recorded = sorted(p.suffix for p in record_dir.iterdir() if p.is_file())
    assert recorded == [".mkv", ".ogg"]
    for path in record_dir.iterdir():
        if path.is_file():
            assert decode_errors(path) == "", path.name
    found = probe(next(record_dir.glob("obs_*.mkv")))
    assert (found.codec, found.width, found.height) == ("h264", 320, 240)
    assert found.frames >= 30
    assert found.duration == pytest.approx(found.frames / 30, abs=0.2)
