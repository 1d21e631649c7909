"""``make bench``: instant start (issue 16), as Chromium viewers feel it.

Run in the loopback-only namespace (``scripts/loopback-netns .venv/bin/python -m
bench.instant``). For each codec (``--codecs``, VP8 and H.264) and each server setting
(``--cache``: the keyframe cache on, golive's default, and off, ``KEYFRAME_CACHE_BYTES=0``),
``--runs`` runs (3), each with:

1. **The server**: ``python -m golive`` in its own process, a fresh one per run, with
   :func:`bench.forwarding.server_env` (loopback ICE, every admission cap lifted), at nice
   ``BENCH_SERVER_NICE`` (-5, as root) as in ``bench.joins``: the browser's decoders share the
   two cores with it.
2. **The publisher**: ``bench.publisher`` as OBS publishes (:func:`tests.web.instant.
   publisher_argv`): 640x360, 1 Mbit/s + Opus, a keyframe every ``--interval`` seconds (4),
   PLI and FIR counted and never answered, every keyframe announced on its stdout with the
   time it was sent.
3. **The reference viewer**: a Chromium page (Debian's Chromium through Playwright, each
   viewer in its own browser context, a page of the server's origin running
   ``tests/web/instant.js``: WHEP, a muted ``<video>``, the inbound video stats read every
   20 ms until the first frame, then every 100 ms) that POSTs right after a keyframe was
   announced, and stays for the whole run.
4. **The joins**: ``--joins`` (20) viewers, ``--at-once`` (4) at a time: each of those slots
   waits a random time (uniform over the interval, seeded per run), POSTs, stays ``--hold``
   seconds (4.5) from its POST (or until its first frame, if later), then DELETEs and closes.

Figures per configuration, each the median over the runs of the run's figure:

- *POST → first frame* p50 / p99 (ms): from just before the viewer's POST (its offer made and
  its candidates gathered) to the first sign in the page that a frame was decoded: the
  earlier of the first stats read showing ``framesDecoded > 0`` and the ``<video>``'s first
  frame (``requestVideoFrameCallback``). Wall-clock times in the page, to the millisecond.
- *playout delay vs reference* p50 / p99 / max (ms): each viewer's ``jitterBufferDelay`` per
  emitted frame over the window from 3 s to 4 s after its POST (the deltas of
  ``jitterBufferDelay`` and ``jitterBufferEmittedCount`` between the stats read at or before
  each end), less the reference viewer's over the same wall-clock window. A viewer with no
  frame emitted in its window (still waiting for a keyframe) has no figure: *n* says how many
  had one; *largest either way*: the largest absolute difference.
- *keyframe requests / s*: the PLIs and FIRs that reached the publisher's video track, per
  second from the reference viewer's first frame to the end of the joins.
- *freezes*, *PLI + FIR*: ``freezeCount`` and ``pliCount + firCount`` summed over the joins'
  viewers (Chromium asks for a keyframe when it cannot decode).
- *started from the cache*: ``golive_viewer_starts_total{start="cache"}`` over all starts,
  from the server's ``/metrics`` (none on a server without the metric).

Knobs: ``--codecs``, ``--cache``, ``--runs``, ``--joins``, ``--at-once``, ``--hold``,
``--interval``, ``--seed``, ``--json FILE`` (every run and the medians). A quick look:
``scripts/loopback-netns .venv/bin/python -m bench.instant --runs 1 --joins 6``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser
from prometheus_client.parser import text_string_to_metric_families

from bench.forwarding import (
    Processes,
    free_port,
    healthy,
    http_get,
    percentile,
    room_live,
    server_env,
    wait_for,
)
from tests.browser import debian_chromium, launch_chromium
from tests.web.instant import AnnouncingPublisher, Keyframe, Viewer, publisher_argv

SERVER_NICE = int(os.environ.get("BENCH_SERVER_NICE", "-5"))
CODECS = {"vp8": "VP8", "h264": "H.264"}
SETTINGS = {"on": {}, "off": {"KEYFRAME_CACHE_BYTES": "0"}}
WINDOW = (3.0, 4.0)  # seconds after a viewer's POST: its playout delay is read over this
FIRST_FRAME_DEADLINE = 15.0  # seconds after the POST; a viewer with none by then failed


@dataclass(frozen=True)
class Configuration:
    codec: str  # "vp8" or "h264"
    cache: str  # "on" or "off"

    @property
    def label(self) -> str:
        return f"{CODECS[self.codec]}, cache {self.cache}"


@dataclass
class Joined:
    """One viewer's join, as the run saw it (times in wall-clock ms)."""

    posted: float
    phase: float | None  # seconds since the publisher's last keyframe, at the POST
    first_frame: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


