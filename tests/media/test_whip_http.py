"""WHIP and WHEP over HTTP (RFC 9725): every status of the contract's tables, against a real
server and real aiortc offers."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiortc import RTCPeerConnection, RTCRtpReceiver

from golive.http.keys import MEDIA
from tests.media.clients import PatternTrack, close_all, publish, view
from tests.support import ServerThread, eventually, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

WHIP = "/api/whip/publish"
WHEP = "/api/whep/play"
SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


async def request(
    server: ServerThread,
    method: str,
    path: str,
    *,
    data: bytes | str = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, list[str]], bytes]:
    payload = io.BytesIO(data.encode() if isinstance(data, str) else data)
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, data=payload, headers=headers or {}) as response,
    ):
        found: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            found.setdefault(name.lower(), []).append(value)
        return response.status, found, await response.read()


async def offer_sdp() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def rooms(server: ServerThread) -> list[object]:
    _, body = server.get("/api/rooms")
    result = json.loads(body)
    assert isinstance(result, list)
    return result


@pytest.mark.parametrize("path", [WHIP, WHEP])
async def test_bad_requests_leave_nothing_behind(server: ServerThread, path: str) -> None:
    good = await offer_sdp()
    cases: list[tuple[str, dict[str, str], bytes | str, int, str | None]] = [
        ("bad.name", SDP, good, 400, "invalid room name"),
        ("r" * 65, SDP, good, 400, "invalid room name"),
        ("room", {"Content-Type": "text/plain"}, good, 415, None),
        ("room", SDP, b"v=0\r\n" + b"a" * (1 << 20), 413, None),
    ]
    if path == WHIP:
        cases += [
            ("room", SDP, "hello", 400, "invalid SDP"),
            ("room", SDP, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 400, "invalid SDP"),
            (
                "room",
                SDP,
                re.sub(r"a=rtpmap:(\d+) \w+/", r"a=rtpmap:\1 H265/", good),
                400,
                "invalid SDP",
            ),
        ]
    for room, headers, body, status, message in cases:
        got, found, raw = await request(
            server, "POST", f"{path}/{room}", data=body, headers=headers
        )
        assert got == status, (room, headers, got, raw[:200])
        assert found["content-type"][0].startswith("application/json")
        if message is not None:
            assert json.loads(raw) == {"error": message}
        assert rooms(server) == []
    assert server.call(lambda: len(server.rooms.registry)) == 0


async def test_session_resource(server: ServerThread) -> None:
    publisher = await publish(server.url, "res", audio=False)
    try:
        answer = publisher.answer
        assert answer.status == 201
        location, etag = answer.location, answer.etag

        status, found, body = await request(
            server, "PATCH", location, data="a=end-of-candidates\r\n", headers=TRICKLE
        )
        assert (status, json.loads(body)) == (428, {"error": "If-Match is required"})
        status, _, _ = await request(
            server, "PATCH", location, data="", headers={**TRICKLE, "If-Match": '"nope"'}
        )
        assert status == 412
        status, _, _ = await request(
            server,
            "PATCH",
            location,
            data="",
            headers={"Content-Type": "text/plain", "If-Match": etag},
        )
        assert status == 415
        restart = "a=ice-ufrag:brandnew\r\na=ice-pwd:brandnewpasswordbrandnew\r\n"
        status, _, body = await request(
            server, "PATCH", location, data=restart, headers={**TRICKLE, "If-Match": etag}
        )
        assert status == 422, body
        fragment = (
            "a=group:BUNDLE 0\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
            "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
            "a=candidate:2 1 udp 2130706431 nowhere.invalid.local 9 typ host\r\n"
            "a=end-of-candidates\r\n"
        )
        status, found, body = await request(
            server, "PATCH", location, data=fragment, headers={**TRICKLE, "If-Match": etag}
        )
        assert (status, body) == (204, b"")
        assert "etag" not in found
        # The session is still up after all that.
        status, _, body = await request(server, "GET", location)
        assert (status, body) == (204, b"")
        assert len(rooms(server)) == 1

        status, found, _ = await request(server, "OPTIONS", location)
        assert status == 204
        assert found["accept-post"] == ["application/sdp"]

        status, _, _ = await request(server, "DELETE", location, headers={"If-Match": '"ignored"'})
        assert status == 200
        assert rooms(server) == []
        for method in ("GET", "PATCH", "DELETE"):
            status, _, _ = await request(
                server, method, location, headers={**TRICKLE, "If-Match": etag}
            )
            assert status == 404, method
        status, _, _ = await request(server, "DELETE", f"{WHEP}/res/{location.rsplit('/', 1)[1]}")
        assert status == 404  # a publisher's id is not a viewer's resource
    finally:
        await close_all(publisher)


@pytest.fixture
def limited_server() -> Iterator[ServerThread]:
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": "stun:stun.example.org:3478",
        "TURN_URLS": "turn:turn.example.org:3478?transport=udp",
        "TURN_USERNAME": "user",
        "TURN_PASSWORD": "pass",
        "MAX_SUBS_PER_ROOM": "1",
        "LOG_LEVEL": "warning",
    }
    with running_server(env) as running:
        yield running


async def test_limits_links_and_options(limited_server: ServerThread) -> None:
    server = limited_server
    status, found, _ = await request(server, "OPTIONS", f"{WHIP}/room")
    assert status == 204
    assert found["accept-post"] == ["application/sdp"]
    assert found["link"] == [
        '<stun:stun.example.org:3478>; rel="ice-server"',
        (
            '<turn:turn.example.org:3478?transport=udp>; rel="ice-server"; username="user"; '
            'credential="pass"; credential-type="password"'
        ),
    ]
    assert "PATCH" in found["access-control-allow-methods"][0]
    # A CORS preflight gets no ICE servers.
    status, found, _ = await request(
        server,
        "OPTIONS",
        f"{WHIP}/room",
        headers={"Access-Control-Request-Method": "POST", "Origin": "https://x"},
    )
    assert status == 204
    assert "link" not in found

    publisher = await publish(server.url, "room")
    first = await view(server.url, "room")
    second = await view(server.url, "room")
    try:
        assert publisher.answer.status == 201
        assert len(publisher.answer.links) == 2
        assert first.answer.status == 201
        assert second.answer.status == 403
        assert json.loads(second.answer.body) == {"error": "subscriber limit reached"}
    finally:
        await close_all(publisher, first, second)


@pytest.fixture
def port_range_server() -> Iterator[ServerThread]:
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "ICE_PORT_MIN": "41000",
        "ICE_PORT_MAX": "41004",
        "LOG_LEVEL": "warning",
    }
    with running_server(env) as running:
        yield running


async def test_media_ports_stay_in_the_configured_range(port_range_server: ServerThread) -> None:
    publisher = await publish(port_range_server.url, "ports")
    viewer = await view(port_range_server.url, "ports")
    try:
        for answer in (publisher.answer, viewer.answer):
            assert answer.status == 201
            ports = [
                int(line.split()[5])
                for line in answer.sdp.splitlines()
                if line.startswith("a=candidate:")
            ]
            assert ports
            assert all(41000 <= port <= 41004 for port in ports), ports
            assert all(
                " 127.0.0.1 " in line
                for line in answer.sdp.splitlines()
                if line.startswith("a=candidate:")
            )
        await asyncio.wait_for(viewer.got_video.wait(), 30)
    finally:
        await close_all(publisher, viewer)


async def test_a_viewer_is_answered_only_codecs_it_offered(server: ServerThread) -> None:
    """A viewer offering only H.264 for a VP8 room gets no answer it cannot use: 400, and no
    session is left behind; one offering VP8 among others is answered VP8 alone."""
    publisher = await publish(server.url, "codecs", audio=False)
    h264_only = RTCPeerConnection()
    transceiver = h264_only.addTransceiver("video", direction="recvonly")
    capabilities = RTCRtpReceiver.getCapabilities("video")
    assert capabilities is not None
    transceiver.setCodecPreferences(
        [c for c in capabilities.codecs if c.mimeType.lower() in ("video/h264", "video/rtx")]
    )
    status, _, body = await request(
        server, "POST", f"{WHEP}/codecs", data=await local_offer(h264_only), headers=SDP
    )
    try:
        assert (status, json.loads(body)) == (400, {"error": "invalid SDP"})
        assert rooms(server)[0]["subscribers"] == 0  # type: ignore[index]
        assert server.call(lambda: len(server.rooms.registry)) == 1  # the publisher only
        viewer = await view(server.url, "codecs")
        assert viewer.answer.status == 201
        video = viewer.answer.sdp.split("m=video", 1)[1].split("m=audio", 1)[0]
        names = {
            line.split()[1].split("/")[0]
            for line in video.splitlines()
            if line.startswith("a=rtpmap:")
        }
        assert names <= {"VP8", "rtx"}
        await close_all(viewer)
    finally:
        await close_all(publisher, h264_only)


async def local_offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


@pytest.mark.parametrize("leader", ["second-application", "text"])
async def test_an_offer_bundled_under_a_section_without_transport_is_refused(
    server: ServerThread, leader: str
) -> None:
    """Found by the fuzz: aiortc makes one transport per audio/video section and one for the
    first application section. A BUNDLE group led by another section left the bundled tracks
    with none; the offer was refused, but the connect task aiortc had already scheduled died
    unreported (and the peer connection's close failed). Refused now before aiortc sees it."""
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    mid = re.search(r"^a=mid:(\S+)", offer, re.MULTILINE)
    assert mid is not None
    # every section needs ICE credentials and a fingerprint to be considered at all
    credentials = "".join(
        line + "\r\n"
        for line in offer.split("\r\n")
        if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:"))
    )
    if leader == "text":
        extra = f"m=text 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:x\r\n{credentials}"
    else:
        app = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n"
        extra = f"{app}a=mid:d\r\n{credentials}{app}a=mid:x\r\n{credentials}"
    offer = offer.replace(f"a=group:BUNDLE {mid[1]}", f"a=group:BUNDLE x {mid[1]}") + extra
    failures: list[str] = []

    def unhandled(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        failures.append(f"{context.get('message')}: {context.get('exception')!r}")

    server.call(lambda: server._loop.set_exception_handler(unhandled))
    try:
        with structlog.testing.capture_logs() as logs:
            status, _, body = await request(server, "POST", f"{WHIP}/odd", data=offer, headers=SDP)
            await asyncio.to_thread(server.run, server.app[MEDIA].shutdown())  # closes done
        server.call(gc.collect)  # a failed task is reported when it is collected
    finally:
        server.call(lambda: server._loop.set_exception_handler(None))
    assert (status, json.loads(body)) == (400, {"error": "invalid SDP"})
    assert rooms(server) == []
    assert failures == []
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


async def test_a_session_that_never_connects_ends_and_frees_its_room() -> None:
    """A trickling client (offer without candidates) that vanishes before its first PATCH: ICE
    would wait for candidates forever, holding the room. The connect deadline ends it."""
    env = {
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "STUN_URLS": ",",
        "LOG_LEVEL": "warning",
        "SESSION_CONNECT_TIMEOUT_SECONDS": "1",
    }
    with running_server(env) as server:
        pc = RTCPeerConnection()
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = "".join(
            line + "\r\n"
            for line in pc.localDescription.sdp.splitlines()
            if not line.startswith(("a=candidate:", "a=end-of-candidates"))
        )
        await pc.close()  # and it never comes back
        with structlog.testing.capture_logs() as logs:
            status, found, _ = await request(
                server, "POST", f"{WHIP}/abandoned", data=offer, headers=SDP
            )
            assert status == 201
            assert len(rooms(server)) == 1
            await eventually(
                lambda: not rooms(server), what="the abandoned session to free its room", seconds=20
            )
        session = found["location"][0].rsplit("/", 1)[1]
        story = [(e["event"], e["log_level"]) for e in logs if e.get("session") == session]
        assert ("session not connected in time", "warning") in story
        ended = next(e for e in logs if e["event"] == "session ended" and e["session"] == session)
        assert ended["reason"] == "ice_failed"
        assert 1 <= ended["seconds"] < 20
        # The room is free again: another publisher can take it.
        publisher = await publish(server.url, "abandoned")
        try:
            assert publisher.answer.status == 201
        finally:
            await close_all(publisher)
