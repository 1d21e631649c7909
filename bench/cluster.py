"""``make bench``: one room's audience on ``WORKERS=2`` against ``WORKERS=1``, on this machine.

Everything runs in the loopback-only namespace (``scripts/loopback-netns``) and reuses
:mod:`bench.forwarding`'s machinery (its processes, ``/proc`` readings, server settings and
UDP drop accounting), :mod:`bench.publisher` and :mod:`bench.viewers`. This driver starts
Debian's ``redis-server`` on 127.0.0.1 (nothing saved to disk), then for each ``WORKERS``
value and run:

1. **The node**: ``python -m golive`` with ``REDIS_URL``, ``WORKERS``, ``HTTP_ADDR`` and
   ``ICE_HOST_ADDRESSES`` on 127.0.0.1, ``CLUSTER_PORT`` chosen (worker ``i`` on its own port
   ``CLUSTER_PORT + i``) and every admission cap lifted (``bench.forwarding.server_env``); a
   fresh node, Redis emptied, per run. With ``WORKERS=2`` its processes are the supervisor and
   the two workers (found as the supervisor's children by their ``GOLIVE_WORKER``).
2. **The publisher**: one room, VP8 2 Mbit/s 640x480 + Opus 64 kbit/s (about 258 packets a
   second), over WHIP on the public port; the room's owner (worker) is read from
   ``/api/rooms``.
3. **The relay's cost** (``WORKERS=2`` only), three windows of ``CLUSTER_BENCH_HOLD``
   seconds: *A* the publisher alone; *B* ``CLUSTER_BENCH_RELAY_VIEWERS`` (25) viewers joined
   at the owner's own port; *C* those viewers gone, as many joined at the other worker's own
   port, served there from a relay (pulled once from the owner). The relay's cost per packet
   of the room is what C costs the node beyond B (the same deliveries, plus the owner's pull
   and the relay's ingest) over the packets the publisher sent meanwhile:
   ``((owner_C + relay_C) - (owner_B + relay_B)) / sent``; its two halves are shown too (the
   owner's pull, ``owner_C - owner_A``, and the relay worker's ingest with its viewers less the
   same viewers' cost on the owner, ``(relay_C - relay_A) - (owner_B - owner_A)``).
   Where the viewers of C were served by the owner (no relay: the request was forwarded),
   it says so and gives no figure.
4. **The steps**: viewers join through the public port (the kernel's ``SO_REUSEPORT`` spreads
   the connections, each viewer's POST on a connection of its own as from its own browser:
   each answer's ``Golive-Worker`` says who serves the viewer), in batches
   of ``CLUSTER_BENCH_STEPS`` (cumulative audiences, default ``300,400,...,800``), at
   ``CLUSTER_BENCH_JOIN_RATE`` (40) a second, each batch its own load process(es). After each
   batch has joined and 1 s, the whole audience is held ``CLUSTER_BENCH_HOLD`` (5) seconds:
   *delivered packets per second* (``live_rtp_packets_total{room}``, summed over the node's
   workers by prometheus-client's multiprocess mode; with a relay it includes the owner's
   packets to the relay, one viewer's worth), *loss* (the viewers' sequence gaps, as in
   ``bench.forwarding``), and *CPU per delivered packet*: the CPU of every process of the
   node (workers and supervisor) over the hold, divided by the packets delivered. The steps
   stop after the first one whose loss reaches 0.5 % (or that loses viewers, or the room).

Per run, the most packets delivered per second at a step with loss below 0.5 % (and that
step's CPU per delivered packet) is the run's *capacity*; the report gives, per ``WORKERS``,
the median over ``CLUSTER_BENCH_RUNS`` (3) runs, and per step the medians over the runs that
reached it. Per worker (``WORKERS=2``): the viewers it served and its CPU per packet it
delivered (its viewers' expected packets).

CPU is read from the scheduler (``/proc/PID/task/*/schedstat``: nanoseconds each thread ran,
summed over the process's threads): clock ticks (``/proc/PID/stat``, 10 ms) are too coarse
for the relay's few milliseconds a second. The load generator's CPU, the workers' loops'
time waiting for a CPU, and the kernel's drops at the node's and at the viewers' sockets are
shown: the machine has 2 cores for the node, the publisher and the load processes together.

Knobs (environment): ``CLUSTER_BENCH_WORKERS`` (``1,2``), ``CLUSTER_BENCH_STEPS``,
``CLUSTER_BENCH_RUNS`` (3), ``CLUSTER_BENCH_HOLD`` (5 s), ``CLUSTER_BENCH_JOIN_RATE`` (40),
``CLUSTER_BENCH_RELAY_VIEWERS`` (25; 0 skips the relay windows), ``CLUSTER_BENCH_JSON``
(every run's figures to this file). A quick run (about a minute): ``CLUSTER_BENCH_RUNS=1
CLUSTER_BENCH_STEPS=50,100 CLUSTER_BENCH_HOLD=3 scripts/loopback-netns .venv/bin/python -m
bench.cluster``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.forwarding import (
    LOADER_PACKETS,
    Child,
    Counters,
    Processes,
    counters,
    drops_of,
    free_port,
    healthy,
    http_get,
    run_queue_seconds,
    server_env,
    udp_socket_drops,
    wait_for,
)

WORKERS = tuple(int(n) for n in os.environ.get("CLUSTER_BENCH_WORKERS", "1,2").split(","))
RUNS = int(os.environ.get("CLUSTER_BENCH_RUNS", "3"))
HOLD = float(os.environ.get("CLUSTER_BENCH_HOLD", "5"))
JOIN_RATE = float(os.environ.get("CLUSTER_BENCH_JOIN_RATE", "40"))
RELAY_VIEWERS = int(os.environ.get("CLUSTER_BENCH_RELAY_VIEWERS", "25"))
LOSS_LIMIT = 0.5  # percent: a step at or above it ends the run's steps
JOIN_GRACE = 15.0  # seconds after a batch's last POST for its keyframes
SETTLE = 1.0
VIDEO_KBPS = 2000
PACKETS_PER_VIEWER = VIDEO_KBPS * 1000 / 8 / 1200 + 50  # about: 1.2 kB video, 50 audio a second
SUPERVISOR = "supervisor"


def steps_from(text: str) -> list[int]:
    """``150,300,450`` → the cumulative audiences, which must grow."""
    steps = [int(item) for item in text.split(",") if item.strip()]
    if not steps or steps[0] <= 0 or any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"steps must be growing audiences above 0: {text!r}")
    return steps


STEPS = steps_from(os.environ.get("CLUSTER_BENCH_STEPS", "300,400,500,600,700,800"))


# -- the node's processes -------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """Seconds every thread of a process has run so far, from the scheduler (nanoseconds;
    a thread that ended since is not counted: read where none end)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def worker_of(environ: bytes) -> int | None:
    """The ``GOLIVE_WORKER`` index in a process's ``/proc/PID/environ``, if any."""
    for item in environ.split(b"\0"):
        name, _, value = item.partition(b"=")
        if name == b"GOLIVE_WORKER" and value.isdigit():
            return int(value)
    return None


