"""Packet-level fuzz: hostile RTP, RTCP, STUN, DTLS and garbage datagrams against a live room.

A real golive server, a real aiortc publisher and three real aiortc viewers (the *stage*) are
connected and receiving. Hypothesis draws structured hostile datagrams (``tests/media/
packets.py``) and each is sent one of five ways:

- through the publisher's or the first ("fuzzing") viewer's own session, SRTP/SRTCP-protected
  with that client's own keys (its ``RTCDtlsTransport._tx_srtp``), as the peer itself could;
- unprotected over the publisher's or the fuzzing viewer's nominated ICE pair;
- from off-path addresses (UDP sockets on 127.0.0.1 and 127.0.0.2 that are part of no ICE
  pair) to one or every server media port named in the answers' candidates.

After every datagram, a STUN round trip to each live port it hit (the server answers a Binding
request without credentials with a 400, and reads a socket's datagrams in order: the answer
means the fuzz datagram was taken in) and a call on the server's loop make sure the server has
handled it. Then nothing may have died: every session of the stage still up (its DTLS receive
task and its receiver-report task running, ICE completed), no exception on the server's loop or
in its tasks, no ERROR record and no third-party WARNING from the server's thread, no session
ended, nothing malformed sent back to a client (RTCP is checked stricter than aiortc parses
it), nothing but STUN sent to an off-path address, and never more retransmissions for a NACK
than the distinct sequence numbers it lists. Every ``BATCH`` datagrams, also: every viewer still
receives audio and video (each kind on its own), where a stream stopped is told apart (the
publisher stopped sending it, the server's receivers stopped taking it in, or the server
stopped forwarding it), and ``/api/rooms`` still shows the room with its publisher and
viewers. After bursts of new SSRCs, and at the end, receiver reports must still reach the
publisher and sender reports the viewers; when the clients leave, every session must end.

The clients must not break either (they are the attacker's tools, and a broken tool would hide
what the server does): their DTLS transports and the publisher's RTP tasks are checked too.

Problems are collected, not raised (a live server's examples don't replay for shrinking), and
grouped by their cause (where the exception was raised), each with the first datagram that
caused it. When a problem breaks the stage it is rebuilt in a new room and the fuzz goes on,
so one run reports every distinct failure. Inputs that once broke the server
(:func:`regressions`) are sent first, every run; Hypothesis's examples are derandomized (the
same every run) and only generated (no shrinking, no database).

Runs only in the loopback-only network namespace (``tests/media/conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import socket
import struct
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pylibsrtp
import pytest
import structlog
from aiortc import RTCPeerConnection
from aiortc.rtp import RtcpPacket, is_rtcp
from aiortc.sdp import SessionDescription
from hypothesis import HealthCheck, Phase, given, settings

from golive.actors.messages import SessionId
from golive.http.keys import MEDIA
from golive.media.hooks import ForwardingReceiver
from tests.media import packets
from tests.media.clients import Publisher, Viewer, close_all, publish, view
from tests.media.packets import (
    Credentials,
    Example,
    IceCredentials,
    Integrity,
    Mutation,
    Ref,
    Route,
    Rtcp,
    RtcpPart,
    Rtp,
    Stun,
    StunAttribute,
    Target,
)
from tests.support import ServerThread, metric_samples, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]

T = TypeVar("T")

ENV = {
    "ICE_HOST_ADDRESSES": "127.0.0.1",
    "STUN_URLS": ",",
    "LOG_LEVEL": "warning",
    # A publisher whose client left ends its room at once: the fuzz checks every session
    # ends with its client (a room waiting for its publisher to reconnect keeps its session).
    "PUBLISHER_RECONNECT_SECONDS": "0",
}
EXAMPLES = 600  # drawn by Hypothesis (derandomized: the same ones every run)
BATCH = 10  # datagrams between checks that every viewer still receives
VIEWERS = 3  # the first one fuzzes; the others only watch
MAX_STAGES = 50  # stages built (one per breakage) before the fuzz gives up
SETTLE = 10.0  # seconds allowed for anything the checks wait for (generous: a busy 2-core box)
BARRIER = 3.0  # seconds a live session's port has to answer a STUN request
REPORTS = 5.0  # seconds for two receiver reports (one every 0.5-1.5 s) and a sender report
OFF_PATH_HOSTS = ("127.0.0.1", "127.0.0.2")
RETRANSMITTED = "golive_rtp_packets_retransmitted_total"
THIRD_PARTY = ("aiortc", "aioice", "asyncio", "pylibsrtp", "aiohttp")
KINDS = ("audio", "video")
FLOWING = 2  # more packets of each kind than this show a stream still flows (video: 30 a second)


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Symptom:
    """Something wrong, seen after a datagram: what (grouped by), the details (a traceback),
    and the cause when it is an exception (``Type at file:line in function``)."""

    kind: str
    detail: str = ""
    cause: str | None = None
    note: bool = False  # seen, counted, no failure


@dataclass
class Finding:
    symptoms: set[str]
    example: str  # the first input that showed it
    details: list[str]  # tracebacks, of the first occurrence
    count: int = 1


@dataclass
class Findings:
    """Distinct failures, each with the first input that showed it. Failures with the same
    causes (exceptions, by where they were raised) are one failure whatever they led to;
    without an exception, the same symptoms are. Notes are what was seen that is no failure."""

    found: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, symptoms: list[Symptom], example: str) -> None:
        for symptom in symptoms:
            if symptom.note:
                self.notes[symptom.kind] += 1
        failures = [s for s in symptoms if not s.note]
        if not failures:
            return
        causes = {s.cause for s in failures if s.cause}
        key = tuple(sorted(causes or {s.kind for s in failures}))
        finding = self.found.get(key)
        if finding is None:
            details = list(dict.fromkeys(s.detail for s in failures if s.detail))
            self.found[key] = Finding({s.kind for s in failures}, example, details)
        else:
            finding.count += 1
            finding.symptoms.update(s.kind for s in failures)

    def report(self) -> str:
        lines = [f"{len(self.found)} distinct failures:"]
        for number, (key, finding) in enumerate(self.found.items(), 1):
            lines.append(f"\n[{number}] {' + '.join(key)} (seen {finding.count} time(s))")
            lines += [f"  - {symptom}" for symptom in sorted(finding.symptoms)]
            lines.append(f"  first input: {finding.example}")
            for detail in finding.details[:3]:
                lines.append("    " + detail.strip().replace("\n", "\n    "))
        if self.notes:
            lines.append("\nnotes (not failures):")
            lines += [f"  {count:5d}  {note}" for note, count in sorted(self.notes.items())]
        return "\n".join(lines)


def short_path(path: str) -> str:
    path = re.sub(r".*/site-packages/", "", path)
    return re.sub(r".*/(golive|tests|asyncio)/", r"\1/", path)


def exception_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def where(exc: BaseException) -> str:
    """``Type at file:line in function`` of the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return exception_name(exc)
    last = frames[-1]
    return f"{exception_name(exc)} at {short_path(last.filename)}:{last.lineno} in {last.name}"


FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def where_in_text(text: str) -> str | None:
    """:func:`where` for a traceback logged as text (aiortc logs its DTLS task's so)."""
    frames = FRAME.findall(text)
    lines = [line for line in text.splitlines() if line.strip()]
    if not frames or not lines:
        return None
    path, line, function = frames[-1]
    return f"{lines[-1].split(':')[0].strip()} at {short_path(path)}:{line} in {function}"


def tail(exc: BaseException, frames: int = 8) -> str:
    return "".join(traceback.format_exception(exc)[-frames:])


def normalise(text: str) -> str:
    """A message with its numbers, addresses and ids taken out (so like ones group)."""
    text = re.sub(r"0x[0-9a-f]+", "0x…", text)
    text = re.sub(r"\b[0-9a-f]{16,}\b", "…", text)
    return re.sub(r"\d+", "N", text)


# --------------------------------------------------------------------------- watching


class Records(logging.Handler):
    """WARNING and above from the standard library's loggers: from the server's thread, an
    ERROR or any third-party warning is a failure; anything else a note."""

    def __init__(self, sink: Callable[[Symptom], None]) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        server = record.threadName == "golive-test-loop"
        message = record.getMessage()
        lines = [line for line in message.splitlines() if line.strip()]
        summary = normalise(lines[0] if lines else "")
        detail, cause = "", None
        if record.exc_info and record.exc_info[1] is not None:
            detail, cause = tail(record.exc_info[1]), where(record.exc_info[1])
        elif len(lines) > 1:  # aiortc logs a traceback as its message
            detail, cause = message, where_in_text(message)
            summary = "a traceback"
        third_party = record.name.split(".")[0] in THIRD_PARTY
        side = "server" if server else "client"
        kind = f"{side} log {record.name} {record.levelname}: {summary}"
        if cause is not None:
            kind += f": {cause}"
        failure = server and (record.levelno >= logging.ERROR or third_party)
        self._sink(Symptom(kind, detail, cause, note=not failure))


@dataclass
class Watch:
    """Everything the server's and the clients' loops, tasks and logs report, until drained."""

    # appended to from both loops' threads; popped from the test's
    pending: deque[Symptom] = field(default_factory=deque)
    events: list[MutableMapping[str, Any]] = field(default_factory=list)  # golive's structlog
    seen_events: int = 0

    def add(self, symptom: Symptom) -> None:
        self.pending.append(symptom)

    def loop_handler(
        self, side: str
    ) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exception = context.get("exception")
            message = normalise(str(context.get("message", "")))
            if isinstance(exception, BaseException):
                cause = where(exception)
                self.add(Symptom(f"{side} loop: {message}: {cause}", tail(exception), cause))
            else:
                self.add(Symptom(f"{side} loop: {message}"))

        return handler

    def drain(self, stage: Stage | None) -> list[Symptom]:
        """What was reported since the last drain."""
        new = self.events[self.seen_events :]
        self.seen_events += len(new)
        for event in new:
            level = str(event.get("log_level", ""))
            name = str(event.get("event", ""))
            if name == "session ended" and stage is not None:
                role = stage.role_of(str(event.get("session", "")))
                reason = str(event.get("reason", ""))
                if role is not None and reason != "publisher_left":
                    self.add(Symptom(f"server: the {role}'s session ended ({reason})"))
            elif level in ("error", "critical", "exception"):
                self.add(Symptom(f"server log golive {level}: {normalise(name)}", repr(event)))
            elif level == "warning":
                self.add(Symptom(f"server log golive warning: {normalise(name)}", note=True))
        found = []
        with contextlib.suppress(IndexError):
            while True:
                found.append(self.pending.popleft())
        return found


@contextlib.contextmanager
def watching(server: ServerThread, watch: Watch) -> Iterator[None]:
    records = Records(watch.add)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(records)
    client_loop = asyncio.get_running_loop()
    client_before = client_loop.get_exception_handler()
    client_loop.set_exception_handler(watch.loop_handler("client"))
    server.call(lambda: server._loop.set_exception_handler(watch.loop_handler("server")))
    try:
        with structlog.testing.capture_logs() as events:
            watch.events = events
            yield
    finally:
        server.call(lambda: server._loop.set_exception_handler(None))
        client_loop.set_exception_handler(client_before)
        root.removeHandler(records)
        root.setLevel(level)


async def on_server(server: ServerThread, function: Callable[[], T]) -> T:
    """Run ``function`` on the server's loop (after everything scheduled before it) without
    blocking this loop."""
    return await asyncio.wait_for(asyncio.wrap_future(server.submit(function)), SETTLE)


async def until(condition: Callable[[], bool], seconds: float = SETTLE) -> bool:
    """Poll ``condition`` on this loop until it holds (True) or ``seconds`` pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --------------------------------------------------------------------------- RTCP checks


def malformed_rtcp(data: bytes) -> str | None:  # noqa: PLR0911  a reason per rule broken
    """Why a compound RTCP packet the server sent is not well-formed (RFC 3550, 4585), or
    None. Stricter than aiortc's parser: count fields must agree with lengths."""
    try:
        RtcpPacket.parse(data)
    except Exception as exc:  # noqa: BLE001  any failure to parse is the finding
        return f"aiortc cannot parse it ({type(exc).__name__}: {exc})"
    position = 0
    while position < len(data):
        if len(data) - position < 4:
            return "trailing bytes after the last packet"
        first, packet_type, length = struct.unpack_from("!BBH", data, position)
        end = position + 4 + 4 * length
        if first >> 6 != 2:
            return f"version {first >> 6}"
        if end > len(data):
            return f"packet type {packet_type} runs past the datagram"
        count = first & 0x1F
        body = len(data[position + 4 : end])
        if first & 0x20 and end != len(data):
            return f"padding on packet type {packet_type}, which is not the last"
        if packet_type == 200 and body != 24 + 24 * count:
            return f"SR with count {count} and {body} bytes"
        if packet_type == 201 and body != 4 + 24 * count:
            return f"RR with count {count} and {body} bytes"
        if packet_type in (205, 206) and body < 8:
            return f"feedback packet of {body} bytes"
        position = end
    return None