# -- the judgement ---------------------------------------------------------------------------


def delay_per_frame(samples: Sequence[dict[str, Any]], start: float, end: float) -> float | None:
    """Milliseconds of jitter buffer delay per frame emitted between ``start`` and ``end``
    (wall-clock ms): the deltas of ``jitterBufferDelay`` (s) and ``jitterBufferEmittedCount``
    between the last samples at or before each end. None without a sample at or before
    ``start``, or without a frame emitted in between."""
    before = [s for s in samples if s["t"] <= start]
    until = [s for s in samples if s["t"] <= end]
    if not before or not until:
        return None
    first, last = before[-1], until[-1]
    try:
        frames = last["jitterBufferEmittedCount"] - first["jitterBufferEmittedCount"]
        delay = last["jitterBufferDelay"] - first["jitterBufferDelay"]
    except TypeError:  # a sample without the figures (no frame yet): null in the page
        return None
    if frames <= 0:
        return None
    return float(delay / frames * 1e3)


def phase_of(keyframes: Sequence[Keyframe], posted: float) -> float | None:
    """Seconds from the publisher's last keyframe before ``posted`` (wall-clock ms)."""
    sent = [k.time for k in keyframes if k.time * 1e3 <= posted]
    return posted / 1e3 - sent[-1] if sent else None


