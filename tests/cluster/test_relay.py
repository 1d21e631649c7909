"""Relays between two real golive servers (no Redis): a room published on A (the origin) is
pulled by B (golive as a WHEP client) into a relay room that B's viewers watch.

A is a golive process (``python -m golive``); B runs in this process on its own loop thread
(``tests.support``), so a test can look inside its relay. (Two servers in one process would
share pykka's registry, and each one's shutdown sweeps up the other's actors.) The publisher
and the viewers are real aiortc peers on the test's loop. The one fault injected by hand is
packet loss on the relay's own link (a hook on its ICE transport's receive), which loopback
never causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest
from aiohttp import web
from aiortc.rtp import RtpPacket, is_rtcp

from golive.actors.messages import EndReason, Refusal, Refused, RoomName
from golive.cluster.relay import Relay, Relays, RelayUnavailableError
from golive.http.keys import MEDIA, RELAYS
from golive.media.forwarding import KEYFRAME_REQUEST_INTERVAL, PublishedTrack
from golive.media.hooks import ForwardingReceiver
from tests.media.clients import Viewer, close_all, delete, publish, view
from tests.support import (
    ServerThread,
    eventually,
    metric_samples,
    require_loopback_namespace,
    running_server,
)
from tests.test_server import Golive, environment, python_m

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
DEADLINE = 30.0
T = TypeVar("T")
ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """WebRTC only inside a network namespace with nothing but ``lo``."""
    require_loopback_namespace()


class Origin:
    """Server A: a golive process, reached over HTTP only."""

    def __init__(self, golive: Golive) -> None:
        self.golive = golive
        self.url = golive.url

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.golive.get(path)
        return status, body.encode()


@contextlib.contextmanager
def origin_server(tmp_path: Path) -> Iterator[Origin]:
    # (at LOG_LEVEL=info: its "golive listening" line names its port)
    golive = Golive(python_m(), environment({**ENV, "LOG_LEVEL": "info"}), tmp_path)
    try:
        golive.wait_listening()
        yield Origin(golive)
    finally:
        golive.kill()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with origin_server(tmp_path) as running:
        yield running


@pytest.fixture
def edge() -> Iterator[ServerThread]:
    with running_server(ENV) as running:
        yield running


Server = Origin | ServerThread


async def on(server: ServerThread, coro: Any) -> Any:
    """Run a coroutine on ``server``'s loop, awaited from the test's loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server._loop))


async def call(server: ServerThread, function: Callable[[], T]) -> T:
    """Run a plain function on ``server``'s loop, awaited from the test's loop."""
    return await asyncio.wrap_future(server.submit(function))


def relays(server: ServerThread) -> Relays:
    return server.app[RELAYS]


async def ensure(edge: ServerThread, room: str, origin_url: str) -> Refused | None:
    result: Refused | None = await on(edge, relays(edge).ensure(RoomName(room), origin_url))
    return result


async def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = await asyncio.to_thread(server.get, "/metrics")
    return metric_samples(body.decode())


async def listing(server: Server) -> list[dict[str, Any]]:
    _, body = await asyncio.to_thread(server.get, "/api/rooms")
    rooms: list[dict[str, Any]] = json.loads(body)
    return rooms


async def subscribers(server: Server, room: str) -> int | None:
    """The subscriber count ``/api/rooms`` shows for ``room`` (None: no such room)."""
    for info in await listing(server):
        if info["name"] == room:
            count: int = info["subscribers"]
            return count
    return None


def ended(metrics: Samples, role: str) -> dict[str, float]:
    """Sessions of ``role`` ended, by reason."""
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in metrics.items()
        if name == "golive_sessions_ended_total" and dict(labels).get("role") == role
    }


