"""The bench's publisher: VP8 + Opus over WHIP, encoded once before it publishes.

``python -m bench.publisher`` (started by ``bench.forwarding``) encodes a loop of video (libvpx
through PyAV, constant bitrate, realtime settings: ``--width``x``--height`` grey frames with a
moving block of noise, ``--block`` pixels square, sized so that the encoder holds
``--video-bitrate``) and of audio
(libopus, CBR ``--audio-bitrate``, 20 ms frames), then publishes them over WHIP with a real
aiortc peer connection (ICE, DTLS, SRTP): golive's forwarding sender sends the pre-encoded
payloads as RTP (30 frames a second, each frame's packets back to back, marker on the last;
an Opus packet every 20 ms; a sender report per track every second). Its CPU is then one SRTP
protect and one ``sendto`` per packet, not an encoder: it shares the machine's two cores with
the server and the viewers.

A keyframe request (PLI or FIR from the server) is answered on the next frame with a keyframe
encoded beforehand: the stream is then not decodable as one (the next frames were encoded
against another picture), which no one here does; packet sizes, timing and the VP8 payload
descriptors (start bit, keyframe bit, picture id) are real. Without requests, the stream has
one keyframe, the first frame (as a browser's would). NACKs are answered from a cache of the
last packets, on the RTX stream, as browsers do.

Prints ``{"event": "publishing"}`` once both tracks are sending; then, on stdin, ``count``
prints ``{"event": "count", "packets": ...}`` (RTP packets made so far, whether they could
be sent or not, retransmissions apart), and ``stop`` (or EOF) ends the session (DELETE) and
prints ``{"event": "stopped", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import math
import random
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiortc import RTCRtpSender, RTCSessionDescription
from av import VideoFrame

from bench.viewers import stdin
from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection, ForwardingSender

FPS = 30
LOOP_FRAMES = 300  # 10 s of video, sent over and over
PAYLOAD_MAX = 1300  # VP8 payload (descriptor included) per packet, as aiortc's packetizer
AUDIO_FRAME = 960  # 20 ms at 48 kHz
SENDER_REPORT_INTERVAL = 1.0
RESEND_CACHE = 512  # packets kept per track for NACKs (2 s of 2 Mbit/s video)
_RTP = struct.Struct("!BBHII")
_NTP_EPOCH = 2208988800


@dataclass
class EncodedVideo:
    keyframe: bytes  # the first frame
    frames: list[bytes]  # the loop (inter frames only)
    requested_keyframe: bytes  # sent in answer to a keyframe request


def _pictures(width: int, height: int, block: int, count: int) -> list[VideoFrame]:
    """Grey frames with a moving block of noise (``block`` pixels square): detail the encoder
    spends its bits on, in a region small enough for its rate control to hold the target."""
    noise = random.Random(1).randbytes(1 << 20)  # noqa: S311  picture content, not a secret
    pictures = []
    for index in range(count):
        luma = bytearray(b"\x60" * (width * height))
        left = (index * 8) % (width - block)
        top = (index * 5) % (height - block)
        start = (index * 7919) % (len(noise) - block * block)
        for row in range(block):
            at = (top + row) * width + left
            luma[at : at + block] = noise[start + row * block : start + (row + 1) * block]
        frame = VideoFrame(width=width, height=height)
        frame.planes[0].update(bytes(luma))
        for plane in frame.planes[1:]:
            plane.update(b"\x80" * plane.buffer_size)
        pictures.append(frame)
    return pictures


def encode_video(width: int, height: int, block: int, bitrate: int) -> EncodedVideo:
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = FPS
    codec.gop_size = 1 << 20  # no periodic keyframes
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        # what aiortc's own VP8 encoder sets: constant bitrate, realtime
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "static-thresh": "1",
    }
    encoded: list[bytes] = []
    pictures = _pictures(width, height, block, LOOP_FRAMES + 1)
    for index, picture in enumerate(pictures):
        picture.pts = index
        if index == LOOP_FRAMES:
            picture.pict_type = av.video.frame.PictureType.I
        encoded.append(b"".join(bytes(packet) for packet in codec.encode(picture)))
    return EncodedVideo(encoded[0], encoded[1:LOOP_FRAMES], encoded[LOOP_FRAMES])


def encode_audio(bitrate: int) -> list[bytes]:
    """One second of two tones, Opus CBR."""
    codec: Any = av.CodecContext.create("libopus", "w")
    codec.bit_rate = bitrate
    codec.format, codec.layout, codec.sample_rate = "s16", "stereo", 48000
    codec.time_base = fractions.Fraction(1, 48000)
    codec.options = {"application": "audio", "vbr": "off", "frame_duration": "20"}
    packets: list[bytes] = []
    for index in range(50 + 5):
        samples = bytearray()
        for n in range(index * AUDIO_FRAME, (index + 1) * AUDIO_FRAME):
            left = int(8000 * math.sin(2 * math.pi * 440 * n / 48000))
            right = int(3000 * math.sin(2 * math.pi * 660 * n / 48000))
            samples += struct.pack("<hh", left, right)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_FRAME)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = 48000
        frame.pts = index * AUDIO_FRAME
        frame.time_base = fractions.Fraction(1, 48000)
        packets.extend(bytes(packet) for packet in codec.encode(frame))
    return packets[5:55]  # past the encoder's start-up


def vp8_payloads(frame: bytes, picture_id: int) -> list[bytes]:
    """RFC 7741 packetization: a 4-byte descriptor (X, S on the first packet, partition 0;
    I with a 15-bit picture id) before each chunk."""
    chunk = PAYLOAD_MAX - 4
    pid = bytes([0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
    return [
        bytes([0x90 if start == 0 else 0x80, 0x80]) + pid + frame[start : start + chunk]
        for start in range(0, len(frame), chunk)
    ]


@dataclass
class Track:
    sender: ForwardingSender
    clock_rate: int
    seq: int = field(default_factory=lambda: random.randrange(0x10000))  # noqa: S311
    ts_base: int = field(default_factory=lambda: random.randrange(0x100000000))  # noqa: S311
    packets: int = 0
    dropped: int = 0
    resent: int = 0
    sent: OrderedDict[int, bytes] = field(default_factory=OrderedDict)  # for NACKs

    def __post_init__(self) -> None:
        self.sender.on_nack = self.resend

    def send(self, payload: bytes, ts: int, *, marker: bool) -> None:
        codec = self.sender.codec
        assert codec is not None
        assert codec.payloadType is not None
        header = _RTP.pack(
            0x80,
            (0x80 if marker else 0) | codec.payloadType,
            self.seq,
            (self.ts_base + ts) & 0xFFFFFFFF,
            self.sender.ssrc,
        )
        packet = header + payload
        self.sent[self.seq] = packet
        if len(self.sent) > RESEND_CACHE:
            self.sent.popitem(last=False)
        self.seq = (self.seq + 1) & 0xFFFF
        if self.sender.send_rtp(packet) is hooks.Delivery.SENT:
            self.packets += 1
        else:
            self.dropped += 1

    def resend(self, lost: list[int]) -> None:
        """Answer a NACK as a browser does: each packet still cached, once, on the RTX
        stream (or as it was when no RTX was negotiated)."""
        for seq in dict.fromkeys(number & 0xFFFF for number in lost):
            packet = self.sent.get(seq)
            if packet is not None and self.sender.send_rtx(packet) is hooks.Delivery.SENT:
                self.resent += 1

    def report(self, media_time: float) -> None:
        ntp = int((time.time() + _NTP_EPOCH) * (1 << 32))
        rtp = (self.ts_base + round(media_time * self.clock_rate)) & 0xFFFFFFFF
        self.sender.send_sender_report(ntp, rtp)


@dataclass
class Stats:
    frames: int = 0
    keyframes: int = 0
    audio: int = 0
    late: list[float] = field(default_factory=list)  # how late each frame went out (s)


async def send_loop(
    video: Track, audio: Track, encoded: EncodedVideo, opus: list[bytes], stats: Stats
) -> None:
    """Video frames every 1/FPS s and Opus every 20 ms, by a schedule from the start (so a
    late loop sends late, with the timestamps it should have had: the viewers see that)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    keyframe_wanted = [False]

    def on_keyframe_request() -> None:
        keyframe_wanted[0] = True

    video.sender.on_keyframe_request = on_keyframe_request
    frame_index = audio_index = 0
    next_report = start
    picture_id = random.randrange(0x8000)  # noqa: S311
    while True:
        video_due = start + frame_index / FPS
        audio_due = start + audio_index * AUDIO_FRAME / 48000
        due = min(video_due, audio_due)
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        if video_due <= now:
            if frame_index == 0:
                frame, stats.keyframes = encoded.keyframe, stats.keyframes + 1
            elif keyframe_wanted[0]:
                frame, stats.keyframes = encoded.requested_keyframe, stats.keyframes + 1
                keyframe_wanted[0] = False
            else:
                frame = encoded.frames[(frame_index - 1) % len(encoded.frames)]
            payloads = vp8_payloads(frame, picture_id)
            picture_id = (picture_id + 1) & 0x7FFF
            ts = frame_index * (90000 // FPS)
            for number, payload in enumerate(payloads):
                video.send(payload, ts, marker=number == len(payloads) - 1)
            stats.late.append(now - video_due)
            stats.frames += 1
            frame_index += 1
        if audio_due <= now:
            audio.send(opus[audio_index % len(opus)], audio_index * AUDIO_FRAME, marker=False)
            stats.audio += 1
            audio_index += 1
        if now >= next_report:
            video.report(now - start)
            audio.report(now - start)
            next_report += SENDER_REPORT_INTERVAL


async def post(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[str, str]:
    async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp"}) as response:
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"WHIP POST {response.status}: {answer[:200]}")
        return answer, response.headers.get("Location", "")


async def run(arguments: argparse.Namespace) -> None:
    encoded = encode_video(
        arguments.width, arguments.height, arguments.block, arguments.video_bitrate
    )
    opus = encode_audio(arguments.audio_bitrate)
    hooks.install(("127.0.0.1",))
    pc = ForwardingPeerConnection()
    video_transceiver = pc.addTransceiver("video", direction="sendonly")
    audio_transceiver = pc.addTransceiver("audio", direction="sendonly")
    for transceiver, names in (
        (video_transceiver, ("video/vp8", "video/rtx")),
        (audio_transceiver, ("audio/opus",)),
    ):
        codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in names])
    ready: dict[str, asyncio.Future[ForwardingSender]] = {}
    loop = asyncio.get_running_loop()
    for transceiver in (video_transceiver, audio_transceiver):
        sender = transceiver.sender
        assert isinstance(sender, ForwardingSender)
        future = ready[transceiver.kind] = loop.create_future()
        sender.on_ready = lambda s, f=future: f.done() or f.set_result(s)
    stats = Stats()
    async with aiohttp.ClientSession() as http:
        await pc.setLocalDescription(await pc.createOffer())
        url = f"{arguments.base}/api/whip/publish/{arguments.room}"
        answer, location = await post(http, url, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        video_sender, audio_sender = await asyncio.wait_for(
            asyncio.gather(ready["video"], ready["audio"]), 30
        )
        video, audio = Track(video_sender, 90000), Track(audio_sender, 48000)
        sending = asyncio.ensure_future(send_loop(video, audio, encoded, opus, stats))
        loop_bits = sum(len(f) for f in encoded.frames) * 8 / (len(encoded.frames) / FPS)
        print(
            json.dumps(
                {
                    "event": "publishing",
                    "video_kbps": round(loop_bits / 1e3),
                    "audio_kbps": round(sum(len(p) for p in opus) * 8 / 1e3),
                    "keyframe_bytes": len(encoded.requested_keyframe),
                }
            ),
            flush=True,
        )
        commands = await stdin()
        while (await commands.readline()).strip() == b"count":
            # every packet made, sent or not (not: the session ended, or the socket was full)
            sent = video.packets + video.dropped + audio.packets + audio.dropped
            print(json.dumps({"event": "count", "packets": sent}), flush=True)
        # "stop", or EOF
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        if location:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.delete(f"{arguments.base}{location}") as response:
                    await response.read()
    state = pc.connectionState  # "connected", unless the server ended the session
    await pc.close()
    late = sorted(stats.late)
    print(
        json.dumps(
            {
                "event": "stopped",
                "frames": stats.frames,
                "keyframes": stats.keyframes,
                "audio_packets": stats.audio,
                "packets": video.packets + audio.packets,
                "dropped": video.dropped + audio.dropped,
                "resent": video.resent,
                "connection": state,
                "late_p99_ms": late[int(len(late) * 0.99)] * 1e3 if late else None,
                "late_max_ms": late[-1] * 1e3 if late else None,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--video-bitrate", type=int, default=2_000_000)
    parser.add_argument("--audio-bitrate", type=int, default=64_000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--block", type=int, default=160, help="side of the noise block")
    arguments = parser.parse_args()
    configure_logging("error", "json", stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(arguments))


if __name__ == "__main__":
    main()