def last_sample(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return samples[-1] if samples else {}


def run_figures(
    joins: Sequence[Joined],
    reference: Sequence[dict[str, Any]],
    requests: int,
    seconds: float,
    starts: dict[str, float],
) -> dict[str, Any]:
    """One run's figures (see the module's docstring)."""
    started = [j for j in joins if j.first_frame is not None]
    to_first = [j.first_frame - j.posted for j in started if j.first_frame is not None]
    behind = []
    for join in joins:
        window = (join.posted + WINDOW[0] * 1e3, join.posted + WINDOW[1] * 1e3)
        mine = delay_per_frame(join.samples, *window)
        theirs = delay_per_frame(reference, *window)
        if mine is not None and theirs is not None:
            behind.append(mine - theirs)
    lasts = [last_sample(j.samples) for j in joins]
    all_starts = sum(starts.values())
    return {
        "joins": len(joins),
        "failed": len(joins) - len(started),
        "errors": sorted({j.error for j in joins if j.error}),
        "first_frame_p50_ms": percentile(to_first, 0.5),
        "first_frame_p99_ms": percentile(to_first, 0.99),
        "first_frame_max_ms": max(to_first, default=None),
        "playout_vs_reference_n": len(behind),
        "playout_vs_reference_p50_ms": percentile(behind, 0.5),
        "playout_vs_reference_p99_ms": percentile(behind, 0.99),
        "playout_vs_reference_max_ms": max(behind, default=None),
        "playout_vs_reference_abs_max_ms": max((abs(d) for d in behind), default=None),
        "keyframe_requests": requests,
        "keyframe_requests_per_s": requests / seconds if seconds > 0 else None,
        "freezes": sum(int(s.get("freezeCount") or 0) for s in lasts),
        "keyframe_asks": sum(
            int(s.get("pliCount") or 0) + int(s.get("firCount") or 0) for s in lasts
        ),
        "reference_freezes": int(last_sample(reference).get("freezeCount") or 0),
        "started_from_cache_pct": 100 * starts.get("cache", 0) / all_starts if all_starts else None,
        "phases_s": [j.phase for j in joins],
        "first_frame_ms": to_first,
        "playout_vs_reference_ms": behind,
        "viewers": [viewer_record(j) for j in joins],
    }


#: What the JSON keeps of each viewer's last stats read.
KEPT = (
    "framesDecoded",
    "framesReceived",
    "framesDropped",
    "keyFramesDecoded",
    "freezeCount",
    "totalFreezesDuration",
    "pliCount",
    "firCount",
    "nackCount",
    "packetsReceived",
    "packetsLost",
)


def viewer_record(join: Joined) -> dict[str, Any]:
    """One viewer in the JSON: its phase, first frame, playout delay, last counters."""
    last = last_sample(join.samples)
    return {
        "phase_s": join.phase,
        "first_frame_ms": None if join.first_frame is None else join.first_frame - join.posted,
        "playout_ms": delay_per_frame(
            join.samples, join.posted + WINDOW[0] * 1e3, join.posted + WINDOW[1] * 1e3
        ),
        "error": join.error,
        **{name: last.get(name) for name in KEPT},
    }


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The median over ``runs`` of each numeric figure (runs without it left out)."""
    figures: dict[str, float | None] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) or value is None:
            values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            figures[key] = statistics.median(values) if values else None
    return figures


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # (+ 0.0: never "-0")


ROWS = (
    ("POST → first frame p50 / p99 (ms)", ("first_frame_p50_ms", "first_frame_p99_ms"), 0),
    (
        "playout vs reference p50 / p99 / max (ms)",
        (
            "playout_vs_reference_p50_ms",
            "playout_vs_reference_p99_ms",
            "playout_vs_reference_max_ms",
        ),
        0,
    ),
    ("  largest difference either way (ms)", ("playout_vs_reference_abs_max_ms",), 0),
    ("  viewers with a figure / joins", ("playout_vs_reference_n", "joins"), 0),
    ("keyframe requests / s (at the publisher)", ("keyframe_requests_per_s",), 2),
    ("freezes / PLI+FIR (all joins)", ("freezes", "keyframe_asks"), 0),
    ("failed joins (no frame)", ("failed",), 0),
    ("started from the cache (%)", ("started_from_cache_pct",), 0),
)


def table(results: dict[Configuration, dict[str, float | None]]) -> str:
    width = 44
    columns = list(results)
    lines = [" " * width + "".join(f"{c.label:>22}" for c in columns)]
    for name, keys, digits in ROWS:
        cells = [" / ".join(_f(results[c].get(k), digits) for k in keys) for c in columns]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines)


# -- one run ---------------------------------------------------------------------------------


def viewer_starts(base: str) -> dict[str, float]:
    """``golive_viewer_starts_total`` by its ``start`` label ({} when the server has none)."""
    starts: dict[str, float] = {}
    text = http_get(f"{base}/metrics", 30.0).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "golive_viewer_starts_total" and "start" in sample.labels:
                starts[sample.labels["start"]] = sample.value
    return starts


async def watch(
    viewer: Viewer, base: str, room: str, publisher: AnnouncingPublisher, hold: float
) -> Joined:
    """Join, hold ``hold`` seconds from the POST (and at least until the first frame, up to
    its deadline), take the record, leave."""
    try:
        posted = await viewer.join(base, room)
    except Exception as exc:  # noqa: BLE001  a refused or failed join is a figure
        return Joined(time.time() * 1e3, None, error=str(exc)[:200])
    joined = Joined(posted, phase_of(publisher.keyframes, posted))
    with contextlib.suppress(TimeoutError):
        joined.first_frame = await viewer.first_frame(FIRST_FRAME_DEADLINE)
    await asyncio.sleep(max(0.0, posted / 1e3 + hold - time.time()))  # the scenario
    state = await viewer.state()
    joined.samples = state["samples"]
    joined.error = state["error"] or ""
    return joined


async def run_once(
    configuration: Configuration,
    arguments: argparse.Namespace,
    browser: Browser,
    processes: Processes,
    seed: int,
) -> dict[str, Any]:
    python = sys.executable
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    room = f"instant-{configuration.codec}"
    env = server_env(port) | SETTINGS[configuration.cache]
    server = await processes.start(
        "server", python, "-m", "golive", env=env, log="server.log", events=False
    )
    with contextlib.suppress(PermissionError):  # root only: the server before the browser
        os.setpriority(os.PRIO_PROCESS, server.pid, SERVER_NICE)
    await wait_for(lambda: healthy(base), 60, "the server to answer /healthz")
    argv = publisher_argv(base, room, codec=configuration.codec, interval=arguments.interval)
    child = await processes.start("publisher", *argv)
    publisher = AnnouncingPublisher(child.process)
    viewers: list[Viewer] = []
    try:
        await publisher.publishing()
        await wait_for(lambda: room_live(base, room), 30, "the room to be live")
        reference = await Viewer.open(browser, base)
        viewers.append(reference)
        await publisher.next_keyframe()
        await reference.join(base, room)  # right after a keyframe
        await reference.first_frame(FIRST_FRAME_DEADLINE)
        counted = await publisher.count()
        since = time.monotonic()
        chosen = random.Random(seed)  # noqa: S311  join points, not secrets
        pending = list(range(arguments.joins))
        joins: list[Joined] = []

        async def slot() -> None:
            while pending:
                pending.pop()
                await asyncio.sleep(chosen.uniform(0, arguments.interval))  # the scenario
                viewer = await Viewer.open(browser, base)
                viewers.append(viewer)
                try:
                    joins.append(await watch(viewer, base, room, publisher, arguments.hold))
                finally:
                    viewers.remove(viewer)
                    await viewer.close()

        await asyncio.gather(*(slot() for _ in range(arguments.at_once)))
        ended = await publisher.count()
        seconds = time.monotonic() - since
        samples = (await reference.state())["samples"]
        starts = await asyncio.to_thread(viewer_starts, base)
    finally:
        await asyncio.gather(*(viewer.close() for viewer in viewers), return_exceptions=True)
        await publisher.stop()
        await processes.stop_all()
    requests = ended["keyframe_requests"] - counted["keyframe_requests"]
    figures = run_figures(joins, samples, requests, seconds, starts)
    return {"codec": configuration.codec, "cache": configuration.cache, **figures}


def run_line(run: dict[str, Any]) -> str:
    return (
        f"  first frame p50/p99 {_f(run['first_frame_p50_ms'])}/{_f(run['first_frame_p99_ms'])} "
        f"ms; playout vs reference p50/p99/max {_f(run['playout_vs_reference_p50_ms'])}/"
        f"{_f(run['playout_vs_reference_p99_ms'])}/{_f(run['playout_vs_reference_max_ms'])} ms "
        f"(n={run['playout_vs_reference_n']}); requests {run['keyframe_requests']} "
        f"({_f(run['keyframe_requests_per_s'], 2)}/s); freezes {run['freezes']}, "
        f"PLI+FIR {run['keyframe_asks']}; failed {run['failed']}"
        + (f"; errors {run['errors']}" if run["errors"] else "")
    )


async def bench(arguments: argparse.Namespace, processes: Processes) -> dict[str, Any]:
    configurations = [
        Configuration(codec, cache) for codec in arguments.codecs for cache in arguments.cache
    ]
    print(
        f"golive instant start: a publisher as OBS (640x360, 1 Mbit/s + Opus, a keyframe every "
        f"{arguments.interval:g} s, PLI/FIR ignored), a reference viewer that joined on a "
        f"keyframe, {arguments.joins} Chromium viewers joining at random points of the "
        f"interval, {arguments.at_once} at a time, each held {arguments.hold:g} s; medians of "
        f"{arguments.runs} run(s)",
        flush=True,
    )
    runs: dict[Configuration, list[dict[str, Any]]] = {c: [] for c in configurations}
    async with launch_chromium(debian_chromium()) as browser:
        for configuration in configurations:
            for index in range(arguments.runs):
                seed = arguments.seed + index
                run = await run_once(configuration, arguments, browser, processes, seed)
                runs[configuration].append(run)
                print(f"{configuration.label}, run {index + 1}:", flush=True)
                print(run_line(run), flush=True)
    results = {c: medians(r) for c, r in runs.items() if r}
    print()
    print(table(results))
    return {
        "interval_s": arguments.interval,
        "joins": arguments.joins,
        "at_once": arguments.at_once,
        "hold_s": arguments.hold,
        "window_s": list(WINDOW),
        "configurations": [
            {**asdict(c), "label": c.label, "runs": runs[c], "median": results[c]}
            for c in configurations
            if runs[c]
        ],
    }


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parse.add_argument("--codecs", type=lambda t: t.split(","), default=list(CODECS))
    parse.add_argument("--cache", type=lambda t: t.split(","), default=list(SETTINGS))
    parse.add_argument("--runs", type=int, default=3)
    parse.add_argument("--joins", type=int, default=20)
    parse.add_argument("--at-once", type=int, default=4)
    parse.add_argument("--hold", type=float, default=4.5)
    parse.add_argument("--interval", type=float, default=4.0)
    parse.add_argument("--seed", type=int, default=16)
    parse.add_argument("--json", type=Path, help="write every run and the medians here")
    return parse


def main() -> None:
    from golive.logs import configure_logging  # noqa: PLC0415  only when run

    arguments = parser().parse_args()
    for codec in arguments.codecs:
        if codec not in CODECS:
            parser().error(f"--codecs: {codec!r} is not one of {', '.join(CODECS)}")
    for setting in arguments.cache:
        if setting not in SETTINGS:
            parser().error(f"--cache: {setting!r} is not one of {', '.join(SETTINGS)}")
    configure_logging("warning", "json", stream=sys.stderr)
    processes = Processes()
    try:
        document = asyncio.run(bench(arguments, processes))
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException:
        print(f"bench failed; logs in {processes.directory}", file=sys.stderr)
        raise
    finally:
        processes.kill_all()
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(document, indent=1))
        print(f"\nwritten: {arguments.json}")
    shutil.rmtree(processes.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
