"""The packet path's keyframe requests: coalesced across viewers, deferred, never dropped."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI

from golive.actors.messages import MediaKind, RoomName, SessionId, TrackId, TrackInfo, TrackKey
from golive.media.forwarding import KEYFRAME_REQUEST_INTERVAL, PublishedTrack
from golive.media.hooks import ForwardingPeerConnection, ForwardingReceiver
from golive.metrics import create_metrics
from golive.sessions import SessionRegistry
from tests.support import metric_samples

pytestmark = pytest.mark.asyncio

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


async def test_keyframe_requests_are_coalesced_and_deferred() -> None:
    pc = ForwardingPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    assert isinstance(receiver, ForwardingReceiver)
    metrics = create_metrics()
    key = TrackKey(RoomName("r"), SessionId("p"), TrackId("0"))
    info = TrackInfo(TrackId("0"), MediaKind.VIDEO, "video/VP8")
    tap = PublishedTrack(
        key,
        info,
        VP8,
        receiver,
        registry=SessionRegistry(asyncio.get_running_loop()),
        metrics=metrics,
    )
    try:
        # Ten viewers join or ask at once: one request goes out now.
        for _ in range(10):
            tap.want_keyframe()
        assert tap.keyframe_requests == 1
        # More asks within the interval are deferred to its end, as one request.
        for _ in range(10):
            tap.want_keyframe()
        assert tap.keyframe_requests == 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KEYFRAME_REQUEST_INTERVAL * 5
        while tap.keyframe_requests < 2:
            assert loop.time() < deadline, "the deferred keyframe request never went out"
            await asyncio.sleep(0.02)
        assert tap.keyframe_requests == 2
        samples = metric_samples(metrics.render().decode())
        assert samples[("golive_keyframe_requests_total", ())] == 2
    finally:
        tap.close()
        await pc.close()


async def test_audio_never_asks_for_keyframes() -> None:
    pc = ForwardingPeerConnection()
    receiver = pc.addTransceiver("audio", direction="recvonly").receiver
    assert isinstance(receiver, ForwardingReceiver)
    info = TrackInfo(TrackId("1"), MediaKind.AUDIO, "audio/opus")
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=111)
    tap = PublishedTrack(
        TrackKey(RoomName("r"), SessionId("p"), TrackId("1")),
        info,
        opus,
        receiver,
        registry=SessionRegistry(asyncio.get_running_loop()),
        metrics=create_metrics(),
    )
    try:
        tap.want_keyframe()
        assert tap.keyframe_requests == 0
    finally:
        tap.close()
        await pc.close()


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [
        ([("nack", "pli"), ("ccm", "fir")], RTCP_PSFB_PLI),
        ([("ccm", "fir")], RTCP_PSFB_FIR),
        ([], RTCP_PSFB_PLI),
    ],
)
async def test_keyframe_request_is_pli_or_fir_as_negotiated(
    feedback: list[tuple[str, str]], expected: int
) -> None:
    pc = ForwardingPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    assert isinstance(receiver, ForwardingReceiver)
    sent: list[object] = []

    async def capture(packet: object) -> None:  # what would go to the publisher
        sent.append(packet)

    receiver._send_rtcp = capture  # type: ignore[method-assign]
    receiver.codecs[96] = RTCRtpCodecParameters(
        mimeType="video/VP8",
        clockRate=90000,
        payloadType=96,
        rtcpFeedback=[RTCRtcpFeedback(type=t, parameter=p) for t, p in feedback],
    )
    receiver.media_ssrc = 0xABCDEF01
    try:
        receiver.request_keyframe()
        receiver.request_keyframe()
        await asyncio.gather(*receiver._golive_pending)
        assert [p.fmt for p in sent] == [expected, expected]  # type: ignore[attr-defined]
        if expected == RTCP_PSFB_FIR:
            fci = [p.fci for p in sent]  # type: ignore[attr-defined]
            assert fci == [
                bytes.fromhex("abcdef01") + b"\x01\0\0\0",
                bytes.fromhex("abcdef01") + b"\x02\0\0\0",
            ]
        else:
            assert all(p.media_ssrc == 0xABCDEF01 for p in sent)  # type: ignore[attr-defined]
    finally:
        await pc.close()
