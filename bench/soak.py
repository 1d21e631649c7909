"""``make soak``: ten minutes of churn against a golive server, then everything it held must be
given back.

Run in the loopback-only namespace (``scripts/loopback-netns .venv/bin/python -m bench.soak``;
``make soak`` does it). Processes, all on the machine's two cores:

1. **The server**, ``python -m golive`` in its own process, on its embedded defaults (every
   admission cap and timeout as shipped) plus loopback ICE, no STUN server and info logs (kept
   in the output directory). Whatever the environment sets for golive (say
   ``PUBLISHER_RECONNECT_SECONDS``) reaches it.
2. **The warm-up** (``bench.churn --warmup``): one publisher, two viewers and one request of
   each kind of garbage, all ended by ``DELETE``; the server has then imported and cached
   what a session needs. Once no session is left, ``SOAK_BASELINE_SECONDS`` (10) of idle
   sampling give the **baseline**: the median of each figure.
3. **The churn**, ``SOAK_SECONDS`` (600) long: one load process (``bench.churn``: publishers
   that come and go, viewers joining and leaving at random, garbage requests; see there) and,
   one after another, short-lived *doomed* processes (``bench.churn --doomed``: a publisher,
   its viewers and a viewer of another room) killed with ``SIGKILL`` after 3-20 s: their
   sessions vanish without ``DELETE`` or DTLS close, and only ICE consent (about 30 s) tells
   the server. At the end the load process's remaining clients leave by ``DELETE``, by closing
   their peer connection, or by vanishing with it.
4. **The settle**: sampling goes on until every figure has been back within its tolerance for
   ``SOAK_HOLD_SECONDS`` (10) in a row, or ``SOAK_SETTLE_SECONDS`` (150) have passed since the
   churn ended: then the soak fails, naming what did not come back.
5. **The stop**: ``SIGTERM``; the server must exit 0.

Sampled every ``SOAK_INTERVAL`` (2) seconds from start to stop: the server's RSS, open file
descriptors and threads (``/proc/PID/status`` and ``/proc/PID/fd``), and from ``/metrics`` its
actors (``golive_actors``, every kind), sessions (``golive_sessions``), rooms (``live_rooms``)
and open HTTP connections (``golive_http_connections``, the scrape's own included). Tolerances
over the baseline are :class:`Tolerance`'s (why each: see there and docs/operations.md).

The soak also fails when an actor crashed (``golive_actor_crashes_total``), when the server
logged ``actor crashed``, ``request failed`` (a 500) or ``room crashed and was removed``, when
any request got an answer it should not (a 500, a garbage offer answered ``201``...), or when
the server does not exit 0 on ``SIGTERM``.

Written to ``SOAK_OUT`` (``soak-results``): ``samples.csv`` (one row per sample),
``soak.json`` (the samples, baseline, tolerances, verdict, what the load did and what the server
logged at warning and above), ``soak.png`` (the plot; ``SOAK_PLOT`` to write it elsewhere, such
as ``docs/soak.png``), and ``logs/`` (the server's log and the load processes').

Knobs (environment): ``SOAK_SECONDS`` (600), ``SOAK_INTERVAL`` (2), ``SOAK_SETTLE_SECONDS``
(150), ``SOAK_HOLD_SECONDS`` (10), ``SOAK_BASELINE_SECONDS`` (10), ``SOAK_SEED`` (1: the same
load again), ``SOAK_PUBLISHERS`` (3 slots), ``SOAK_VIEWERS`` (8 slots), ``SOAK_GARBAGE`` (1
request a second), ``SOAK_BITRATE`` (300000 bit/s of video a publisher), ``SOAK_DOOMED``
(1; 0: no killed processes), ``SOAK_RECORD`` (0; 1: the server records every track, into a
temporary directory), ``SOAK_RSS_MIB`` (24: RSS allowed above the baseline after the churn,
see :class:`Tolerance`), ``SOAK_TRACEMALLOC`` (0; 1: the server runs with ``PPROF=1``, traces its
Python allocations from the baseline on, and ``memory-top.txt`` lists, after the settle, where
what the churn allocated and is still alive was allocated: a leak's address).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from bench.forwarding import (
    Processes,
    cpu_seconds,
    free_port,
    healthy,
    http_get,
    loopback_env,
    memory_mib,
    wait_for,
)

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "2"))
SETTLE = float(os.environ.get("SOAK_SETTLE_SECONDS", "150"))
HOLD = float(os.environ.get("SOAK_HOLD_SECONDS", "10"))
BASELINE = float(os.environ.get("SOAK_BASELINE_SECONDS", "10"))
SEED = int(os.environ.get("SOAK_SEED", "1"))
PUBLISHERS = int(os.environ.get("SOAK_PUBLISHERS", "3"))
VIEWERS = int(os.environ.get("SOAK_VIEWERS", "8"))
GARBAGE = float(os.environ.get("SOAK_GARBAGE", "1"))
BITRATE = int(os.environ.get("SOAK_BITRATE", "300000"))
DOOMED = os.environ.get("SOAK_DOOMED", "1") not in ("", "0")
RECORD = os.environ.get("SOAK_RECORD", "0") not in ("", "0")
TRACEMALLOC = os.environ.get("SOAK_TRACEMALLOC", "0") not in ("", "0")
OUT = Path(os.environ.get("SOAK_OUT", "soak-results"))
PLOT = Path(os.environ.get("SOAK_PLOT") or OUT / "soak.png")
COLD = 4.0  # seconds of idle sampling right after start (shown, not compared)
WARMUP_SETTLE = 90.0  # seconds for the warm-up's sessions to end (an abandoned offer: 30 s)
DOOMED_LIFE = (3.0, 20.0)  # seconds a doomed process lives once it is ready
DOOMED_PAUSE = (1.0, 5.0)
SCRAPE_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0  # SIGTERM to exit (SHUTDOWN_TIMEOUT_SECONDS is 10 by default)
MEMORY_TOP = 40  # allocation sites written with SOAK_TRACEMALLOC
#: Events in the server's log that are a bug whatever the load.
PROBLEM_EVENTS: Final = ("actor crashed", "request failed", "room crashed and was removed")

#: The figures compared with the baseline, in the order they are shown.
FIGURES: Final = ("rss_mib", "fds", "threads", "actors", "sessions", "rooms", "http_connections")


# -- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The server at one moment (``t``: seconds since it was started)."""

    t: float
    phase: str  # idle, warm-up, baseline, churn, settle
    rss_mib: float
    fds: int
    threads: int
    actors: int  # every kind (golive_actors)
    sessions: int  # publishers + subscribers (golive_sessions)
    publishers: int
    subscribers: int
    rooms: int  # live_rooms
    http_connections: int  # golive_http_connections (the scrape's own included)
    mailbox: int  # messages waiting in every actor's mailbox
    crashes: int  # golive_actor_crashes_total, every kind
    cpu_s: float  # the server's CPU so far (user + system, every thread)
    actor_kinds: Mapping[str, int] = field(default_factory=dict)

    def figure(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Scrape:
    """What the server's ``/metrics`` says, summed as the soak needs it."""

    publishers: int = 0
    subscribers: int = 0
    actor_kinds: Mapping[str, int] = field(default_factory=dict)
    rooms: int = 0
    http_connections: int = 0
    mailbox: int = 0
    crashes: int = 0
    ended: Mapping[str, int] = field(default_factory=dict)  # sessions ended, by role/reason
    refused: Mapping[str, int] = field(default_factory=dict)  # joins refused, by role/reason


def parse_metrics(text: str) -> Scrape:
    """The soak's figures from a Prometheus text exposition."""
    values: dict[str, int] = Counter()
    kinds: Counter[str] = Counter()
    ended: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, int(sample.value)
            if name == "golive_sessions":
                values[labels.get("role", "")] += value
            elif name == "golive_actors":
                kinds[labels.get("actor", "")] += value
            elif name == "golive_actor_mailbox_messages":
                values["mailbox"] += value
            elif name == "golive_actor_crashes_total":
                values["crashes"] += value
            elif name == "live_rooms":
                values["rooms"] += value
            elif name == "golive_http_connections":
                values["http"] += value
            elif name == "golive_sessions_ended_total":
                ended[f"{labels.get('role')}/{labels.get('reason')}"] += value
            elif name == "golive_join_refusals_total":
                refused[f"{labels.get('role')}/{labels.get('reason')}"] += value
    return Scrape(
        publishers=values["publisher"],
        subscribers=values["subscriber"],
        actor_kinds=dict(sorted(kinds.items())),
        rooms=values["rooms"],
        http_connections=values["http"],
        mailbox=values["mailbox"],
        crashes=values["crashes"],
        ended=dict(sorted(ended.items())),
        refused=dict(sorted(refused.items())),
    )


def process_figures(pid: int) -> tuple[float, int, int]:
    """RSS (MiB), open file descriptors and threads of a process, from ``/proc``."""
    rss, _ = memory_mib(pid)
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()), threads


