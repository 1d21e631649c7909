"""The bench's viewer sockets (bench/viewers.py): read in ticks instead of by asyncio, with the
kernel's receive time where it matters. Real UDP sockets on 127.0.0.1; no peers."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import pytest

from bench.viewers import (
    ANCILLARY_SIZE,
    SO_TIMESTAMPNS,
    TICK,
    Sockets,
    kernel_arrival,
    payload_types,
)
from tests.support import eventually


def test_kernel_receive_time_is_on_the_perf_counter_clock() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        before = time.perf_counter()
        sender.sendto(b"\x80\x60" + bytes(20), receiver.getsockname())
        read_at = time.perf_counter()
        data, ancillary, _, _ = receiver.recvmsg(2048, ANCILLARY_SIZE)
        arrival = kernel_arrival(ancillary, fallback=-1.0)
    assert data[:2] == b"\x80\x60"
    assert arrival != -1.0, "no SO_TIMESTAMPNS ancillary data"
    # (On the perf_counter clock: between the send and the read. Not sooner after the send:
    # a loaded machine may leave loopback delivery to ksoftirqd, seen 50 ms late.)
    assert before - 0.005 <= arrival <= read_at + 0.005


def test_without_a_timestamp_the_fallback_is_used() -> None:
    assert kernel_arrival([], fallback=12.5) == 12.5


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:  # noqa: ARG002  asyncio's signature
        self.datagrams.append(data)


@pytest.mark.asyncio
async def test_sockets_read_instead_of_asyncio_and_the_transport_still_sends() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    sockets = Sockets(loop)
    read: list[tuple[bytes, float]] = []
    woken: list[float] = []
    reading = False

    def reader(sock: socket.socket, now: float) -> None:
        woken.append(now)
        while reading:
            try:
                data, _ = sock.recvfrom(2048)
            except BlockingIOError:
                return
            read.append((data, now))

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        try:
            sockets.take(transport, reader)
            address = transport.get_extra_info("sockname")
            for number in range(50):
                peer.sendto(bytes([number]) * 100, address)
            # not read yet: the reader is woken again and again (a tick apart), and asyncio's
            # own reader, which would have taken them at once, is no longer there
            await eventually(lambda: len(woken) >= 5, what="the reader woken 5 times", seconds=10)
            assert protocol.datagrams == []
            assert min(b - a for a, b in itertools.pairwise(woken)) >= TICK * 0.9
            reading = True
            await eventually(lambda: len(read) == 50, what="50 datagrams read", seconds=10)
            assert [data[0] for data, _ in read] == list(range(50))
            assert protocol.datagrams == []  # asyncio's reader no longer reads the socket
            transport.sendto(b"reply", peer.getsockname())  # sending is untouched

            def replied() -> bool:
                try:
                    return peer.recv(100) == b"reply"
                except BlockingIOError:
                    return False

            await eventually(replied, what="the transport's datagram", seconds=10)
        finally:
            sockets.close()
            transport.close()


SDP_ANSWER = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=video 9 UDP/TLS/RTP/SAVPF 97 98
c=IN IP4 0.0.0.0
a=mid:0
a=sendonly
a=rtcp-mux
a=rtpmap:97 VP8/90000
a=rtpmap:98 rtx/90000
a=fmtp:98 apt=97
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 FINGERPRINT
a=setup:passive
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=mid:1
a=sendonly
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 FINGERPRINT
a=setup:passive
"""


def test_payload_types_come_from_the_answer() -> None:
    answer = SDP_ANSWER.replace("FINGERPRINT", ":".join(["AB"] * 32))
    assert payload_types(answer.replace("\n", "\r\n")) == (97, 111)