def counted(metrics: Samples, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def audio_frames(viewer: Viewer, count: int) -> Callable[[], bool]:
    return lambda: viewer.frames["audio"] > count


def packets(seen: list[int], count: int) -> Callable[[], bool]:
    return lambda: len(seen) >= count


def media_ssrc(viewer: Viewer) -> int:
    fid = re.search(r"a=ssrc-group:FID (\d+) (\d+)", viewer.answer.sdp)
    assert fid is not None, viewer.answer.sdp
    return int(fid.group(1))


def record_video(viewer: Viewer) -> list[int]:
    """The sequence numbers of the viewer's video packets as they arrive (not RTX)."""
    ssrc = media_ssrc(viewer)
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    original = receiver._handle_rtp_packet
    seen: list[int] = []

    async def watch(packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.ssrc == ssrc:
            seen.append(packet.sequence_number)
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = watch  # type: ignore[method-assign]
    return seen


async def relay_of(edge: ServerThread, room: str) -> Relay:
    relay = await call(edge, lambda: relays(edge)._relays.get(RoomName(room)))
    assert relay is not None
    return relay


async def nothing_left(edge: ServerThread) -> None:
    """B holds no room, session, relay, pull or actor but its directory."""
    assert await listing(edge) == []
    assert await call(edge, lambda: len(edge.rooms.registry)) == 0
    assert await call(edge, relays(edge).relayed) == frozenset()
    assert await call(edge, lambda: dict(relays(edge)._pulls)) == {}
    assert await call(edge, edge.app[MEDIA].sessions) == []
    await eventually(
        lambda: (
            [a.actor_class.__name__ for a in pykka.ActorRegistry.get_all()] == ["DirectoryActor"]
        ),
        what="every actor but B's directory to stop",
    )


# -- media through a relay ------------------------------------------------------------------


async def test_viewers_on_the_relay_receive_the_publisher(
    origin: Origin, edge: ServerThread
) -> None:
    """B pulls A's room once; each of B's viewers decodes the publisher's video and audio,
    starting on a keyframe, with consecutive sequence numbers; A counts one viewer (the
    relay), B lists its relay room with its viewers."""
    publisher = await publish(origin.url, "show")
    viewers: list[Viewer] = []
    try:
        assert publisher.answer.status == 201
        assert await ensure(edge, "show", origin.url) is None
        viewers = [await view(edge.url, "show") for _ in range(2)]
        assert all(v.answer.status == 201 for v in viewers), [v.answer.body for v in viewers]
        sequences = [record_video(v) for v in viewers]
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)
        for viewer, seen in zip(viewers, sequences, strict=True):
            assert viewer.first_video_packet_is_keyframe is True
            await eventually(audio_frames(viewer, 10), what="audio frames")
            await eventually(packets(seen, 50), what="50 video packets")
            window = seen[:50]
            assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(window)), window
        assert await subscribers(origin, "show") == 1
        [room] = await listing(edge)
        assert room["relay"] is True
        assert room["subscribers"] == 2
        assert room["tracks"] == 2
        [origin_room] = await listing(origin)
        assert origin_room["relay"] is False
        metrics = await samples(edge)
        assert metrics[("golive_relays", ())] == 1
        assert metrics[("golive_relays_started_total", ())] == 1
    finally:
        await close_all(publisher, *viewers)


async def test_concurrent_ensures_make_one_pull(origin: Origin, edge: ServerThread) -> None:
    """Five callers at once for one room: one pull (A sees one viewer), all told to go on."""
    publisher = await publish(origin.url, "crowd", audio=False)
    try:
        results = await asyncio.gather(*(ensure(edge, "crowd", origin.url) for _ in range(5)))
        assert results == [None] * 5
        assert await ensure(edge, "crowd", origin.url) is None  # (held, not pulled again)
        assert await subscribers(origin, "crowd") == 1
        assert await call(edge, relays(edge).relayed) == frozenset({RoomName("crowd")})
        assert (await samples(edge))[("golive_relays_started_total", ())] == 1
    finally:
        await close_all(publisher)


# -- keyframes and losses up the relay ------------------------------------------------------


