"""Secrets never leak (contract section 7, issue 5): a golive process configured with every
secret, every route exercised (successes and failures, real WHIP/WHEP sessions included, at
LOG_LEVEL=debug), and no secret in any log line, error response, ``/api/bootstrap`` or
``/metrics``. ICE passwords of both ends of every session never reach the logs either.

The TURN password is *meant* to reach clients in the ``Link`` headers of successful WHIP/WHEP
answers (RFC 9725 section 4.6), and the server's ICE password in its SDP answers: those
successful answers are the only places they may appear.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from golive.media import hooks
from tests.media.clients import PatternTrack, close_all
from tests.support import eventually, metric_samples
from tests.test_server import Golive, environment, python_m

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

SECRETS = {
    "AUTH_TOKEN": "auth-SECRET-0001",
    "ROOM_TOKENS": "lobby:room-SECRET-0002;stage:room-SECRET-0003",
    "JWT_SECRET": "jwt-SECRET-0004-0123456789abcdefghij",
    "ADMIN_TOKEN": "admin-SECRET-0005",
    "TURN_PASSWORD": "turn-SECRET-0006",
    "S3_ACCESS_KEY": "s3-ACCESS-SECRET-0007",
    "S3_SECRET_KEY": "s3-SECRET-0008",
}
ICE_PWD = re.compile(r"a=ice-pwd:(\S+)")


def secret_values() -> set[str]:
    values = {v for k, v in SECRETS.items() if k != "ROOM_TOKENS"}
    values |= {pair.split(":", 1)[1] for pair in SECRETS["ROOM_TOKENS"].split(";")}
    return values


class Exchange:
    """Every response seen, to search afterwards."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.errors: list[str] = []  # status >= 400: headers and body
        self.public: list[str] = []  # /api/bootstrap, /metrics
        self.answers: list[str] = []  # 201 SDP answers

    async def call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: str | bytes = b"",
    ) -> tuple[int, dict[str, str], str]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base + path, data=body, headers=dict(headers or {})) as r,
        ):
            text = (await r.read()).decode(errors="replace")
            seen = f"{dict(r.headers)}\n{text}"
            if r.status >= 400:
                self.errors.append(seen)
            if path.split("?", maxsplit=1)[0] in ("/api/bootstrap", "/metrics"):
                self.public.append(seen)
            return r.status, dict(r.headers), text


