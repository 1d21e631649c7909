"""What a join costs: ICE completion without waiting for aioice's pacing timer, and the
objects a session holds (every full garbage collection scans them all, pausing the loop).

Two real aiortc peer connections of golive's kind, in this process, over loopback.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aioice.ice
import aiortc.rate
import pytest
from aiortc import RTCConfiguration, RTCSessionDescription

from golive.media import hooks
from golive.media.hooks import EstimatorOnFirstUse, ForwardingPeerConnection, PromptConnection
from tests.support import eventually

NO_ICE_SERVERS = RTCConfiguration(iceServers=[])
#: aioice's check pacing (Ta): connect() sleeps this long between rounds of checks.
PACING = 0.02


class StalledPacing:
    """Stands for the asyncio module inside aioice.ice: the same, except that the pacing
    sleep between rounds of checks never ends (as if the loop were too busy to come back to
    it). Whatever completes ICE must then come from the checks themselves."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        if delay == PACING:
            await asyncio.Event().wait()
        return await asyncio.sleep(delay, result)


async def offer_answer(
    offerer: ForwardingPeerConnection, answerer: ForwardingPeerConnection
) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


def ice_connection(pc: ForwardingPeerConnection) -> Any:
    return pc.getTransceivers()[0].receiver.transport.transport._connection


@pytest.mark.asyncio
async def test_ice_completes_when_nominated_not_at_the_next_pacing_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks.install(("127.0.0.1",))
    monkeypatch.setattr(aioice.ice, "asyncio", StalledPacing())
    viewer = ForwardingPeerConnection(NO_ICE_SERVERS)
    server = ForwardingPeerConnection(NO_ICE_SERVERS)
    try:
        viewer.addTransceiver("video", direction="recvonly")
        viewer.addTransceiver("audio", direction="recvonly")
        await offer_answer(viewer, server)
        await eventually(
            lambda: viewer.connectionState == "connected" and server.connectionState == "connected",
            what="ICE and DTLS up on both sides although aioice's pacing never came round",
            seconds=10,
        )
        checks = [ice_connection(pc)._golive_checks for pc in (viewer, server)]
        assert isinstance(ice_connection(server), PromptConnection)
    finally:
        await asyncio.gather(viewer.close(), server.close())
    # aioice's own loop, still in its pacing sleep when connect() returned, was ended by the
    # close (else it would have started consent checks on a closed connection).
    assert all(task is not None and task.done() for task in checks)


@pytest.mark.asyncio
async def test_a_viewer_session_holds_few_objects_for_the_garbage_collector() -> None:
    """Each full collection of the cyclic garbage collector scans every tracked object and
    pauses the loop that long: with a few hundred viewers, aiortc's unused bitrate estimator
    (1 000 objects per video receiver) made the pauses 100-400 ms."""
    hooks.install(("127.0.0.1",))
    client = ForwardingPeerConnection(NO_ICE_SERVERS)
    client.addTransceiver("video", direction="recvonly")
    client.addTransceiver("audio", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    offer = RTCSessionDescription(sdp=client.localDescription.sdp, type="offer")
    sessions: list[ForwardingPeerConnection] = []

    async def answer() -> None:
        pc = ForwardingPeerConnection(NO_ICE_SERVERS)
        sessions.append(pc)
        await pc.setRemoteDescription(offer)
        for transceiver in pc.getTransceivers():
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())

    count = 20
    try:
        await answer()  # what the first one creates once (caches, interned names)
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(count):
            await answer()
        gc.collect()
        per_session = (len(gc.get_objects()) - before) / count
    finally:
        await asyncio.gather(client.close(), *(pc.close() for pc in sessions))
    assert per_session < 1000, f"{per_session:.0f} tracked objects per viewer session"


@pytest.mark.asyncio
async def test_forwarding_receivers_never_make_aiortcs_bitrate_estimator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Making it cost the loop about half a millisecond per viewer (1 000 objects)."""
    hooks.install(("127.0.0.1",))
    made: list[object] = []
    original = aiortc.rate.RateCounter.__init__

    def counted(self: aiortc.rate.RateCounter, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(aiortc.rate.RateCounter, "__init__", counted)
    pc = ForwardingPeerConnection(NO_ICE_SERVERS)
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="sendonly")
    finally:
        await pc.close()
    assert made == []


def test_aiortcs_own_receivers_still_estimate_when_fed() -> None:
    """aiortc's decoding receivers (a test's client) get the real estimator on first use."""
    hooks.install(("127.0.0.1",))
    lazy, real = EstimatorOnFirstUse(), aiortc.rate.RemoteBitrateEstimator()
    estimates = []
    for index in range(3000):  # 15 s of 1200-byte packets every 5 ms
        packet = {
            "arrival_time_ms": 1000 + 5 * index,
            "abs_send_time": ((index * 5) << 18) // 1000 & 0xFFFFFF,  # 6.18 fixed point, s
            "payload_size": 1200,
            "ssrc": 1234,
        }
        estimate = lazy.add(**packet)
        assert estimate == real.add(**packet)
        estimates.append(estimate)
    assert any(estimate is not None for estimate in estimates)
