"""The keyframe cache: what a viewer needs to start a video track at once.

A publisher that ignores keyframe requests (OBS, hardware encoders) sends a keyframe only
every few seconds. So that a viewer joining between two of them need not wait for the next,
each video track keeps the packets since its last keyframe, from the first packet of that
keyframe's access unit (AUD, SPS, PPS, SEI, whatever comes before the picture, in arrival
order), up to ``KEYFRAME_CACHE_BYTES``. A viewer is started on it and brought up to live by
:class:`~golive.media.forwarding.PublishedTrack` (the pacing, and the timestamps).

The cache holds the same ``bytes`` objects as the track's NACK ring: the packets are stored
once. It lives on the event loop, like the rest of the packet path.

An access unit is the packets of one timestamp, from the first packet after a timestamp change;
a keyframe starts where :func:`~golive.media.rtp.keyframe_start` says (an SPS or IDR for
H.264, the keyframe bit for VP8...), and its access unit is the one that packet is in. A cache
that grows past its bound is emptied (counted): viewers joining then wait for the next keyframe,
as they would without it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Gauge

from golive.media.rtp import keyframe_start


class Change(enum.Enum):
    """What a packet did to the cache."""

    KEPT = "kept"  # added to the cache (or not cached: no keyframe yet, or the cache is off)
    STARTED = "started"  # a keyframe: the cache starts again on its access unit
    DROPPED = "dropped"  # over the bound: the cache is empty until the next keyframe


class KeyframeCache:
    """One video track's packets since its last keyframe, bounded in bytes (``limit``; 0 is
    off), its keyframes found as ``codec``'s (a mime type, e.g. ``video/H264``).

    ``packets`` is None while there is nothing to start a viewer on. On a new keyframe it is a
    new list (the old one is kept by whoever was reading it), and ``replaced`` tells where the
    new keyframe's access unit started in the old list (``replaced_at``), until :meth:`settled`
    (the cache must not keep the old list alive: a whole interval's packets)."""

    __slots__ = (
        "_au",
        "_au_key",
        "_au_size",
        "_au_ts",
        "_dropped",
        "_gauge",
        "codec",
        "limit",
        "packets",
        "replaced",
        "replaced_at",
        "size",
        "started_at",
    )

    def __init__(self, limit: int, codec: str, *, gauge: Gauge, dropped: Counter) -> None:
        self.limit = limit
        self.codec = codec
        self.packets: list[bytes] | None = None
        self.size = 0  # bytes in packets
        self.started_at = 0.0  # when packets began (its keyframe arrived), loop time
        self.replaced: list[bytes] | None = None  # the list the last keyframe replaced
        self.replaced_at = 0  # where the new keyframe's access unit began in it
        self._au: list[bytes] = []  # the current access unit's packets so far
        self._au_size = 0  # their bytes (at most limit)
        self._au_ts = b""  # its timestamp (the header's bytes)
        self._au_key = False  # whether it is a keyframe's
        self._gauge = gauge
        self._dropped = dropped

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def add(self, data: bytes, now: float) -> Change:
        """Keep ``data`` (an RTP packet of the track, as it arrived)."""
        if not self.limit:
            return Change.KEPT
        ts = data[4:8]
        if ts != self._au_ts:  # a new access unit
            self._au_ts, self._au_key = ts, False
            self._au, self._au_size = [], 0
        elif self._au_size + len(data) > self.limit:  # could never be cached: keep a bound
            self._au, self._au_size = [], 0
        self._au.append(data)
        self._au_size += len(data)
        if not self._au_key and keyframe_start(self.codec, data):
            self._au_key = True
            old = self.packets
            self.replaced = old
            self.replaced_at = 0 if old is None else len(old) - (len(self._au) - 1)
            self.packets = list(self._au)
            self._resize(self._au_size)
            self.started_at = now
            if self.size > self.limit:
                return self._drop()
            return Change.STARTED
        if self.packets is None:
            return Change.KEPT
        self.packets.append(data)
        self._resize(self.size + len(data))
        if self.size > self.limit:
            return self._drop()
        return Change.KEPT

    def settled(self) -> None:
        """Those reading the replaced list have followed into the new one."""
        self.replaced = None

    def clear(self) -> None:
        """Forget everything (a new publisher feeds the track, or it closed)."""
        self.packets = self.replaced = None
        self._au, self._au_size, self._au_ts, self._au_key = [], 0, b"", False
        self._resize(0)

    def _drop(self) -> Change:
        self.packets = self.replaced = None
        self._resize(0)
        self._dropped.inc()
        return Change.DROPPED

    def _resize(self, size: int) -> None:
        if size != self.size:
            self._gauge.inc(size - self.size)
            self.size = size


#: A viewer started from the cache is sent it at this many times the track's incoming byte
#: rate, so it is live after a third of the cache's age (a 4 s old cache: 1.3 s)...
CATCH_UP_SPEED: Final = 4.0
#: ...and never slower than this many bytes a second (before the track's rate is measured).
CATCH_UP_MIN_RATE: Final = 256_000
#: How often the pacer sends what each viewer catching up may have (seconds).
CATCH_UP_TICK: Final = 0.005
#: A viewer that asks for a keyframe (PLI, FIR) is sent the cached one again at most this
#: often (seconds).
REPLAY_INTERVAL: Final = 1.0
#: A viewer's catch-up timestamps are kept this long after it is live, for NACKs of them.
RETIMED_KEEP_SECONDS: Final = 2.0


@dataclass(slots=True, eq=False)
class CatchUp:
    """A viewer being brought up to live: where it is in a cache (``packets``, the track's,
    which grows as packets arrive; ``index`` is the next to send), and its pace: ``tokens``
    bytes it may send (whole frames go out while it is not negative), refilled since
    ``refilled``. ``rebase``: frames were skipped (a newer keyframe came), so the next
    packet's number follows the last one sent."""

    packets: list[bytes]
    refilled: float
    index: int = 0
    tokens: float = 0.0
    rebase: bool = False

    def follow(self, cache: KeyframeCache) -> None:
        """The cache started again on a new keyframe: go on in the new list, from where this
        viewer was in its access unit, or from the start (skipping older frames)."""
        packets = cache.packets
        if packets is None:
            return
        if cache.replaced is self.packets and self.index >= cache.replaced_at:
            self.index -= cache.replaced_at
        else:
            self.index, self.rebase = 0, True
        self.packets = packets
