"""Hostile packets against a real golive server with a real publisher and real viewers
(issue 12, findings 1, 3, 6 and the REMB of 7).

Each test replays an attack as it was reported, then checks that the sessions attacked (and
every other one) are still up and still receive, and that the server counted what it refused:

- off-path datagrams (an empty one ended a session as ``dtls_closed``, and aimed at the
  publisher's port the whole room) are dropped before DTLS, SRTP or RTCP parsing sees them;
- garbage from a session's own peer (an empty datagram on its pair; a REMB whose SSRC count
  exceeds its length, which raised ``struct.error`` in aiortc's RTCP routing) is dropped and
  the session goes on;
- a publisher sending hundreds of SSRCs keeps bounded state and well-formed receiver reports
  (past 31 SSRCs they were malformed, past 255 the report task died);
- a viewer's NACK listing 17 sequence numbers 280 times, 100 times over, makes the server
  resend a bounded handful of packets, not 476 000.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_APP, RtcpPacket, RtcpRrPacket

from golive.actors.messages import SessionId
from golive.http.keys import MEDIA
from tests.media.clients import Publisher, Viewer, close_all, publish, view
from tests.support import ServerThread, eventually, labelled, metric_samples

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]
DEADLINE = 30.0
_CANDIDATE_PORT = re.compile(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host")


# -- helpers ------------------------------------------------------------------------------------


@dataclass
class Received:
    """RTP packets a viewer's video receiver got (counted before decoding), the last one's
    sequence number and SSRC (the server's numbering for this viewer)."""

    packets: int = 0
    last_seq: int = 0
    ssrc: int = 0
    seqs: list[int] = field(default_factory=list)


def count_video(viewer: Viewer) -> Received:
    received = Received()
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    forward = receiver._handle_rtp_packet

    async def counting(packet: Any, arrival_time_ms: int) -> None:
        received.packets += 1
        received.last_seq, received.ssrc = packet.sequence_number, packet.ssrc
        received.seqs = [*received.seqs[-63:], packet.sequence_number]
        await forward(packet, arrival_time_ms)

    receiver._handle_rtp_packet = counting  # type: ignore[method-assign]
    return received


async def still_receiving(*counters: Received) -> None:
    """Every counter grows by at least 20 packets from now."""
    marks = [counter.packets for counter in counters]
    await eventually(
        lambda: all(c.packets >= mark + 20 for c, mark in zip(counters, marks, strict=True)),
        what="every viewer still receiving video",
        seconds=DEADLINE,
    )


def dtls_of(pc: RTCPeerConnection) -> Any:
    return pc.getTransceivers()[0].receiver.transport


def server_ports(*answers: str) -> list[int]:
    """The server's media ports: the host candidates of its answers."""
    return sorted({int(port) for sdp in answers for port in _CANDIDATE_PORT.findall(sdp)})


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metrics(server: ServerThread) -> Samples:
    return metric_samples((await asyncio.to_thread(server.get, "/metrics"))[1].decode())


async def room_listing(server: ServerThread) -> list[dict[str, Any]]:
    status, body = await asyncio.to_thread(server.get, "/api/rooms")
    assert status == 200
    rooms: list[dict[str, Any]] = json.loads(body)
    return rooms


@dataclass
class Room:
    publisher: Publisher
    viewers: list[Viewer]
    received: list[Received]


async def live_room(server: ServerThread, name: str, viewers: int = 2) -> Room:
    publisher = await publish(server.url, name, audio=False)
    assert publisher.answer.status == 201, publisher.answer.body
    watching = [await view(server.url, name) for _ in range(viewers)]
    for viewer in watching:
        assert viewer.answer.status == 201, viewer.answer.body
    received = [count_video(viewer) for viewer in watching]
    await still_receiving(*received)
    return Room(publisher, watching, received)


async def unchanged(server: ServerThread, name: str, viewers: int) -> None:
    listing = [room for room in await room_listing(server) if room["name"] == name]
    assert listing, f"room {name} ended"
    assert listing[0]["hasPublisher"] is True
    assert listing[0]["subscribers"] == viewers


def rtcp(packet_type: int, count: int, payload: bytes) -> bytes:
    """An RTCP packet (RFC 3550 6.1) with ``payload`` after its 4-byte header."""
    assert len(payload) % 4 == 0
    return struct.pack("!BBH", 0x80 | count, packet_type, len(payload) // 4) + payload


# -- off-path and on-path garbage ----------------------------------------------------------------


OFF_PATH_DATAGRAMS = [
    b"",  # ended the session as dtls_closed (IndexError in aiortc's DTLS receive loop)
    b"\x00",
    b"\x16",  # one byte of a DTLS record
    b"\x16\xfe\xfd" + bytes(10) + b"\x00\x01\x01",  # a DTLS record (change cipher spec)
    b"\x15\xfe\xfd" + bytes(10) + b"\x00\x02\x02\x00",  # a DTLS alert: close_notify
    b"\x80",  # one byte of RTP
    b"\x80\x60" + bytes(98),  # an RTP header and a payload: garbage to SRTP
    b"\x80\xc8" + bytes(50),  # an RTCP sender report: garbage to SRTCP
    b"\x40\x00\x00\x04abcd",  # TURN channel data
    b"\xff" * 300,
    b"\x00\x01\x00\x00" + bytes(16),  # a STUN binding request without attributes
    b"\x00\x01\x00\x08" + bytes(16) + b"\x00\x06\x01\x00",  # a STUN attribute past the end
]


async def test_off_path_datagrams_end_nothing_and_are_counted(server: ServerThread) -> None:
    room = await live_room(server, "offpath")
    ports = server_ports(room.publisher.answer.sdp, *(v.answer.sdp for v in room.viewers))
    assert len(ports) >= 2, ports
    before = await metrics(server)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        attacker.bind(("127.0.0.1", 0))
        for _ in range(3):
            for datagram in OFF_PATH_DATAGRAMS:
                for port in ports:
                    attacker.sendto(datagram, ("127.0.0.1", port))
        await still_receiving(*room.received)
        await unchanged(server, "offpath", viewers=2)
        after = await metrics(server)
        dropped = labelled(after, "golive_media_datagrams_dropped_total", "reason")
        old = labelled(before, "golive_media_datagrams_dropped_total", "reason")

        def delta(reason: str) -> float:
            return dropped.get(reason, 0) - old.get(reason, 0)

        # 3 rounds to every port, each: 4 datagrams long enough to pass for DTLS or SRTP
        # but not from the session's peer, 3 too short to be anything, 2 not media at all,
        # 1 that only looks like STUN (the two well-formed STUN requests go to aioice, which
        # refuses them for lack of credentials).
        assert delta("off_path") >= 3 * 4 * len(ports)
        assert delta("short") >= 3 * 3 * len(ports)
        assert delta("not_media") >= 3 * 2 * len(ports)
        assert delta("malformed_stun") >= 3 * 1 * len(ports)
    finally:
        attacker.close()
        await close_all(room.publisher, *room.viewers)


async def test_garbage_from_a_sessions_own_peer_ends_nothing(server: ServerThread) -> None:
    room = await live_room(server, "onpath")
    viewer, other = room.viewers
    before = await metrics(server)
    # Raw datagrams on the viewer's and the publisher's own ICE pairs.
    # (through the socket itself: asyncio's sendto silently skips an empty datagram)
    for pc in (viewer.pc, room.publisher.pc):
        pair = dtls_of(pc).transport._connection._nominated[1]
        own = pair.protocol.transport.get_extra_info("socket")
        with socket.fromfd(own.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in (b"", b"\x80", b"\x16\xfe"):
                sock.sendto(datagram, pair.remote_addr)
    # SRTCP from the viewer, properly protected: a REMB that claims 255 SSRCs and has one
    # (aiortc's REMB routing raised struct.error and ended the session), and a receiver
    # report whose count disagrees with its length.
    remb = b"REMB" + bytes([255, 0x04, 0x00, 0x00]) + struct.pack("!I", room.received[0].ssrc)
    sender_ssrc = 0x12345678
    await dtls_of(viewer.pc)._send_rtp(
        rtcp(206, RTCP_PSFB_APP, struct.pack("!II", sender_ssrc, 0) + remb)
    )
    await dtls_of(viewer.pc)._send_rtp(rtcp(201, 5, struct.pack("!I", sender_ssrc) + bytes(24)))
    await still_receiving(*room.received)
    await unchanged(server, "onpath", viewers=2)
    after = await metrics(server)
    errors = labelled(after, "golive_media_receive_errors_total", "error")
    old = labelled(before, "golive_media_receive_errors_total", "error")
    assert errors.get("error", 0) - old.get("error", 0) >= 1  # struct.error, from the REMB
    dropped = labelled(after, "golive_media_datagrams_dropped_total", "reason")
    assert dropped.get("short", 0) >= 6
    await close_all(room.publisher, viewer, other)


# -- a publisher's SSRCs -------------------------------------------------------------------------


async def test_a_publisher_with_hundreds_of_ssrcs_keeps_bounded_state_and_good_reports(
    server: ServerThread,
) -> None:
    room = await live_room(server, "ssrcs", viewers=1)
    publisher_dtls = dtls_of(room.publisher.pc)
    video_pt = int(re.search(r"m=video \d+ \S+ (\d+)", room.publisher.answer.sdp).group(1))  # type: ignore[union-attr]

    # The reports the publisher gets back, each parsed as aiortc's RTCP parser does.
    reports: list[RtcpRrPacket] = []
    malformed: list[bytes] = []
    handle = publisher_dtls._handle_rtcp_data

    async def watch(data: bytes) -> None:
        try:
            reports.extend(p for p in RtcpPacket.parse(data) if isinstance(p, RtcpRrPacket))
        except ValueError:
            malformed.append(data)
        await handle(data)

    publisher_dtls._handle_rtcp_data = watch
    for ssrc in range(1, 301):
        for seq in range(3):
            header = struct.pack("!BBHII", 0x80, video_pt, seq, seq * 3000, 0x1000 + ssrc)
            await publisher_dtls._send_rtp(header + bytes(20))
    seen = len(reports)
    await eventually(lambda: len(reports) >= seen + 3, what="three more receiver reports")
    assert not malformed
    assert all(len(report.reports) <= 31 for report in reports)
    assert max(len(report.reports) for report in reports[seen:]) <= 8  # MAX_SSRCS_PER_TRACK
    samples = await metrics(server)
    assert labelled(samples, "golive_rtp_packets_dropped_total", "reason")["ssrc_limit"] > 0
    await still_receiving(*room.received)
    await unchanged(server, "ssrcs", viewers=1)
    await close_all(room.publisher, *room.viewers)


# -- NACK amplification --------------------------------------------------------------------------


def nack(sender_ssrc: int, media_ssrc: int, pid: int, repeats: int) -> bytes:
    """A generic NACK (RFC 4585 6.2.1) listing ``pid`` and the 16 after it, ``repeats`` times."""
    fci = struct.pack("!HH", pid, 0xFFFF) * repeats
    return rtcp(205, 1, struct.pack("!II", sender_ssrc, media_ssrc) + fci)


async def test_a_viewers_repeated_nacks_cannot_amplify(server: ServerThread) -> None:
    """The reported attack: 100 NACKs, each listing 17 sequence numbers 280 times. A NACK is
    handled within the viewer's RTCP byte budget (a flood beyond it is dropped unparsed),
    its duplicates ignored, each packet resent at most once per 100 ms and within the
    retransmission budget."""
    room = await live_room(server, "nacks")
    attacker, bystander = room.viewers
    received = room.received[0]
    before = await metrics(server)
    nacks, repeats, listed = 100, 280, 17
    pid = received.last_seq - listed  # packets the server still has in its cache
    dtls = dtls_of(attacker.pc)
    for _ in range(nacks):
        await dtls._send_rtp(nack(0x12345678, received.ssrc, pid & 0xFFFF, repeats))

    def counted(samples: Samples, name: str, reason: str | None = None) -> float:
        if reason is None:
            return samples.get((name, ()), 0)
        return labelled(samples, name, "reason").get(reason, 0)

    def delta(after: Samples, name: str, reason: str | None = None) -> float:
        return counted(after, name, reason) - counted(before, name, reason)

    async def all_arrived() -> bool:  # each handled, or dropped over the RTCP budget
        samples = await metrics(server)
        handled = delta(samples, "golive_rtcp_nacks_received_total")
        flooded = delta(samples, "golive_media_datagrams_dropped_total", "rtcp_over_budget")
        return handled + flooded >= nacks

    await eventually(all_arrived, what="every NACK handled or dropped")
    await still_receiving(room.received[1])
    after = await metrics(server)
    refused = "golive_rtp_retransmissions_refused_total"
    handled = delta(after, "golive_rtcp_nacks_received_total")
    resent = delta(after, "golive_rtp_packets_retransmitted_total")
    # Only a handful went out (before: all 476 000).
    assert resent <= 1000, resent
    # 1.1 kB each, 113 kB at once: most were over the viewer's RTCP budget, dropped unparsed.
    assert delta(after, "golive_media_datagrams_dropped_total", "rtcp_over_budget") > nacks / 2
    # Of those handled, 4743 duplicates each were refused, and the 17 left were resent only
    # once per 100 ms and within the budget.
    assert handled >= 1
    assert delta(after, refused, "duplicate") >= handled * (repeats * listed - listed)
    assert (
        delta(after, refused, "recent") + delta(after, refused, "budget") + resent
        >= handled * listed
    )
    await unchanged(server, "nacks", viewers=2)
    assert bystander.answer.status == 201
    await close_all(room.publisher, *room.viewers)


# -- where the server's connectivity checks may go ------------------------------------------------


async def test_candidates_the_server_must_not_check_are_skipped(server: ServerThread) -> None:
    """A client's candidates aim the server's STUN checks: never at multicast, unspecified or
    reserved addresses, nor port 0 (the server under test gathers on loopback, so loopback
    candidates are checked; test_limits shows a server that does not skips them)."""
    in_offer = [
        "a=candidate:1 1 udp 1 224.0.0.251 5353 typ host",
        "a=candidate:2 1 udp 1 0.0.0.0 9 typ host",
        "a=candidate:3 1 udp 1 127.0.0.1 7 typ host",
    ]
    trickled = [
        "a=candidate:4 1 udp 1 255.255.255.255 9 typ host",
        "a=candidate:5 1 udp 1 240.0.0.1 9 typ host",
        "a=candidate:6 1 udp 1 127.0.0.1 0 typ host",
        "a=candidate:7 1 udp 1 127.0.0.1 9 typ host",
    ]
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        # A trickling client's offer (no end-of-candidates yet), with candidates of its own.
        lines = [
            line for line in pc.localDescription.sdp.split("\r\n") if line != "a=end-of-candidates"
        ]
        first_mid = next(n for n, line in enumerate(lines) if line.startswith("a=mid:"))
        offer = "\r\n".join(lines[: first_mid + 1] + in_offer + lines[first_mid + 1 :])
        async with aiohttp.ClientSession() as http:
            async with http.post(
                server.url + "/api/whip/publish/reflector",
                data=offer,
                headers={"Content-Type": "application/sdp"},
            ) as response:
                assert response.status == 201, await response.text()
                location = response.headers["Location"]
            async with http.patch(
                server.url + location,
                data="\r\n".join([*trickled, ""]),
                headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"},
            ) as response:
                assert response.status == 204

        def remote() -> set[tuple[str, int]]:  # on the server's loop
            peer = server.app[MEDIA].session(SessionId(location.rsplit("/", 1)[1]))
            assert peer is not None
            ice = peer.pc.getTransceivers()[0].receiver.transport.transport
            return {(c.ip, c.port) for c in ice.getRemoteCandidates()}

        checked = await asyncio.to_thread(server.call, remote)
        assert {("127.0.0.1", 7), ("127.0.0.1", 9)} <= checked
        # (the rest is the client's own gathered candidate)
        assert all(ip == "127.0.0.1" and port not in (0, 5353) for ip, port in checked), checked
    finally:
        await pc.close()
