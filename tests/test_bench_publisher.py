"""The bench's publisher (bench/publisher.py): its H.264 packetizer (OBS's way: single NAL unit
packets and FU-A, never STAP-A), its loop of whole groups of pictures with a keyframe every
interval, how it answers keyframe requests, and the codec it offers. Real encoders (PyAV's
libx264 and libvpx), golive's own depacketizer and PyAV's decoders as the judges; no peers."""

from __future__ import annotations

import functools
from typing import Any

import av
import av.logging
import pytest
from aiortc import RTCRtpSender

from bench.publisher import (
    FPS,
    H264_PAYLOAD_MAX,
    LOOP_FRAMES,
    EncodedVideo,
    VideoLoop,
    _pictures,
    encode_video,
    frame_payloads,
    h264_payloads,
    nal_units,
    offered,
)
from golive.media import hooks
from golive.media.depacketize import Frame, FrameAssembler, depacketizer_for
from tests.recording.streams import rtp

WIDTH, HEIGHT, BLOCK = 192, 112, 48
INTERVAL = 0.5  # seconds: a keyframe every 15 frames
GOP = round(INTERVAL * FPS)
AUD, SEI, SPS, PPS, IDR, NON_IDR, STAP_A, FU_A = 9, 6, 7, 8, 5, 1, 24, 28
MIME = {"vp8": "video/VP8", "h264": "video/H264"}


@functools.cache
def gops(codec: str) -> EncodedVideo:
    return encode_video(WIDTH, HEIGHT, BLOCK, 300_000, codec=codec, keyframe_interval=INTERVAL)


def unit_type(payload: bytes) -> int:
    return payload[0] & 0x1F


def test_nal_units_are_split_at_3_and_4_byte_start_codes() -> None:
    units = [b"\x09\x10", b"\x67\x42\xc0\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x00\x01"]
    stream = b"".join(
        (b"\x00\x00\x00\x01" if index % 2 else b"\x00\x00\x01") + unit
        for index, unit in enumerate(units)
    )
    assert nal_units(stream) == units


def test_small_units_travel_alone_and_large_ones_in_fu_a_fragments() -> None:
    sps, pps = b"\x67" + bytes(range(1, 20)), b"\x68\xce\x3c\x80"
    idr = b"\x65" + bytes(index % 251 + 1 for index in range(1000))
    payloads = h264_payloads(b"".join(b"\x00\x00\x00\x01" + u for u in (sps, pps, idr)), 300)
    assert payloads[:2] == [sps, pps]
    fragments = payloads[2:]
    assert len(fragments) == 4  # 999 bytes after the unit's header, 298 a fragment
    assert all(len(p) <= 300 for p in payloads)
    assert {f[0] for f in fragments} == {0x60 | FU_A}  # the IDR's NRI, type FU-A
    assert [f[1] & 0xC0 for f in fragments] == [0x80, 0x00, 0x00, 0x40]  # start ... end
    assert {f[1] & 0x1F for f in fragments} == {IDR}
    assert idr[:1] + b"".join(f[2:] for f in fragments) == idr


def test_a_keyframe_access_unit_is_aud_sps_pps_sei_then_the_idr_each_in_its_own_packets() -> None:
    video = gops("h264")
    payloads = h264_payloads(video.frames[0])
    assert [unit_type(p) for p in payloads[:4]] == [AUD, SPS, PPS, SEI]  # x264's SEI: first IDR
    idr = payloads[4:]
    assert all(unit_type(p) in (IDR, FU_A) for p in idr)
    assert any(unit_type(p) == FU_A and p[1] & 0x1F == IDR for p in idr)  # one large enough
    later = h264_payloads(video.frames[GOP])  # the next group's keyframe
    assert [unit_type(p) for p in later[:3]] == [AUD, SPS, PPS]
    assert all(unit_type(p) in (IDR, FU_A) for p in later[3:])
    inter = h264_payloads(video.frames[1])
    assert unit_type(inter[0]) == AUD
    assert all(unit_type(p) in (NON_IDR, FU_A) for p in inter[1:])
    everything = [p for frame in video.frames for p in h264_payloads(frame)]
    assert STAP_A not in {unit_type(p) for p in everything}
    assert max(len(p) for p in everything) <= H264_PAYLOAD_MAX


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_the_loop_is_whole_groups_of_pictures_a_keyframe_every_interval(codec: str) -> None:
    video = gops(codec)
    assert len(video.frames) % GOP == 0
    assert len(video.frames) >= LOOP_FRAMES
    assert video.keyframes == frozenset(range(0, len(video.frames), GOP))
    assert video.loop_from == 0
    assert video.requested_keyframe is None
    frames = VideoLoop(video)
    sent = [frames.next_frame(keyframe_wanted=False) for _ in range(2 * len(video.frames) + 1)]
    assert [index for index, (_, key) in enumerate(sent) if key] == list(range(0, len(sent), GOP))
    # the bitstream agrees: keyframes there and nowhere else
    for index, (frame, key) in enumerate(sent):
        if codec == "vp8":
            assert (frame[0] & 1 == 0) == key, index  # VP8's frame tag: 0 is a key frame
        else:
            assert (IDR in {unit_type(u) for u in nal_units(frame)}) == key, index