def read_sample(pid: int, base: str, t: float, phase: str) -> tuple[Sample, Scrape]:
    """One sample of the server (blocking: run it in a thread)."""
    scrape = parse_metrics(http_get(f"{base}/metrics", SCRAPE_TIMEOUT).decode())
    rss, fds, threads = process_figures(pid)
    sample = Sample(
        t=round(t, 2),
        phase=phase,
        rss_mib=round(rss, 2),
        fds=fds,
        threads=threads,
        actors=sum(scrape.actor_kinds.values()),
        sessions=scrape.publishers + scrape.subscribers,
        publishers=scrape.publishers,
        subscribers=scrape.subscribers,
        rooms=scrape.rooms,
        http_connections=scrape.http_connections,
        mailbox=scrape.mailbox,
        crashes=scrape.crashes,
        cpu_s=round(cpu_seconds(pid), 2),
        actor_kinds=scrape.actor_kinds,
    )
    return sample, scrape


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far above its idle baseline each figure may stay once the churn is over.

    Sessions, rooms and actors count what the churn made: every one must be gone. Threads:
    golive's are its actors' (one each) and the event loop's; nothing in this load uses the
    default executor, so none may be left. File descriptors: the listening socket, the
    loop's epoll and self-pipe, the log... come back exactly (every soak so far: the same
    number as the baseline); 2 spare for one the runtime opens once and keeps. HTTP
    connections: the scrape's own is in the baseline. RSS: CPython gives little memory back
    to the system (a pymalloc arena stays while any object in it lives; glibc keeps freed
    heap), so after a load it settles above the idle baseline even without a leak: 14 MiB
    after 5 minutes of this churn and 17 MiB after 10 (flat for its second half) with every
    ended session freed within 5 s (a full collection every 5 s, docs/operations.md); 24 MiB
    leaves 7 MiB of margin, while what ended sessions hold until a full collection (about
    100 of them here: 30-50 MiB) or any steady growth shows past it. ``SOAK_RSS_MIB`` sets
    another bound."""

    rss_mib: float = float(os.environ.get("SOAK_RSS_MIB", "24"))
    fds: int = 2
    threads: int = 0
    actors: int = 0
    sessions: int = 0
    rooms: int = 0
    http_connections: int = 0

    def allowed(self, baseline: Mapping[str, float], figure: str) -> float:
        return baseline[figure] + float(getattr(self, figure))


def baseline_of(samples: Iterable[Sample]) -> dict[str, float]:
    """The median of each figure over the idle samples."""
    chosen = list(samples)
    if not chosen:
        raise ValueError("no baseline samples")
    return {name: float(statistics.median(s.figure(name) for s in chosen)) for name in FIGURES}


def departures(
    baseline: Mapping[str, float], sample: Sample, tolerance: Tolerance
) -> dict[str, float]:
    """The figures of ``sample`` above what the tolerance allows, with their values."""
    return {
        name: sample.figure(name)
        for name in FIGURES
        if sample.figure(name) > tolerance.allowed(baseline, name)
    }


def settled_at(
    samples: Sequence[Sample], baseline: Mapping[str, float], tolerance: Tolerance, hold: int
) -> int | None:
    """The index of the first sample that begins ``hold`` samples in a row within tolerance
    (the server has settled there), or None."""
    run = 0
    for index, sample in enumerate(samples):
        run = 0 if departures(baseline, sample, tolerance) else run + 1
        if run >= hold:
            return index - hold + 1
    return None


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of (seconds, value) points, per minute; None for fewer than 2
    distinct times."""
    if len({t for t, _ in points}) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den * 60.0


