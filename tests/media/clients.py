"""Real aiortc peers acting as a WHIP publisher and WHEP viewers (test clients)."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

from golive.media.rtp import keyframe_start

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class PatternTrack(VideoStreamTrack):
    """Small frames whose content changes every frame, so the encoder sends real data."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self._size = (width, height)
        self._count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=self._size[0], height=self._size[1])
        self._count += 1
        for index, plane in enumerate(frame.planes):
            plane.update(bytes([(self._count * (index + 3)) % 256]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


@dataclass
class Answer:
    status: int
    sdp: str
    location: str
    etag: str
    links: list[str]
    body: bytes
    worker: str = ""  # a cluster's worker that answered (Golive-Worker)


async def post_offer(
    base_url: str, path: str, pc: RTCPeerConnection, headers: Mapping[str, str] | None = None
) -> Answer:
    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base_url + path,
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", **(headers or {})},
        ) as response,
    ):
        body = await response.read()
        answer = Answer(
            status=response.status,
            sdp=body.decode(errors="replace"),
            location=response.headers.get("Location", ""),
            etag=response.headers.get("ETag", ""),
            links=response.headers.getall("Link", []),
            body=body,
            worker=response.headers.get("Golive-Worker", ""),
        )
    if answer.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
    return answer


async def delete(base_url: str, location: str, headers: Mapping[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.delete(base_url + location, headers=headers) as response,
    ):
        return response.status


@dataclass
class Publisher:
    pc: RTCPeerConnection
    answer: Answer


async def publish(
    base_url: str, room: str, *, audio: bool = True, headers: Mapping[str, str] | None = None
) -> Publisher:
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    answer = await post_offer(base_url, f"/api/whip/publish/{room}", pc, headers)
    return Publisher(pc, answer)


@dataclass
class Viewer:
    pc: RTCPeerConnection
    answer: Answer
    frames: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    first_video_packet_is_keyframe: bool | None = None
    got_video: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.frames[track.kind] += 1
                if track.kind == "video" and self.frames["video"] >= 5:
                    self.got_video.set()
        except MediaStreamError:
            return


async def view(
    base_url: str,
    room: str,
    headers: Mapping[str, str] | None = None,
    *,
    kinds: Sequence[str] = ("video", "audio"),
    video_codecs: Sequence[str] = (),
) -> Viewer:
    """A viewer offering to receive ``kinds`` (one recvonly section each, in that order);
    its video section offers only ``video_codecs`` (MIME types) when given."""
    pc = RTCPeerConnection()
    transceivers = {kind: pc.addTransceiver(kind, direction="recvonly") for kind in kinds}
    if video_codecs and "video" in transceivers:
        capabilities = RTCRtpReceiver.getCapabilities("video")
        assert capabilities is not None
        wanted = {codec.lower() for codec in video_codecs}
        transceivers["video"].setCodecPreferences(
            [c for c in capabilities.codecs if c.mimeType.lower() in wanted]
        )
    viewer = Viewer(pc, Answer(0, "", "", "", [], b""))

    # Watch the very first RTP packet of video the viewer receives.
    video = transceivers.get("video")
    if video is not None:
        receiver = video.receiver
        original = receiver._handle_rtp_packet

        async def first_packet(packet, arrival_time_ms: int) -> None:  # type: ignore[no-untyped-def]
            if viewer.first_video_packet_is_keyframe is None:
                viewer.first_video_packet_is_keyframe = keyframe_start(
                    "video/VP8", bytes(packet.serialize())
                )
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = first_packet  # type: ignore[method-assign]

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        viewer.tasks.append(asyncio.ensure_future(viewer._consume(track)))

    viewer.answer = await post_offer(base_url, f"/api/whep/play/{room}", pc, headers)
    return viewer


async def close_all(*peers: RTCPeerConnection | Publisher | Viewer) -> None:
    """Close every peer connection and stop the viewers' frame readers."""
    for peer in peers:
        if isinstance(peer, Viewer):
            for task in peer.tasks:
                task.cancel()
    await asyncio.gather(
        *(
            peer.close() if isinstance(peer, RTCPeerConnection) else peer.pc.close()
            for peer in peers
        )
    )