def decoded_frames(codec: str, frames: list[bytes]) -> list[Any]:
    """``frames`` packetized by the publisher, reassembled by golive's depacketizer (as the
    recorder does), decoded by PyAV (ffmpeg's decoder, as a browser's would)."""
    assembler = FrameAssembler(depacketizer_for(MIME[codec]) or pytest.fail("no depacketizer"))
    seq = 0
    whole: list[Frame] = []
    for index, frame in enumerate(frames):
        payloads = frame_payloads(codec, frame, index & 0x7FFF)
        for number, payload in enumerate(payloads):
            last = number == len(payloads) - 1
            out = assembler.push(rtp(seq, index * 3000, payload, marker=last))
            whole.extend(f for f in out if isinstance(f, Frame))
            seq += 1
    assert len(whole) == len(frames), "the depacketizer lost frames"
    decoder: Any = av.CodecContext.create(codec, "r")
    pictures: list[Any] = []
    for assembled in whole:
        pictures.extend(decoder.decode(av.Packet(assembled.data)))
    pictures.extend(decoder.decode(None))
    return pictures


def luma_of(picture: Any) -> bytes:
    """A picture's luma, row after row (without each row's padding)."""
    plane = picture.planes[0]
    data = bytes(plane)
    return b"".join(
        data[row * plane.line_size : row * plane.line_size + picture.width]
        for row in range(picture.height)
    )


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_decoder_decodes_the_looped_stream_twice_round(codec: str) -> None:
    video = gops(codec)
    frames = VideoLoop(video)
    sent = [frames.next_frame(keyframe_wanted=False)[0] for _ in range(2 * len(video.frames))]
    with av.logging.Capture() as logs:
        pictures = decoded_frames(codec, sent)
    assert [entry for entry in logs if entry[0] <= av.logging.WARNING] == []
    assert len(pictures) == len(sent)
    sources = _pictures(WIDTH, HEIGHT, BLOCK, len(video.frames))
    for index in (0, GOP - 1, len(video.frames) - 1, len(video.frames), len(sent) - 1):
        # each picture is the one encoded at that point of the loop (a broken reference
        # across the loop's end would show as another picture, or garbage)
        source, luma = luma_of(sources[index % len(video.frames)]), luma_of(pictures[index])
        error = sum(abs(a - b) for a, b in zip(luma, source, strict=True)) / len(luma)
        assert error < 6, (index, error)  # (about 1 where right, 14 where broken)


def test_a_request_jumps_to_the_next_group_and_the_stream_stays_decodable() -> None:
    video = gops("vp8")
    frames = VideoLoop(video)
    sent = [frames.next_frame(keyframe_wanted=False) for _ in range(5)]
    sent.append(frames.next_frame(keyframe_wanted=True))  # asked for at frame 5
    assert sent[-1] == (video.frames[GOP], True)
    sent += [frames.next_frame(keyframe_wanted=False) for _ in range(2 * GOP)]
    assert frames.position == 3 * GOP + 1  # the loop goes on from the group it jumped to
    with av.logging.Capture() as logs:
        assert len(decoded_frames("vp8", [frame for frame, _ in sent])) == len(sent)
    assert [entry for entry in logs if entry[0] <= av.logging.WARNING] == []
    at_keyframe = VideoLoop(video, position=GOP)
    assert at_keyframe.next_frame(keyframe_wanted=True) == (video.frames[GOP], True)
    last = VideoLoop(video, position=len(video.frames) - 1)  # the next group: the loop's first
    assert last.next_frame(keyframe_wanted=True) == (video.frames[0], True)


def test_without_an_interval_one_keyframe_and_one_kept_for_requests() -> None:
    video = encode_video(WIDTH, HEIGHT, BLOCK, 300_000)  # the default, as bench.forwarding's
    assert video.codec == "vp8"
    assert (video.keyframes, video.loop_from, len(video.frames)) == (frozenset({0}), 1, LOOP_FRAMES)
    assert video.requested_keyframe is not None
    frames = VideoLoop(video)
    sent = [frames.next_frame(keyframe_wanted=False) for _ in range(LOOP_FRAMES + 2)]
    assert [index for index, (_, key) in enumerate(sent) if key] == [0]
    assert sent[LOOP_FRAMES][0] == video.frames[1]  # the loop goes on after the keyframe
    # the keyframe asked for takes the place of the loop's next frame
    assert frames.next_frame(keyframe_wanted=True) == (video.requested_keyframe, True)
    assert frames.next_frame(keyframe_wanted=False) == (video.frames[4], False)


def test_the_offer_names_one_video_codec_and_h264_as_obs_offers_it() -> None:
    hooks.install(("127.0.0.1",))
    video = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in video if offered(c, "h264")]
    assert sorted((c.mimeType, c.parameters.get("profile-level-id")) for c in chosen) == [
        ("video/H264", "42e01f"),
        ("video/rtx", None),
    ]
    assert [c.parameters["packetization-mode"] for c in chosen if c.mimeType != "video/rtx"] == [
        "1"
    ]
    assert sorted(c.mimeType for c in video if offered(c, "vp8")) == ["video/VP8", "video/rtx"]
    audio = RTCRtpSender.getCapabilities("audio").codecs
    assert [c.mimeType for c in audio if offered(c, "vp8")] == ["audio/opus"]
