"""Counting RTP packets from their clear header, as the bench's viewers receive them.

SRTP encrypts an RTP packet's payload, not its 12-byte header: the sequence number, timestamp
and SSRC can be read without keys. :class:`StreamCount` counts one SSRC's packets from those:
received (each sequence number once), expected (from the first to the highest, across the
16-bit wrap), duplicates, reordered packets, and the newest packet's arrival (for the delay a
viewer sees). Pure and allocation-free per packet: the load generator calls it for every
datagram and must not become the bottleneck it measures.
"""

from __future__ import annotations

from array import array

#: How far behind the highest sequence number a packet may arrive and still be told from a
#: duplicate (a power of two). 1024 packets are seconds of video: over loopback, nothing
#: arrives that late; what does is counted as ``too_late`` (and neither received nor a
#: duplicate).
WINDOW = 1 << 10
_MASK = WINDOW - 1
_NONE = -1  # an extended sequence number no packet has (they start at 0x10000)

OTHER, RTP, RTCP = 0, 1, 2


def classify(data: bytes) -> int:
    """:data:`RTP`, :data:`RTCP` or :data:`OTHER` (STUN, DTLS, anything shorter than an RTP
    header). RFC 7983: RTP and RTCP start with 128-191 (version 2); RFC 5761: on a shared port
    a second byte of 192-223 (marker bit and payload type together) is RTCP (SR 200, RR 201,
    SDES 202, BYE 203, RTPFB 205, PSFB 206...), never RTP."""
    if len(data) < 8 or not 127 < data[0] < 192:
        return OTHER
    if 191 < data[1] < 224:
        return RTCP
    return RTP if len(data) >= 12 else OTHER


class StreamCount:
    """One SSRC's packets as received: counted by sequence number, from the clear header.

    Sequence numbers are extended to an unbounded count (the first packet's is
    ``0x10000 + seq``, so that a packet reordered before it stays positive); each packet is
    placed against the highest seen so far (the nearer way round the 16-bit circle, as
    RFC 3550's algorithm does). A packet not newer than the highest is a reordered one, or a
    duplicate if its sequence number was seen (within :data:`WINDOW`).

    :meth:`mark` opens a window of sequence numbers: the packets after the highest one at
    that moment. What is received and expected in it says what was lost since, whatever
    arrives late from before it (a retransmission filling an older gap is not counted)."""

    __slots__ = (
        "_seen",
        "base",
        "bytes",
        "duplicates",
        "first_arrival",
        "highest",
        "last",
        "last_arrival",
        "received",
        "reordered",
        "too_late",
        "window_from",
        "window_received",
    )

    def __init__(self) -> None:
        self.base = _NONE  # the lowest extended sequence number seen
        self.highest = _NONE  # the highest
        self.received = 0  # distinct sequence numbers received
        self.duplicates = 0
        self.reordered = 0  # received after a higher one (and not a duplicate)
        self.too_late = 0  # more than WINDOW behind the highest: not told from a duplicate
        self.bytes = 0  # datagram bytes, duplicates included (what the socket carried)
        self.first_arrival = 0.0
        self.last_arrival = 0.0  # arrival of the newest packet (highest sequence number)
        self.last: bytes = b""  # the newest packet itself (its timestamp, for the delay)
        self._seen = array("q", [_NONE]) * WINDOW  # extended sequence number by slot
        self.window_from = _NONE  # the highest at mark(): the window is what comes after
        self.window_received = 0  # distinct packets received in the window

    def add(self, data: bytes, now: float) -> None:
        """One RTP datagram (at least 12 bytes) that arrived at ``now``."""
        self.bytes += len(data)
        seq = data[2] << 8 | data[3]
        highest = self.highest
        if highest == _NONE:
            ext = 0x10000 + seq
            self.base = self.highest = ext
            self._seen[ext & _MASK] = ext
            self.received = 1
            self.window_received += 1  # (a stream that starts after mark(): all in it)
            self.first_arrival = self.last_arrival = now
            self.last = data
            return
        ahead = (seq - highest) & 0xFFFF
        if 0 < ahead < 0x8000:  # newer than any so far (perhaps after a gap)
            ext = highest + ahead
            self._seen[ext & _MASK] = ext
            self.highest = ext
            self.received += 1
            self.window_received += 1
            self.last_arrival = now
            self.last = data
            return
        ext = highest + ahead - 0x10000 if ahead else highest
        if highest - ext >= WINDOW:
            self.too_late += 1
            return
        slot = ext & _MASK
        if self._seen[slot] == ext:
            self.duplicates += 1
            return
        self._seen[slot] = ext
        self.received += 1
        self.reordered += 1
        self.base = min(self.base, ext)
        if ext > self.window_from:
            self.window_received += 1

    def mark(self) -> None:
        """Open the window: count from the packet after the highest so far."""
        self.window_from = self.highest
        self.window_received = 0

    @property
    def window_expected(self) -> int:
        """Packets in the window, up to the highest (all, for a stream that started in it)."""
        if self.highest == _NONE:
            return 0
        return self.highest - (self.base - 1 if self.window_from == _NONE else self.window_from)

    @property
    def expected(self) -> int:
        """Packets from the lowest sequence number seen to the highest."""
        return 0 if self.highest == _NONE else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        """Expected and never received (a duplicate does not make up for a loss)."""
        return self.expected - self.received

    @property
    def timestamp(self) -> int:
        """The RTP timestamp of the newest packet."""
        return int.from_bytes(self.last[4:8], "big") if self.last else 0


class TimestampClock:
    """Arrival time against RTP timestamp for one stream, sampled now and then: if the
    difference grows, the stream is falling behind (delay growing somewhere on the path).

    The RTP timestamp is unwrapped (32 bits: at 48 kHz it wraps every 25 hours, but a
    server numbers each viewer's stream from a random offset, so it may wrap in a run)."""

    __slots__ = ("_clock_rate", "_cycles", "_previous", "samples")

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._previous: int | None = None
        self._cycles = 0
        self.samples: list[tuple[float, float]] = []  # (arrival, arrival - media time)

    def sample(self, arrival: float, timestamp: int) -> None:
        if self._previous is not None:
            # (samples are seconds apart, far less than half the 32-bit range)
            if timestamp < self._previous and self._previous - timestamp > 0x80000000:
                self._cycles += 1
            elif timestamp > self._previous and timestamp - self._previous > 0x80000000:
                self._cycles -= 1  # a late packet from before the wrap: not newer
        self._previous = timestamp
        media = (self._cycles * 0x100000000 + timestamp) / self._clock_rate
        self.samples.append((arrival, arrival - media))

    def growth(self, start: float, end: float, span: float) -> float | None:
        """How much later (seconds) packets arrived, against their media time, in the last
        ``span`` seconds of ``[start, end]`` than in its first ``span`` seconds (medians of
        the samples in each); None without samples in both."""
        first = sorted(d for t, d in self.samples if start <= t < start + span)
        last = sorted(d for t, d in self.samples if end - span <= t <= end)
        if not first or not last:
            return None
        return last[len(last) // 2] - first[len(first) // 2]
