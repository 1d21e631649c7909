"""Recording files: whole frames in, files any player opens out. Never transcodes.

- VP8, VP9 → IVF, written here by hand (:class:`IvfWriter`, :func:`finalize_ivf`).
- Opus → Ogg, through PyAV's (libavformat's) Ogg muxer (:class:`OggOpusWriter`).
- H.264 → Matroska, through PyAV's Matroska muxer (:class:`MatroskaH264Writer`).

Every writer blocks on the disk: it runs in a recorder actor's thread, never on the event loop.

Why IVF by hand: the 32-bit field at offset 24 of an IVF header is read differently by the
tools that matter. libvpx (and libavformat since 2023) call it the frame count; libavformat
before that (Debian's ffmpeg 5.1 among them) reads it as the duration in time-base units and
reports it as the file's duration. A file written by either muxer therefore shows a wrong
duration to the other. :func:`finalize_ivf` makes both readings true at once: it sets the time
base to the mean frame interval and numbers the frames in it, so the frame count *is* the
duration in time-base units. libavformat's muxer cannot do that, and it writes the header only
when it is closed; the finalization here also repairs a file whose process died.

What a crash costs (the process dies mid-recording; at the next start the recording journal
hands the file to :func:`repair_recording`), and likewise a disk that fills up (the recorder
repairs the file at once):
- IVF: nothing but a frame being written; the header is fixed up by the repair.
- Ogg: the page being filled (at most :data:`OGG_PAGE_DURATION_US`); no end-of-stream page,
  which readers do not need.
- Matroska: the cluster being filled (at most :data:`MATROSKA_CLUSTER_MS`), cut off by the
  repair (:func:`truncate_matroska`); the duration and the seek index, which the repair
  rebuilds by remuxing when the disk has room for the copy.

Every repair but the remux works in place and needs no free space: a recording stopped by a
full disk is repaired on that full disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from array import array
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Protocol

import av

from golive.media.depacketize import Frame

VIDEO_CLOCK: Final = 90000
OPUS_CLOCK: Final = 48000
OGG_PAGE_DURATION_US: Final = 250_000
MATROSKA_CLUSTER_MS: Final = 1000
MAX_JUMP_SECONDS: Final = 10

_IVF_HEADER: Final = struct.Struct("<4sHH4sHHIIII")
_IVF_FRAME: Final = struct.Struct("<IQ")
_U32: Final = 0xFFFFFFFF


class TrackWriter(Protocol):
    path: Path
    frames: int

    def write(self, frame: Frame) -> int:
        """Write a whole frame; the bytes added to the file. The first frame of a video
        recording is a keyframe (the recorder sees to that)."""

    def close(self) -> None:
        """Finalize the file (idempotent)."""


class _Clock:
    """A track's frame timestamps, relative to its first and strictly increasing (a muxer
    refuses anything else). A jump back, or forward by more than :data:`MAX_JUMP_SECONDS` (a
    publisher restarting its stream with new timestamps), continues one ``step`` after the last
    frame instead of leaving a hole or going back."""

    def __init__(self, clock_rate: int, step: int) -> None:
        self._max_jump = MAX_JUMP_SECONDS * clock_rate
        self._step = step
        self._shift = 0  # added to every timestamp since the last discontinuity
        self._origin: int | None = None
        self._last = -1

    def pts(self, timestamp: int) -> int:
        if self._origin is None:
            self._origin = timestamp
        pts = timestamp - self._origin + self._shift
        if self._last >= 0 and not 0 < pts - self._last <= self._max_jump:
            self._shift += self._last + self._step - pts
            pts = self._last + self._step
        self._last = pts
        return pts


# --------------------------------------------------------------------------------------- IVF


def vp8_dimensions(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe (RFC 6386 section 9.1), (0, 0) if not one."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return 0, 0
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value


def vp9_dimensions(frame: bytes) -> tuple[int, int]:
    """Width and height from a VP9 keyframe's uncompressed header (VP9 bitstream spec
    section 6.2), (0, 0) if it is not a keyframe or is too short."""
    try:
        bits = _Bits(frame)
        if bits.read(2) != 2:  # frame_marker
            return 0, 0
        profile = bits.read(1) | (bits.read(1) << 1)
        if profile == 3:
            bits.read(1)
        if bits.read(1):  # show_existing_frame
            return 0, 0
        if bits.read(1) != 0:  # frame_type: not a keyframe
            return 0, 0
        bits.read(2)  # show_frame, error_resilient_mode
        if bits.read(24) != 0x498342:  # frame_sync_code
            return 0, 0
        if profile >= 2:
            bits.read(1)  # ten_or_twelve_bit
        color_space = bits.read(3)
        if color_space != 7:  # not sRGB
            bits.read(1)  # color_range
            if profile in (1, 3):
                bits.read(3)  # subsampling_x, subsampling_y, reserved
        elif profile in (1, 3):
            bits.read(1)
        return bits.read(16) + 1, bits.read(16) + 1
    except IndexError:
        return 0, 0


class IvfWriter:
    """VP8 or VP9 frames into an IVF file, at 90 kHz until :func:`finalize_ivf` on close.

    The header's frame count is kept current at every keyframe, so even a file whose process
    died reads as far as its last keyframe before the repair.
    """

    def __init__(self, path: Path, codec: str) -> None:
        self.path = path
        self.frames = 0
        self._fourcc = b"VP90" if codec.lower() == "video/vp9" else b"VP80"
        self._dimensions = vp9_dimensions if self._fourcc == b"VP90" else vp8_dimensions
        self._file: io.BufferedRandom | None = None
        self._clock = _Clock(VIDEO_CLOCK, VIDEO_CLOCK // 30)
        self._closed = False

    def write(self, frame: Frame) -> int:
        if self._closed:
            raise ValueError("the recording is closed")
        written = 0
        file = self._file
        if file is None:
            width, height = self._dimensions(frame.data)
            file = self._file = self.path.open("r+b")
            file.truncate(0)
            header = _IVF_HEADER.pack(
                b"DKIF", 0, 32, self._fourcc, width, height, VIDEO_CLOCK, 1, 0, 0
            )
            file.write(header)
            written += len(header)
        pts = self._clock.pts(frame.timestamp)
        file.write(_IVF_FRAME.pack(len(frame.data), pts))
        file.write(frame.data)
        self.frames += 1
        if frame.keyframe:
            self._write_count()
        return written + _IVF_FRAME.size + len(frame.data)

    def _write_count(self) -> None:
        assert self._file is not None
        self._file.seek(24)
        self._file.write(struct.pack("<I", min(self.frames, _U32)))
        self._file.seek(0, os.SEEK_END)
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            finalize_ivf(self.path)


def finalize_ivf(path: Path) -> int:
    """Fix up an IVF file's header and timestamps; the number of frames it holds.

    Drops a frame cut short (a crash mid-write), counts the frames, and re-times them in the
    mean frame interval (see the module's docstring): the header then says ``N`` frames of
    time base ``T``, which is right both as a frame count and as a duration of ``N·T``.
    Idempotent: a finalized file stays as it is.
    """
    with path.open("r+b") as file:
        header = file.read(_IVF_HEADER.size)
        if len(header) < _IVF_HEADER.size or header[:4] != b"DKIF":
            return 0
        fields = list(_IVF_HEADER.unpack(header))
        rate, scale = fields[6], fields[7]
        offsets = array("Q")
        stamps = array("Q")
        size = os.fstat(file.fileno()).st_size
        offset = _IVF_HEADER.size
        while offset + _IVF_FRAME.size <= size:
            file.seek(offset)
            length, pts = _IVF_FRAME.unpack(file.read(_IVF_FRAME.size))
            if offset + _IVF_FRAME.size + length > size:
                break
            offsets.append(offset)
            stamps.append(pts)
            offset += _IVF_FRAME.size + length
        if offset != size:
            file.truncate(offset)
        count = len(offsets)
        if count == 0:
            fields[8] = 0
            file.seek(0)
            file.write(_IVF_HEADER.pack(*fields))
            return 0
        old_base = Fraction(scale, rate) if rate and scale else Fraction(1, VIDEO_CLOCK)
        span = stamps[-1] - stamps[0]
        if count == 1 or span <= 0:
            new_base = Fraction(1, 30)
            new_stamps = list(range(count))
        else:
            interval = Fraction(span, count - 1)  # in the old time base
            new_base = _u32_fraction(old_base * interval)
            new_stamps, last = [], -1
            for pts in stamps:
                last = max(round((pts - stamps[0]) / interval), last + 1)
                new_stamps.append(last)
        for frame_offset, pts in zip(offsets, new_stamps, strict=True):
            file.seek(frame_offset + 4)
            file.write(struct.pack("<Q", pts))
        fields[6], fields[7], fields[8], fields[9] = (
            new_base.denominator,
            new_base.numerator,
            min(count, _U32),
            0,
        )
        file.seek(0)
        file.write(_IVF_HEADER.pack(*fields))
    return count


def _u32_fraction(value: Fraction) -> Fraction:
    """``value`` as a fraction whose numerator and denominator both fit 32 bits."""
    value = value.limit_denominator(_U32)
    while value.numerator > _U32:
        value = Fraction(value.numerator // 2, max(1, value.denominator // 2))
    return value


# --------------------------------------------------------------------------------------- Ogg


def opus_samples(packet: bytes) -> int:
    """The duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716
    section 3.1); 960 (20 ms, WebRTC's default) if the packet is malformed."""
    if not packet:
        return 960
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        per_frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        per_frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        per_frame = (120, 240, 480, 960)[config & 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(packet) >= 2:
        frames = packet[1] & 0x3F
    else:
        return 960
    return max(per_frame * frames, 120)


def _open_output(path: Path, container_format: str, options: dict[str, str]) -> Any:
    return av.open(str(path), "w", format=container_format, container_options=options)


class OggOpusWriter:
    """Opus packets into Ogg (RFC 7845) through libavformat: OpusHead, OpusTags, page CRCs and
    granule positions are the muxer's. The stream is declared 48 kHz stereo, as WebRTC
    negotiates Opus; the OpusHead is the one libopus's encoder context produces for that
    (pre-skip 312, as libopus encoders use), though nothing is ever encoded: packets are
    muxed exactly as received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self._container = _open_output(
            path, "ogg", {"flush_packets": "1", "page_duration": str(OGG_PAGE_DURATION_US)}
        )
        self._stream = self._container.add_stream("libopus", rate=OPUS_CLOCK, layout="stereo")
        self._clock = _Clock(OPUS_CLOCK, 960)
        self._closed = False

    def write(self, frame: Frame) -> int:
        if self._closed:
            raise ValueError("the recording is closed")
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self._clock.pts(frame.timestamp)
        packet.duration = opus_samples(frame.data)
        packet.time_base = Fraction(1, OPUS_CLOCK)
        packet.stream = self._stream
        self._container.mux(packet)
        self.frames += 1
        return len(frame.data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._container.close()


# ---------------------------------------------------------------------------------- Matroska


class MatroskaH264Writer:
    """H.264 access units (Annex B, as depacketized) into Matroska through libavformat.

    The stream's parameters come from the first keyframe, read by libavformat's own H.264
    demuxer, the way ``ffmpeg -c copy`` does it: the file gets a correct ``avcC`` (profile,
    level, SPS and PPS) and dimensions, and packets are stored length-prefixed. Timestamps are
    the RTP timestamps (90 kHz); decode order is presentation order (WebRTC's H.264 has no
    B-frames)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._clock = _Clock(VIDEO_CLOCK, VIDEO_CLOCK // 30)
        self._closed = False

    def write(self, frame: Frame) -> int:
        if self._closed:
            raise ValueError("the recording is closed")
        if self._container is None:
            self._open(frame.data)
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self._clock.pts(frame.timestamp)
        packet.time_base = Fraction(1, VIDEO_CLOCK)
        packet.is_keyframe = frame.keyframe
        packet.stream = self._stream
        self._container.mux(packet)
        self.frames += 1
        return len(frame.data)

    def _open(self, keyframe: bytes) -> None:
        with av.open(io.BytesIO(keyframe), format="h264") as source:
            container = _open_output(
                self.path,
                "matroska",
                {"flush_packets": "1", "cluster_time_limit": str(MATROSKA_CLUSTER_MS)},
            )
            try:
                self._stream = container.add_stream_from_template(source.streams.video[0])
            except Exception:
                container.close()
                raise
        self._container = container

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            self._container.close()


# ------------------------------------------------------------------------------------ shared

EXTENSIONS: Final = {
    "video/vp8": "ivf",
    "video/vp9": "ivf",
    "video/h264": "mkv",
    "audio/opus": "ogg",
}


def extension_for(codec: str) -> str | None:
    """The file extension a codec is recorded to, None if golive cannot record it."""
    return EXTENSIONS.get(codec.lower())


def open_writer(path: Path, codec: str) -> TrackWriter:
    kind = codec.lower()
    if kind in ("video/vp8", "video/vp9"):
        return IvfWriter(path, kind)
    if kind == "audio/opus":
        return OggOpusWriter(path)
    if kind == "video/h264":
        return MatroskaH264Writer(path)
    raise ValueError(f"golive cannot record {codec}")


def repair_recording(path: Path) -> None:
    """Make a recording whose process died mid-write as whole as its format allows."""
    suffix = path.suffix.lower()
    if suffix == ".ivf":
        finalize_ivf(path)
    elif suffix == ".mkv":
        truncate_matroska(path)  # in place: works on a full disk
        _remux(path, "matroska")  # a copy: needs room for it
    # Ogg needs nothing: every page stands alone, and readers do not need the missing
    # end-of-stream page.


_EBML_HEADER_ID: Final = 0x1A45DFA3
_SEGMENT_ID: Final = 0x18538067
#: An 8-byte EBML size meaning "unknown": the element runs to the end of the file.
_UNKNOWN_SIZE_8: Final = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def _ebml_vint(data: bytes, offset: int, *, marker: bool) -> tuple[int, int, bool] | None:
    """An EBML variable-length integer at ``offset``: its value (the length marker kept for
    an element ID, dropped for a size), its length in bytes, and whether it is the reserved
    "unknown size". None if ``data`` ends first or the first byte is not a valid start."""
    if offset >= len(data) or data[offset] == 0:
        return None
    first = data[offset]
    length = 8 - first.bit_length() + 1
    if offset + length > len(data):
        return None
    value = first if marker else first & ((1 << (8 - length)) - 1)
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    unknown = not marker and value == (1 << (7 * length)) - 1
    return value, length, unknown


def truncate_matroska(path: Path) -> int:
    """Cut a Matroska file after its last complete top-level element (a cluster cut short by
    a crash or a full disk), in place; the file's size then. libavformat writes each cluster
    whole, with its size, so what is left ends on a cluster boundary and reads without error.
    If anything was cut, the segment's size is set to "unknown" (it then runs to the end of
    the file, as while recording). A file that is whole, or not Matroska, is left as it is."""
    with path.open("r+b") as file:
        size = os.fstat(file.fileno()).st_size

        def element(offset: int) -> tuple[int, int, int, int | None] | None:
            """The element at ``offset``: its ID, where its size field and its body start,
            its size (None: unknown). None if the file ends inside its header."""
            file.seek(offset)
            head = file.read(12)
            ident = _ebml_vint(head, 0, marker=True)
            length = None if ident is None else _ebml_vint(head, ident[1], marker=False)
            if ident is None or length is None:
                return None
            body = offset + ident[1] + length[1]
            return ident[0], offset + ident[1], body, None if length[2] else length[0]

        header = element(0)
        if header is None or header[0] != _EBML_HEADER_ID or header[3] is None:
            return size
        segment = element(header[2] + header[3])
        if segment is None or segment[0] != _SEGMENT_ID:
            return size
        _, size_at, body, _ = segment
        end = body  # the end of the last complete child
        while end < size:
            child = element(end)
            if child is None or child[3] is None or child[2] + child[3] > size:
                break  # cut short (or of unknown size: no end to find)
            end = child[2] + child[3]
        if end in (size, body):  # whole, or nothing readable to keep
            return size
        file.truncate(end)
        if body - size_at == len(_UNKNOWN_SIZE_8):
            file.seek(size_at)
            file.write(_UNKNOWN_SIZE_8)
        return end


def _remux(path: Path, container_format: str) -> None:
    """Copy every readable packet into a fresh file (duration and index rebuilt), then replace
    the original. A file too damaged to open is left as it is."""
    if path.stat().st_size == 0:
        return
    repaired = path.with_name(path.name + ".repair")
    try:
        with av.open(str(path)) as source:
            streams = source.streams.video or source.streams.audio
            if not streams:
                return
            with av.open(str(repaired), "w", format=container_format) as target:
                stream = target.add_stream_from_template(streams[0])
                for packet in source.demux(streams[0]):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    packet.stream = stream
                    target.mux(packet)
    except (av.error.FFmpegError, OSError):  # too damaged, or no room for the copy
        repaired.unlink(missing_ok=True)
        return
    repaired.replace(path)


def close_quietly(writer: TrackWriter) -> None:
    """Close a writer after a failure: whatever it can still finalize, it does."""
    with contextlib.suppress(Exception):
        writer.close()
