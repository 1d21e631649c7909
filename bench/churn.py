"""The soak's load: WHIP publishers, WHEP viewers and garbage requests that come and go at random.

``python -m bench.churn`` is started by :mod:`bench.soak`, in the loopback-only namespace, with
the server in a process of its own. One asyncio loop holds every client of the process, cheap
enough to share two cores with the server: publishers are :class:`bench.joins.SyntheticPublisher`
(VP8 and Opus packetized once and replayed, no encoder; here at ``--bitrate``), viewers
:func:`bench.joins.join` (they decrypt until their first keyframe, then only count datagrams at
their sockets).

Three modes:

- **churn** (the default), for ``--seconds`` or until ``stop`` on stdin (or EOF):

  - ``--publishers`` slots, each publishing a room (the same name as its last one, or a new
    one), keeping it 10-60 s, then ending it: ``DELETE`` (half of them) or closing its peer
    connection without a ``DELETE`` (DTLS close_notify, no HTTP);
  - ``--viewers`` slots, each joining a room (one of this process's, one from ``/api/rooms``,
    or now and then a room without a publisher: 404), staying 2-25 s, then leaving the same
    two ways;
  - garbage, ``--garbage`` requests a second on average: malformed and truncated SDP, the
    wrong content type, bodies near the 1 MiB limit and just over it, bad room names, bad
    ``PATCH`` es (no ``If-Match``, a stale ETag, the wrong content type, an ICE restart, too
    many candidates, junk candidates) against live sessions and unknown ones, ``DELETE`` of
    unknown sessions, HTTP that is not HTTP, bodies cut short or stalled past the server's
    body timeout, and real offers abandoned once answered (the server's session never
    connects: it must end it after ``SESSION_CONNECT_TIMEOUT_SECONDS``).

  At the end every client still there leaves by its own plan: ``DELETE``, a closed peer
  connection, or nothing at all (the process exits without a word: those sessions vanish).
- ``--warmup``: one of everything (publisher, two viewers, each kind of garbage once), all
  ended by ``DELETE``; the server has then loaded every code path before its baseline is
  taken.
- ``--doomed N``: publishes room ``doomedN``, joins two viewers to it and one to another live
  room, prints ``{"event": "ready"}``, and waits to be killed (``SIGKILL``, by the driver): its
  sessions vanish with the process, without ``DELETE`` or close_notify. It exits by itself
  (as abruptly) after ``--seconds``.

Counts every outcome (``publish 201``, ``garbage stale_etag 412``...) and prints them as
``{"event": "stopped", "counts": {...}, "unexpected": [...]}``: ``unexpected`` lists answers no
one should get (a ``500``, a garbage request answered ``201``...), at most 50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.joins import (
    NO_ICE_SERVERS,
    JoiningViewer,
    OfferRefusedError,
    SyntheticPublisher,
    join,
)
from bench.viewers import stdin
from golive.http.whip import MAX_BODY
from golive.logs import configure_logging
from golive.media import hooks
from golive.media.hooks import ForwardingPeerConnection
from golive.media.limits import MAX_CANDIDATES_PER_SESSION

PUBLISHER_LIFE = (10.0, 60.0)  # seconds a publisher stays
VIEWER_LIFE = (2.0, 25.0)
KEYFRAME_WAIT = 10.0  # seconds a viewer waits for its first keyframe before counting a miss
REQUEST_TIMEOUT = 30.0
STALL_TIMEOUT = 45.0  # a stalled body waits this long for the server's 408 (its timeout: 30 s)
GARBAGE_AT_ONCE = 8  # garbage requests in flight at most
STALLED_AT_ONCE = 2
UNEXPECTED_KEPT = 50
SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
REFUSED = (400, 404, 409, 413, 503)  # an offer golive may refuse, depending on the room


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


@dataclass
class Tally:
    """Every outcome, counted; and the unexpected ones, kept (a few)."""

    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def note(self, what: str, outcome: int | str, expected: Collection[int | str]) -> None:
        self.counts[f"{what} {outcome}"] += 1
        if outcome not in expected and len(self.unexpected) < UNEXPECTED_KEPT:
            self.unexpected.append(f"{what}: {outcome}")


@dataclass(eq=False)
class Churn:
    """What every loop of the process shares."""

    base: str
    http: aiohttp.ClientSession
    rng: random.Random
    deadline: float  # loop time
    max_actions: int
    bitrate: int
    tally: Tally = field(default_factory=Tally)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    rooms: dict[str, SyntheticPublisher] = field(default_factory=dict)  # live, this process's
    viewers: list[JoiningViewer] = field(default_factory=list)  # admitted, not yet left
    stalled: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(STALLED_AT_ONCE))
    clients: list[Client] = field(default_factory=list)  # everyone still here
    actions: int = 0

    def running(self) -> bool:
        loop = asyncio.get_running_loop()
        return (
            not self.stopping.is_set()
            and loop.time() < self.deadline
            and self.actions < self.max_actions
        )

    def act(self) -> None:
        self.actions += 1

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the churn stops or its time is up."""
        remaining = self.deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.0, min(seconds, remaining)))

    def plan(self, final: bool) -> str:  # noqa: FBT001  one flag, read at the call
        """How a client leaves: ``delete`` or ``close``; at the end also ``vanish``."""
        if final:
            return self.rng.choices(("delete", "close", "vanish"), (4, 3, 3))[0]
        return self.rng.choice(("delete", "close"))