async def test_a_viewers_picture_loss_reaches_the_publisher_at_the_origin(
    origin: Origin, edge: ServerThread
) -> None:
    """Three PLIs from B's viewer become one keyframe request from B's relay to A, and one
    from A to the publisher, who is asked for a keyframe."""
    publisher = await publish(origin.url, "pli", audio=False)
    viewer: Viewer | None = None
    try:
        assert await ensure(edge, "pli", origin.url) is None
        viewer = await view(edge.url, "pli")
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)

        def track() -> PublishedTrack:
            [tap] = edge.app[MEDIA].taps(RoomName("pli"))
            return tap

        def quiet() -> bool:
            """B asked A for nothing for two intervals (so A, which asks the publisher at
            most an interval after B asked it, has nothing pending either)."""
            tap = track()
            since = tap._loop.time() - tap._last_request
            return tap._deferred is None and since > 2 * KEYFRAME_REQUEST_INTERVAL

        await eventually(lambda: call(edge, quiet), what="a quiet relay", seconds=DEADLINE)
        origin_before = counted(await samples(origin), "golive_keyframe_requests_total")
        edge_before = await call(edge, lambda: track().keyframe_requests)
        publisher_sender = publisher.pc.getTransceivers()[0].sender
        asked = asyncio.Event()
        send_keyframe = publisher_sender._send_keyframe

        def on_keyframe_request() -> None:  # the publisher (aiortc) is asked for a keyframe
            asked.set()
            send_keyframe()

        publisher_sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        for _ in range(3):
            await receiver._send_rtcp_pli(media_ssrc(viewer))
        await asyncio.wait_for(asked.wait(), DEADLINE)
        assert await call(edge, lambda: track().keyframe_requests) == edge_before + 1
        origin_after = counted(await samples(origin), "golive_keyframe_requests_total")
        assert origin_after == origin_before + 1
    finally:
        await close_all(publisher, *([viewer] if viewer else []))


async def test_losses_on_the_relay_link_and_on_a_viewers_link_are_repaired(
    origin: Origin, edge: ServerThread
) -> None:
    """Five video packets lost on the way from A to B's relay come back from A's cache
    (B's relay NACKs them, A resends them on RTX); five lost on the way from B to its viewer
    come back from B's own cache. The viewer decodes throughout."""
    publisher = await publish(origin.url, "lossy", audio=False)
    viewer: Viewer | None = None
    try:
        assert await ensure(edge, "lossy", origin.url) is None
        relay = await relay_of(edge, "lossy")
        dropped: set[int] = set()
        repaired: set[int] = set()
        arrived: set[int] = set()

        def lose_on_the_relay_link() -> None:  # on B's loop: the relay's network drops five
            [transceiver] = [t for t in relay.peer.pc.getTransceivers() if t.kind == "video"]
            receiver = transceiver.receiver
            assert isinstance(receiver, ForwardingReceiver)
            ice = receiver.transport.transport
            network = ice._recv
            seen: set[int] = set()

            async def lossy() -> bytes:
                while True:
                    data: bytes = await network()
                    if 127 < data[0] < 192 and not is_rtcp(data):
                        seq = int.from_bytes(data[2:4], "big")
                        ssrc = int.from_bytes(data[8:12], "big")
                        if ssrc == receiver.media_ssrc:
                            if len(seen) >= 30 and len(dropped) < 5 and seq not in seen | dropped:
                                dropped.add(seq)
                                continue
                            seen.add(seq)
                    return data

            ice._recv = lossy
            [tap] = edge.app[MEDIA].taps(RoomName("lossy"))
            forward = tap.on_packet

            def record(packet: RtpPacket, codec: Any) -> None:
                arrived.add(packet.sequence_number)
                if packet.sequence_number in dropped:
                    repaired.add(packet.sequence_number)
                forward(packet, codec)

            receiver.sink = record

        await call(edge, lose_on_the_relay_link)
        viewer = await view(edge.url, "lossy")
        await eventually(
            lambda: call(edge, lambda: len(dropped) == 5 and repaired == dropped),
            what="the relay's five lost packets to come back",
            seconds=DEADLINE,
        )
        metrics = await samples(origin)
        assert counted(metrics, "golive_rtp_packets_retransmitted_total") >= 5
        assert counted(metrics, "golive_rtcp_nacks_received_total") >= 1

        # The viewer's own link loses five: B resends them from its cache.
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        ice = receiver.transport.transport
        network = ice._recv
        ssrc = media_ssrc(viewer)
        seen: set[int] = set()
        lost: set[int] = set()

        async def lossy_viewer() -> bytes:
            while True:
                data: bytes = await network()
                if 127 < data[0] < 192 and not is_rtcp(data):
                    seq = int.from_bytes(data[2:4], "big")
                    if int.from_bytes(data[8:12], "big") == ssrc:
                        if len(seen) >= 30 and len(lost) < 5 and seq not in seen | lost:
                            lost.add(seq)
                            continue
                        seen.add(seq)
                return data

        ice._recv = lossy_viewer
        await eventually(
            lambda: len(lost) == 5, what="five losses on the viewer's link", seconds=DEADLINE
        )

        async def resent() -> bool:
            return counted(await samples(edge), "golive_rtp_packets_retransmitted_total") >= 5

        await eventually(resent, what="B to resend the viewer's losses", seconds=DEADLINE)
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
    finally:
        await close_all(publisher, *([viewer] if viewer else []))


