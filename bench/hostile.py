"""``make bench``: what golive's defences against hostile input cost, and what an attack
still costs the server (issue 12).

- The screen every datagram on a media socket passes (``hooks.screen_datagram``): µs per
  datagram, for media from the session's peer (the common case) and for off-path garbage.
- A hostile viewer's NACK (17 sequence numbers listed 280 times, as reported, and 19 times,
  what fits an aiortc client's SRTCP): CPU of the server's event-loop thread per NACK, and the
  packets resent for 100 of them (before the fix: 4 760 per NACK).
- Offers: time from POST to answer for a plain audio+video offer and for the largest one each
  cap accepts, and to the 413 of the attacks as reported.

In-process server (``tests.support.ServerThread``) with real aiortc peers, in the loopback-only
namespace; medians of ``RUNS`` runs.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
import timeit
from types import SimpleNamespace
from typing import Any

import aiohttp

from golive.logs import configure_logging
from golive.media import hooks
from tests.media.clients import close_all
from tests.media.test_hostile_packets import Samples, dtls_of, live_room, metrics, nack
from tests.media.test_hostile_sdp import at_caps, client_offer, reported_attacks
from tests.support import ServerThread, eventually, require_loopback_namespace, running_server

RUNS = 5
NACKS = 100


def screen_cost() -> dict[str, float]:
    """µs per call of the screen, on a stand-in for aioice's protocol and connection."""
    peer = ("127.0.0.1", 40000)
    protocol: Any = SimpleNamespace(local_candidate=SimpleNamespace(component=1))
    pair = SimpleNamespace(protocol=protocol, remote_addr=peer)
    protocol.receiver = SimpleNamespace(_nominated={1: pair}, _check_list=[pair])
    media = b"\x80\x60" + bytes(1198)
    cases = {
        "SRTP from the peer": (media, peer),
        "SRTP off-path": (media, ("127.0.0.1", 40001)),
        "empty datagram": (b"", peer),
    }
    costs = {}
    for name, (data, addr) in cases.items():

        def screen(data: bytes = data, addr: tuple[str, int] = addr) -> None:
            hooks.screen_datagram(protocol, data, addr)

        timer = timeit.Timer(screen)
        number = 200_000
        costs[name] = min(timer.repeat(5, number)) / number * 1e6
    return costs


async def nack_cost(server: ServerThread, repeats: int) -> tuple[float, float, float]:
    """For NACKS sent back to back: (ms of loop-thread CPU per NACK sent, how many were
    parsed rather than dropped over the viewer's RTCP budget, packets resent)."""
    room = await live_room(server, f"nack{repeats}", viewers=1)
    handled_key = ("golive_rtcp_nacks_received_total", ())
    flooded_key = ("golive_media_datagrams_dropped_total", (("reason", "rtcp_over_budget"),))
    resent_key = ("golive_rtp_packets_retransmitted_total", ())
    try:
        received = room.received[0]
        dtls = dtls_of(room.viewers[0].pc)
        before = await metrics(server)
        cpu = await asyncio.to_thread(server.call, time.thread_time)
        for _ in range(NACKS):
            attack = nack(1, received.ssrc, (received.last_seq - 17) & 0xFFFF, repeats)
            await dtls._send_rtp(attack)  # noqa: SLF001  the viewer's own SRTCP, as an attacker sends it

        def arrived(samples: Samples, key: tuple[str, Any]) -> float:
            return samples.get(key, 0) - before.get(key, 0)

        async def all_arrived() -> bool:
            samples = await metrics(server)
            return arrived(samples, handled_key) + arrived(samples, flooded_key) >= NACKS

        await eventually(all_arrived, what="every NACK handled or dropped")
        spent = await asyncio.to_thread(server.call, time.thread_time) - cpu
        after = await metrics(server)
        return spent / NACKS * 1000, arrived(after, handled_key), arrived(after, resent_key)
    finally:
        await close_all(room.publisher, *room.viewers)


async def offer_times(server: ServerThread) -> dict[str, float]:
    plain = await client_offer()
    offers = {"plain": plain, **{f"at cap: {k}": b(plain) for k, b in at_caps().items()}}
    offers |= {f"reported: {k}": b(plain) for k, b in reported_attacks().items()}
    times = {}
    async with aiohttp.ClientSession() as http:
        for name, sdp in offers.items():
            started = time.perf_counter()
            async with http.post(
                server.url + "/api/whip/publish/bench",
                data=io.BytesIO(sdp.encode()),
                headers={"Content-Type": "application/sdp"},
            ) as response:
                await response.read()
                location = response.headers.get("Location")
            times[f"{name} ({response.status})"] = (time.perf_counter() - started) * 1000
            if location:
                async with http.delete(server.url + location):
                    pass
    return times


async def run() -> None:
    env = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
    screens = [screen_cost() for _ in range(RUNS)]
    print("screen of one datagram, µs (median of runs):")
    for name in screens[0]:
        print(f"  {name:22s} {statistics.median(s[name] for s in screens):6.2f}")
    hooks.install(("127.0.0.1",))
    with running_server(env) as server:
        for repeats in (280, 19):
            results = [await nack_cost(server, repeats) for _ in range(RUNS)]
            cpu, parsed, resent = (statistics.median(r[n] for r in results) for n in range(3))
            print(
                f"{NACKS} NACKs of 17 seqs x {repeats}, back to back: {cpu:.3f} ms loop CPU "
                f"per NACK sent; {parsed:.0f} parsed (the rest over the RTCP budget); "
                f"{resent:.0f} packets resent (unbounded: {parsed * 17 * repeats:.0f})"
            )
        runs = [await offer_times(server) for _ in range(RUNS)]
        print("POST -> answer, ms (median of runs):")
        for name in runs[0]:
            print(f"  {name:40s} {statistics.median(r[name] for r in runs):7.1f}")


def main() -> None:
    require_loopback_namespace()
    configure_logging("error", "console", ())
    asyncio.run(run())


if __name__ == "__main__":
    main()
