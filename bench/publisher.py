"""The bench's publisher: VP8 or H.264, with Opus, over WHIP, encoded once before it publishes.

``python -m bench.publisher`` (started by ``bench.forwarding``, ``bench.cluster``,
``bench.instant`` and ``tests/web/test_instant_start.py``) encodes a loop of video (``--codec``:
libvpx, constant bitrate, realtime settings, as aiortc sets it; or libx264 as OBS sets it:
constrained baseline, ``tune=zerolatency``, no B-frames, access unit delimiters, x264's own
SEI, SPS and PPS before every IDR) of ``--width``x``--height`` grey frames with a moving block
of noise, ``--block`` pixels square, sized so that the encoder holds ``--video-bitrate``, and
of audio (libopus, CBR ``--audio-bitrate``, 20 ms frames), then publishes them over WHIP with
a real aiortc peer connection (ICE, DTLS, SRTP): golive's forwarding sender sends the
pre-encoded payloads as RTP (30 frames a second, each frame's packets back to back, marker on
the last; an Opus packet every 20 ms; a sender report per track every second). Its CPU is then
one SRTP protect and one ``sendto`` per packet, not an encoder: it shares the machine's two
cores with the server and the viewers.

VP8 is packetized as aiortc does (RFC 7741); H.264 as OBS's WHIP output does (libdatachannel's
packetizer): every NAL unit in its own RTP packet (single NAL unit packets), FU-A fragments for
those that do not fit, never STAP-A (RFC 6184); a keyframe's access unit is then AUD, SPS,
PPS, (SEI), IDR, each its own packet or packets. The offer names the one video codec sent
(H.264: ``packetization-mode=1;profile-level-id=42e01f``), so the server forwards that.

Keyframes. By default the stream has one keyframe, the first frame (as a browser's would), and
a keyframe request (PLI or FIR from the server) is answered on the next frame with a keyframe
encoded beforehand: the stream is then not decodable as one (the next frames were encoded
against another picture), which no one here does; packet sizes, timing and payload headers are
real. With ``--keyframe-interval SECONDS`` the loop is instead whole groups of pictures (a
keyframe every SECONDS, the first frame one, no other: no scene-cut keyframes), so that a real
decoder decodes the looped stream (it restarts on a keyframe), and a request is answered by
jumping to the start of the loop's next group. ``--ignore-keyframe-requests`` counts requests
and never answers them (as OBS, whose WHIP output has no handler for PLI or FIR).
NACKs are answered from a cache of the last packets, on the RTX stream, as browsers do.

Prints ``{"event": "publishing"}`` once both tracks are sending (and, with
``--announce-keyframes``, ``{"event": "keyframe", "index": k, "time": t}`` as the k-th
keyframe, from 0, has been sent, ``t`` the wall clock, ``time.time()``); then, on stdin,
``count`` prints ``{"event": "count", "packets": ..., "keyframes_sent": ...,
"keyframe_requests": ...}`` (RTP packets made so far, whether they could be sent or not,
retransmissions apart; keyframes sent so far; PLIs and FIRs received so far), and ``stop``
(or EOF) ends the session (DELETE) and prints ``{"event": "stopped", ...}``.
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
from aiortc import RTCRtpCodecCapability, RTCRtpSender, RTCSessionDescription
from av import VideoFrame

from bench.viewers import stdin
from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection, ForwardingSender

FPS = 30
LOOP_FRAMES = 300  # 10 s of video, sent over and over (with an interval: at least this)
PAYLOAD_MAX = 1300  # VP8 payload (descriptor included) per packet, as aiortc's packetizer
H264_PAYLOAD_MAX = 1200  # H.264 payload per packet (an FU-A's two header bytes included)
AUDIO_FRAME = 960  # 20 ms at 48 kHz
SENDER_REPORT_INTERVAL = 1.0
RESEND_CACHE = 512  # packets kept per track for NACKs (2 s of 2 Mbit/s video)
CODECS = ("vp8", "h264")
_RTP = struct.Struct("!BBHII")
_NTP_EPOCH = 2208988800
_H264_FU_A = 28
_START_CODE = b"\x00\x00\x01"


@dataclass
class EncodedVideo:
    """The frames to send, in order: ``frames[0]`` first, then on to the end, then again from
    ``loop_from``. Keyframes at the indices in ``keyframes`` only."""

    codec: str  # "vp8" or "h264"
    frames: list[bytes]  # each frame as the encoder made it (H.264: an Annex B access unit)
    keyframes: frozenset[int]
    loop_from: int
    # Sent in answer to a keyframe request (then the loop goes on); None: a request jumps to
    # the start of the loop's next group of pictures instead.
    requested_keyframe: bytes | None

    @property
    def first_keyframe(self) -> bytes:
        return self.frames[0]


@dataclass
class VideoLoop:
    """Which frame goes out next, keyframe requests included."""

    video: EncodedVideo
    position: int = 0  # the index in ``video.frames`` of the next frame

    def next_frame(self, *, keyframe_wanted: bool) -> tuple[bytes, bool]:
        """The next frame to send and whether it is a keyframe; ``keyframe_wanted``: a
        keyframe was asked for (and is to be answered)."""
        video = self.video
        if keyframe_wanted and self.position not in video.keyframes:
            if video.requested_keyframe is not None:
                self._advance()
                return video.requested_keyframe, True
            later = [index for index in video.keyframes if index > self.position]
            self.position = min(later) if later else video.loop_from
        frame, keyframe = video.frames[self.position], self.position in video.keyframes
        self._advance()
        return frame, keyframe

    def _advance(self) -> None:
        self.position += 1
        if self.position == len(self.video.frames):
            self.position = self.video.loop_from


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


def _encoder(codec: str, width: int, height: int, bitrate: int, gop: int | None) -> Any:
    """libvpx as aiortc sets it, or libx264 as OBS sets it; a keyframe every ``gop`` frames
    and none elsewhere (None: only where one is forced)."""
    name = {"vp8": "libvpx", "h264": "libx264"}[codec]
    encoder: Any = av.CodecContext.create(name, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate = bitrate
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.framerate = FPS
    encoder.gop_size = gop or 1 << 20
    if codec == "h264":
        keyint = str(gop) if gop else "infinite"
        encoder.options = {
            # OBS's x264 defaults for streaming: CBR, zerolatency, baseline for WebRTC
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "level": "3.1",
            "forced-idr": "1",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "x264-params": f"keyint={keyint}:min-keyint={gop or 1}:scenecut=0:bframes=0:aud=1",
        }
        return encoder
    encoder.qmin, encoder.qmax = 2, 56
    encoder.options = {
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
        **({"keyint_min": str(gop)} if gop else {}),
    }
    return encoder


def encode_video(
    width: int,
    height: int,
    block: int,
    bitrate: int,
    *,
    codec: str = "vp8",
    keyframe_interval: float | None = None,
) -> EncodedVideo:
    """The loop of frames to publish. Without ``keyframe_interval``: a keyframe, the loop of
    inter frames after it, and a keyframe for requests. With it: whole groups of pictures of
    ``keyframe_interval`` seconds (at least :data:`LOOP_FRAMES` frames, two groups at least)."""
    gop = None if keyframe_interval is None else max(1, round(keyframe_interval * FPS))
    if gop is None:
        count, forced = LOOP_FRAMES + 1, {0, LOOP_FRAMES}
    else:
        count = gop * max(2, math.ceil(LOOP_FRAMES / gop))
        forced = set(range(0, count, gop))
    encoder = _encoder(codec, width, height, bitrate, gop)
    frames: list[bytes] = []
    keyframes: set[int] = set()
    for index, picture in enumerate(_pictures(width, height, block, count)):
        picture.pts = index
        if index in forced:
            picture.pict_type = av.video.frame.PictureType.I
        packets = encoder.encode(picture)
        if len(packets) != 1:  # realtime settings: one frame in, one frame out, no delay
            raise RuntimeError(f"{codec} encoder gave {len(packets)} packets for frame {index}")
        frames.append(bytes(packets[0]))
        if packets[0].is_keyframe:
            keyframes.add(index)
    if keyframes != forced:
        raise RuntimeError(f"{codec} keyframes at {sorted(keyframes)}, not {sorted(forced)}")
    if gop is None:
        return EncodedVideo(codec, frames[:LOOP_FRAMES], frozenset({0}), 1, frames[LOOP_FRAMES])
    return EncodedVideo(codec, frames, frozenset(keyframes), 0, None)


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


def nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (start codes, 3 or 4 bytes, removed: a NAL
    unit never ends with a zero byte, so a 4-byte start code's first zero is trailing)."""
    units = []
    for chunk in access_unit.split(_START_CODE):
        unit = chunk.rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def h264_payloads(access_unit: bytes, payload_max: int = H264_PAYLOAD_MAX) -> list[bytes]:
    """RFC 6184 packetization mode 1 as OBS's WHIP output does it: each NAL unit in a packet
    of its own when it fits (single NAL unit packet), else in FU-A fragments (indicator: the
    unit's F and NRI bits, type 28; header: start, end, the unit's type); no aggregation."""
    payloads = []
    chunk = payload_max - 2
    for unit in nal_units(access_unit):
        if len(unit) <= payload_max:
            payloads.append(unit)
            continue
        indicator = bytes([unit[0] & 0xE0 | _H264_FU_A])
        body = unit[1:]
        for start in range(0, len(body), chunk):
            flags = (0x80 if start == 0 else 0) | (0x40 if start + chunk >= len(body) else 0)
            header = bytes([flags | unit[0] & 0x1F])
            payloads.append(indicator + header + body[start : start + chunk])
    return payloads