# -- the relay's lifecycle ------------------------------------------------------------------


def closed(viewer: Viewer) -> Callable[[], bool]:
    return lambda: viewer.pc.connectionState in ("closed", "failed")


async def test_the_origin_room_ending_ends_the_relays_viewers_as_origin_gone(
    origin: Origin, edge: ServerThread
) -> None:
    """The publisher leaves A: A closes the relay's session, and B, told nothing else, ends
    its relay room and its viewers as origin_gone."""
    publisher = await publish(origin.url, "bye", audio=False)
    viewers: list[Viewer] = []
    try:
        assert await ensure(edge, "bye", origin.url) is None
        viewers = [await view(edge.url, "bye") for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)
        assert await delete(origin.url, publisher.answer.location) == 200
        for viewer in viewers:
            await eventually(closed(viewer), what="B's viewer to be closed")
        await nothing_left(edge)
        metrics = await samples(edge)
        assert ended(metrics, "subscriber") == {"origin_gone": 2}
        assert ended(metrics, "publisher") == {"origin_gone": 1}
        assert counted(metrics, "golive_relays_ended_total", reason="origin_gone") == 1
        assert counted(metrics, "golive_relays") == 0
    finally:
        await close_all(publisher, *viewers)


async def test_the_origin_saying_why_its_room_ended_ends_the_viewers_with_that_reason(
    origin: Origin, edge: ServerThread
) -> None:
    """``end()`` (the cluster heard A's room end, and why) ends B's relay room and its viewers
    with A's reason; the relay does not DELETE at A (A ended it), its transport closes."""
    publisher = await publish(origin.url, "said", audio=False)
    viewer: Viewer | None = None
    try:
        assert await ensure(edge, "said", origin.url) is None
        viewer = await view(edge.url, "said")
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        await call(edge, lambda: relays(edge).end(RoomName("said"), EndReason.ADMIN_CLOSED))
        await eventually(closed(viewer), what="B's viewer to be closed")
        await nothing_left(edge)
        metrics = await samples(edge)
        assert ended(metrics, "subscriber") == {"admin_closed": 1}
        assert counted(metrics, "golive_relays_ended_total", reason="admin_closed") == 1

        async def relay_gone_at_origin() -> bool:
            return await subscribers(origin, "said") == 0

        await eventually(relay_gone_at_origin, what="A to lose the relay")
        assert ended(await samples(origin), "subscriber") == {"dtls_closed": 1}
    finally:
        await close_all(publisher, *([viewer] if viewer else []))