# --------------------------------------------------------------------------- the stage


@dataclass
class Client:
    name: str  # "publisher", "fuzzing viewer", "other viewer"
    peer: Publisher | Viewer
    sdp_offer: SessionDescription
    sdp_answer: SessionDescription
    session: str
    received: Counter[str] = field(default_factory=Counter)  # RTP packets by kind (viewers)
    rtcp_in: int = 0  # compound RTCP packets received
    reports_in: int = 0  # of them, with a receiver report on its video (publisher)
    video_seq: int = 0  # the last video sequence number received (viewers)
    sent: Counter[str] = field(default_factory=Counter)  # RTP packets its senders sent, by kind
    last_seq: dict[int, int] = field(default_factory=dict)  # SSRC -> sequence number sent
    malformed: list[str] = field(default_factory=list)

    @property
    def pc(self) -> RTCPeerConnection:
        return self.peer.pc

    @property
    def dtls(self) -> Any:
        return self.pc.getTransceivers()[0].receiver.transport

    @property
    def port(self) -> int:
        return int(self.sdp_answer.media[0].ice_candidates[0].port)

    @property
    def ice(self) -> IceCredentials:
        server, client = self.sdp_answer.media[0].ice, self.sdp_offer.media[0].ice
        assert server is not None
        assert client is not None
        return IceCredentials(
            server_ufrag=str(server.usernameFragment),
            server_pwd=str(server.password),
            client_ufrag=str(client.usernameFragment),
        )


@dataclass
class Stage:
    room: str
    publisher: Client
    viewers: list[Client]
    static: dict[Ref, int]

    @property
    def clients(self) -> list[Client]:
        return [self.publisher, *self.viewers]

    @property
    def fuzzing(self) -> Client:
        return self.viewers[0]

    def role_of(self, session: str) -> str | None:
        return next((c.name for c in self.clients if c.session == session), None)

    def values(self) -> dict[Ref, int]:
        sent = self.publisher.last_seq
        return {
            **self.static,
            Ref.RECENT_SEQ: self.fuzzing.video_seq,
            Ref.PUB_AUDIO_SEQ: sent.get(self.static[Ref.PUB_AUDIO_SSRC], 0),
            Ref.PUB_VIDEO_SEQ: sent.get(self.static[Ref.PUB_VIDEO_SSRC], 0),
        }

    def target_clients(self, target: Target) -> list[Client]:
        return {
            Target.PUBLISHER: [self.publisher],
            Target.VIEWER: [self.fuzzing],
            Target.OTHER_VIEWER: [self.viewers[1]],
            Target.EVERY: self.clients,
        }[target]


def reported_sources(data: bytes) -> set[int]:
    """The SSRCs the receiver reports in a compound RTCP packet are about, read leniently
    (whole 24-byte blocks within each RR's length, whatever its count says)."""
    sources: set[int] = set()
    position = 0
    while position + 8 <= len(data):
        _, packet_type, length = struct.unpack_from("!BBH", data, position)
        end = min(len(data), position + 4 + 4 * length)
        if packet_type == 201:
            for block in range(position + 8, end - 23, 24):
                sources.add(int.from_bytes(data[block : block + 4], "big"))
        position = max(end, position + 4)
    return sources


def watch_rtcp(client: Client, reported: int | None = None) -> None:
    """Check every RTCP packet the server sends ``client`` (after SRTP), count those with a
    receiver report about SSRC ``reported``, then hand it on."""
    dtls = client.dtls
    original = dtls._handle_rtcp_data

    async def checked(data: bytes) -> None:
        client.rtcp_in += 1
        problem = malformed_rtcp(data)
        if problem is not None:
            client.malformed.append(f"{problem}: {data[:48].hex()}")
        if reported is not None and reported in reported_sources(data):
            client.reports_in += 1
        await original(data)

    dtls._handle_rtcp_data = checked


def watch_viewer(client: Client, video_ssrc: int) -> None:
    """Count the RTP packets a viewer receives (before its jitter buffer and decoder), and
    switch its own NACKs off: every NACK the server sees then comes from the fuzz."""
    for transceiver in client.pc.getTransceivers():
        receiver = transceiver.receiver
        original = receiver._handle_rtp_packet

        async def counted(
            packet: Any,
            arrival_time_ms: int,
            original: Any = original,
            kind: str = transceiver.kind,
        ) -> None:
            client.received[kind] += 1
            if packet.ssrc == video_ssrc:
                client.video_seq = packet.sequence_number
            await original(packet, arrival_time_ms=arrival_time_ms)

        async def no_nack(*_: Any) -> None:
            return None

        receiver._handle_rtp_packet = counted  # type: ignore[method-assign]
        receiver._send_rtcp_nack = no_nack  # type: ignore[method-assign,assignment]


def watch_publisher(client: Client) -> None:
    """Note the sequence number of every RTP packet the publisher's own senders send, and
    count those of its media streams (not RTX) by kind."""
    ice = client.dtls.transport
    network = ice._send
    kinds = {t.sender._ssrc: t.kind for t in client.pc.getTransceivers()}

    async def noted(data: bytes) -> None:
        if len(data) >= 12 and 127 < data[0] < 192 and not is_rtcp(data):
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc in kinds:
                client.sent[kinds[ssrc]] += 1
            client.last_seq[ssrc] = int.from_bytes(data[2:4], "big")
        await network(data)

    ice._send = noted


