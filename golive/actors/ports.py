"""How actors reach the event loop.

Actors never touch aiortc or aiohttp objects: those belong to the event loop's thread. What
an actor decides for the loop goes through a :class:`LoopPort`, whose methods are safe to call
from any thread and only *schedule* work on the loop.
"""

from __future__ import annotations

from typing import Protocol

from golive.actors.messages import EndReason, RoomName, RoutingTable, SessionId, TrackKey


class LoopPort(Protocol):
    def publish_routes(self, table: RoutingTable) -> None:
        """Install a fanout's new routing table (an empty one retires the track)."""

    def close_session(self, session: SessionId, reason: EndReason) -> None:
        """End a session's transport (its peer connection) on the loop."""

    def request_keyframe(self, track: TrackKey) -> None:
        """Ask the track's publisher for a keyframe (coalesced with the viewers' requests)."""

    def room_ended(self, room: RoomName, reason: EndReason) -> None:
        """The directory ended ``room`` (the cluster releases it and tells its relays)."""
