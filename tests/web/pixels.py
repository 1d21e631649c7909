"""What a screenshot shows, judged from its pixels: PNG decoded with :mod:`zlib` (no imaging
library is installed, and Chromium's PNGs are all of one simple kind: 8-bit RGB or RGBA,
not interlaced)."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # PNG colour type: RGB, RGBA


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    pixels: list[tuple[int, int, int]]  # RGB, row by row

    def colours(self, shift: int = 3) -> Counter[tuple[int, int, int]]:
        """How many pixels have each colour, on a coarser scale (sensor and scaling noise)."""
        return Counter((r >> shift, g >> shift, b >> shift) for r, g, b in self.pixels)

    def shows_a_picture(self) -> bool:
        """Not blank: not one flat colour (black, say) but at least two colours each covering
        a visible part of it, one of them not close to black."""
        counts = self.colours().most_common()
        total = len(self.pixels)
        visible = [colour for colour, count in counts if count >= total // 100]
        return len(visible) >= 2 and any(max(colour) >= 8 for colour in visible)

    def differs_from(self, other: Picture) -> float:
        """The fraction of pixels that changed noticeably (same size expected)."""
        assert (self.width, self.height) == (other.width, other.height)
        changed = sum(
            1
            for a, b in zip(self.pixels, other.pixels, strict=True)
            if max(abs(x - y) for x, y in zip(a, b, strict=True)) > 24
        )
        return changed / len(self.pixels)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, line: bytearray, previous: bytes, bpp: int) -> None:
    """Undo one scanline's filter in place (PNG specification, section 9)."""
    if kind == 0:
        return
    if kind == 2:
        for i in range(len(line)):
            line[i] = (line[i] + previous[i]) & 0xFF
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            up_left = previous[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + _paeth(left, previous[i], up_left)) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")


def decode_png(data: bytes) -> Picture:
    assert data.startswith(SIGNATURE), "not a PNG"
    position = len(SIGNATURE)
    header = b""
    compressed = bytearray()
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        chunk = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            compressed += chunk
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert colour in CHANNELS, colour
    assert interlace == 0, interlace
    bpp = CHANNELS[colour]
    raw = zlib.decompress(bytes(compressed))
    stride = width * bpp
    previous = bytes(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, previous, bpp)
        pixels.extend((line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp))
        previous = bytes(line)
    return Picture(width, height, pixels)