def known_values(publisher: Client, fuzzing: Client, other: Client) -> dict[Ref, int]:
    """The stage's SSRCs, payload types and header extension ids, from the clients and the
    answers (what each peer knows)."""
    values: dict[Ref, int] = {}
    video, audio = publisher.pc.getTransceivers()[:2]
    values[Ref.PUB_VIDEO_SSRC] = video.sender._ssrc
    values[Ref.PUB_RTX_SSRC] = video.sender._rtx_ssrc
    values[Ref.PUB_AUDIO_SSRC] = audio.sender._ssrc
    answer_video = publisher.sdp_answer.media[0]
    values[Ref.SERVER_RECEIVER_SSRC] = answer_video.ssrc[0].ssrc if answer_video.ssrc else 0
    for codec in answer_video.rtp.codecs:
        assert codec.payloadType is not None
        if codec.mimeType.lower() == "video/rtx":
            values[Ref.RTX_PT] = codec.payloadType
        else:
            values.setdefault(Ref.VIDEO_PT, codec.payloadType)
    audio_codec = publisher.sdp_answer.media[1].rtp.codecs[0]
    assert audio_codec.payloadType is not None
    values[Ref.AUDIO_PT] = audio_codec.payloadType
    uris = {
        "urn:ietf:params:rtp-hdrext:sdes:mid": Ref.EXT_MID,
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": Ref.EXT_ABS_SEND_TIME,
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level": Ref.EXT_AUDIO_LEVEL,
    }
    for media in publisher.sdp_answer.media:
        for extension in media.rtp.headerExtensions:
            if extension.uri in uris:
                values[uris[extension.uri]] = extension.id

    def served(client: Client) -> tuple[int, int, int]:
        video, audio = client.sdp_answer.media[:2]
        group = next(g for g in video.ssrc_group if g.semantic == "FID")
        return int(group.items[0]), int(group.items[1]), audio.ssrc[0].ssrc

    (
        values[Ref.SERVER_VIDEO_SSRC],
        values[Ref.SERVER_RTX_SSRC],
        values[Ref.SERVER_AUDIO_SSRC],
    ) = served(fuzzing)
    values[Ref.OTHER_VIEWER_VIDEO_SSRC] = served(other)[0]
    values[Ref.VIEWER_SSRC] = fuzzing.pc.getTransceivers()[0].sender._ssrc
    return values


def client_of(peer: Publisher | Viewer, name: str) -> Client:
    assert peer.answer.status == 201, peer.answer.body
    return Client(
        name=name,
        peer=peer,
        sdp_offer=SessionDescription.parse(peer.pc.localDescription.sdp),
        sdp_answer=SessionDescription.parse(peer.answer.sdp),
        session=peer.answer.location.rsplit("/", 1)[1],
    )


async def build_stage(server: ServerThread, number: int) -> Stage:
    room = f"fuzz{number}"
    publisher = client_of(await publish(server.url, room), "publisher")
    watch_publisher(publisher)
    joined = await asyncio.gather(*(view(server.url, room) for _ in range(VIEWERS)))
    viewers = [
        client_of(peer, "fuzzing viewer" if index == 0 else "other viewer")
        for index, peer in enumerate(joined)
    ]
    static = known_values(publisher, viewers[0], viewers[1])
    for viewer in viewers:
        video_ssrc = next(g for g in viewer.sdp_answer.media[0].ssrc_group).items[0]
        watch_viewer(viewer, int(video_ssrc))
    stage = Stage(room, publisher, viewers, static)
    connected = await until(
        lambda: (
            all(c.pc.connectionState == "connected" for c in stage.clients)
            and all(v.video_seq for v in viewers)
        ),
        seconds=30,
    )
    assert connected, (
        f"stage {room} did not connect: {[c.pc.connectionState for c in stage.clients]}"
    )
    watch_rtcp(publisher, static[Ref.PUB_VIDEO_SSRC])
    for viewer in viewers:
        watch_rtcp(viewer)
    return stage


async def close_clients(stage: Stage) -> None:
    await close_all(*(c.peer for c in stage.clients))


# --------------------------------------------------------------------------- sockets


class Probe:
    """An off-path UDP socket: sends fuzz (an empty datagram too: asyncio's transports drop
    those silently) and STUN barriers, and keeps whatever else comes back to it."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.received: list[tuple[tuple[str, int], bytes]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            future = self.waiting.pop(data[8:20], None) if len(data) >= 20 else None
            if future is not None and not future.done():
                future.set_result(None)
            else:
                self.received.append((addr, data))

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    async def barrier(
        self, ports: list[int], alive: Callable[[], Awaitable[set[int]]]
    ) -> list[int]:
        """A STUN Binding request without credentials to each port, and wait until each
        answers (the server answers 400) or its session is found dead: the ports that did
        neither in time."""
        futures: dict[int, asyncio.Future[None]] = {}
        for port in ports:
            transaction = os.urandom(12)
            futures[port] = self.waiting[transaction] = self._loop.create_future()
            self.send(struct.pack("!HHI12s", 0x0001, 0, packets.STUN_COOKIE, transaction), port)
        deadline = self._loop.time() + BARRIER
        pending = set(futures.values())
        while pending and self._loop.time() < deadline:
            _, pending = await asyncio.wait(pending, timeout=0.05)
            if pending:
                live = await alive()
                pending = {f for p, f in futures.items() if f in pending and p in live}
        for future in futures.values():
            future.cancel()
        return [port for port, future in futures.items() if future in pending]

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def is_stun(data: bytes) -> bool:
    return len(data) >= 20 and data[0] < 4 and data[4:8] == struct.pack("!I", packets.STUN_COOKIE)


# --------------------------------------------------------------------------- sending


@dataclass
class Fuzz:
    server: ServerThread
    watch: Watch
    findings: Findings
    off_path: list[Probe]
    barrier: Probe
    stage: Stage | None = None
    stages: int = 0
    sent: int = 0
    broken: bool = False  # the stage needs rebuilding
    broke_by: str = ""  # what broke it
    building: float = 0.0  # seconds spent building stages

    async def rebuild(self) -> None:
        started = time.monotonic()
        old, self.stage = self.stage, None
        if old is not None:
            await self.retire(old, f"after {self.broke_by}")
        self.stage = await build_stage(self.server, self.stages)
        self.stages += 1
        self.broken = False
        self.building += time.monotonic() - started

    async def retire(self, stage: Stage, what: str) -> None:
        """Close the stage's clients: every one of its sessions must end (they left)."""
        await close_clients(stage)
        sessions = {c.session: c.name for c in stage.clients}

        def staying() -> list[Symptom]:
            """The sessions still there, and why their peer connection did not close."""
            found = []
            for session, name in sessions.items():
                peer = self.server.app[MEDIA].session(SessionId(session))
                if peer is None:
                    continue
                kind = f"server: the {name}'s session did not end when its client left"
                closing = peer.pc._RTCPeerConnection__closeTask  # type: ignore[attr-defined]
                if closing is not None and closing.done() and closing.exception():
                    exc = closing.exception()
                    kind += f" (closing its peer connection raised {where(exc)})"
                    found.append(Symptom(kind, tail(exc), f"{where(exc)} (closing)"))
                else:
                    found.append(Symptom(kind))
            return found

        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE / 2
        left = await on_server(self.server, staying)
        while left and loop.time() < deadline:
            await asyncio.sleep(0.05)
            left = await on_server(self.server, staying)
        await on_server(self.server, gc.collect)
        # (its sessions' ends are no symptoms: the stage is no more)
        self.record(left + self.watch.drain(None), f"the clients leaving, {what}")

    async def live_ports(self) -> set[int]:
        stage = self.stage
        assert stage is not None
        return await on_server(self.server, lambda: live_ports(self.server, stage))

    def record(self, symptoms: list[Symptom], example: str) -> None:
        self.findings.add(symptoms, example)
        if any(breaks_stage(s) for s in symptoms) and not self.broken:
            self.broken = True
            self.broke_by = example.split("\n", maxsplit=1)[0]

    def offpath_received(self) -> list[Symptom]:
        found = []
        for probe in [*self.off_path, self.barrier]:
            for (_, port), data in probe.received:
                if not is_stun(data):
                    detail = f"{len(data)} bytes from port {port}: {data[:32].hex()}"
                    found.append(
                        Symptom("server: sent a non-STUN datagram to an off-path address", detail)
                    )
                    continue
                message_class = int.from_bytes(data[0:2], "big") & 0x0110
                kind = {0x0000: "request", 0x0100: "success response", 0x0110: "error"}.get(
                    message_class, "indication"
                )
                found.append(Symptom(f"server STUN {kind} to an off-path address", note=True))
            probe.received.clear()
        return found


