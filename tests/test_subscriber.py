"""A viewer session's phases (``SubscriberState``), without threads: active once every track
its answer carries forwards, whichever tracks those are."""

from __future__ import annotations

from golive.actors.messages import EndReason, SubscriberPhase, TrackId
from golive.actors.subscriber import SubscriberState

AUDIO, VIDEO = TrackId("a"), TrackId("v")


def phase(state: SubscriberState) -> SubscriberPhase:
    """(read through a call: each step may change it)"""
    return state.phase


def test_a_viewer_of_the_audio_alone_is_active_once_connected() -> None:
    """Its audio route forwards from the start, before its peer connects."""
    state = SubscriberState()
    assert state.negotiated(frozenset({AUDIO}))
    state.track_forwarding(AUDIO)
    assert phase(state) is SubscriberPhase.NEGOTIATING
    assert state.connected()
    assert phase(state) is SubscriberPhase.ACTIVE


def test_a_viewer_waits_for_every_track_its_answer_carries_and_no_other() -> None:
    state = SubscriberState()
    state.track_forwarding(AUDIO)  # not negotiated yet: not its track
    assert state.negotiated(frozenset({AUDIO, VIDEO}))
    assert state.connected()
    state.track_forwarding(AUDIO)
    assert phase(state) is SubscriberPhase.WAITING_KEYFRAME
    state.track_forwarding(TrackId("other"))
    assert phase(state) is SubscriberPhase.WAITING_KEYFRAME
    state.track_forwarding(VIDEO)
    assert phase(state) is SubscriberPhase.ACTIVE


def test_tracks_are_negotiated_once_and_never_for_a_closed_session() -> None:
    state = SubscriberState()
    assert state.negotiated(frozenset({AUDIO}))
    assert not state.negotiated(frozenset({VIDEO}))
    assert state.tracks == frozenset({AUDIO})
    closed = SubscriberState()
    assert closed.close(EndReason.ROOM_FAILED)
    assert not closed.negotiated(frozenset({AUDIO}))  # it asks no fanout for a route
    assert closed.tracks is None