def parent_of(stat: str) -> int:
    """The parent pid in a ``/proc/PID/stat`` line."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def node_processes(supervisor: int, workers: int) -> dict[str, int]:
    """The node's processes by name: ``worker0``... and, with several workers, the
    ``supervisor``; empty while not every worker is there."""
    if workers == 1:
        return {"worker0": supervisor}
    found = {SUPERVISOR: supervisor}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if parent_of((entry / "stat").read_text()) == supervisor:
                index = worker_of((entry / "environ").read_bytes())
                if index is not None:
                    found[f"worker{index}"] = int(entry.name)
    return found if len(found) == workers + 1 else {}


def worker_index(header: str | None) -> int | None:
    """``127.0.0.1:8080/1`` (a ``Golive-Worker`` header) → 1."""
    if not header:
        return None
    _, _, index = header.rpartition("/")
    return int(index) if index.isdigit() else None


@dataclass(frozen=True)
class Reading:
    """The node at one moment: its metrics (``counters``) and each process's CPU."""

    counters: Counters
    cpu: Mapping[str, float]

    @property
    def at(self) -> float:
        return self.counters.at


async def reading(base: str, room: str, node: Child, pids: Mapping[str, int]) -> Reading:
    now = await counters(base, room, node)
    cpu = {}
    for name, pid in pids.items():
        try:
            cpu[name] = process_cpu(pid)
        except OSError:  # gone: a worker that died (its replacement is not this one)
            cpu[name] = math.nan
    return Reading(now, cpu)