def log_problems(lines: Iterable[str]) -> tuple[Counter[str], Counter[str]]:
    """Lines of a JSON log by level, and the warning-or-worse ones by ``level: event``."""
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            levels["not json"] += 1
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level in ("warning", "error", "critical"):
            events[f"{level}: {str(entry.get('event', '?')).splitlines()[0][:100]}"] += 1
    return levels, events


# -- the report -------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def summary_table(
    samples: Sequence[Sample],
    baseline: Mapping[str, float],
    tolerance: Tolerance,
    settled: Sequence[Sample],
) -> str:
    """Per figure: first idle sample, baseline, churn median and max, the last churn sample,
    the median of ``settled`` (the samples after the churn judged: those the server settled
    in, or the last ones when it did not), what is allowed, and whether they are within it."""
    idle = [s for s in samples if s.phase == "idle"]
    churn = [s for s in samples if s.phase == "churn"]
    head = ("", "idle", "baseline", "churn p50", "churn max", "churn end", "after", "allowed", "")
    rows = [head]
    for name in FIGURES:
        digits = 1 if name == "rss_mib" else 0
        during = [s.figure(name) for s in churn]
        after = [s.figure(name) for s in settled]
        allowed = tolerance.allowed(baseline, name)
        rows.append(
            (
                name,
                _cell(idle[0].figure(name) if idle else None, digits),
                _cell(baseline[name], digits),
                _cell(statistics.median(during) if during else None, digits),
                _cell(max(during) if during else None, digits),
                _cell(during[-1] if during else None, digits),
                _cell(statistics.median(after) if after else None, digits),
                f"<= {_cell(allowed, digits)}",
                ("ok" if max(after) <= allowed else "NOT BACK") if after else "NOT BACK",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


CSV_FIELDS: Final = tuple(f.name for f in fields(Sample) if f.name != "actor_kinds")


def write_csv(samples: Sequence[Sample], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for sample in samples:
            writer.writerow(getattr(sample, name) for name in CSV_FIELDS)


PHASE_COLOURS: Final = {
    "warm-up": "#f2e6c9",
    "baseline": "#d9ead3",
    "churn": "#fde0dd",
    "settle": "#dbe8f6",
}


def plot(
    samples: Sequence[Sample],
    baseline: Mapping[str, float],
    tolerance: Tolerance,
    path: Path,
    title: str,
) -> None:
    """The figures against time, with the phases shaded, each baseline (dashed) and what is
    allowed after the churn (dotted)."""
    import matplotlib as mpl  # noqa: PLC0415  only for the plot (a dev dependency)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  after choosing the backend

    panels = (
        ("RSS (MiB)", ("rss_mib",)),
        ("open file descriptors", ("fds",)),
        ("threads", ("threads",)),
        ("actors", ("actors",)),
        ("sessions, rooms", ("publishers", "subscribers", "rooms")),
    )
    minutes = [s.t / 60 for s in samples]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 11), sharex=True)
    for axis, (label, names) in zip(axes, panels, strict=True):
        for name in names:
            axis.plot(minutes, [s.figure(name) for s in samples], linewidth=1, label=name)
        if len(names) == 1 and names[0] in baseline:
            axis.axhline(baseline[names[0]], color="black", linestyle="--", linewidth=0.8)
            axis.axhline(
                tolerance.allowed(baseline, names[0]), color="red", linestyle=":", linewidth=0.8
            )
        else:
            axis.legend(loc="upper right", fontsize="small")
        axis.set_ylabel(label)
        axis.grid(visible=True, alpha=0.3)
        for phase, start, end in phase_spans(samples):
            colour = PHASE_COLOURS.get(phase)
            if colour is not None:
                axis.axvspan(start / 60, end / 60, color=colour, linewidth=0)
    axes[-1].set_xlabel("minutes since the server started")
    axes[0].set_title(title, fontsize="medium")
    handles: list[mpl.artist.Artist] = [
        mpl.patches.Patch(color=colour, label=phase) for phase, colour in PHASE_COLOURS.items()
    ]
    handles += [
        mpl.lines.Line2D([], [], color="black", linestyle="--", label="baseline"),
        mpl.lines.Line2D([], [], color="red", linestyle=":", label="allowed after"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=6, fontsize="small")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def phase_spans(samples: Sequence[Sample]) -> list[tuple[str, float, float]]:
    """Each run of samples in one phase: (phase, first t, the next run's first t)."""
    spans: list[tuple[str, float, float]] = []
    for sample in samples:
        if spans and spans[-1][0] == sample.phase:
            spans[-1] = (sample.phase, spans[-1][1], sample.t)
        else:
            if spans:
                spans[-1] = (spans[-1][0], spans[-1][1], sample.t)
            spans.append((sample.phase, sample.t, sample.t))
    return spans


# -- the run ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Sampler:
    """Samples the server every :data:`INTERVAL` seconds, tagged with the current phase."""

    pid: int
    base: str
    started: float  # monotonic time the server was started
    phase: str = "idle"
    samples: list[Sample] = field(default_factory=list)
    last_scrape: Scrape = field(default_factory=Scrape)
    failures: int = 0
    new: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            try:
                sample, scrape = await asyncio.to_thread(
                    read_sample, self.pid, self.base, time.monotonic() - self.started, self.phase
                )
            except (OSError, ValueError):  # the server gone, or not answering in time
                self.failures += 1
                if self.gone():
                    raise
            else:
                self.samples.append(sample)
                self.last_scrape = scrape
                self.new.set()
                self.new.clear()
            next_at += INTERVAL
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def gone(self) -> bool:
        """The server process has exited (or is a zombie: it exited, not yet waited for)."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    async def next_sample(self, within: float) -> Sample:
        await asyncio.wait_for(self.new.wait(), within)
        return self.samples[-1]

    async def until(self, check: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not (self.samples and check(self.samples[-1])):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await self.next_sample(max(0.1, deadline - time.monotonic()) + INTERVAL)


def soak_env(port: int, record_dir: str) -> dict[str, str]:
    env = loopback_env(
        port,
        LOG_LEVEL="info",
        LOG_FORMAT="json",
        PPROF="1" if TRACEMALLOC else "0",
        RECORD_ENABLED="1" if RECORD else "0",
    )
    if RECORD:
        env["RECORD_DIR"] = record_dir
    return env


def churn_argv(base: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.churn", "--base", base, "--bitrate", str(BITRATE), *extra]


@dataclass
class Doomed:
    started: int = 0
    ready: int = 0
    killed: int = 0
    cpu_s: float = 0.0
    failures: list[str] = field(default_factory=list)


async def doomed_loop(processes: Processes, base: str, until: float, doomed: Doomed) -> None:
    """Doomed load processes, one after another until ``until`` (monotonic), each killed with
    SIGKILL a few seconds after it is ready: its sessions vanish."""
    rng = random.Random(SEED + 1)  # noqa: S311  a reproducible load
    number = 0
    while time.monotonic() < until:
        number += 1
        doomed.started += 1
        child = await processes.start(
            f"doomed{number}",
            *churn_argv(base, "--doomed", str(number), "--seed", str(SEED + number)),
            "--seconds",
            "120",
            log="doomed.log",
        )
        try:
            await child.event("ready", 60)
            doomed.ready += 1
            life = min(rng.uniform(*DOOMED_LIFE), max(0.0, until - time.monotonic()))
            await asyncio.sleep(life)
        except (RuntimeError, TimeoutError) as exc:
            doomed.failures.append(f"doomed{number}: {exc}"[:200])
        finally:
            cpu = child.cpu()
            if not math.isnan(cpu):
                doomed.cpu_s += cpu
            if child.process.returncode is None:
                child.process.kill()
                doomed.killed += 1
            await child.process.wait()
            processes.children.remove(child)
        await asyncio.sleep(min(rng.uniform(*DOOMED_PAUSE), max(0.0, until - time.monotonic())))


@dataclass
class Outcome:
    baseline: dict[str, float] = field(default_factory=dict)
    settled: list[Sample] = field(default_factory=list)
    settle_seconds: float | None = None
    churn: dict[str, Any] = field(default_factory=dict)
    doomed: Doomed = field(default_factory=Doomed)
    exit_code: int | None = None
    stop_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    memory_top: str = ""  # with SOAK_TRACEMALLOC: what the churn allocated and is still alive


async def run(processes: Processes, tolerance: Tolerance, outcome: Outcome) -> Sampler:  # noqa: PLR0915  the soak, step by step, reads best in one piece
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    record_dir = tempfile.mkdtemp(prefix="golive-soak-records-")
    started = time.monotonic()
    server = await processes.start(
        "server",
        sys.executable,
        "-m",
        "golive",
        env=soak_env(port, record_dir),
        log="server.log",
        events=False,
    )
    await wait_for(lambda: healthy(base), 60, "the server to answer /healthz")
    sampler = Sampler(server.pid, base, started)
    sampling = asyncio.create_task(sampler.run())
    try:
        await asyncio.sleep(COLD)
        say("warm-up: one publisher, two viewers, each kind of garbage once")
        sampler.phase = "warm-up"
        warmup = await processes.start("warmup", *churn_argv(base, "--warmup"), log="warmup.log")
        warm = await warmup.event("stopped", 120)
        if warm["unexpected"]:
            outcome.problems.append(f"warm-up: unexpected answers {warm['unexpected']}")
        await sampler.until(
            lambda s: s.sessions == 0 and s.rooms == 0, WARMUP_SETTLE, "the warm-up to end"
        )
        say(f"baseline: {BASELINE:g} s idle")
        sampler.phase = "baseline"
        await asyncio.sleep(BASELINE)
        outcome.baseline = baseline_of(s for s in sampler.samples if s.phase == "baseline")
        if TRACEMALLOC:  # the first call starts tracing: only what the churn allocates counts
            await asyncio.to_thread(http_get, f"{base}/debug/memory?top=1", SCRAPE_TIMEOUT)

        say(f"churn: {SECONDS:g} s (doomed processes: {'on' if DOOMED else 'off'})")
        sampler.phase = "churn"
        churn = await processes.start(
            "churn",
            *churn_argv(base, "--seed", str(SEED), "--seconds", str(SECONDS)),
            "--publishers",
            str(PUBLISHERS),
            "--viewers",
            str(VIEWERS),
            "--garbage",
            str(GARBAGE),
            log="churn.log",
        )
        await churn.event("ready", 60)
        churn_end = time.monotonic() + SECONDS
        dooming = (
            asyncio.create_task(doomed_loop(processes, base, churn_end, outcome.doomed))
            if DOOMED
            else None
        )
        progress = asyncio.create_task(report_progress(sampler, churn_end))
        outcome.churn = await churn.event("stopped", SECONDS + 120)
        if dooming is not None:
            await dooming
        progress.cancel()

        sampler.phase = "settle"
        ended = time.monotonic()
        say(f"settle: until every figure is back for {HOLD:g} s (at most {SETTLE:g} s)")
        hold = max(1, math.ceil(HOLD / INTERVAL))
        first = len(sampler.samples)
        while time.monotonic() - ended < SETTLE + HOLD:
            await sampler.next_sample(SCRAPE_TIMEOUT + INTERVAL * 2)
            after = sampler.samples[first:]
            at = settled_at(after, outcome.baseline, tolerance, hold)
            if at is not None:
                outcome.settled = after[at : at + hold]
                outcome.settle_seconds = after[at].t - (ended - started)
                break
            if time.monotonic() - ended > SETTLE:
                break
        if TRACEMALLOC:
            top = await asyncio.to_thread(
                http_get, f"{base}/debug/memory?top={MEMORY_TOP}", SCRAPE_TIMEOUT * 3
            )
            outcome.memory_top = top.decode()
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling

    say("stop: SIGTERM")
    stopping = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        server.process.terminate()
    try:
        outcome.exit_code = await asyncio.wait_for(server.process.wait(), STOP_TIMEOUT)
        outcome.stop_seconds = time.monotonic() - stopping
    except TimeoutError:
        outcome.problems.append(f"the server did not exit within {STOP_TIMEOUT:g} s of SIGTERM")
    return sampler


async def report_progress(sampler: Sampler, end: float) -> None:
    """A line a minute during the churn, so a long run shows it is alive."""
    while True:
        await asyncio.sleep(60)
        if sampler.samples:
            s = sampler.samples[-1]
            say(
                f"  {max(0.0, end - time.monotonic()):4.0f} s to go: {s.sessions} sessions "
                f"({s.publishers} publishers), {s.rooms} rooms, {s.actors} actors, "
                f"{s.threads} threads, {s.fds} fds, RSS {s.rss_mib:.1f} MiB"
            )


def say(text: str) -> None:
    print(text, flush=True)


def judge(
    sampler: Sampler, outcome: Outcome, tolerance: Tolerance, log_lines: Iterable[str]
) -> tuple[list[str], dict[str, Any]]:
    """Every failure of the soak, and the figures of the report."""
    failures = list(outcome.problems)
    samples = sampler.samples
    if not outcome.settled:
        last = samples[-1] if samples else None
        gone = departures(outcome.baseline, last, tolerance) if last is not None else {}
        failures.append(
            f"not back to the baseline {SETTLE:g} s after the churn: "
            + ", ".join(
                f"{name} {value:g} (baseline {outcome.baseline[name]:g}, allowed "
                f"{tolerance.allowed(outcome.baseline, name):g})"
                for name, value in gone.items()
            )
        )
    crashes = max((s.crashes for s in samples), default=0)
    if crashes:
        failures.append(f"{crashes} actor crash(es) (golive_actor_crashes_total)")
    unexpected = outcome.churn.get("unexpected", [])
    if unexpected:
        failures.append(f"answers no one should get: {unexpected[:10]}")
    if outcome.doomed.failures:
        failures.append(f"doomed processes that failed: {outcome.doomed.failures[:5]}")
    if outcome.exit_code not in (0, None):
        failures.append(f"the server exited {outcome.exit_code} on SIGTERM")
    levels, events = log_problems(log_lines)
    for event, count in events.items():
        if event.split(": ", 1)[1] in PROBLEM_EVENTS:
            failures.append(f"the server logged {event!r} {count} time(s)")
    churn = [s for s in samples if s.phase == "churn"]
    second_half = [(s.t, s.rss_mib) for s in churn[len(churn) // 2 :]]
    sessions_made = sum(
        count
        for key, count in outcome.churn.get("counts", {}).items()
        if key.split(" ")[0] in ("publish", "play", "garbage") and key.endswith(" 201")
    )
    churn_end = churn[-1].t if churn else 0.0
    counted = Tolerance(rss_mib=math.inf)  # everything but RSS
    counts_back = next(
        (
            s.t - churn_end
            for s in samples
            if s.phase == "settle"
            and outcome.baseline
            and not departures(outcome.baseline, s, counted)
        ),
        None,
    )
    figures = {
        "churn_seconds": SECONDS,
        "samples": len(samples),
        "scrape_failures": sampler.failures,
        "settle_seconds": outcome.settle_seconds,
        "counts_back_seconds": counts_back,
        "rss_slope_mib_per_min_second_half_of_churn": slope_per_minute(second_half),
        "server_cpu_cores_churn": (
            (churn[-1].cpu_s - churn[0].cpu_s) / (churn[-1].t - churn[0].t)
            if len(churn) > 1
            else None
        ),
        "load_cpu_s": outcome.churn.get("cpu_s"),
        "doomed_cpu_s": outcome.doomed.cpu_s,
        "peak": {
            name: max((s.figure(name) for s in churn), default=None)
            for name in (*FIGURES, "publishers", "subscribers", "mailbox")
        },
        "sessions_answered_201": sessions_made,
        "doomed": asdict(outcome.doomed),
        "server_log_levels": dict(levels),
        "server_log_warnings": dict(events.most_common()),
        "server_exit_code": outcome.exit_code,
        "server_stop_seconds": outcome.stop_seconds,
        "sessions_ended": dict(sampler.last_scrape.ended),
        "joins_refused": dict(sampler.last_scrape.refused),
    }
    return failures, figures


def report(sampler: Sampler, outcome: Outcome, tolerance: Tolerance, processes: Processes) -> int:
    log_path = processes.directory / "server.log"
    with log_path.open(errors="replace") as log:
        failures, figures = judge(sampler, outcome, tolerance, log)
    samples = sampler.samples
    if outcome.baseline:
        say("")
        hold = max(1, math.ceil(HOLD / INTERVAL))
        after = outcome.settled or [s for s in samples if s.phase == "settle"][-hold:]
        say(summary_table(samples, outcome.baseline, tolerance, after))
    say("")
    load_cpu = (figures["load_cpu_s"] or 0.0) + figures["doomed_cpu_s"]
    say(
        f"churn: {SECONDS:g} s, {figures['sessions_answered_201']} offers answered 201 "
        f"(publishers, viewers, abandoned), {outcome.doomed.killed} processes killed; "
        f"peak {figures['peak']['sessions']:g} sessions, {figures['peak']['rooms']:g} rooms, "
        f"{figures['peak']['actors']:g} actors"
    )
    slope = figures["rss_slope_mib_per_min_second_half_of_churn"]
    cores = figures["server_cpu_cores_churn"]
    say(
        f"server CPU during the churn {_cell(cores, 2)} cores; load generator "
        f"{_cell(load_cpu / SECONDS if SECONDS else None, 2)} cores; RSS slope over the "
        f"second half of the churn {_cell(slope, 2)} MiB/min"
    )
    say(
        f"sessions, rooms, actors, threads, fds and connections back "
        f"{_cell(figures['counts_back_seconds'], 0)} s after the churn ended, everything "
        f"{_cell(outcome.settle_seconds, 0)} s after; SIGTERM: exit {outcome.exit_code} in "
        f"{_cell(outcome.stop_seconds, 1)} s"
    )
    say(f"sessions ended, by role/reason: {figures['sessions_ended']}")
    say(f"server log: {figures['server_log_levels']}; warnings and errors:")
    for event, count in list(figures["server_log_warnings"].items())[:15]:
        say(f"  {count:6d}  {event}")
    say(f"load: {outcome.churn.get('counts')}")

    OUT.mkdir(parents=True, exist_ok=True)
    write_csv(samples, OUT / "samples.csv")
    document = {
        "config": {
            "seconds": SECONDS,
            "interval": INTERVAL,
            "seed": SEED,
            "publishers": PUBLISHERS,
            "viewers": VIEWERS,
            "garbage_per_s": GARBAGE,
            "bitrate": BITRATE,
            "doomed": DOOMED,
            "record": RECORD,
        },
        "baseline": outcome.baseline,
        "tolerance": asdict(tolerance),
        "failures": failures,
        "figures": figures,
        "load": outcome.churn,
        "samples": [asdict(s) for s in samples],
    }
    (OUT / "soak.json").write_text(json.dumps(document, indent=1))
    if outcome.memory_top:
        (OUT / "memory-top.txt").write_text(outcome.memory_top)
        say(f"tracemalloc after the settle: {outcome.memory_top.splitlines()[0]}")
    if samples and outcome.baseline:
        title = (
            f"golive soak: {SECONDS / 60:g} min of churn, "
            f"{figures['sessions_answered_201']} sessions; "
            + ("back to baseline" if not failures else "FAILED")
        )
        plot(samples, outcome.baseline, tolerance, PLOT, title)
    say(f"\nwritten: {OUT / 'samples.csv'}, {OUT / 'soak.json'}, {PLOT}; logs in {OUT / 'logs'}")
    if failures:
        say("\nSOAK FAILED:")
        for failure in failures:
            say(f"  - {failure}")
        return 1
    say("\nsoak passed: every figure back within its tolerance")
    return 0


def main() -> None:
    from golive.logs import configure_logging  # noqa: PLC0415  only when run

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # (--help; the knobs are environment variables)
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        sys.exit("bench.soak runs only in a loopback-only namespace: use make soak")
    configure_logging("warning", "json", stream=sys.stderr)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    processes = Processes(directory=logs)
    tolerance = Tolerance()
    outcome = Outcome()
    say(
        f"golive soak: {SECONDS:g} s of churn ({PUBLISHERS} publisher slots, {VIEWERS} viewer "
        f"slots, {GARBAGE:g} garbage requests/s, seed {SEED}), sampled every {INTERVAL:g} s"
    )
    code = 1

    async def soak() -> None:
        nonlocal code
        try:
            sampler = await run(processes, tolerance, outcome)
            code = report(sampler, outcome, tolerance, processes)
        finally:
            await processes.stop_all()

    try:
        asyncio.run(soak())
    except KeyboardInterrupt:
        code = 130
    finally:
        processes.kill_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
