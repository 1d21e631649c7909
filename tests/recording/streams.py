"""Synthetic RTP streams of real encoded media, for the writers' tests.

Frames are encoded once per process with PyAV's encoders (libvpx, libvpx-vp9, libx264,
libopus) and packetized the way publishers do (aiortc's VP8 and H.264 payloaders, RFC 9628
for VP9, one Opus packet per RTP packet). Tests then reorder, duplicate and drop packets.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from golive.media.depacketize import Frame, FrameAssembler, depacketizer_for

WIDTH, HEIGHT = 160, 120
FPS = 30
VIDEO_STEP = 90000 // FPS
OPUS_STEP = 960


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    payloads: tuple[bytes, ...]  # RTP payloads of the frame, in order
    keyframe: bool
    step: int  # RTP clock ticks from this frame to the next


def _picture(index: int) -> av.VideoFrame:
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for number, plane in enumerate(frame.planes):
        pattern = bytes((index * 5 + number * 40 + i) % 251 for i in range(97))
        size = plane.buffer_size
        plane.update((pattern * (size // len(pattern) + 1))[:size])
    frame.pts = index
    frame.time_base = Fraction(1, FPS)
    return frame


def _encode_video(codec: str, count: int, gop: int) -> list[Any]:
    encoder: Any = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.framerate = Fraction(FPS)
    encoder.gop_size = gop
    if codec == "libx264":
        encoder.options = {"tune": "zerolatency", "profile": "baseline", "preset": "ultrafast"}
    else:
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    packets: list[Any] = []
    for index in range(count):
        packets.extend(encoder.encode(_picture(index)))
    packets.extend(encoder.encode(None))
    return packets


@functools.cache
def vp8_frames(count: int = 60, gop: int = 30) -> tuple[EncodedFrame, ...]:
    payloader = Vp8Encoder()
    frames = []
    for packet in _encode_video("libvpx", count, gop):
        payloads, _ = payloader.pack(packet)
        frames.append(EncodedFrame(tuple(payloads), packet.is_keyframe, VIDEO_STEP))
    return tuple(frames)


@functools.cache
def h264_frames(count: int = 60, gop: int = 30) -> tuple[EncodedFrame, ...]:
    payloader = H264Encoder()
    frames = []
    for packet in _encode_video("libx264", count, gop):
        payloads, _ = payloader.pack(packet)
        frames.append(EncodedFrame(tuple(payloads), packet.is_keyframe, VIDEO_STEP))
    return tuple(frames)


def _vp9_payloads(data: bytes, *, keyframe: bool, mtu: int = 300) -> tuple[bytes, ...]:
    chunks = [data[i : i + mtu] for i in range(0, len(data), mtu)]
    out = []
    for index, chunk in enumerate(chunks):
        flags = 0x00 if keyframe else 0x40  # P: inter-picture predicted
        if index == 0:
            flags |= 0x08  # B
        if index == len(chunks) - 1:
            flags |= 0x04  # E
        out.append(bytes([flags]) + chunk)
    return tuple(out)


@functools.cache
def vp9_frames(count: int = 60, gop: int = 30) -> tuple[EncodedFrame, ...]:
    return tuple(
        EncodedFrame(_vp9_payloads(bytes(p), keyframe=p.is_keyframe), p.is_keyframe, VIDEO_STEP)
        for p in _encode_video("libvpx-vp9", count, gop)
    )


@functools.cache
def opus_frames(count: int = 100) -> tuple[EncodedFrame, ...]:
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.time_base = Fraction(1, 48000)
    frames: list[EncodedFrame] = []
    for index in range(count):
        audio = av.AudioFrame(format="s16", layout="stereo", samples=OPUS_STEP)
        tone = bytes((index * 3 + i) % 200 for i in range(audio.planes[0].buffer_size))
        audio.planes[0].update(tone)
        audio.sample_rate = 48000
        audio.pts = index * OPUS_STEP
        audio.time_base = Fraction(1, 48000)
        frames.extend(EncodedFrame((bytes(p),), True, OPUS_STEP) for p in encoder.encode(audio))
    return tuple(frames)


def rtp(seq: int, timestamp: int, payload: bytes, *, marker: bool, pt: int = 96) -> bytes:
    header = struct.pack(
        "!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, 1234
    )
    return header + payload


def packetize(
    frames: tuple[EncodedFrame, ...], *, first_seq: int = 0, first_ts: int = 0
) -> list[bytes]:
    """The RTP packets of ``frames``, in sending order; marker on each frame's last packet."""
    packets = []
    seq, timestamp = first_seq, first_ts
    for frame in frames:
        for index, payload in enumerate(frame.payloads):
            last = index == len(frame.payloads) - 1
            packets.append(rtp(seq, timestamp, payload, marker=last))
            seq += 1
        timestamp += frame.step
    return packets


#: Every recorded codec and its synthetic stream.
CODECS: dict[str, Callable[[], tuple[EncodedFrame, ...]]] = {
    "video/VP8": vp8_frames,
    "video/VP9": vp9_frames,
    "video/H264": h264_frames,
    "audio/opus": opus_frames,
}


@functools.cache
def assembled(codec: str) -> tuple[Frame, ...]:
    """The whole frames of ``codec``'s stream, as the recorder's assembler hands them on."""
    depacketize = depacketizer_for(codec)
    assert depacketize is not None
    assembler = FrameAssembler(depacketize, single_packet_frames=codec.startswith("audio"))
    out = [item for p in packetize(CODECS[codec]()) for item in assembler.push(p)]
    out.extend(assembler.flush())
    assert all(isinstance(item, Frame) for item in out)
    return tuple(item for item in out if isinstance(item, Frame))