def breaks_stage(symptom: Symptom) -> bool:
    """Whether the stage is no longer what the fuzz needs (a session, task or client down):
    it is rebuilt. An exception that killed nothing, a malformed packet sent back, an
    amplification, don't."""
    return not symptom.note and symptom.kind.startswith(
        ("server: the ", "client:", "the ", "server: /api/rooms")
    )


def patch_live_sequence(data: bytes, example: Example, stage: Stage) -> bytes:
    """An SRTP packet in a stream the publisher is sending keeps close to its numbering.

    A packet numbered far ahead would advance SRTP's replay window (the server's, and the
    client's own for sending), and the publisher's real packets after it would be dropped as
    too old: the publisher silencing itself, not an attack, so not what this fuzz is for."""
    if example.route is not Route.PUBLISHER_SRTP:
        return data
    if len(data) < 12 or data[0] >> 6 != 2 or is_rtcp(data):
        return data
    ssrc = int.from_bytes(data[8:12], "big")
    publisher = stage.publisher
    live = dict(publisher.last_seq)
    video = publisher.pc.getTransceivers()[0].sender
    live[video._rtx_ssrc] = video._RTCRtpSender__rtx_sequence_number  # type: ignore[attr-defined]
    if ssrc not in live:
        return data
    sequence = (live[ssrc] + 1 + int.from_bytes(data[2:4], "big") % 100) & 0xFFFF
    return data[:2] + sequence.to_bytes(2, "big") + data[4:]


def nack_budget(data: bytes, stage: Stage) -> int:
    """The most retransmissions a correct server sends for ``data`` from the fuzzing viewer:
    the distinct sequence numbers of every generic NACK in it for one of its streams (read
    leniently: whatever the rest of the packet is)."""
    senders = {stage.static[Ref.SERVER_VIDEO_SSRC], stage.static[Ref.SERVER_AUDIO_SSRC]}
    budget = 0
    position = 0
    while position + 12 <= len(data):
        _, packet_type, length = struct.unpack_from("!BBH", data, position)
        end = min(len(data), position + 4 + 4 * length)
        media = int.from_bytes(data[position + 8 : position + 12], "big")
        if packet_type == 205 and media in senders:
            lost: set[int] = set()
            for fci in range(position + 12, end - 3, 4):
                pid, blp = struct.unpack_from("!HH", data, fci)
                lost.add(pid)
                lost.update((pid + d + 1) & 0xFFFF for d in range(16) if blp >> d & 1)
            budget += len(lost)
        position = max(end, position + 4)
    return budget


async def send(fuzz: Fuzz, example: Example) -> tuple[bytes, list[int]] | None:
    """Send ``example``; what was sent (before SRTP) and the server ports it went to, or None
    when the client's SRTP would not protect it (nothing was sent)."""
    stage = fuzz.stage
    assert stage is not None
    values = stage.values()

    def built(client: Client) -> bytes:
        data = packets.render(example.packet, values, client.ice)
        return data if example.mutation is None else example.mutation.apply(data)

    if example.route is Route.OFF_PATH:
        probe = fuzz.off_path[example.source % len(fuzz.off_path)]
        targets = stage.target_clients(example.target)
        data = b""
        for client in targets:
            data = built(client)
            probe.send(data, client.port)
        return data, [c.port for c in targets]
    client = (
        stage.publisher
        if example.route in (Route.PUBLISHER_SRTP, Route.PUBLISHER_RAW)
        else stage.fuzzing
    )
    data = wire = patch_live_sequence(built(client), example, stage)
    if example.route in (Route.PUBLISHER_SRTP, Route.VIEWER_SRTP):
        srtp = client.dtls._tx_srtp
        try:
            wire = srtp.protect_rtcp(data) if is_rtcp(data) else srtp.protect(data)
        except (pylibsrtp.Error, ValueError) as exc:  # a bad header, or over 1500 bytes
            fuzz.findings.notes[f"client SRTP refused to protect: {normalise(str(exc))}"] += 1
            return None
    # Straight onto the client's socket of the nominated pair (the pair's transport would
    # drop an empty datagram without a word).
    pair = client.dtls.transport._connection._nominated[1]
    pair.protocol.transport._sock.sendto(wire, pair.remote_addr)
    return data, [client.port]


# --------------------------------------------------------------------------- checks


