"""Hostile offers and trickled candidates against a real golive process (issue 12, finding 2).

aiortc's SDP parser and aioice's candidate handling are quadratic in places: before the caps
of :mod:`golive.media.limits`, an offer with 6000 candidates blocked the server's event loop
for 8 s, 20 000 ``a=ssrc`` lines for 5.8 s, trickling 4000 candidates for more than 20 s,
and every room's media and request waited meanwhile.

Here each cap is met exactly (201/204) and exceeded by one (413 with a JSON reason naming
it, nothing left behind), and the attacks as they were reported are replayed: while the
largest accepted inputs and the reported attacks are processed, a separate process polls
``/healthz`` (:mod:`tests.healthz_poller`) and no answer may take 100 ms or more.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection
from aiortc.rtp import FORBIDDEN_PAYLOAD_TYPES

from golive.media.limits import (
    MAX_CANDIDATES_PER_SESSION,
    MAX_CODEC_LINES_PER_SECTION,
    MAX_FORMATS_PER_SECTION,
    MAX_MEDIA_SECTIONS,
    MAX_OFFER_LINES,
    MAX_SSRC_LINES,
)
from tests.test_server import Golive, environment, python_m

SDP = {"Content-Type": "application/sdp"}
TRICKLE = "application/trickle-ice-sdpfrag"
STALL_MS = 100.0  # the bound: the loop never stalls this long


# -- offers -----------------------------------------------------------------------------------


@dataclass
class Offer:
    """An SDP offer split into its session lines and its media sections, to grow and join."""

    session: list[str]
    sections: list[list[str]]

    @classmethod
    def of(cls, sdp: str) -> Offer:
        session: list[str] = []
        sections: list[list[str]] = []
        for line in sdp.split("\r\n"):
            if not line:
                continue
            if line.startswith("m="):
                sections.append([line])
            elif sections:
                sections[-1].append(line)
            else:
                session.append(line)
        return cls(session, sections)

    def sdp(self) -> str:
        lines = self.session + [line for section in self.sections for line in section]
        return "\r\n".join(lines) + "\r\n"

    def lines(self) -> int:
        return len(self.session) + sum(len(section) for section in self.sections)

    def add(self, lines: list[str], section: int = 0) -> Offer:
        self.sections[section].extend(lines)
        return self


async def client_offer(video: int = 1, audio: int = 1, direction: str = "sendonly") -> str:
    """A real aiortc offer (in the loopback namespace it gathers no candidate)."""
    pc = RTCPeerConnection()
    try:
        for _ in range(video):
            pc.addTransceiver("video", direction=direction)
        for _ in range(audio):
            pc.addTransceiver("audio", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def candidate_lines(count: int, first_port: int = 20000) -> list[str]:
    return [
        f"a=candidate:{n} 1 udp 2130706431 127.0.0.1 {first_port + n} typ host"
        for n in range(count)
    ]


def codec_section(offer: Offer, codec_lines: int) -> Offer:
    """The video section (the first) with every dynamic payload type on its m-line and
    ``codec_lines`` rtpmap/fmtp/rtcp-fb lines in all."""
    section = offer.sections[0]
    words = section[0].split()
    used = [int(word) for word in words[3:]]
    free = set(range(35, 128)) - set(used) - set(FORBIDDEN_PAYLOAD_TYPES)
    extra = sorted(free)
    section[0] = " ".join([*words[:3], *map(str, used + extra)])
    existing = sum(1 for line in section if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")))
    lines = [f"a=rtpmap:{pt} VP8/90000" for pt in extra]
    feedback = ("nack", "nack pli", "ccm fir", "goog-remb", "transport-cc")
    index = 0
    while existing + len(lines) < codec_lines:
        lines.append(f"a=rtcp-fb:{extra[index % len(extra)]} {feedback[index // len(extra) % 5]}")
        index += 1
    return offer.add(lines)


def ssrc_lines(sdp: str, total: int) -> str:
    """``sdp`` with SSRC lines added until it has ``total`` of them."""
    has = sum(1 for line in sdp.splitlines() if line.startswith(("a=ssrc:", "a=ssrc-group:")))
    return Offer.of(sdp).add([f"a=ssrc:{1000 + n} cname:c{n}" for n in range(total - has)]).sdp()


def candidates(sdp: str, total: int) -> str:
    """``sdp`` with candidates added until it has ``total`` (an offer made in a process whose
    aioice gathers on loopback, as another test's in-process server makes it, has one)."""
    return Offer.of(sdp).add(candidate_lines(total - candidate_count(sdp))).sdp()


def candidate_count(sdp: str) -> int:
    return sum(1 for line in sdp.splitlines() if line.startswith("a=candidate:"))


def filler(offer: Offer, total_lines: int) -> Offer:
    """Harmless attribute lines until the offer has ``total_lines`` lines."""
    return offer.add([f"a=x-filler:{n}" for n in range(total_lines - offer.lines())])


Build = Callable[[str], str]  # a hostile offer from a plain audio+video one


def at_caps() -> dict[str, Build]:
    """Offers exactly at each cap: accepted."""
    return {
        "candidates": lambda sdp: candidates(sdp, MAX_CANDIDATES_PER_SESSION),
        "ssrc lines": lambda sdp: ssrc_lines(sdp, MAX_SSRC_LINES),
        "codec lines": lambda sdp: codec_section(Offer.of(sdp), MAX_CODEC_LINES_PER_SECTION).sdp(),
        "lines": lambda sdp: filler(Offer.of(sdp), MAX_OFFER_LINES).sdp(),
    }


def over_caps() -> dict[str, tuple[Build, str]]:
    """Offers one past each cap: refused, with the cap named."""
    return {
        "candidates": (
            lambda sdp: candidates(sdp, MAX_CANDIDATES_PER_SESSION + 1),
            "ICE candidates",
        ),
        "ssrc lines": (lambda sdp: ssrc_lines(sdp, MAX_SSRC_LINES + 1), "ssrc lines"),
        "codec lines": (
            lambda sdp: codec_section(Offer.of(sdp), MAX_CODEC_LINES_PER_SECTION + 1).sdp(),
            "rtpmap/fmtp/rtcp-fb lines",
        ),
        "formats": (
            lambda sdp: sdp.replace(
                "SAVPF ", "SAVPF " + " ".join(["96"] * MAX_FORMATS_PER_SECTION) + " ", 1
            ),
            "payload types",
        ),
        "m-lines": (
            lambda sdp: Offer(
                Offer.of(sdp).session, Offer.of(sdp).sections * (MAX_MEDIA_SECTIONS // 2 + 1)
            ).sdp(),
            "m-lines",
        ),
        "lines": (lambda sdp: filler(Offer.of(sdp), MAX_OFFER_LINES + 1).sdp(), "lines"),
    }


def reported_attacks() -> dict[str, Build]:
    """The inputs of the issue, at the sizes that stalled the loop for seconds."""
    return {
        "6000 candidates": lambda sdp: candidates(sdp, 6000),
        "20000 ssrc lines": lambda sdp: ssrc_lines(sdp, 20000),
        "9000 codec lines": lambda sdp: (
            Offer.of(sdp).add([f"a=rtcp-fb:96 nack{n}" for n in range(9000)]).sdp()
        ),
        "1000 m-lines": lambda sdp: Offer(
            Offer.of(sdp).session, Offer.of(sdp).sections * 500
        ).sdp(),
    }


# -- the server and its watcher ----------------------------------------------------------------


@pytest.fixture(scope="module")
def golive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Golive]:
    env = environment({"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "info"})
    server = Golive(python_m(), env, tmp_path_factory.mktemp("golive"))
    try:
        server.wait_listening()
        yield server
    finally:
        server.kill()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Watch:
    """``/healthz`` polled from another process while the block runs: the slowest answers."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.healthz_poller", host, port],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "polling"
        self.slowest_ms: list[float] = []
        self.requests = 0

    def stop(self) -> None:
        out, _ = self._process.communicate("", timeout=30)
        result = json.loads(out)
        self.slowest_ms, self.requests = result["slowest_ms"], result["requests"]


async def post(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[int, str, str]:
    async with http.post(url, data=io.BytesIO(sdp.encode()), headers=SDP) as response:
        return response.status, await response.text(), response.headers.get("Location", "")


async def rooms(http: aiohttp.ClientSession, base: str) -> list[object]:
    async with http.get(base + "/api/rooms") as response:
        listed: list[object] = await response.json()
        return listed


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_cap_is_met_and_one_more_is_refused(
    golive: Golive, http: aiohttp.ClientSession
) -> None:
    plain = await client_offer()
    for name, build in at_caps().items():
        status, body, location = await post(http, f"{golive.url}/api/whip/publish/at", build(plain))
        assert status == 201, (name, body)
        async with http.delete(golive.url + location) as response:
            assert response.status == 200
    sixteen = await client_offer(video=MAX_MEDIA_SECTIONS - 1, audio=1)
    status, body, location = await post(http, f"{golive.url}/api/whip/publish/at", sixteen)
    assert status == 201, ("m-lines", body)
    async with http.delete(golive.url + location) as response:
        assert response.status == 200

    for name, (build, cap) in over_caps().items():
        for endpoint in ("/api/whip/publish/over", "/api/whep/play/over"):
            status, body, _ = await post(http, golive.url + endpoint, build(plain))
            assert status == 413, (name, endpoint, body)
            error = json.loads(body)["error"]
            assert error.startswith("offer too large: "), (name, error)
            assert cap in error, (name, error)
    assert await rooms(http, golive.url) == []  # nothing left behind


@pytest.mark.asyncio
async def test_trickled_candidates_are_capped_per_session(
    golive: Golive, http: aiohttp.ClientSession
) -> None:
    offered = 10
    sdp = candidates(await client_offer(), offered)
    status, body, location = await post(http, f"{golive.url}/api/whip/publish/trickle", sdp)
    assert status == 201, body
    headers = {"Content-Type": TRICKLE, "If-Match": "*"}
    room_left = MAX_CANDIDATES_PER_SESSION - offered

    async def patch(count: int, first_port: int) -> tuple[int, str]:
        fragment = "\r\n".join(candidate_lines(count, first_port)) + "\r\n"
        async with http.patch(golive.url + location, data=fragment, headers=headers) as response:
            return response.status, await response.text()

    # One past what is left: refused whole, with the reason.
    status, body = await patch(room_left + 1, 30000)
    assert status == 413, body
    assert "ICE candidates" in json.loads(body)["error"]
    # What is left, in two fragments: accepted; then not one more.
    assert await patch(room_left - 1, 31000) == (204, "")
    assert await patch(1, 32000) == (204, "")
    status, body = await patch(1, 33000)
    assert status == 413, body
    async with http.get(golive.url + location) as response:  # the session is still there
        assert response.status == 204
    async with http.delete(golive.url + location) as response:
        assert response.status == 200


@pytest.mark.asyncio
async def test_the_loop_never_stalls_on_the_largest_inputs_nor_on_the_reported_attacks(
    golive: Golive, http: aiohttp.ClientSession
) -> None:
    plain = await client_offer()
    sixteen = await client_offer(video=MAX_MEDIA_SECTIONS - 1, audio=1)
    viewer = await client_offer(direction="recvonly")
    watch = await asyncio.to_thread(Watch, golive.url)
    outcomes: dict[str, int] = {}
    try:
        for name, build in at_caps().items():
            status, body, location = await post(
                http, f"{golive.url}/api/whip/publish/big", build(plain)
            )
            outcomes[name] = status
            if location:
                async with http.delete(golive.url + location):
                    pass
        status, body, location = await post(http, f"{golive.url}/api/whip/publish/big", sixteen)
        outcomes["m-lines"] = status
        # The whole candidate allowance trickled at once, then one at a time on another session.
        allowance = MAX_CANDIDATES_PER_SESSION - candidate_count(viewer)
        for fragments in ([allowance], [1] * allowance):
            status, body, session = await post(http, f"{golive.url}/api/whep/play/big", viewer)
            assert status == 201, body
            port = 40000
            for count in fragments:
                fragment = "\r\n".join(candidate_lines(count, port)) + "\r\n"
                port += count
                headers = {"Content-Type": TRICKLE, "If-Match": "*"}
                async with http.patch(golive.url + session, data=fragment, headers=headers) as r:
                    assert r.status == 204, await r.text()
        async with http.delete(golive.url + location):
            pass
        for name, build in reported_attacks().items():
            status, body, _ = await post(http, f"{golive.url}/api/whip/publish/big", build(plain))
            outcomes[name] = status
    finally:
        await asyncio.to_thread(watch.stop)
    assert watch.requests > 0
    assert max(watch.slowest_ms) < STALL_MS, f"/healthz took {watch.slowest_ms} ms"
    assert outcomes == {
        "candidates": 201,
        "ssrc lines": 201,
        "codec lines": 201,
        "lines": 201,
        "m-lines": 201,
        "6000 candidates": 413,
        "20000 ssrc lines": 413,
        "9000 codec lines": 413,
        "1000 m-lines": 413,
    }