@dataclass(eq=False)
class Client:
    """A publisher or viewer of this process, and how it leaves."""

    role: str  # "publisher" or "viewer"
    location: str
    close: Callable[[], Awaitable[None]]


async def leave(churn: Churn, client: Client, how: str) -> None:
    """End a client: ``delete`` (DELETE, then close), ``close`` (close only: the server hears a
    DTLS close_notify), ``vanish`` (nothing: the process exits under it)."""
    if client in churn.clients:
        churn.clients.remove(client)
    churn.tally.counts[f"{client.role} left {how}"] += 1
    if how == "vanish":
        return
    if how == "delete" and client.location:
        await http_request(
            churn, f"{client.role} delete", "DELETE", client.location, expected=(200, 404)
        )
    with contextlib.suppress(Exception):  # a peer connection the server already ended
        await client.close()


async def http_request(
    churn: Churn,
    what: str,
    method: str,
    path: str,
    *,
    expected: Collection[int | str],
    data: bytes = b"",
    headers: dict[str, str] | None = None,
) -> int | str:
    """One request; its status (or the client's error) is counted under ``what``."""
    outcome: int | str
    try:
        async with churn.http.request(
            method,
            churn.base + path,
            data=data or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            await response.read()
            outcome = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        outcome = type(exc).__name__
    churn.tally.note(what, outcome, expected)
    return outcome


# -- publishers and viewers ----------------------------------------------------------------------


async def publish(churn: Churn, room: str) -> tuple[SyntheticPublisher, Client] | None:
    """A publisher in ``room``, connected; None (counted) when refused or not connected."""
    publisher = SyntheticPublisher(churn.bitrate)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await publisher.start(churn.base, room, churn.http)
            churn.tally.note("publish", 201, (201,))
            await publisher.wait_connected()
    except OfferRefusedError as exc:
        churn.tally.note("publish", exc.status, (409, 503))
        await publisher.close()
        return None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        churn.tally.note("publish", type(exc).__name__, ())
        await publisher.close()
        return None
    return publisher, Client("publisher", publisher.location, publisher.close)


async def publisher_slot(churn: Churn, slot: int) -> None:
    generation = 0
    room = f"soak{slot}"
    while churn.running():
        churn.act()
        published = await publish(churn, room)
        if published is None:  # the room is taken (a vanished publisher of ours): another
            generation += 1
            room = f"soak{slot}-{generation}"
            await churn.pause(1.0)
            continue
        publisher, client = published
        churn.rooms[room] = publisher
        churn.clients.append(client)
        await churn.pause(churn.rng.uniform(*PUBLISHER_LIFE))
        if not churn.running():
            return  # left by its final plan
        del churn.rooms[room]
        await leave(churn, client, churn.plan(final=False))
        if churn.rng.random() < 0.5:  # a new room, or the same one again
            generation += 1
            room = f"soak{slot}-{generation}"
        await churn.pause(churn.rng.uniform(0.5, 3.0))


async def listed_room(churn: Churn) -> str | None:
    """A room ``/api/rooms`` lists with a publisher (maybe another process's)."""
    try:
        async with churn.http.get(
            f"{churn.base}/api/rooms", timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as response:
            rooms = await response.json()
            churn.tally.note("list rooms", response.status, (200,))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        churn.tally.note("list rooms", type(exc).__name__, ())
        return None
    live = [r["name"] for r in rooms if r.get("hasPublisher")]
    return churn.rng.choice(live) if live else None


async def pick_room(churn: Churn) -> str | None:
    draw = churn.rng.random()
    if draw < 0.1:
        return f"nobody{churn.rng.randrange(1000)}"  # no publisher: 404
    if draw < 0.25:
        return await listed_room(churn)
    own = [name for name, publisher in churn.rooms.items() if publisher.connected]
    return churn.rng.choice(own) if own else None


async def view(churn: Churn, room: str) -> tuple[JoiningViewer, Client] | None:
    viewer = await join(churn.base, room, churn.http)
    status = viewer.timeline.status
    if status != 201:
        churn.tally.note("play", status or viewer.timeline.error[:40], (404, 503))
        with contextlib.suppress(Exception):
            await viewer.pc.close()
        return None
    churn.tally.note("play", 201, (201,))
    return viewer, Client("viewer", viewer.location, viewer.pc.close)


async def viewer_slot(churn: Churn) -> None:
    while churn.running():
        room = await pick_room(churn)
        if room is None:
            await churn.pause(0.5)
            continue
        churn.act()
        viewed = await view(churn, room)
        if viewed is None:
            await churn.pause(0.5)
            continue
        viewer, client = viewed
        churn.viewers.append(viewer)
        churn.clients.append(client)
        stay = churn.rng.uniform(*VIEWER_LIFE)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(KEYFRAME_WAIT, stay)):
                await viewer.done.wait()
            churn.tally.counts["viewer keyframe"] += 1
        except TimeoutError:
            churn.tally.counts["viewer no keyframe"] += 1
        await churn.pause(stay - (asyncio.get_running_loop().time() - started))
        if not churn.running():
            return
        churn.viewers.remove(viewer)
        await leave(churn, client, churn.plan(final=False))
        await churn.pause(churn.rng.uniform(0.2, 2.0))


# -- garbage ---------------------------------------------------------------------------------


def junk_sdp(rng: random.Random) -> bytes:
    """Text that is not an offer."""
    lines = ["v=0", "o=- x y IN IP4", "s=", *(f"{rng.choice('amkzq')}=" for _ in range(20))]
    lines.append(rng.randbytes(64).hex())
    return "\r\n".join(lines).encode()


async def real_offer() -> tuple[str, ForwardingPeerConnection]:
    """A real offer (audio and video), from a peer connection the caller closes."""
    pc = ForwardingPeerConnection(NO_ICE_SERVERS)
    pc.addTransceiver("video", direction="sendrecv")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp, pc


def large_offer(offer: str, size: int) -> bytes:
    """``offer`` made ``size`` bytes long (within the body limit) with attribute lines of junk:
    past golive's line cap, so refused with 413 before anything is parsed."""
    head, _, tail = offer.partition("m=")
    filler = "a=x-soak:" + "z" * 200 + "\r\n"
    body = head + filler * ((size - len(offer)) // len(filler)) + "m=" + tail
    return body.encode()


async def raw_http(
    churn: Churn, what: str, request: bytes, *, wait: float, expected: Collection[int | str]
) -> None:
    """Send ``request`` over a connection of its own and read the status line within ``wait``
    s; a connection closed (or reset) without one counts as ``closed``."""
    split = urlsplit(churn.base)
    outcome: int | str = "closed"
    writer = None
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(split.hostname, split.port)
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
            if line.startswith(b"HTTP/1."):  # (aiohttp answers bad HTTP as HTTP/1.0)
                outcome = int(line.split()[1])
    except (OSError, TimeoutError, ValueError) as exc:
        outcome = "closed" if isinstance(exc, ConnectionError) else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    churn.tally.note(f"garbage {what}", outcome, expected)


async def cut_body(churn: Churn, path: str) -> None:
    """Headers promising 4000 bytes, 100 of them, then the connection closed: the server sees a
    client that went away mid-body."""
    split = urlsplit(churn.base)
    try:
        _, writer = await asyncio.open_connection(split.hostname, split.port)
    except OSError as exc:
        churn.tally.note("garbage cut_body", type(exc).__name__, ())
        return
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {split.netloc}\r\nContent-Type: {SDP}\r\n"
        f"Content-Length: 4000\r\n\r\n".encode()
        + b"v=0\r\n" * 20
    )
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    churn.tally.counts["garbage cut_body sent"] += 1


async def abandoned(churn: Churn, path: str) -> None:
    """A real offer, answered, then nothing: the client never does ICE (its sockets are closed
    at once); the server must end the session when it does not connect in time."""
    offer, pc = await real_offer()
    try:
        await http_request(
            churn,
            "garbage abandoned",
            "POST",
            path,
            data=offer.encode(),
            headers={"Content-Type": SDP},
            expected=(201, *REFUSED),
        )
    finally:
        await pc.close()


def fragment(ufrag: str, candidates: int) -> bytes:
    lines = [f"a=ice-ufrag:{ufrag}", "a=ice-pwd:0123456789abcdef01234567", "m=audio 9 RTP/AVP 0"]
    lines += [
        f"a=candidate:{n} 1 udp 2122260223 127.0.0.1 {40000 + n} typ host"
        for n in range(candidates)
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


async def bad_patch(churn: Churn) -> None:
    """One bad PATCH to a live viewer of ours (or to an unknown session when there is none)."""
    live = [v for v in churn.viewers if v.location]
    if not live:
        await http_request(
            churn,
            "garbage patch_unknown",
            "PATCH",
            "/api/whep/play/soak0/nosuchsession",
            data=fragment("x", 1),
            headers={"Content-Type": TRICKLE, "If-Match": "*"},
            expected=(404,),
        )
        return
    viewer = churn.rng.choice(live)
    ufrag = viewer.pc.localDescription.sdp.split("a=ice-ufrag:", 1)[1].split()[0]
    trickle = {"Content-Type": TRICKLE, "If-Match": "*"}
    junk = f"a=ice-ufrag:{ufrag}\r\na=candidate:junk\r\na=candidate:1 1 udp\r\n".encode()
    kind, headers, body, expected = churn.rng.choice(
        (
            ("patch_no_if_match", {"Content-Type": TRICKLE}, fragment(ufrag, 1), 428),
            ("patch_stale_etag", {**trickle, "If-Match": '"0"'}, b"", 412),
            ("patch_wrong_type", {**trickle, "Content-Type": "text/plain"}, b"x", 415),
            ("patch_restart", trickle, fragment("new", 1), 422),
            ("patch_too_many", trickle, fragment(ufrag, MAX_CANDIDATES_PER_SESSION + 1), 413),
            ("patch_junk", trickle, junk, 204),
        )
    )
    # (the viewer may have been ended meanwhile by its room: 404)
    await http_request(
        churn,
        f"garbage {kind}",
        "PATCH",
        viewer.location,
        data=body,
        headers=headers,
        expected=(expected, 404),
    )


async def bad_sdp(churn: Churn, path: str) -> None:
    await http_request(
        churn,
        "garbage bad_sdp",
        "POST",
        path,
        data=junk_sdp(churn.rng),
        headers={"Content-Type": SDP},
        expected=(400, 404, 409),
    )


async def truncated_sdp(churn: Churn, path: str) -> None:
    offer, pc = await real_offer()
    await pc.close()
    cut = offer[: churn.rng.randrange(len(offer) // 4, len(offer) * 3 // 4)]
    await http_request(
        churn,
        "garbage truncated_sdp",
        "POST",
        path,
        data=cut.encode(),
        headers={"Content-Type": SDP},
        expected=(201, *REFUSED),  # a cut that leaves an offer is answered: abandoned
    )


async def wrong_type(churn: Churn, path: str) -> None:
    content_type = churn.rng.choice(("application/json", "text/plain", "application/sdp-junk"))
    await http_request(
        churn,
        "garbage wrong_type",
        "POST",
        path,
        data=b'{"sdp": "v=0"}',
        headers={"Content-Type": content_type},
        expected=(415,),
    )


async def large_body(churn: Churn, path: str) -> None:
    offer, pc = await real_offer()
    await pc.close()
    await http_request(
        churn,
        "garbage large_body",
        "POST",
        path,
        data=large_offer(offer, MAX_BODY - churn.rng.randrange(1, 64 << 10)),
        headers={"Content-Type": SDP},
        expected=(413,),
    )


async def over_limit(churn: Churn, path: str) -> None:
    await http_request(
        churn,
        "garbage over_limit",
        "POST",
        path,
        data=b"v=0\r\n" + b"a" * MAX_BODY,
        headers={"Content-Type": SDP},
        # (the server may answer before the body is sent, and close the connection)
        expected=(413, "ClientOSError", "ServerDisconnectedError"),
    )


async def bad_room(churn: Churn, path: str) -> None:
    name = churn.rng.choice(("a" * 65, "bad%20room", "r%C3%A9", "..", "x%2Fy"))
    await http_request(
        churn,
        "garbage bad_room",
        "POST",
        f"{path.rsplit('/', 1)[0]}/{name}",
        data=junk_sdp(churn.rng),
        headers={"Content-Type": SDP},
        expected=(400, 404),
    )


async def delete_unknown(churn: Churn, path: str) -> None:
    await http_request(
        churn,
        "garbage delete_unknown",
        "DELETE",
        f"{path}/{churn.rng.randbytes(8).hex()}",
        expected=(404,),
    )


async def not_http(churn: Churn, _path: str) -> None:
    request = churn.rng.choice((b"\x16\x03\x01\x02\x00\x01\r\n\r\n", b"GET\r\n\r\n"))
    await raw_http(churn, "not_http", request, wait=10, expected=(400,))


async def stalled_body(churn: Churn, path: str) -> None:
    """Headers and 5 bytes of a 4000-byte body, then nothing until the server answers 408
    (``HTTP_BODY_TIMEOUT_SECONDS``); at most STALLED_AT_ONCE at a time."""
    if churn.stalled.locked():
        return
    async with churn.stalled:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {urlsplit(churn.base).netloc}\r\n"
            f"Content-Type: {SDP}\r\nContent-Length: 4000\r\n\r\nv=0\r\n"
        ).encode()
        await raw_http(churn, "stalled_body", request, wait=STALL_TIMEOUT, expected=(408,))


async def bad_patch_of(churn: Churn, _path: str) -> None:
    await bad_patch(churn)


Garbage = Callable[[Churn, str], Awaitable[None]]
#: Every kind of garbage: how often (relative weight) and how it is sent, given a resource
#: path (``/api/whip/publish/ROOM`` or ``/api/whep/play/ROOM``, a live room of ours or not).
GARBAGE: dict[str, tuple[float, Garbage]] = {
    "bad_sdp": (3, bad_sdp),
    "truncated_sdp": (2, truncated_sdp),
    "wrong_type": (2, wrong_type),
    "large_body": (1, large_body),
    "over_limit": (1, over_limit),
    "bad_room": (1, bad_room),
    "bad_patch": (4, bad_patch_of),
    "delete_unknown": (1, delete_unknown),
    "not_http": (1, not_http),
    "cut_body": (1, cut_body),
    "stalled_body": (0.2, stalled_body),
    "abandoned": (1, abandoned),
}


async def garbage(churn: Churn, kind: str) -> None:
    """One request of ``kind`` to a room of ours or a made-up one, as publisher or viewer."""
    rng = churn.rng
    room = rng.choice([*churn.rooms, f"junk{rng.randrange(100)}"])
    role = rng.choice(("whip/publish", "whep/play"))
    await GARBAGE[kind][1](churn, f"/api/{role}/{room}")


async def garbage_loop(churn: Churn, rate: float) -> None:
    """Garbage at ``rate`` a second on average (Poisson), at most GARBAGE_AT_ONCE in flight."""
    if rate <= 0:
        return
    in_flight = asyncio.Semaphore(GARBAGE_AT_ONCE)
    kinds, weights = list(GARBAGE), [weight for weight, _ in GARBAGE.values()]
    tasks: set[asyncio.Task[None]] = set()

    async def one(kind: str) -> None:
        async with in_flight:
            await garbage(churn, kind)

    try:
        while churn.running():
            await churn.pause(churn.rng.expovariate(rate))
            if not churn.running() or in_flight.locked():
                continue
            churn.act()
            task = asyncio.create_task(one(churn.rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        # (stalled bodies are cut: the server sees clients going away)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the modes -------------------------------------------------------------------------------


async def watch_stdin(churn: Churn) -> None:
    """``stop`` (or EOF: the driver is gone) ends the churn."""
    commands = await stdin()
    while True:
        line = (await commands.readline()).strip()
        if not line or line == b"stop":
            churn.stopping.set()
            return


async def finish(churn: Churn) -> None:
    """Every client still here leaves by its final plan (a vanishing one stays behind)."""
    leaving = [leave(churn, client, churn.plan(final=True)) for client in list(churn.clients)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*leaving, return_exceptions=True), 30)


async def run_churn(churn: Churn, publishers: int, viewers: int, rate: float) -> None:
    watcher = asyncio.create_task(watch_stdin(churn))
    loops = [publisher_slot(churn, slot) for slot in range(publishers)]
    loops += [viewer_slot(churn) for _ in range(viewers)]
    loops.append(garbage_loop(churn, rate))
    emit("ready")
    results = await asyncio.gather(*loops, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            churn.tally.note("loop", f"{type(result).__name__}: {result}"[:120], ())
    await finish(churn)
    watcher.cancel()


async def run_warmup(churn: Churn) -> None:
    """One of everything, everything ended by DELETE."""
    published = await publish(churn, "warmup")
    if published is None:
        raise RuntimeError(f"warm-up: could not publish: {churn.tally.counts}")
    churn.rooms["warmup"] = published[0]
    watchers = [await view(churn, "warmup") for _ in range(2)]
    for viewed in watchers:
        if viewed is not None:
            churn.viewers.append(viewed[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(viewed[0].done.wait(), KEYFRAME_WAIT)
    for kind in GARBAGE:
        if kind != "stalled_body":  # (30 s for one 408)
            await garbage(churn, kind)
    for viewed in watchers:
        if viewed is not None:
            await leave(churn, viewed[1], "delete")
    await leave(churn, published[1], "delete")


async def run_doomed(churn: Churn, number: int) -> None:
    """A publisher, its viewers and one viewer elsewhere, left to be killed."""
    own = f"doomed{number}"
    other = await listed_room(churn)
    published = await publish(churn, own)
    if published is not None:
        churn.rooms[own] = published[0]
        for room in (own, own, other):
            if room is not None:
                await view(churn, room)
    emit("ready", published=published is not None)
    await churn.pause(churn.deadline)  # until killed (or --seconds: then exit as abruptly)


async def main_async(arguments: argparse.Namespace) -> None:
    hooks.install(("127.0.0.1",))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        churn = Churn(
            base=arguments.base,
            http=http,
            rng=random.Random(arguments.seed),  # noqa: S311  a reproducible load, not a secret
            deadline=loop.time() + arguments.seconds,
            max_actions=arguments.max_actions,
            bitrate=arguments.bitrate,
        )
        if arguments.warmup:
            await run_warmup(churn)
        elif arguments.doomed is not None:
            await run_doomed(churn, arguments.doomed)
        else:
            await run_churn(churn, arguments.publishers, arguments.viewers, arguments.garbage)
        usage = os.times()
        emit(
            "stopped",
            seconds=round(loop.time() - started, 1),
            cpu_s=round(usage.user + usage.system, 2),
            counts=dict(sorted(churn.tally.counts.items())),
            unexpected=churn.tally.unexpected,
        )
        # Exit at once, from inside the loop: whatever is still open (the clients that vanish)
        # is dropped by the kernel, without a DELETE, a DTLS close_notify or a last STUN
        # packet.
        os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--seconds", type=float, default=600.0, help="churn for this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=3, help="publisher slots")
    parser.add_argument("--viewers", type=int, default=8, help="viewer slots")
    parser.add_argument("--garbage", type=float, default=1.0, help="garbage requests a second")
    parser.add_argument("--bitrate", type=int, default=300_000, help="video bit/s a publisher")
    parser.add_argument(
        "--max-actions", type=int, default=100_000, help="joins, publishes and garbage, at most"
    )
    parser.add_argument("--warmup", action="store_true")
    parser.add_argument("--doomed", type=int, help="be doomed publisher N (see above)")
    arguments = parser.parse_args()
    configure_logging("error", "json", stream=sys.stderr)
    asyncio.run(main_async(arguments))


if __name__ == "__main__":
    main()