def cpu_between(start: Reading, end: Reading) -> dict[str, float]:
    return {name: end.cpu[name] - start.cpu[name] for name in start.cpu}


# -- the figures (pure) ----------------------------------------------------------------------


def viewers_of(reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [viewer for report in reports for viewer in report["viewers"]]


def loss_pct(viewers: Iterable[Mapping[str, Any]], sent: int) -> float | None:
    """1 - received / expected over the viewers that connected, as ``bench.forwarding``
    counts it: a viewer no longer receiving at the end expected at least what the publisher
    sent meanwhile."""
    received = expected = 0
    for v in viewers:
        if v["to_rtp_ms"] is None:
            continue
        received += v["received"]
        expected += v["expected"] if v["receiving_at_end"] else max(v["expected"], sent)
    return 100 * (1 - received / expected) if expected else None


def by_worker(viewers: Iterable[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """Per serving worker: viewers connected, and the packets they expected (what the worker
    sent them, lost on the way or not)."""
    out: dict[int, tuple[int, int]] = {}
    for v in viewers:
        index = worker_index(v.get("worker"))
        if index is None or v["to_rtp_ms"] is None:
            continue
        count, packets = out.get(index, (0, 0))
        out[index] = (count + 1, packets + v["expected"])
    return out


def step_figures(
    *,
    audience: int,
    viewers: list[dict[str, Any]],
    sent: int,
    cpu: Mapping[str, float],
    seconds: float,
    delivered: float,
    owner: int | None,
    alive: bool,
) -> dict[str, Any]:
    """One step's figures: ``cpu`` is each node process's CPU over the hold (seconds),
    ``delivered`` the node's delivered packets meanwhile, ``sent`` the publisher's."""
    node_cpu = sum(cpu.values())
    connected = [v for v in viewers if v["to_rtp_ms"] is not None]
    served = by_worker(viewers)
    workers = {}
    for name, worker_cpu in sorted(cpu.items()):
        if not name.startswith("worker"):
            continue
        index = int(name.removeprefix("worker"))
        count, packets = served.get(index, (0, 0))
        workers[str(index)] = {
            "viewers": count,
            "owner": index == owner,
            "cpu_cores": worker_cpu / seconds,
            "us_per_packet": worker_cpu / packets * 1e6 if packets else None,
        }
    return {
        "audience": audience,
        "connected": len(connected),
        "failed": sum(1 for v in viewers if v["error"]),
        "alive": alive,
        "seconds": seconds,
        "delivered_per_s": delivered / seconds if alive else None,
        "loss_pct": loss_pct(viewers, sent),
        "node_cpu_cores": node_cpu / seconds,
        "supervisor_cpu_cores": cpu.get(SUPERVISOR, 0.0) / seconds,
        "us_per_packet": node_cpu / delivered * 1e6 if alive and delivered > 0 else None,
        "workers": workers,
    }


def acceptable(step: Mapping[str, Any]) -> bool:
    """Loss below 0.5 %, every viewer connected, the room alive: the audience is served."""
    loss = step["loss_pct"]
    return (
        step["alive"]
        and loss is not None
        and loss < LOSS_LIMIT
        and step["connected"] == step["audience"]
        and step["delivered_per_s"] is not None
    )


def capacity(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step that delivered the most packets a second among the acceptable ones."""
    good = [s for s in steps if acceptable(s)]
    return max(good, key=lambda s: s["delivered_per_s"]) if good else None


def relay_cost(
    windows: Mapping[str, Mapping[str, float]], owner: int, sent: Mapping[str, int]
) -> dict[str, float]:
    """The relay's cost per packet of the room (µs), from each worker's CPU (seconds) in
    windows A (publisher alone), B (viewers on the owner), C (as many on the relay), and the
    packets the publisher sent in each (see the module's docstring)."""
    o, r = f"worker{owner}", f"worker{1 - owner}"
    a, b, c = windows["A"], windows["B"], windows["C"]
    # the windows are of equal length, give or take: per packet sent in each
    per = {key: 1e6 / sent[key] for key in ("A", "B", "C")}
    owner_pull = c[o] * per["C"] - a[o] * per["A"]
    relay_side = (c[r] * per["C"] - a[r] * per["A"]) - (b[o] * per["B"] - a[o] * per["A"])
    added = (c[o] + c[r]) * per["C"] - (b[o] + b[r]) * per["B"]
    return {
        "relay_added_us": added,
        "owner_pull_us": owner_pull,
        "relay_ingest_us": relay_side,
        "owner_idle_us": a[o] * per["A"],
        "other_idle_us": a[r] * per["A"],
    }


def median_of(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(kept) if kept else None


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def summary(results: Mapping[int, list[dict[str, Any]]]) -> list[str]:
    """The report: capacity per WORKERS, per step, per worker, the relay."""
    lines = []
    for workers, runs in results.items():
        best = [capacity(run["steps"]) for run in runs]
        found = [b for b in best if b is not None]
        lines.append(
            f"WORKERS={workers}: most delivered/s at loss < {LOSS_LIMIT} %: "
            f"{_f(median_of(b['delivered_per_s'] for b in found), 0)} packets/s "
            f"(runs: {', '.join(_f(b['delivered_per_s'], 0) if b else '-' for b in best)}), "
            f"at N={_f(median_of(b['audience'] for b in found), 0)}, "
            f"{_f(median_of(b['us_per_packet'] for b in found), 2)} µs CPU / delivered packet"
        )
        audiences = sorted({s["audience"] for run in runs for s in run["steps"]})
        for audience in audiences:
            at = [s for run in runs for s in run["steps"] if s["audience"] == audience]

            def med(key: str, at: list[dict[str, Any]] = at) -> float | None:
                return median_of(s.get(key) for s in at)

            line = (
                f"  N={audience} ({len(at)} run(s)): {_f(med('delivered_per_s'), 0)} pkt/s, "
                f"loss {_f(med('loss_pct'), 2)} %, {_f(med('us_per_packet'), 2)} µs/pkt, "
                f"node {_f(med('node_cpu_cores'), 2)} cores, load "
                f"{_f(med('loader_cpu_cores'), 2)} cores (busiest "
                f"{_f(med('loader_cpu_max_cores'), 2)}), drops node/viewers "
                f"{_f(med('udp_drops_at_node'), 0)}/{_f(med('udp_drops_at_viewers'), 0)}, "
                f"loop waiting {_f(med('loop_waiting_pct'), 1)} %"
            )
            lines.append(line)
            if workers > 1:  # (which worker owns the room changes from run to run)
                for role, owner in (("the owner", True), ("the others", False)):
                    kept = [w for s in at for w in s["workers"].values() if w["owner"] == owner]
                    lines.append(
                        f"    {role}: "
                        f"{_f(median_of(w['viewers'] for w in kept), 0)} viewers, "
                        f"{_f(median_of(w['us_per_packet'] for w in kept), 2)} µs/pkt, "
                        f"{_f(median_of(w['cpu_cores'] for w in kept), 2)} cores"
                    )
        relays = [run["relay"] for run in runs if run.get("relay")]
        if relays:
            measured = [r for r in relays if r.get("relay_added_us") is not None]
            if measured:

                def rmed(key: str, measured: list[dict[str, Any]] = measured) -> str:
                    return _f(median_of(r[key] for r in measured), 1)

                lines.append(
                    f"  relay ({len(measured)} run(s), {RELAY_VIEWERS} viewers): it adds "
                    f"{rmed('relay_added_us')} µs per packet of the room (runs: "
                    + ", ".join(_f(r["relay_added_us"]) for r in measured)
                    + f"); the owner's pull {rmed('owner_pull_us')} µs, the relay's ingest "
                    f"{rmed('relay_ingest_us')} µs; {RELAY_VIEWERS} viewers on the owner: "
                    f"{rmed('owner_us_per_delivered')} µs / delivered packet there, on the "
                    f"relay: {rmed('relay_us_per_delivered')} µs there"
                )
            else:
                lines.append(f"  relay: not measured ({relays[0].get('note')})")
    return lines


# -- one run ---------------------------------------------------------------------------------


def free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free on 127.0.0.1 (a worker's own port is p + i)."""
    for _ in range(100):
        first = free_port()
        if first + count > 65536:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no consecutive free ports")


def rooms(base: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(http_get(f"{base}/api/rooms", 30.0))
    return listed


def live_owner(base: str, room: str) -> int | None:
    """The worker index owning ``room`` once it is live with both tracks, else None."""
    for r in rooms(base):
        if r["name"] == room and r["hasPublisher"] and r["tracks"] >= 2:
            return int(r.get("owner", {}).get("worker", 0))
    return None


def subscribers(base: str, room: str) -> float:
    """The room's viewers on the node (``live_subscribers``, summed over its workers)."""
    text = http_get(f"{base}/metrics", 30.0).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "live_subscribers" and sample.labels.get("room") == room
    )


def own_session(*argv: str) -> tuple[str, ...]:
    """``argv`` run in a session of its own (``setsid``, which execs in place: the child is
    not a process group leader). Linux's autogroup scheduling shares the CPUs fairly between
    sessions, and a supervisor's workers each have their own: with the node, the publisher
    and every load process in sessions of their own too, each process gets its share, for
    ``WORKERS=1`` as for ``WORKERS=2`` (in the driver's one session, the load processes would
    share one group with a single server and one more than the workers)."""
    setsid = shutil.which("setsid")
    return (setsid, *argv) if setsid else argv


def at_most(base: str, room: str, viewers: int) -> bool:
    return subscribers(base, room) <= viewers


class Batch:
    """Load processes joining ``count`` viewers at ``base`` (``bench.viewers``)."""

    def __init__(self, processes: Processes, tag: str) -> None:
        self.processes = processes
        self.tag = tag
        self.loaders: list[Child] = []

    def out(self, index: int) -> Path:
        return self.processes.directory / f"{self.tag}-{index}.json"

    async def join(self, base: str, room: str, count: int) -> None:
        procs = max(1, min(count, math.ceil(count * PACKETS_PER_VIEWER / LOADER_PACKETS)))
        self.loaders = [
            await self.processes.start(
                f"{self.tag}-{index}",
                *own_session(sys.executable),
                "-m",
                "bench.viewers",
                "--base", base,
                "--room", room,
                "--first", str(index),
                "--step", str(procs),
                "--total", str(count),
                "--rate", str(JOIN_RATE),
                "--grace", str(JOIN_GRACE),
                "--span", str(max(1.0, HOLD / 3)),
                "--out", str(self.out(index)),
                "--connection-per-viewer",
                log=f"{self.tag}-{index}.log",
            )
            for index in range(procs)
        ]  # fmt: skip
        await asyncio.gather(*(loader.event("ready", 60) for loader in self.loaders))
        start = time.monotonic() + 0.2
        for loader in self.loaders:
            loader.send(f"start {start}")
        await asyncio.gather(
            *(
                loader.event("joined", count / JOIN_RATE + JOIN_GRACE + 30)
                for loader in self.loaders
            )
        )

    def send(self, command: str) -> None:
        for loader in self.loaders:
            loader.send(command)

    async def reports(self) -> list[dict[str, Any]]:
        await asyncio.gather(*(loader.event("done", 60) for loader in self.loaders))
        return [json.loads(self.out(i).read_text()) for i in range(len(self.loaders))]

    def cpu(self) -> list[float]:
        return [loader.cpu() for loader in self.loaders]

    async def close(self) -> None:
        self.send("close")
        await asyncio.gather(*(loader.stop(30) for loader in self.loaders))


@dataclass
class Node:
    child: Child
    base: str
    room: str
    workers: int
    own_port: int
    pids: dict[str, int]
    owner: int
    publisher: Child

    def worker_base(self, index: int) -> str:
        return f"http://127.0.0.1:{self.own_port + index}" if self.workers > 1 else self.base

    async def sent(self) -> int:
        self.publisher.send("count")
        return int((await self.publisher.event("count", 10))["packets"])


async def hold_window(
    node: Node, batches: list[Batch], seconds: float
) -> tuple[Reading, Reading, int, list[dict[str, Any]]]:
    """Hold every batch's viewers for ``seconds``: the readings at both ends, the packets
    the publisher sent meanwhile and the viewers' reports."""
    start = await reading(node.base, node.room, node.child, node.pids)
    for batch in batches:
        batch.send("hold")
    sent = await node.sent()
    await asyncio.sleep(seconds)
    end = await reading(node.base, node.room, node.child, node.pids)
    for batch in batches:
        batch.send("end")
    sent = await node.sent() - sent
    reports = [report for batch in batches for report in await batch.reports()]
    return start, end, sent, reports


async def relay_windows(node: Node, processes: Processes) -> dict[str, Any]:
    """Windows A, B and C (see the module's docstring)."""
    other = 1 - node.owner
    windows: dict[str, dict[str, float]] = {}
    sent: dict[str, int] = {}
    served: dict[str, dict[int, tuple[int, int]]] = {}
    start = await reading(node.base, node.room, node.child, node.pids)
    before = await node.sent()
    await asyncio.sleep(HOLD)
    end = await reading(node.base, node.room, node.child, node.pids)
    windows["A"], sent["A"] = cpu_between(start, end), await node.sent() - before
    for key, index in (("B", node.owner), ("C", other)):
        batch = Batch(processes, f"relay{key}")
        await batch.join(node.worker_base(index), node.room, RELAY_VIEWERS)
        await asyncio.sleep(SETTLE)
        start, end, sent[key], reports = await hold_window(node, [batch], HOLD)
        windows[key] = cpu_between(start, end)
        served[key] = by_worker(viewers_of(reports))
        await batch.close()
        # their sessions' threads gone before the next window (a thread that ends during a
        # window takes its CPU out of the process's sum); the relay's pull stays (its grace
        # is longer than the bench) and serves the steps' viewers on that worker
        left = 0 if key == "B" else 1
        gone = functools.partial(at_most, node.base, node.room, left)
        await wait_for(gone, 30, "the viewers to go")
    result: dict[str, Any] = {"windows": windows, "sent": sent}
    if set(served["C"]) != {other} or set(served["B"]) != {node.owner}:
        result["note"] = (
            f"viewers at worker {other}'s port were served by {sorted(served['C'])}, "
            f"at the owner's by {sorted(served['B'])}: no relay"
        )
        return result
    result.update(relay_cost(windows, node.owner, sent))
    packets_b = served["B"][node.owner][1]
    packets_c = served["C"][other][1]
    result["owner_us_per_delivered"] = windows["B"][f"worker{node.owner}"] / packets_b * 1e6
    result["relay_us_per_delivered"] = windows["C"][f"worker{other}"] / packets_c * 1e6
    return result


async def start_node(processes: Processes, workers: int, redis_url: str, room: str) -> Node:
    port = free_port()
    own_port = free_ports(workers)
    base = f"http://127.0.0.1:{port}"
    env = {
        **server_env(port),
        "REDIS_URL": redis_url,
        "WORKERS": str(workers),
        "CLUSTER_PORT": str(own_port),
        "RELAY_GRACE_SECONDS": "3600",  # a relay stays for the run, viewers or not
    }
    child = await processes.start(
        "node", *own_session(sys.executable), "-m", "golive", env=env, log="node.log", events=False
    )
    await wait_for(lambda: healthy(base), 60, "the node to answer /healthz")
    pids: dict[str, int] = {}

    def found() -> bool:
        pids.update(node_processes(child.pid, workers))
        return bool(pids)

    await wait_for(found, 30, f"the node's {workers} worker(s)")
    for index in range(workers):
        url = f"http://127.0.0.1:{own_port + index}" if workers > 1 else base
        await wait_for(functools.partial(healthy, url), 60, f"worker {index} to answer")
    publisher = await processes.start(
        "publisher",
        *own_session(sys.executable),
        "-m",
        "bench.publisher",
        "--base", base,
        "--room", room,
        "--video-bitrate", str(VIDEO_KBPS * 1000),
        "--width", "640",
        "--height", "480",
        "--block", "160",
    )  # fmt: skip
    await publisher.event("publishing", 120)
    owner: list[int] = []

    def is_live() -> bool:
        index = live_owner(base, room)
        if index is not None:
            owner.append(index)
        return index is not None

    try:
        await wait_for(is_live, 30, "the room to be live")
    except RuntimeError as exc:
        listed = await asyncio.to_thread(rooms, base)
        raise RuntimeError(f"{exc}: /api/rooms says {listed}") from None
    return Node(child, base, room, workers, own_port, pids, owner[0], publisher)


async def run_once(processes: Processes, workers: int, redis_url: str, run: int) -> dict[str, Any]:
    await asyncio.to_thread(flush, redis_url)
    room = f"cluster{workers}r{run}"
    node = await start_node(processes, workers, redis_url, room)
    await asyncio.sleep(1.0)
    relay = None
    if workers == 2 and RELAY_VIEWERS > 0:
        relay = await relay_windows(node, processes)
        print(f"WORKERS={workers} run {run + 1}: relay {relay_line(relay)}", flush=True)
    batches: list[Batch] = []
    steps: list[dict[str, Any]] = []
    audience = 0
    for target in STEPS:
        batch = Batch(processes, f"step{target}")
        await batch.join(node.base, node.room, target - audience)
        batches.append(batch)
        audience = target
        await asyncio.sleep(SETTLE)
        loader_cpu = [c for b in batches for c in b.cpu()]
        waited = {name: run_queue_seconds(pid) for name, pid in node.pids.items()}
        socket_drops = udp_socket_drops()
        start, end, sent, reports = await hold_window(node, batches, HOLD)
        socket_drops_end = udp_socket_drops()
        loader_cpu = [
            after - before
            for after, before in zip([c for b in batches for c in b.cpu()], loader_cpu, strict=True)
        ]
        alive = await asyncio.to_thread(live_owner, node.base, node.room) is not None
        seconds = end.at - start.at
        step = step_figures(
            audience=target,
            viewers=viewers_of(reports),
            sent=sent,
            cpu=cpu_between(start, end),
            seconds=seconds,
            delivered=end.counters.delivered - start.counters.delivered,
            owner=node.owner,
            alive=alive,
        )
        loaders = [loader.pid for b in batches for loader in b.loaders]
        step.update(
            loader_cpu_cores=sum(loader_cpu) / seconds,
            loader_cpu_max_cores=max(loader_cpu) / seconds,
            udp_drops_at_node=drops_of(list(node.pids.values()), socket_drops, socket_drops_end),
            udp_drops_at_viewers=drops_of(loaders, socket_drops, socket_drops_end),
            loop_waiting_pct=max(
                100 * (run_queue_seconds(pid) - waited[name]) / seconds
                for name, pid in node.pids.items()
                if name != SUPERVISOR
            ),
            server_dropped=end.counters.dropped - start.counters.dropped,
            publisher_sent=sent,
        )
        steps.append(step)
        print(f"WORKERS={workers} run {run + 1}: {step_line(step)}", flush=True)
        if not acceptable(step):
            break
    for batch in batches:
        batch.send("close")
    node.publisher.send("stop")
    with contextlib.suppress(TimeoutError, RuntimeError):
        await node.publisher.event("stopped", 30)
    await asyncio.gather(*(loader.stop(30) for b in batches for loader in b.loaders))
    await node.child.stop(0.0, grace=30.0)
    await processes.stop_all()
    return {"workers": workers, "owner": node.owner, "steps": steps, "relay": relay}


def step_line(step: Mapping[str, Any]) -> str:
    shares = ", ".join(
        f"w{index}{'*' if w['owner'] else ''} {w['viewers']} viewers "
        f"{_f(w['us_per_packet'], 2)} µs/pkt"
        for index, w in step["workers"].items()
    )
    return (
        f"N={step['audience']} ({step['connected']} connected): "
        f"{_f(step['delivered_per_s'], 0)} pkt/s, loss {_f(step['loss_pct'], 2)} %, "
        f"{_f(step['us_per_packet'], 2)} µs/pkt, node {_f(step['node_cpu_cores'], 2)} cores, "
        f"load {_f(step['loader_cpu_cores'], 2)} cores, drops node/viewers "
        f"{step['udp_drops_at_node']}/{step['udp_drops_at_viewers']} [{shares}]"
    )


def relay_line(relay: Mapping[str, Any]) -> str:
    if relay.get("relay_added_us") is None:
        return str(relay.get("note"))
    return (
        f"adds {_f(relay['relay_added_us'])} µs / packet of the room (owner's pull "
        f"{_f(relay['owner_pull_us'])}, relay's ingest {_f(relay['relay_ingest_us'])}); "
        f"µs / delivered packet: owner {_f(relay['owner_us_per_delivered'], 2)}, relay "
        f"{_f(relay['relay_us_per_delivered'], 2)}"
    )


# -- redis -----------------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        with contextlib.closing(client):
            return bool(client.ping())
    except redis.RedisError:
        return False


def flush(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    with contextlib.closing(client):
        client.flushall()


async def start_redis(processes: Processes) -> str:
    """Debian's ``redis-server`` on a free port of 127.0.0.1, nothing saved to disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: make system-packages")
    port = free_port()
    await processes.start(
        "redis",
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(processes.directory),
        "--loglevel", "warning",
        events=False,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    await wait_for(lambda: redis_answers(url), 10, "redis-server to answer PING")
    return url


# -- the bench --------------------------------------------------------------------------------


async def bench(processes: Processes, runs_processes: Processes) -> None:
    print(
        f"golive cluster: one room (VP8 {VIDEO_KBPS} kbit/s + Opus), audiences of "
        f"{', '.join(map(str, STEPS))} joining at {JOIN_RATE:g}/s through the public port, "
        f"{HOLD:g} s held each; WORKERS={', '.join(map(str, WORKERS))}; {RUNS} run(s) each",
        flush=True,
    )
    results: dict[int, list[dict[str, Any]]] = {}
    try:
        redis_url = await start_redis(processes)
        for run in range(RUNS):
            for workers in WORKERS:  # interleaved: the machine's noise falls on both alike
                result = await run_once(runs_processes, workers, redis_url, run)
                results.setdefault(workers, []).append(result)
    except BaseException:
        print(f"bench failed; logs in {processes.directory}", file=sys.stderr)
        raise
    finally:
        await runs_processes.stop_all()
        await processes.stop_all()
    print()
    print("\n".join(summary(results)))
    output = os.environ.get("CLUSTER_BENCH_JSON")
    if output:
        document = {"hold_s": HOLD, "join_rate": JOIN_RATE, "steps": STEPS, "results": results}
        await asyncio.to_thread(Path(output).write_text, json.dumps(document, indent=1))
        print(f"\nwritten: {output}")
    shutil.rmtree(processes.directory, ignore_errors=True)


def main() -> None:
    from golive.logs import configure_logging  # noqa: PLC0415  only when run

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # (--help; the knobs are environment variables)
    configure_logging("warning", "json", stream=sys.stderr)
    processes = Processes()
    runs_processes = Processes(directory=processes.directory)
    try:
        asyncio.run(bench(processes, runs_processes))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        runs_processes.kill_all()
        processes.kill_all()


if __name__ == "__main__":
    main()