def frame_payloads(codec: str, frame: bytes, picture_id: int) -> list[bytes]:
    """A frame's RTP payloads: the access unit's packets, the marker going on the last."""
    return h264_payloads(frame) if codec == "h264" else vp8_payloads(frame, picture_id)


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
    keyframe_requests: int = 0  # PLIs and FIRs received, answered or not
    audio: int = 0
    late: list[float] = field(default_factory=list)  # how late each frame went out (s)


@dataclass(frozen=True)
class Behaviour:
    """How the publisher treats keyframe requests, and what it says."""

    ignore_keyframe_requests: bool = False
    announce_keyframes: bool = False


async def send_loop(
    video: Track,
    audio: Track,
    encoded: EncodedVideo,
    opus: list[bytes],
    stats: Stats,
    *,
    behaviour: Behaviour | None = None,
) -> None:
    """Video frames every 1/FPS s and Opus every 20 ms, by a schedule from the start (so a
    late loop sends late, with the timestamps it should have had: the viewers see that)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    behaviour = behaviour or Behaviour()
    keyframe_wanted = [False]

    def on_keyframe_request() -> None:
        stats.keyframe_requests += 1
        if not behaviour.ignore_keyframe_requests:
            keyframe_wanted[0] = True

    video.sender.on_keyframe_request = on_keyframe_request
    frames = VideoLoop(encoded)
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
            frame, keyframe = frames.next_frame(keyframe_wanted=keyframe_wanted[0])
            keyframe_wanted[0] = keyframe_wanted[0] and not keyframe
            payloads = frame_payloads(encoded.codec, frame, picture_id)
            picture_id = (picture_id + 1) & 0x7FFF
            ts = frame_index * (90000 // FPS)
            for number, payload in enumerate(payloads):
                video.send(payload, ts, marker=number == len(payloads) - 1)
            if keyframe:
                if behaviour.announce_keyframes:
                    event = {"event": "keyframe", "index": stats.keyframes, "time": time.time()}
                    print(json.dumps(event), flush=True)
                stats.keyframes += 1
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


def offered(codec: RTCRtpCodecCapability, video_codec: str) -> bool:
    """Whether the offer names ``codec``: Opus, RTX, and the one video codec sent (H.264 as
    OBS offers it: constrained baseline, packetization mode 1)."""
    mime = codec.mimeType.lower()
    if mime in ("audio/opus", "video/rtx"):
        return True
    if video_codec == "h264":
        return mime == "video/h264" and codec.parameters == {
            **codec.parameters,
            "packetization-mode": "1",
            "profile-level-id": "42e01f",
        }
    return mime == "video/vp8"


async def post(http: aiohttp.ClientSession, url: str, sdp: str) -> tuple[str, str]:
    async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp"}) as response:
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"WHIP POST {response.status}: {answer[:200]}")
        return answer, response.headers.get("Location", "")


async def run(arguments: argparse.Namespace) -> None:
    encoded = encode_video(
        arguments.width,
        arguments.height,
        arguments.block,
        arguments.video_bitrate,
        codec=arguments.codec,
        keyframe_interval=arguments.keyframe_interval,
    )
    behaviour = Behaviour(arguments.ignore_keyframe_requests, arguments.announce_keyframes)
    opus = encode_audio(arguments.audio_bitrate)
    hooks.install(("127.0.0.1",))
    pc = ForwardingPeerConnection()
    video_transceiver = pc.addTransceiver("video", direction="sendonly")
    audio_transceiver = pc.addTransceiver("audio", direction="sendonly")
    for transceiver in (video_transceiver, audio_transceiver):
        codecs = RTCRtpSender.getCapabilities(transceiver.kind).codecs
        transceiver.setCodecPreferences([c for c in codecs if offered(c, encoded.codec)])
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
        sending = asyncio.ensure_future(
            send_loop(video, audio, encoded, opus, stats, behaviour=behaviour)
        )
        looped = encoded.frames[encoded.loop_from :]
        loop_bits = sum(len(f) for f in looped) * 8 / (len(looped) / FPS)
        print(
            json.dumps(
                {
                    "event": "publishing",
                    "video_kbps": round(loop_bits / 1e3),
                    "audio_kbps": round(sum(len(p) for p in opus) * 8 / 1e3),
                    "keyframe_bytes": len(encoded.requested_keyframe or encoded.first_keyframe),
                }
            ),
            flush=True,
        )
        commands = await stdin()
        while (await commands.readline()).strip() == b"count":
            # every packet made, sent or not (not: the session ended, or the socket was full)
            sent = video.packets + video.dropped + audio.packets + audio.dropped
            counted = {
                "event": "count",
                "packets": sent,
                "keyframes_sent": stats.keyframes,
                "keyframe_requests": stats.keyframe_requests,
            }
            print(json.dumps(counted), flush=True)
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
                "keyframe_requests": stats.keyframe_requests,
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
    parser.add_argument("--codec", choices=CODECS, default="vp8")
    parser.add_argument(
        "--keyframe-interval",
        type=float,
        metavar="SECONDS",
        help="a keyframe every SECONDS (default: the first frame only, and when asked)",
    )
    parser.add_argument(
        "--ignore-keyframe-requests",
        action="store_true",
        help="count PLIs and FIRs, never answer them (as OBS)",
    )
    parser.add_argument(
        "--announce-keyframes", action="store_true", help='print {"event": "keyframe", ...}'
    )
    arguments = parser.parse_args()
    configure_logging("error", "json", stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(arguments))


if __name__ == "__main__":
    main()