def server_state(server: ServerThread, stage: Stage) -> list[Symptom]:
    """On the server's loop: what is wrong with the stage's sessions."""
    hub = server.app[MEDIA]
    problems: list[Symptom] = []
    for client in stage.clients:
        role = client.name
        peer = hub.session(SessionId(client.session))
        if peer is None:
            problems.append(Symptom(f"server: the {role}'s session is gone"))
            continue
        if peer.ended is not None:
            problems.append(Symptom(f"server: the {role}'s session ended ({peer.ended.value})"))
        transceivers = peer.pc.getTransceivers()
        for dtls in {t.receiver.transport for t in transceivers}:
            task = dtls._task
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    cause = where(exc)
                    kind = f"server: the {role}'s DTLS receive task died: {cause}"
                    problems.append(Symptom(kind, tail(exc), cause))
            if dtls.state != "connected":
                problems.append(Symptom(f"server: the {role}'s DTLS transport is {dtls.state}"))
            if dtls.transport.state != "completed":
                problems.append(Symptom(f"server: the {role}'s ICE is {dtls.transport.state}"))
        for transceiver in transceivers:
            receiver = transceiver.receiver
            task = getattr(receiver, "_golive_rtcp", None)
            if (
                isinstance(receiver, ForwardingReceiver)
                and task is not None
                and task.done()
                and not task.cancelled()  # (by the session's end)
            ):
                exc = task.exception()
                ended = where(exc) if exc is not None else "returned"
                kind = f"server: the {role}'s receiver-report task ended: {ended}"
                detail = tail(exc) if exc is not None else ""
                problems.append(Symptom(kind, detail, ended if exc is not None else None))
    return problems


async def retransmitted(server: ServerThread) -> float:
    """Packets the server has retransmitted to viewers so far (``/metrics``)."""
    _, body = await asyncio.to_thread(server.get, "/metrics")
    samples = metric_samples(body.decode())
    return sum(v for (name, _), v in samples.items() if name == RETRANSMITTED)


def live_ports(server: ServerThread, stage: Stage) -> set[int]:
    """On the server's loop: the media ports of the stage's sessions whose ICE is still up
    (a dead one would only make the barrier wait)."""
    ports = set()
    for client in stage.clients:
        peer = server.app[MEDIA].session(SessionId(client.session))
        if peer is None:
            continue
        ice = peer.pc.getTransceivers()[0].receiver.transport.transport
        if ice.state == "completed" and not ice._connection._closing:
            ports.add(client.port)
    return ports


def client_state(stage: Stage) -> list[Symptom]:
    """What is wrong on the clients: malformed RTCP the server sent them, or a broken tool."""
    problems: list[Symptom] = []
    for client in stage.clients:
        for malformed in client.malformed:
            reason = normalise(malformed.split(":")[0])
            kind = f"server: sent the {client.name} malformed RTCP ({reason})"
            problems.append(Symptom(kind, malformed))
        client.malformed.clear()
        task = client.dtls._task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            exc = task.exception()
            cause = where(exc)
            kind = f"client: the {client.name}'s DTLS receive task died: {cause}"
            problems.append(Symptom(kind, tail(exc), f"client {cause}"))
        if client.pc.connectionState != "connected":
            problems.append(Symptom(f"client: the {client.name} is {client.pc.connectionState}"))
    for transceiver in stage.publisher.pc.getTransceivers():
        task = transceiver.sender._RTCRtpSender__rtp_task  # type: ignore[attr-defined]
        if task is not None and task.done():
            problems.append(Symptom("client: the publisher's RTP sender stopped"))
    return problems


async def check_example(
    fuzz: Fuzz, example: Example, sent: bytes, ports: list[int], before: float
) -> None:
    """Right after one datagram: nothing died, nothing amplified, nothing sent off-path."""
    stage = fuzz.stage
    assert stage is not None
    symptoms: list[Symptom] = []
    for port in await fuzz.barrier.barrier(ports, fuzz.live_ports):
        role = next((c.name for c in stage.clients if c.port == port), str(port))
        symptoms.append(Symptom(f"server: the {role}'s media port stopped answering STUN"))
    symptoms += await on_server(fuzz.server, lambda: server_state(fuzz.server, stage))
    if example.route is Route.VIEWER_SRTP and (budget := nack_budget(sent, stage)):
        resent = await retransmitted(fuzz.server) - before
        if resent > budget:
            symptoms.append(
                Symptom(
                    "server: more retransmissions than the NACK's distinct sequence numbers",
                    f"{int(resent)} retransmissions for {budget} distinct",
                )
            )
    symptoms += client_state(stage)
    symptoms += fuzz.offpath_received()
    symptoms += fuzz.watch.drain(stage)
    fuzz.record(symptoms, example.describe(sent))


def taken_in(server: ServerThread, stage: Stage) -> Counter[str]:
    """On the server's loop: the packets of the publisher's media streams its session's
    receivers have taken in (after SRTP and RTP routing), by kind."""
    taken: Counter[str] = Counter()
    peer = server.app[MEDIA].session(SessionId(stage.publisher.session))
    if peer is None:
        return taken
    ssrcs = {"audio": stage.static[Ref.PUB_AUDIO_SSRC], "video": stage.static[Ref.PUB_VIDEO_SSRC]}
    for transceiver in peer.pc.getTransceivers():
        receiver = transceiver.receiver
        if isinstance(receiver, ForwardingReceiver) and receiver.track_kind in ssrcs:
            stream = receiver._golive_streams.get(ssrcs[receiver.track_kind])
            taken[receiver.track_kind] += 0 if stream is None else stream.packets_received
    return taken


async def check_stage(fuzz: Fuzz, batch: list[str]) -> None:
    """Every viewer still receives audio and video, the publisher still sends both and the
    server still takes them in, ``/api/rooms`` still shows the room; and whatever a collected
    dead task reports. Each kind on its own (video dying went unseen while audio flowed), and
    where a stream stops is told apart: at the publisher (the tool broke), between it and the
    server's receivers (SRTP or routing), or between them and the viewers (forwarding)."""
    stage = fuzz.stage
    assert stage is not None
    symptoms: list[Symptom] = []
    publisher = stage.publisher
    received = [Counter(v.received) for v in stage.viewers]
    sent = Counter(publisher.sent)
    taken = await on_server(fuzz.server, lambda: taken_in(fuzz.server, stage))

    def flowing() -> bool:
        return all(
            publisher.sent[kind] > sent[kind] + FLOWING
            and all(
                v.received[kind] > before[kind] + FLOWING
                for v, before in zip(stage.viewers, received, strict=True)
            )
            for kind in KINDS
        )

    await until(flowing)
    taken_now = await on_server(fuzz.server, lambda: taken_in(fuzz.server, stage))
    for kind in KINDS:
        if publisher.sent[kind] <= sent[kind] + FLOWING:
            symptoms.append(Symptom(f"client: the publisher stopped sending {kind}"))
        elif taken_now[kind] <= taken[kind] + FLOWING:
            symptoms.append(
                Symptom(f"server: the publisher's {kind} stops at the server (SRTP or routing)")
            )
        else:
            for viewer, before in zip(stage.viewers, received, strict=True):
                if viewer.received[kind] <= before[kind] + FLOWING:
                    symptoms.append(
                        Symptom(f"server: the {viewer.name} gets no more {kind} (it is taken in)")
                    )
    _, body = await asyncio.to_thread(fuzz.server.get, "/api/rooms")
    room = next((r for r in json.loads(body) if r.get("name") == stage.room), None)
    if room is None or not room.get("hasPublisher") or room.get("subscribers") != VIEWERS:
        symptoms.append(Symptom("server: /api/rooms lost the room, its publisher or a viewer"))
    await on_server(fuzz.server, gc.collect)  # a task that died unseen reports when collected
    symptoms += client_state(stage)
    symptoms += fuzz.watch.drain(stage)
    shown = "\n        ".join(batch[-BATCH:])
    fuzz.record(symptoms, f"one of the datagrams before it:\n        {shown}")