async def test_a_relay_without_viewers_leaves_its_origin_after_the_grace_period(
    origin: Origin,
) -> None:
    """B's last viewer leaves: B's relay waits RELAY_GRACE_SECONDS for another, then ends
    (relay_idle) and DELETEs its session at A, whose room counts no viewer any more."""
    viewer: Viewer | None = None
    # (B first: it installs golive's aiortc hooks in this process, which must not change
    # under a client that is connecting)
    with running_server({**ENV, "RELAY_GRACE_SECONDS": "0.5"}) as edge:
        publisher = await publish(origin.url, "idle", audio=False)
        try:
            assert await ensure(edge, "idle", origin.url) is None
            viewer = await view(edge.url, "idle")
            await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
            assert await subscribers(origin, "idle") == 1
            assert await delete(edge.url, viewer.answer.location) == 200

            async def relay_gone() -> bool:
                return await subscribers(origin, "idle") == 0

            await eventually(relay_gone, what="A to lose the relay")
            await nothing_left(edge)
            metrics = await samples(edge)
            assert counted(metrics, "golive_relays_ended_total", reason="relay_idle") == 1
            assert ended(metrics, "publisher") == {"relay_idle": 1}
            # The relay left A with a DELETE (not by just closing its transport).
            assert ended(await samples(origin), "subscriber") == {"client_left": 1}
        finally:
            await close_all(publisher, *([viewer] if viewer else []))


# -- pulls that fail ------------------------------------------------------------------------


async def test_an_origin_without_a_publisher_is_refused_and_leaves_nothing(
    origin: Origin, edge: ServerThread
) -> None:
    assert await ensure(edge, "nobody", origin.url) == Refused(Refusal.NO_PUBLISHER)
    await nothing_left(edge)
    metrics = await samples(edge)
    assert counted(metrics, "golive_relay_pulls_failed_total", reason="no_publisher") == 1
    assert counted(metrics, "golive_relays_started_total") == 0


async def test_an_unreachable_origin_raises_and_leaves_nothing(edge: ServerThread) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))  # a port nobody listens on
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(RelayUnavailableError, match="could not be reached"):
            await ensure(edge, "nowhere", url)
    await nothing_left(edge)
    metrics = await samples(edge)
    assert counted(metrics, "golive_relay_pulls_failed_total", reason="unavailable") == 1


@contextlib.asynccontextmanager
async def broken_origin(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 (on the test's loop) that answers every request with
    ``handler``: an origin that fails in a way a golive origin would not on its own."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_origin_answering_an_error_raises_and_leaves_nothing(edge: ServerThread) -> None:
    async def unavailable(_request: web.Request) -> web.Response:
        return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "5"})

    async with broken_origin(unavailable) as url:
        with pytest.raises(RelayUnavailableError, match="answered 503"):
            await ensure(edge, "busy", url)
    await nothing_left(edge)


async def test_an_origin_that_never_answers_times_out_and_leaves_nothing(
    edge: ServerThread,
) -> None:
    never = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await never.wait()
        return web.Response(status=500)

    def short_timeout() -> None:
        relays(edge)._timeout = 1.0

    await call(edge, short_timeout)
    async with broken_origin(hang) as url:
        with pytest.raises(RelayUnavailableError, match="TimeoutError"):
            await ensure(edge, "hung", url)
        never.set()
    await nothing_left(edge)


async def test_an_unusable_answer_raises_and_the_origin_session_is_deleted(
    edge: ServerThread,
) -> None:
    """The origin accepts the offer (201, a session) but its answer is not SDP golive can
    use: the pull fails, nothing is left here, and the session there is DELETEd."""
    deleted = asyncio.Event()

    async def garbage(request: web.Request) -> web.Response:
        if request.method == "DELETE" and request.path == "/api/whep/play/junk/s1":
            deleted.set()
            return web.Response(status=200)
        return web.Response(
            status=201,
            text="v=0\r\nthis is not an answer\r\n",
            content_type="application/sdp",
            headers={"Location": "/api/whep/play/junk/s1"},
        )

    async with broken_origin(garbage) as url:
        with pytest.raises(RelayUnavailableError, match="cannot be used"):
            await ensure(edge, "junk", url)
        await asyncio.wait_for(deleted.wait(), DEADLINE)
    await nothing_left(edge)