async def an_offer(kind: str) -> RTCPeerConnection:
    pc = RTCPeerConnection()
    if kind == "publish":
        pc.addTransceiver(PatternTrack(), direction="sendonly")
    else:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def test_no_secret_reaches_a_log_an_error_bootstrap_or_metrics(tmp_path: Path) -> None:
    hooks.install(("127.0.0.1",))
    admin_jwt = jwt.encode({"role": "admin"}, SECRETS["JWT_SECRET"], algorithm="HS256")
    room_jwt = jwt.encode({"room": "lobby", "sub": "a"}, SECRETS["JWT_SECRET"], algorithm="HS256")
    forged = jwt.encode({"role": "admin"}, "not-the-secret-0123456789abcdefghij", algorithm="HS256")
    env = environment(
        {
            **SECRETS,
            "TURN_URLS": "turn:turn.example.com:3478",
            "TURN_USERNAME": "alice",
            "RECORD_ENABLED": "1",
            "UPLOAD_RECORDINGS": "1",
            "S3_ENDPOINT": "127.0.0.1:9",  # nothing listens: every upload attempt fails
            "S3_USE_SSL": "0",
            "S3_BUCKET": "golive-test",
            "UPLOAD_RETRY_BASE_SECONDS": "0.05",
            "UPLOAD_RETRY_MAX_SECONDS": "0.1",
            "UPLOAD_MAX_ATTEMPTS": "2",
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "STUN_URLS": ",",
            "LOG_LEVEL": "debug",
        }
    )
    golive = Golive(python_m(), env, tmp_path)
    peers: list[RTCPeerConnection] = []
    ice_passwords: set[str] = set()
    try:
        url = await asyncio.to_thread(golive.wait_listening)
        ex = Exchange(url)
        room_token = "room-SECRET-0002"  # noqa: S105  one of SECRETS
        sdp = {"Content-Type": "application/sdp"}
        # Public routes, with secrets where a careless server would echo them.
        for path in ("/healthz", "/metrics", "/api/rooms", "/api/openapi.json"):
            await ex.call("GET", path, {"X-Auth-Token": SECRETS["AUTH_TOKEN"]})
        await ex.call("GET", f"/api/bootstrap?token={SECRETS['AUTH_TOKEN']}")
        # Refusals of every kind, each carrying a secret.
        await ex.call("POST", "/api/whip/publish/stage", {**sdp, "X-Auth-Token": room_token})
        await ex.call(
            "POST", "/api/whip/publish/lobby", {**sdp, "Authorization": f"Bearer {forged}"}
        )
        await ex.call("POST", "/api/whip/publish/lobby", {"Content-Type": "text/plain"}, room_token)
        await ex.call(
            "POST", "/api/whip/publish/lobby", {**sdp, "X-Auth-Token": room_token}, "v=0 x"
        )
        await ex.call("POST", "/api/whip/publish/b@d", {"X-Auth-Token": room_token})
        await ex.call("POST", "/api/admin/rooms/x/close", {"X-Auth-Token": SECRETS["AUTH_TOKEN"]})
        await ex.call("GET", "/api/records", {"Authorization": f"Bearer {room_jwt}"})
        await ex.call("GET", "/records/lobby_0_1.ivf", {"X-Auth-Token": SECRETS["ADMIN_TOKEN"]})
        # A real publisher and a real viewer, with trickle, ownership refusals and DELETE.
        publisher = await an_offer("publish")
        peers.append(publisher)
        ice_passwords |= set(ICE_PWD.findall(publisher.localDescription.sdp))
        status, headers, answer = await ex.call(
            "POST",
            "/api/whip/publish/lobby",
            {**sdp, "Authorization": f"Bearer {room_jwt}"},
            publisher.localDescription.sdp,
        )
        assert status == 201, answer
        ex.answers.append(answer)
        ice_passwords |= set(ICE_PWD.findall(answer))
        await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        location = headers["Location"]
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
        fragment = f"a=ice-pwd:{next(iter(ice_passwords))}\r\na=candidate:garbage\r\n"
        await ex.call("PATCH", location, {**trickle, "X-Auth-Token": room_token}, fragment)
        await ex.call(
            "PATCH", location, {**trickle, "Authorization": f"Bearer {room_jwt}"}, fragment
        )
        await ex.call("GET", location, {"X-Auth-Token": SECRETS["AUTH_TOKEN"]})
        viewer = await an_offer("view")
        peers.append(viewer)
        ice_passwords |= set(ICE_PWD.findall(viewer.localDescription.sdp))
        status, headers, answer = await ex.call(
            "POST",
            "/api/whep/play/lobby",
            {**sdp, "X-Auth-Token": room_token},
            viewer.localDescription.sdp,
        )
        assert status == 201, answer
        ice_passwords |= set(ICE_PWD.findall(answer))
        await ex.call("DELETE", headers["Location"], {"Authorization": f"Bearer {admin_jwt}"})
        await ex.call("GET", "/api/records", {"X-Auth-Token": SECRETS["ADMIN_TOKEN"]})

        async def recorded() -> bool:
            """A frame is on disk: the recording is kept and queued for upload at the end
            (one with none would be removed, and no upload attempted)."""
            text = (await ex.call("GET", "/metrics"))[2]
            return metric_samples(text).get(("golive_recording_bytes_written_total", ()), 0) > 0

        await eventually(recorded, what="a frame recorded")
        await ex.call("DELETE", location, {"Authorization": f"Bearer {room_jwt}"})

        async def upload_failed() -> bool:
            """The uploader tried the (unreachable) S3 endpoint and logged why it failed."""
            text = (await ex.call("GET", "/metrics"))[2]
            return metric_samples(text).get(("golive_upload_retries_total", ()), 0) > 0

        await eventually(upload_failed, what="a failed upload attempt")
        await ex.call("GET", "/api/bootstrap")
        assert await asyncio.to_thread(golive.stop) == 0
    finally:
        await close_all(*peers)
        golive.kill()

    assert len(ice_passwords) >= 3
    logs = "\n".join([*golive.stdout, *golive.stderr()])
    assert "upload attempt failed" in logs  # the S3 path ran, with its errors
    leaks = {
        "logs": {s for s in secret_values() | {admin_jwt, room_jwt, forged} if s in logs},
        "ice in logs": {p for p in ice_passwords if p in logs},
        "errors": {s for s in secret_values() for e in ex.errors if s in e},
        "public": {s for s in secret_values() for p in ex.public if s in p},
    }
    assert leaks == {"logs": set(), "ice in logs": set(), "errors": set(), "public": set()}