async def check_reports(fuzz: Fuzz, what: str) -> None:
    """The publisher still gets receiver reports on its video (two more: the second surely
    made after what was just sent), and every viewer still gets RTCP (sender reports)."""
    stage = fuzz.stage
    assert stage is not None
    reports = stage.publisher.reports_in
    rtcp = [v.rtcp_in for v in stage.viewers]
    await until(
        lambda: (
            stage.publisher.reports_in >= reports + 2
            and all(v.rtcp_in > c for v, c in zip(stage.viewers, rtcp, strict=True))
        ),
        REPORTS,
    )
    symptoms: list[Symptom] = []
    if stage.publisher.reports_in < reports + 2:
        symptoms.append(Symptom("server: the publisher gets no more receiver reports"))
    for viewer, count in zip(stage.viewers, rtcp, strict=True):
        if viewer.rtcp_in <= count:
            symptoms.append(Symptom(f"server: the {viewer.name} gets no more RTCP"))
    symptoms += await on_server(fuzz.server, lambda: server_state(fuzz.server, stage))
    symptoms += client_state(stage) + fuzz.watch.drain(stage)
    fuzz.record(symptoms, what)


# --------------------------------------------------------------------------- regressions


def remb(count: int, listed: int) -> Rtcp:
    """A REMB (draft-alvestrand-rmcat-remb) announcing ``count`` SSRCs and listing ``listed``."""
    body: tuple[packets.Piece, ...] = (
        (Ref.VIEWER_SSRC, "!I"),
        (0, "!I"),
        b"REMB",
        bytes([count]),
        b"\x01\x02\x03",
        *(((Ref.SERVER_VIDEO_SSRC, "!I"),) * listed),
    )
    return Rtcp((RtcpPart(206, 15, body),))


def one_byte_extension(ident: Ref, length: int) -> packets.HeaderExtension:
    """A one-byte header extension giving extension ``ident`` ``length`` bytes
    (abs-send-time has 3, ssrc-audio-level 1)."""
    return packets.HeaderExtension(0xBEDE, ((ident, length, bytes(length)),))


def duplicate_nack(distinct: int, times: int) -> Rtcp:
    pids = tuple(packets.Near(Ref.RECENT_SEQ, -offset) for offset in range(distinct))
    body: tuple[packets.Piece, ...] = ((Ref.VIEWER_SSRC, "!I"), (Ref.SERVER_VIDEO_SSRC, "!I"))
    for _ in range(times):
        for pid in pids:
            body += ((pid, "!H"), (0, "!H"))
    return Rtcp((RtcpPart(205, 1, body),))


@dataclass(frozen=True)
class Burst:
    """Many SRTP packets from the publisher, each with a new SSRC, then receiver reports must
    still come, well-formed."""

    ssrcs: int

    def examples(self) -> list[Example]:
        return [
            Example(Route.PUBLISHER_SRTP, Rtp(ssrc=0x5EED0000 + n, sequence=n, payload=b"\x00"))
            for n in range(self.ssrcs)
        ]


@dataclass(frozen=True)
class StreamsCheck:
    """Check at once that every stream still flows (:func:`check_stage`), before what follows
    can hide what the datagrams before did."""


Step = Example | Burst | StreamsCheck


