"""The bench's packet counting (bench/counting.py): what its viewers call for every RTP
datagram, from the clear header. No peers: packets made here."""

from __future__ import annotations

import struct

from bench.counting import OTHER, RTCP, RTP, WINDOW, StreamCount, TimestampClock, classify


def rtp(seq: int, ts: int = 0, ssrc: int = 0x1234, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + bytes(100)


def counted(*seqs: int) -> StreamCount:
    stream = StreamCount()
    for number, seq in enumerate(seqs):
        stream.add(rtp(seq), float(number))
    return stream


def test_in_order_packets_are_all_received() -> None:
    stream = counted(*range(100, 200))
    assert (stream.received, stream.expected, stream.lost) == (100, 100, 0)
    assert (stream.duplicates, stream.reordered, stream.too_late) == (0, 0, 0)
    assert stream.bytes == 100 * len(rtp(0))


def test_sequence_numbers_wrap() -> None:
    stream = counted(65533, 65534, 65535, 0, 1, 2)
    assert (stream.received, stream.expected, stream.lost) == (6, 6, 0)
    many = counted(*(seq & 0xFFFF for seq in range(60000, 60000 + 3 * 65536)))
    assert (many.received, many.expected, many.lost) == (3 * 65536, 3 * 65536, 0)


def test_gaps_are_losses_across_the_wrap_too() -> None:
    stream = counted(10, 11, 14, 15)
    assert (stream.received, stream.expected, stream.lost) == (4, 6, 2)
    wrapped = counted(65534, 65535, 2, 3)  # 0 and 1 lost
    assert (wrapped.received, wrapped.expected, wrapped.lost) == (4, 6, 2)


def test_a_reordered_packet_fills_its_gap() -> None:
    stream = counted(10, 12, 11, 13)
    assert (stream.received, stream.expected, stream.lost) == (4, 4, 0)
    assert (stream.reordered, stream.duplicates) == (1, 0)
    across = counted(65534, 0, 65535, 1)  # 65535 arrives after the wrap
    assert (across.received, across.expected, across.lost, across.reordered) == (4, 4, 0, 1)


def test_a_packet_older_than_the_first_extends_what_was_expected() -> None:
    stream = counted(10, 8, 11)  # 9 never came
    assert (stream.received, stream.expected, stream.lost) == (3, 4, 1)
    before_wrap = counted(1, 65535, 2)  # 0 never came
    assert (before_wrap.received, before_wrap.expected, before_wrap.lost) == (3, 4, 1)


def test_duplicates_are_not_received_twice() -> None:
    stream = counted(10, 11, 11, 12, 10, 12)
    assert (stream.received, stream.expected, stream.lost) == (3, 3, 0)
    assert (stream.duplicates, stream.reordered) == (3, 0)
    # a duplicate cannot make up for a loss
    lossy = counted(10, 11, 11, 13)
    assert (lossy.received, lossy.expected, lossy.lost, lossy.duplicates) == (3, 4, 1, 1)


def test_a_duplicate_after_the_sequence_wrapped_is_still_a_duplicate() -> None:
    stream = counted(*(seq & 0xFFFF for seq in range(65000, 65536 + 100)), 65535, 99)
    assert stream.duplicates == 2
    assert stream.lost == 0


def test_the_same_sequence_number_one_cycle_later_is_a_new_packet() -> None:
    seqs = [seq & 0xFFFF for seq in range(0, 65536 + 5, 500)] + [65536 & 0xFFFF]
    stream = counted(*seqs)
    assert stream.duplicates == 0  # 0 came back, 65536 packets later: not a duplicate of 0


def test_packets_too_far_behind_are_counted_apart() -> None:
    stream = counted(*range(WINDOW + 10), 3)
    assert stream.too_late == 1
    assert stream.duplicates == 0
    assert stream.received == WINDOW + 10


def test_a_window_counts_only_what_comes_after_its_mark() -> None:
    stream = counted(10, 11, 13, 14)  # 12 lost before the mark
    stream.mark()
    for seq in (12, 15, 17, 16, 18, 18):  # 12 late (a retransmission), 16 reordered
        stream.add(rtp(seq), 9.0)
    assert (stream.window_received, stream.window_expected) == (4, 4)  # 15..18
    for seq in (20, 21):  # 19 lost in the window
        stream.add(rtp(seq), 9.0)
    assert (stream.window_received, stream.window_expected) == (6, 7)
    assert (stream.received, stream.expected, stream.lost) == (11, 12, 1)


def test_a_window_across_the_wrap() -> None:
    stream = counted(65530, 65531)
    stream.mark()
    for seq in (65532, 65533, 0, 1, 3):
        stream.add(rtp(seq), 9.0)
    assert (stream.window_received, stream.window_expected) == (5, 8)  # 65534, 65535, 2 lost


def test_a_stream_that_starts_after_the_mark_is_all_in_the_window() -> None:
    stream = StreamCount()
    stream.mark()
    assert (stream.window_received, stream.window_expected) == (0, 0)
    for seq in (100, 102, 101, 104):
        stream.add(rtp(seq), 9.0)
    assert (stream.window_received, stream.window_expected) == (4, 5)


def test_the_newest_packet_and_its_arrival_are_kept() -> None:
    stream = StreamCount()
    stream.add(rtp(5, ts=1000), 1.0)
    stream.add(rtp(7, ts=3000), 2.0)
    stream.add(rtp(6, ts=2000), 3.0)  # late: not the newest
    assert (stream.timestamp, stream.last_arrival, stream.first_arrival) == (3000, 2.0, 1.0)


def test_rtp_rtcp_and_the_rest_are_told_apart() -> None:
    assert classify(rtp(1)) == RTP
    assert classify(rtp(1, pt=96 | 0x80)) == RTP  # marker bit + 96 = 224: RTP
    assert classify(rtp(1, pt=111)) == RTP
    assert classify(bytes([0x80, 200]) + bytes(26)) == RTCP  # sender report
    assert classify(bytes([0x81, 206]) + bytes(10)) == RTCP  # PSFB (PLI), 12 bytes
    assert classify(bytes([0x81, 203, 0, 1, 0, 0, 0, 1])) == RTCP  # a BYE: 8 bytes
    assert classify(bytes([0x00, 0x01, 0x00, 0x00]) + bytes(16)) == OTHER  # STUN request
    assert classify(bytes([0x16, 0xFE, 0xFD]) + bytes(20)) == OTHER  # DTLS handshake
    assert classify(rtp(1)[:11]) == OTHER  # shorter than an RTP header
    assert classify(b"") == OTHER


def test_delay_growth_compares_both_ends_of_the_window() -> None:
    clock = TimestampClock(48000)
    for second in range(15):
        late = 0.010 * max(0, second - 9)  # packets arrive later and later after 10 s
        clock.sample(100.0 + second + late, 48000 * second)
    growth = clock.growth(100.0, 114.5, 5.0)
    assert growth is not None
    assert abs(growth - 0.030) < 1e-9  # median of 10..50 ms late minus 0
    steady = TimestampClock(48000)
    for second in range(15):
        steady.sample(100.0 + second, 48000 * second)
    assert steady.growth(100.0, 114.5, 5.0) == 0.0


def test_delay_across_the_timestamp_wrap() -> None:
    clock = TimestampClock(48000)
    start = 0xFFFFFFFF - 48000 * 3  # wraps after about 3 s
    for second in range(10):
        clock.sample(float(second), (start + 48000 * second) & 0xFFFFFFFF)
    assert clock.growth(0.0, 9.0, 3.0) == 0.0


def test_no_growth_without_samples_at_both_ends() -> None:
    clock = TimestampClock(48000)
    clock.sample(1.0, 0)
    assert clock.growth(0.0, 15.0, 5.0) is None
