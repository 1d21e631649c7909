"""The caps of golive.media.limits and the pieces that enforce them, without a network:
the one-pass offer check, the bounded NACK tracking of a publisher's stream, a viewer's
retransmission budget, and the log throttle. (The attacks themselves, against a real server:
tests/media/test_hostile_sdp.py and test_hostile_packets.py.)"""

from __future__ import annotations

import pytest
from aiortc import RTCIceCandidate
from hypothesis import given
from hypothesis import strategies as st

from golive.logs import Throttle
from golive.media.forwarding import RetransmissionBudget
from golive.media.hooks import MediaGuard, MissingPackets
from golive.media.limits import (
    MAX_CANDIDATES_PER_SESSION,
    MAX_NACK_SEQUENCES,
    RTX_BUDGET_MIN_RATE,
    RTX_BUDGET_SECONDS,
    RTX_BUDGET_SHARE,
    RTX_RESEND_INTERVAL,
    ByteBudget,
    LimitExceededError,
    check_offer,
)

OFFER = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"


def test_check_offer_names_the_cap_it_refuses() -> None:
    candidates = "".join(
        f"a=candidate:{n} 1 udp 1 127.0.0.1 {1000 + n} typ host\r\n" for n in range(3)
    )
    check_offer(OFFER + candidates)  # within every cap: no error
    too_many = "a=candidate:1 1 udp 1 127.0.0.1 1 typ host\r\n" * (MAX_CANDIDATES_PER_SESSION + 1)
    with pytest.raises(LimitExceededError, match="ICE candidates"):
        check_offer(OFFER + too_many)
    with pytest.raises(LimitExceededError, match="m-lines"):
        check_offer("v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" * 17)
    with pytest.raises(LimitExceededError, match="payload types"):
        check_offer("v=0\r\nm=audio 9 RTP/AVP " + " ".join(["0"] * 129) + "\r\n")


@given(st.integers(0, 0xFFFF), st.lists(st.integers(1, 0xFFFF), max_size=50))
def test_missing_packets_stay_within_the_history(first: int, steps: list[int]) -> None:
    """Whatever the jumps (up to a whole wrap), never more than the history is tracked, and
    whenever a gap shows (a NACK goes out) what is missing lies just behind the newest."""
    tracker = MissingPackets()
    tracker.add(first)
    seq = first
    for step in steps:
        seq = (seq + step) & 0xFFFF
        gap = tracker.add(seq)
        assert len(tracker.missing) <= MissingPackets.HISTORY
        if gap:
            for lost in tracker.missing:
                assert 0 < (seq - lost) & 0xFFFF <= MissingPackets.HISTORY


def test_missing_packets_are_the_gap_and_leave_when_they_arrive() -> None:
    tracker = MissingPackets()
    assert not tracker.add(10)
    assert not tracker.add(11)
    assert tracker.add(15)  # 12, 13, 14 are missing
    assert tracker.missing == {12, 13, 14}
    assert not tracker.add(13)  # late: no longer missing
    assert tracker.missing == {12, 14}
    assert not tracker.add(3)  # far behind: late, nothing added
    assert tracker.missing == {12, 14}
    wrapping = MissingPackets()
    wrapping.add(65534)
    assert wrapping.add(2)  # across the wrap
    assert wrapping.missing == {65535, 0, 1}


def test_a_jump_ahead_marks_at_most_the_history() -> None:
    tracker = MissingPackets()
    tracker.add(0)
    assert tracker.add(30000)  # aiortc's NackGenerator walked all 29 999 of them
    assert len(tracker.missing) == MissingPackets.HISTORY - 1
    assert min(tracker.missing) == 30000 - (MissingPackets.HISTORY - 1)


def test_a_budget_is_a_share_of_the_stream_saved_for_at_most_a_second() -> None:
    budget = RetransmissionBudget(now=0.0)
    rate = 1_000_000.0  # bytes a second coming in
    allowance = RTX_BUDGET_SHARE * rate * RTX_BUDGET_SECONDS
    size = 1000
    sent = 0
    # Ten quiet seconds: only one second's worth is saved.
    while budget.take(sent, size, rate, 10.0):
        sent += 1
    assert sent == int(allowance // size)
    # A slow stream still gets the floor.
    slow = RetransmissionBudget(now=0.0)
    assert slow.take(0, int(RTX_BUDGET_MIN_RATE * RTX_BUDGET_SECONDS), 10.0, 5.0)
    assert not slow.take(1, 1, 10.0, 5.0)


def test_a_packet_is_resent_once_per_interval() -> None:
    budget = RetransmissionBudget(now=0.0)
    assert budget.take(7, 100, 0.0, 1.0)
    assert budget.resent_lately(7, 1.0 + RTX_RESEND_INTERVAL / 2)
    assert not budget.resent_lately(7, 1.0 + RTX_RESEND_INTERVAL)
    assert not budget.resent_lately(8, 1.0)


def test_the_resend_times_kept_stay_bounded() -> None:
    budget = RetransmissionBudget(now=0.0)
    for seq in range(10 * MAX_NACK_SEQUENCES):
        assert budget.take(seq, 1, 1e9, 1.0 + seq * RTX_RESEND_INTERVAL)
    assert len(budget._resent) <= 2 * MAX_NACK_SEQUENCES


def test_a_byte_budget_refills_at_its_rate_up_to_its_depth() -> None:
    budget = ByteBudget(100.0, 2.0, now=0.0)
    assert budget.take(200, 100.0, 0.0)  # full at first: two seconds' worth
    assert not budget.take(1, 100.0, 0.0)
    assert budget.take(50, 100.0, 0.5)
    assert not budget.take(1, 100.0, 0.5)
    assert budget.take(200, 100.0, 100.0)  # saved up: no more than its depth
    assert not budget.take(1, 100.0, 100.0)


def test_the_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.allow() == 0
    assert throttle.allow() is None
    assert throttle.allow() is None
    now[0] += 10.0
    assert throttle.allow() == 2
    assert throttle.allow() is None


@pytest.mark.parametrize(
    ("address", "port", "on_loopback", "checked"),
    [
        ("203.0.113.7", 50000, False, True),
        ("2001:db8::1", 50000, False, True),
        ("192.168.1.20", 50000, False, True),
        ("224.0.0.251", 5353, False, False),  # multicast
        ("ff02::fb", 5353, False, False),
        ("0.0.0.0", 9, False, False),
        ("255.255.255.255", 9, False, False),  # reserved (limited broadcast)
        ("203.0.113.7", 0, False, False),
        ("127.0.0.1", 22, False, False),  # the server's own local services
        ("::1", 22, False, False),
        ("127.0.0.1", 50000, True, True),  # a server that gathers on loopback (tests)
        ("e0f4.local", 50000, False, True),  # mDNS: aioice resolves it
    ],
)
def test_which_remote_candidates_the_server_checks(
    address: str,
    port: int,
    on_loopback: bool,  # noqa: FBT001  a parametrized case
    checked: bool,  # noqa: FBT001  a parametrized case
) -> None:
    candidate = RTCIceCandidate(
        component=1,
        foundation="1",
        ip=address,
        port=port,
        priority=1,
        protocol="udp",
        type="host",
    )
    assert MediaGuard(loopback=on_loopback).reachable(candidate) is checked
