"""The room lifecycle as a simple model, and the Hypothesis state machine that checks a
system against it.

The model is deliberately naive (sets and dicts, no phases but what a viewer can see).
Relay rooms (a room pulled from its owner elsewhere in the cluster, its "publisher" the pull)
are rooms too: claimed by a relay, watched by viewers, ended by their origin (with its reason),
by their own transport failing (``origin_gone``) or by a rule that fires the wait of one left
without viewers (``relay_idle``), as a rule fires the reconnect window of a waiting room.
:class:`LifecycleMachine` holds the rules and invariants; a subclass plugs in the system under
test: the pure state classes (``test_pure_lifecycle.py``) or the running actors behind the
real HTTP server (``test_actor_lifecycle.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from golive.actors.messages import (
    EndReason,
    MediaKind,
    Refusal,
    Role,
    RoomInfo,
    RoomName,
    RoutePhase,
    SessionId,
    SubscriberPhase,
    TrackId,
    TrackInfo,
)

ROOM_NAMES = [RoomName(name) for name in ("alpha", "beta", "gamma-1")]
rooms = st.sampled_from(ROOM_NAMES)

SCALE = float(os.environ.get("GOLIVE_PROPERTY_SCALE", "1"))


def examples(base: int) -> int:
    """Examples for a machine, scaled by ``GOLIVE_PROPERTY_SCALE`` for deeper local runs."""
    return max(1, int(base * SCALE))


@st.composite
def track_lists(draw: st.DrawFn) -> tuple[TrackInfo, ...]:
    kinds = draw(st.lists(st.sampled_from(list(MediaKind)), min_size=1, max_size=3))
    codecs = {MediaKind.AUDIO: "audio/opus", MediaKind.VIDEO: "video/VP8"}
    return tuple(
        TrackInfo(TrackId(f"t{index}"), kind, codecs[kind]) for index, kind in enumerate(kinds)
    )


#: Which of a room's tracks a viewer's answer carries: all of them (None: the usual player),
#: or those at some positions (an audio-only player, a codec it cannot take).
picks = st.none() | st.frozensets(st.integers(min_value=0, max_value=2), min_size=1)


def chosen(tracks: tuple[TrackInfo, ...], pick: frozenset[int] | None) -> frozenset[TrackId]:
    """The tracks ``pick`` names among ``tracks`` (all of them if it names none there)."""
    named = frozenset(t.track_id for i, t in enumerate(tracks) if pick is None or i in pick)
    return named or frozenset(t.track_id for t in tracks)


@dataclass
class ModelRoom:
    publisher: SessionId
    tracks: tuple[TrackInfo, ...] = ()  # empty while the publish is pending
    subscribers: set[SessionId] = field(default_factory=set)
    waiting: bool = False  # its publisher vanished: viewers kept until a takeover
    taking_over: bool = False  # a new publisher took it over, its offer not answered yet
    taken_over: bool = False  # a publisher has taken it over at least once
    relay: bool = False  # a relay room: its publisher is a relay pulling it from its owner

    @property
    def live(self) -> bool:
        return bool(self.tracks)


@dataclass
class ModelViewer:
    room: RoomName
    tracks: frozenset[TrackId]  # what its answer carries: some or all of the room's
    connected: bool = False
    keyframed: set[TrackId] = field(default_factory=set)


@dataclass(frozen=True)
class Observed:
    """What the system under test shows after a step."""

    rooms: dict[RoomName, tuple[int, int]]  # name -> (tracks, subscribers)
    sessions: dict[SessionId, tuple[RoomName, Role]]
    routes: dict[SessionId, dict[TrackId, RoutePhase]]
    phases: dict[SessionId, SubscriberPhase]
    relays: frozenset[RoomName] = frozenset()  # the rooms listed as relay rooms


# Examples and steps each machine ran in this process, printed at the end of `make test`.
RUNS: Counter[tuple[str, str]] = Counter()


class LifecycleMachine(RuleBasedStateMachine):
    """Random publish / subscribe / leave / close sequences over a few rooms, checked against
    the model after every step."""

    name: ClassVar[str] = "lifecycle"
    publishers = Bundle("publishers")
    viewers = Bundle("viewers")
    relays = Bundle("relays")  # the relays' sessions (each its relay room's publisher)

    def __init__(self) -> None:
        super().__init__()
        self.limit = 0
        self.model: dict[RoomName, ModelRoom] = {}
        self.viewer_state: dict[SessionId, ModelViewer] = {}
        self.closed: dict[SessionId, EndReason] = {}  # every ended session, and why
        self.ready = False
        self.unadopted: list[SessionId] = []
        # Every ended room's publisher, and what its room showed when it ended.
        self.ended_rooms: list[tuple[SessionId, RoomInfo]] = []
        self.waits: list[tuple[RoomName, SessionId]] = []  # every room that waited, and for whom
        self.relayed: list[tuple[RoomName, SessionId]] = []  # every relay room, and its relay
        RUNS[self.name, "examples"] += 1

    # -- the system under test (subclasses) ---------------------------------------------------

    def start(self, limit: int) -> None:
        raise NotImplementedError

    def publish(self, room: RoomName, replaces: SessionId | None = None) -> SessionId | Refusal:
        """Claim ``room``; ``replaces``: its publisher, seen silent by the claimant."""
        raise NotImplementedError

    def go_live(self, session: SessionId, tracks: tuple[TrackInfo, ...]) -> Refusal | None:
        raise NotImplementedError

    def end_publisher(self, session: SessionId, *, failed: bool) -> bool:
        raise NotImplementedError

    def subscribe(self, room: RoomName, tracks: frozenset[TrackId]) -> SessionId | Refusal:
        """A WHEP POST: admission to ``room``, then an answer carrying ``tracks`` (some or all
        of the room's; meaningless when the viewer is refused)."""
        raise NotImplementedError

    def connect(self, session: SessionId) -> None:
        raise NotImplementedError

    def keyframe(self, session: SessionId, track: TrackId) -> None:
        raise NotImplementedError

    def leave(self, session: SessionId) -> bool:
        raise NotImplementedError

    def transport_fails(self, session: SessionId) -> None:
        raise NotImplementedError

    def publisher_vanishes(self, session: SessionId, *, connected: bool) -> None:
        """The publisher's transport fails (no DELETE); ``connected``: it had been up."""
        raise NotImplementedError

    def reconnect_expires(self, room: RoomName, publisher: SessionId) -> None:
        """The reconnect window of ``room``, waiting since ``publisher`` vanished, passes."""
        raise NotImplementedError

    def admin_close(self, room: RoomName) -> bool:
        raise NotImplementedError

    def relay(self, room: RoomName, tracks: tuple[TrackInfo, ...]) -> SessionId | Refusal:
        """A relay claims ``room`` and goes live with the origin's ``tracks`` (``ensure``)."""
        raise NotImplementedError

    def hold_relay(self, room: RoomName, relay: SessionId) -> bool:
        """A viewer is about to join the relay room: True if that relay is still there."""
        raise NotImplementedError

    def origin_ends(self, relay: SessionId, reason: EndReason) -> bool:
        """The relay's origin room ended (``Relays.end``); False if the relay was gone."""
        raise NotImplementedError

    def relay_transport_fails(self, relay: SessionId) -> None:
        """The relay's own connection to its origin fails."""
        raise NotImplementedError

    def relay_idle_expires(self, room: RoomName, relay: SessionId) -> None:
        """The wait of ``room``, a relay room left without viewers, passes."""
        raise NotImplementedError

    def late_report(self, publisher: SessionId, info: RoomInfo) -> None:
        """Deliver a room's report to the directory after that room has ended."""
        raise NotImplementedError

    def room_views(self) -> tuple[dict[RoomName, RoomInfo], dict[RoomName, RoomInfo]]:
        """What the directory lists (``GET /api/rooms``), and what each room in the directory
        says of itself (its own ``describe()``), by name."""
        raise NotImplementedError

    def observe(self) -> Observed:
        raise NotImplementedError

    def check_extra(self) -> None:
        """System-specific invariants (metrics, endpoints, ...)."""

    # -- model helpers ------------------------------------------------------------------------

    def room_of_publisher(self, session: SessionId, *, vanished: bool = False) -> RoomName | None:
        """The room ``session`` publishes in; with ``vanished``, also one it vanished from
        (its session stays, for its DELETE, until the room ends or is taken over)."""
        for name, room in self.model.items():
            if room.publisher == session and (vanished or not room.waiting):
                return name
        return None

    def wait(self, name: RoomName) -> None:
        """The room's publisher is gone; the room waits for another."""
        room = self.model[name]
        room.waiting, room.taking_over = True, False
        self.waits.append((name, room.publisher))
        RUNS[self.name, "rooms waiting for a publisher"] += 1

    def end_room(self, name: RoomName, reason: EndReason) -> None:
        room = self.model.pop(name)
        self.closed[room.publisher] = reason
        shown = RoomInfo(
            name,
            has_publisher=True,
            tracks=room.tracks,
            subscribers=len(room.subscribers),
            relay=room.relay,
        )
        self.ended_rooms.append((room.publisher, shown))
        for viewer in room.subscribers:
            RUNS[self.name, "viewers ended by their room"] += 1
            self.closed[viewer] = reason
            self.viewer_state.pop(viewer, None)

    def viewer_room(self, session: SessionId) -> ModelRoom | None:
        viewer = self.viewer_state.get(session)
        return None if viewer is None else self.model.get(viewer.room)

    def step(self, what: str) -> None:
        RUNS[self.name, "steps"] += 1
        note(what)

    # -- rules --------------------------------------------------------------------------------

    @initialize(
        target=publishers,
        limit=st.integers(min_value=0, max_value=3),
        room=rooms,
        tracks=st.none() | track_lists(),
        viewers=st.lists(picks, max_size=4),
    )
    def setup(
        self,
        limit: int,
        room: RoomName,
        tracks: tuple[TrackInfo, ...] | None,
        viewers: list[frozenset[int] | None],
    ) -> object:
        """Start the system with one room (live or pending) and maybe viewers in it."""
        self.limit = limit
        note(f"MAX_SUBS_PER_ROOM={limit}")
        self.start(limit)
        self.ready = True
        publisher = self.do_publish(room, tracks)
        self.unadopted.extend(self.do_subscribe(room, viewers))
        return publisher

    @precondition(lambda self: bool(self.unadopted))
    @rule(target=viewers)
    def adopt_viewers_rule(self) -> object:
        """Hand the viewers admitted at start to the rules that act on viewers."""
        adopted, self.unadopted = self.unadopted, []
        return multiple(*adopted)

    def do_publish(
        self,
        room: RoomName,
        tracks: tuple[TrackInfo, ...] | None,
        replaces: SessionId | None = None,
    ) -> object:
        self.step(
            f"publish {room}"
            + ("" if replaces is None else f" replacing {replaces[:6]}")
            + ("" if tracks is None else " and go live")
        )
        result = self.publish(room, replaces)
        model = self.model.get(room)
        if model is not None:
            # A room that has gone live may be taken over: waiting, or from its publisher
            # the claimant saw go silent. Never a relay room.
            takeover = not model.relay and (
                model.waiting or (replaces == model.publisher and bool(model.tracks))
            )
            if not takeover:
                assert result == Refusal.ROOM_TAKEN, result
                return multiple()
            assert not isinstance(result, Refusal), result
            self.closed[model.publisher] = EndReason.PUBLISHER_REPLACED
            model.publisher, model.waiting, model.taking_over = result, False, True
            model.taken_over = True
            RUNS[self.name, "rooms taken over"] += 1
            if tracks is not None:  # (its tracks are mapped onto the room's)
                assert self.go_live(result, model.tracks) is None
                model.taking_over = False
            return result
        assert not isinstance(result, Refusal), result
        self.model[room] = ModelRoom(publisher=result)
        if tracks is not None:
            assert self.go_live(result, tracks) is None
            self.model[room].tracks = tracks
            RUNS[self.name, "rooms gone live"] += 1
        return result

    def do_subscribe(self, room: RoomName, viewers: list[frozenset[int] | None]) -> list[SessionId]:
        self.step(f"{len(viewers)} viewer(s) subscribe to {room}: {viewers}")
        admitted = []
        for pick in viewers:
            model = self.model.get(room)
            tracks = frozenset() if model is None else chosen(model.tracks, pick)
            result = self.subscribe(room, tracks)
            if model is None or not model.live:
                assert result == Refusal.NO_PUBLISHER, result
                continue
            if 0 < self.limit <= len(model.subscribers):
                assert result == Refusal.SUBSCRIBER_LIMIT, result
                continue
            assert not isinstance(result, Refusal), result
            model.subscribers.add(result)
            self.viewer_state[result] = ModelViewer(room, tracks)
            RUNS[self.name, "viewers admitted"] += 1
            if len(tracks) < len(model.tracks):
                RUNS[self.name, "viewers of some of the tracks"] += 1
            admitted.append(result)
        return admitted

    @rule(target=publishers, room=rooms, tracks=st.none() | track_lists())
    def publish_rule(self, room: RoomName, tracks: tuple[TrackInfo, ...] | None) -> object:
        """A publish; with ``tracks``, its offer is answered at once (the usual WHIP POST)."""
        return self.do_publish(room, tracks)

    @rule(session=publishers, tracks=track_lists())
    def go_live_rule(self, session: SessionId, tracks: tuple[TrackInfo, ...]) -> None:
        self.step(f"publisher {session[:6]} goes live with {[t.kind.value for t in tracks]}")
        name = self.room_of_publisher(session)
        if name is not None and self.model[name].taking_over:
            room = self.model[name]
            result = self.go_live(session, room.tracks)  # mapped onto the room's tracks
            assert result is None, result
            room.taking_over = False
            return
        result = self.go_live(session, tracks)
        if name is None:
            assert result == Refusal.UNKNOWN_SESSION, result
            return
        room = self.model[name]
        if room.live and room.tracks != tracks:
            assert result == Refusal.UNKNOWN_SESSION, result
            return
        assert result is None, result
        RUNS[self.name, "rooms gone live"] += 1
        room.tracks = tracks

    @rule(session=consumes(publishers), failed=st.booleans())
    def publisher_ends_rule(self, session: SessionId, failed: bool) -> None:  # noqa: FBT001  drawn
        self.step(f"publisher {session[:6]} {'fails to publish' if failed else 'leaves'}")
        name = self.room_of_publisher(session, vanished=True)
        ended = self.end_publisher(session, failed=failed)
        assert ended == (name is not None)
        if name is None:
            return
        if failed and self.model[name].waiting:  # (nothing to fail: it waits already)
            return
        room = self.model[name]
        if failed and room.tracks and room.taken_over:  # a failed takeover: it waits again
            self.wait(name)
        else:
            self.end_room(name, EndReason.PUBLISH_FAILED if failed else EndReason.PUBLISHER_LEFT)

    @rule(session=publishers, connected=st.booleans())
    def publisher_vanishes_rule(self, session: SessionId, connected: bool) -> None:  # noqa: FBT001  drawn
        self.step(
            f"publisher {session[:6]} vanishes (its transport "
            + ("fails)" if connected else "never came up)")
        )
        name = self.room_of_publisher(session, vanished=True)
        self.publisher_vanishes(session, connected=connected)
        if name is None or self.model[name].waiting:  # (gone already: nothing changes)
            return
        room = self.model[name]
        if room.tracks and (connected or room.taken_over):
            self.wait(name)
        else:  # it never went live, or its viewers never got media: nothing to keep
            self.end_room(name, EndReason.ICE_FAILED)

    @rule(target=publishers, room=rooms, tracks=st.none() | track_lists())
    def takeover_rule(self, room: RoomName, tracks: tuple[TrackInfo, ...] | None) -> object:
        """A publish from a client that saw the room's publisher go silent."""
        model = self.model.get(room)
        return self.do_publish(room, tracks, None if model is None else model.publisher)

    @precondition(lambda self: bool(self.waits))
    @rule(data=st.data())
    def reconnect_expires_rule(self, data: st.DataObject) -> None:
        """A reconnect window passes: the room ends if it still waits for that publisher's
        successor; a window of a room taken over since (or gone) changes nothing."""
        name, publisher = data.draw(st.sampled_from(self.waits))
        self.step(f"the reconnect window of {name} (since {publisher[:6]}) passes")
        self.reconnect_expires(name, publisher)
        room = self.model.get(name)
        if room is not None and room.waiting and room.publisher == publisher:
            self.end_room(name, EndReason.PUBLISHER_GONE)

    # -- relay rooms --------------------------------------------------------------------------

    @rule(target=relays, room=rooms, tracks=track_lists())
    def relay_rule(self, room: RoomName, tracks: tuple[TrackInfo, ...]) -> object:
        """A relay pulls ``room`` here: the name must be free (a relay takes nothing over)."""
        self.step(f"a relay pulls {room} with {[t.kind.value for t in tracks]}")
        result = self.relay(room, tracks)
        if room in self.model:
            assert result == Refusal.ROOM_TAKEN, result
            return multiple()
        assert not isinstance(result, Refusal), result
        self.model[room] = ModelRoom(publisher=result, tracks=tracks, relay=True)
        self.relayed.append((room, result))
        RUNS[self.name, "relay rooms"] += 1
        return result

    @rule(session=relays)
    def hold_relay_rule(self, session: SessionId) -> None:
        name = self.room_of_publisher(session)
        room = name or next((r for r, s in self.relayed if s == session), ROOM_NAMES[0])
        self.step(f"relay {session[:6]} of {room} is held for a viewer")
        assert self.hold_relay(room, session) == (name is not None)

    @rule(
        session=consumes(relays),
        reason=st.sampled_from(
            [
                EndReason.PUBLISHER_LEFT,
                EndReason.ADMIN_CLOSED,
                EndReason.PUBLISHER_GONE,
                EndReason.PUBLISH_FAILED,
                EndReason.ROOM_FAILED,
            ]
        ),
    )
    def origin_ends_rule(self, session: SessionId, reason: EndReason) -> None:
        """The origin's room ended: the relay room ends, its viewers with the origin's reason."""
        self.step(f"the origin of relay {session[:6]} ends its room ({reason.value})")
        name = self.room_of_publisher(session)
        assert self.origin_ends(session, reason) == (name is not None)
        if name is not None:
            RUNS[self.name, "relay rooms ended by their origin"] += 1
            self.end_room(name, reason)

    @rule(session=consumes(relays))
    def relay_transport_fails_rule(self, session: SessionId) -> None:
        self.step(f"relay {session[:6]} loses its connection to its origin")
        name = self.room_of_publisher(session)
        self.relay_transport_fails(session)
        if name is not None:
            RUNS[self.name, "relay rooms whose origin went away"] += 1
            self.end_room(name, EndReason.ORIGIN_GONE)

    @precondition(lambda self: bool(self.relayed))
    @rule(data=st.data())
    def relay_idle_expires_rule(self, data: st.DataObject) -> None:
        """A relay room's wait for a viewer passes: it ends if it is still that relay's and
        still has no viewer; else nothing changes."""
        name, relay = data.draw(st.sampled_from(self.relayed))
        self.step(f"the wait of relay room {name} (relay {relay[:6]}) for a viewer passes")
        self.relay_idle_expires(name, relay)
        room = self.model.get(name)
        if room is not None and room.publisher == relay and not room.subscribers:
            RUNS[self.name, "idle relay rooms ended"] += 1
            self.end_room(name, EndReason.RELAY_IDLE)

    @rule(target=viewers, data=st.data(), choices=st.lists(picks, min_size=1, max_size=4))
    def subscribe_rule(self, data: st.DataObject, choices: list[frozenset[int] | None]) -> object:
        # Mostly rooms that exist, so that viewers do get in; sometimes any name.
        existing = sorted(self.model)
        pick_existing = bool(existing) and data.draw(st.booleans())
        room = data.draw(st.sampled_from(existing) if pick_existing else rooms)
        return multiple(*self.do_subscribe(room, choices))

    @rule(session=viewers)
    def connect_rule(self, session: SessionId) -> None:
        self.step(f"viewer {session[:6]} connects")
        self.connect(session)
        if session in self.viewer_state:
            self.viewer_state[session].connected = True

    @rule(session=viewers, data=st.data())
    def keyframe_rule(self, session: SessionId, data: st.DataObject) -> None:
        room = self.viewer_room(session)
        viewer = self.viewer_state.get(session)
        videos = (
            []
            if room is None or viewer is None
            else [
                t for t in room.tracks if t.kind is MediaKind.VIDEO and t.track_id in viewer.tracks
            ]
        )
        if room is None or viewer is None or not viewer.connected or not videos:
            return
        track = data.draw(st.sampled_from(videos)).track_id
        self.step(f"viewer {session[:6]} started on a keyframe of {track}")
        self.keyframe(session, track)
        viewer.keyframed.add(track)

    @rule(session=consumes(viewers))
    def viewer_leaves_rule(self, session: SessionId) -> None:
        self.step(f"viewer {session[:6]} leaves")
        room = self.viewer_room(session)
        assert self.leave(session) == (room is not None)
        if room is not None:
            room.subscribers.discard(session)
            self.viewer_state.pop(session)
            self.closed[session] = EndReason.CLIENT_LEFT

    @rule(session=consumes(viewers))
    def viewer_transport_fails_rule(self, session: SessionId) -> None:
        self.step(f"viewer {session[:6]} loses its transport")
        room = self.viewer_room(session)
        self.transport_fails(session)
        if room is not None:
            room.subscribers.discard(session)
            self.viewer_state.pop(session)
            self.closed[session] = EndReason.ICE_FAILED

    @rule(room=rooms)
    def admin_close_rule(self, room: RoomName) -> None:
        self.step(f"admin closes {room}")
        assert self.admin_close(room) == (room in self.model)
        if room in self.model:
            self.end_room(room, EndReason.ADMIN_CLOSED)

    @precondition(lambda self: bool(self.ended_rooms))
    @rule(data=st.data())
    def late_report_rule(self, data: st.DataObject) -> None:
        """An ended room's report reaches the directory late (sent as the room ended, or after
        its name was claimed again): the directory must ignore it."""
        publisher, info = data.draw(st.sampled_from(self.ended_rooms))
        self.step(f"a late report of {info.name} by its ended publisher {publisher[:6]}")
        if info.name in self.model:
            RUNS[self.name, "late reports for a reclaimed name"] += 1
        self.late_report(publisher, info)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def directory_lists_what_rooms_say(self) -> None:
        """The directory's copy (what ``GET /api/rooms`` lists) is what each room says."""
        if not self.ready:
            return
        listed, own = self.room_views()
        assert listed == own, (listed, own)

    @invariant()
    def agrees_with_model(self) -> None:
        if not self.ready:  # invariants also run before the initialize rule
            return
        seen = self.observe()
        # A room exists exactly while it has a publisher; viewer counts within the limit.
        assert set(seen.rooms) == set(self.model), (seen.rooms, self.model)
        assert seen.relays == {n for n, r in self.model.items() if r.relay}, seen.relays
        for name, room in self.model.items():
            tracks, subscribers = seen.rooms[name]
            assert tracks == len(room.tracks), (name, tracks, room.tracks)
            assert subscribers == len(room.subscribers), (name, subscribers, room.subscribers)
            if self.limit:
                assert subscribers <= self.limit
        # Exactly the model's sessions are live, each with its role; one publisher per room.
        expected: dict[SessionId, tuple[RoomName, Role]] = {}
        for name, room in self.model.items():
            expected[room.publisher] = (name, Role.PUBLISHER)
            expected.update(dict.fromkeys(room.subscribers, (name, Role.SUBSCRIBER)))
        assert seen.sessions == expected, (seen.sessions, expected)
        publishers = Counter(
            room for room, role in seen.sessions.values() if role is Role.PUBLISHER
        )
        assert all(count == 1 for count in publishers.values())
        # A closed session is gone for good.
        assert not self.closed.keys() & set(seen.sessions)
        assert not self.closed.keys() & set(seen.routes)
        # Routes: a viewer has one on each track its answer carries, and on no other, from its
        # POST on; video waits for a keyframe (which only a connected viewer gets). It is
        # active once every one of them forwards.
        for session, viewer in self.viewer_state.items():
            room = self.model[viewer.room]
            want: dict[TrackId, RoutePhase] = {}
            for track in room.tracks:
                if track.track_id not in viewer.tracks:
                    continue
                started = track.kind is MediaKind.AUDIO or track.track_id in viewer.keyframed
                want[track.track_id] = (
                    RoutePhase.FORWARDING if started else RoutePhase.WAITING_KEYFRAME
                )
            assert seen.routes.get(session, {}) == want, (session, seen.routes.get(session), want)
            phase = SubscriberPhase.NEGOTIATING
            if viewer.connected:
                phase = (
                    SubscriberPhase.ACTIVE
                    if all(p is RoutePhase.FORWARDING for p in want.values())
                    else SubscriberPhase.WAITING_KEYFRAME
                )
            assert seen.phases.get(session) == phase, (session, seen.phases.get(session), phase)
        self.check_extra()