def regressions() -> list[Step]:
    """Inputs that broke golive (issue 12), sent first on every run."""
    stun_bad_priority = Stun(attributes=(StunAttribute(0x0024, b"\x00\x01"),))
    close_notify = packets.Dtls((packets.DtlsRecord(21, 0xFEFD, 0, 99, b"\x01\x00"),))
    hello = packets.Dtls(
        (
            packets.DtlsRecord(
                22,
                0xFEFF,
                0,
                0,
                packets.handshake_fragment(1, packets.client_hello(), message_seq=0, offset=0),
            ),
        )
    )
    return [
        # One empty datagram from anywhere ended the session (IndexError in aiortc's DTLS).
        Example(Route.OFF_PATH, b"", target=Target.PUBLISHER),
        Example(Route.OFF_PATH, b"", target=Target.OTHER_VIEWER),
        Example(Route.VIEWER_RAW, b""),
        # Past the 1500 bytes pylibsrtp unprotects: ValueError, which aiortc does not catch.
        Example(Route.OFF_PATH, b"\x80" + bytes(1500), target=Target.OTHER_VIEWER),
        Example(Route.OFF_PATH, b"\x80\xc8" + bytes(1499), target=Target.VIEWER),
        Example(Route.PUBLISHER_RAW, b"\x90" + bytes(2000)),
        # A byte of each demultiplexing range.
        *(Example(Route.OFF_PATH, bytes([b]), target=Target.EVERY) for b in (0, 20, 64, 128, 255)),
        # A REMB whose SSRC count exceeds its length: struct.error in aiortc's RTCP routing.
        Example(Route.VIEWER_SRTP, remb(count=5, listed=0)),
        Example(Route.PUBLISHER_SRTP, remb(count=200, listed=1)),
        # An authenticated Binding request without PRIORITY: KeyError in aioice's
        # check_incoming (from anyone who saw the SDP).
        Example(
            Route.OFF_PATH,
            Stun(credentials=Credentials.VALID, integrity=Integrity.VALID, fingerprint=True),
            target=Target.EVERY,
        ),
        # STUN attributes of the wrong length: struct.error in aioice's parser.
        Example(Route.OFF_PATH, stun_bad_priority, target=Target.EVERY),
        Example(Route.OFF_PATH, Stun(attributes=(StunAttribute(0x802A, b"\x00" * 4),))),
        Example(
            Route.OFF_PATH, Stun(fingerprint=None, attributes=(StunAttribute(0x8028, b"\x00"),))
        ),
        # Header extensions of the wrong length: struct.error in aiortc's RTP parser.
        Example(
            Route.PUBLISHER_SRTP,
            Rtp(ssrc=0x5EEDFFFF, extension=one_byte_extension(Ref.EXT_ABS_SEND_TIME, 1)),
        ),
        Example(
            Route.VIEWER_SRTP,
            Rtp(ssrc=0x5EEDFFFE, extension=one_byte_extension(Ref.EXT_ABS_SEND_TIME, 2)),
        ),
        Example(
            Route.PUBLISHER_SRTP,
            Rtp(
                payload_type=Ref.AUDIO_PT,
                ssrc=0x5EEDFFFD,
                extension=one_byte_extension(Ref.EXT_AUDIO_LEVEL, 2),
            ),
        ),
        # RTX too short to carry the original sequence number.
        Example(
            Route.PUBLISHER_SRTP,
            Rtp(payload_type=Ref.RTX_PT, ssrc=Ref.PUB_RTX_SSRC, payload=b"\x01"),
        ),
        # The same 17 sequence numbers 19 times in one NACK (as many as SRTCP fits in 1500 bytes).
        Example(Route.VIEWER_SRTP, duplicate_nack(17, 19)),
        # DTLS from off-path: a plaintext close_notify, a ClientHello.
        Example(Route.OFF_PATH, close_notify, target=Target.EVERY),
        Example(Route.OFF_PATH, hello, target=Target.EVERY),
        Example(Route.OFF_PATH, Mutation(cut=20).apply(hello.render()), target=Target.EVERY),
        # A packet of an SSRC the track does not know (routed to it by its payload type), far
        # ahead of the track's stream: each viewer's numbering jumped with it, and the
        # server's SRTP then refused every later packet of the track as too old, for every
        # viewer, silently, until the publisher's numbering caught up (minutes).
        Example(
            Route.PUBLISHER_SRTP,
            Rtp(
                payload_type=Ref.AUDIO_PT,
                ssrc=0x5EEDFFFC,
                sequence=packets.Near(Ref.PUB_AUDIO_SEQ, 5000),
                payload=b"\x00",
            ),
        ),
        Example(
            Route.PUBLISHER_SRTP,
            Rtp(ssrc=0x5EEDFFFB, sequence=packets.Near(Ref.PUB_VIDEO_SEQ, 5000), payload=b"\x00"),
        ),
        # (checked before the bursts: their new SSRCs, numbered from 0, moved the numbering
        # again, back into SRTP's window by chance about half the time)
        StreamsCheck(),
        # More SSRCs than a receiver report holds (31), than its count byte holds (255).
        Burst(40),
        Burst(300),
    ]


# --------------------------------------------------------------------------- the run


def draw_examples(count: int) -> list[Example]:
    drawn: list[Example] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(packets.examples())
    def collect(example: Example) -> None:
        drawn.append(example)

    collect()
    return drawn


async def fuzz_one(fuzz: Fuzz, example: Example, batch: list[str]) -> None:
    if fuzz.broken:
        await fuzz.rebuild()
        batch.clear()
    stage = fuzz.stage
    assert stage is not None
    before = 0.0
    if example.route is Route.VIEWER_SRTP:
        before = await retransmitted(fuzz.server)
    result = await send(fuzz, example)
    if result is None:
        return
    data, ports = result
    fuzz.sent += 1
    batch.append(example.describe(data).replace("\n      ", " / "))
    await check_example(fuzz, example, data, ports, before)
    if len(batch) % BATCH == 0 and not fuzz.broken:
        await check_stage(fuzz, batch)


async def run_step(fuzz: Fuzz, step: Step, batch: list[str]) -> None:
    if isinstance(step, Example):
        await fuzz_one(fuzz, step, batch)
        return
    if isinstance(step, StreamsCheck):
        if not fuzz.broken:
            await check_stage(fuzz, batch)
        return
    if fuzz.broken:
        await fuzz.rebuild()
    for example in step.examples():
        result = await send(fuzz, example)
        assert result is not None
    stage = fuzz.stage
    assert stage is not None
    await fuzz.barrier.barrier([stage.publisher.port], fuzz.live_ports)
    await check_reports(fuzz, f"{step.ssrcs} SRTP packets from the publisher, each a new SSRC")


async def test_hostile_packets_end_stall_or_break_nothing() -> None:
    examples = await asyncio.to_thread(draw_examples, EXAMPLES)
    steps: list[Step] = [*regressions(), *examples]
    started = time.monotonic()
    with running_server(ENV) as server:
        probes: list[Probe] = []
        try:
            probes += [Probe(host) for host in (*OFF_PATH_HOSTS, "127.0.0.1")]
            watch = Watch()
            fuzz = Fuzz(server, watch, Findings(), off_path=probes[:-1], barrier=probes[-1])
            with watching(server, watch):
                await fuzz.rebuild()
                batch: list[str] = []
                for step in steps:
                    if fuzz.stages > MAX_STAGES:
                        fuzz.record(
                            [Symptom(f"fuzz: gave up after {MAX_STAGES} broken stages")],
                            f"{fuzz.sent} datagrams sent",
                        )
                        break
                    await run_step(fuzz, step, batch)
                if not fuzz.broken:
                    await check_stage(fuzz, batch)
                    await check_reports(fuzz, "the end of the fuzz")
                stage, fuzz.stage = fuzz.stage, None
                if stage is not None:
                    await fuzz.retire(stage, "at the end")
        finally:
            for probe in probes:
                probe.close()
    elapsed = time.monotonic() - started
    report = (
        f"{fuzz.sent} datagrams sent ({len(examples)} drawn, {len(steps) - len(examples)} "
        f"regression steps) to {fuzz.stages} stage(s) in {elapsed:.1f} s "
        f"({fuzz.building:.1f} s building stages)\n{fuzz.findings.report()}"
    )
    print(report)  # shown with -s
    assert not fuzz.findings.found, report
