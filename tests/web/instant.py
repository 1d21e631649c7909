"""Instant start, measured in Chromium: a WHEP viewer harness page and a publisher that behaves
like OBS, shared by ``tests/web/test_instant_start.py`` and ``bench/instant.py``.

The viewer is ``instant.js`` evaluated in a page of the server's origin (its ``/healthz``):
WHEP with a ``recvonly`` video and audio offer, a muted ``<video>``, and the inbound video
stats read every 20 ms until the first frame is decoded, then every 100 ms (see the script).
The publisher is ``python -m bench.publisher`` with a keyframe interval, keyframe requests
ignored (counted), and each keyframe announced on its stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from playwright.async_api import Browser, BrowserContext, Page

HARNESS: Final = Path(__file__).with_name("instant.js").read_text()


# -- the viewer ----------------------------------------------------------------------------


@dataclass
class Viewer:
    """One harness page: a WHEP viewer in its own browser context."""

    context: BrowserContext
    page: Page
    posted: float = 0.0  # wall clock, ms (performance.timeOrigin + performance.now())

    @classmethod
    async def open(cls, browser: Browser, base: str, errors: list[str] | None = None) -> Viewer:
        """A page of ``base`` (its ``/healthz``); its console errors go to ``errors``."""
        context = await browser.new_context()
        # (the page is the server's JSON: Chromium's request for an icon would 404, an error
        # in the console)
        await context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        page = await context.new_page()
        if errors is not None:
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{base}/healthz")
        return cls(context, page)

    async def join(self, base: str, room: str) -> float:
        """POST the offer; returns when the answer is set, with the time of the POST (ms)."""
        self.posted = float(
            await self.page.evaluate(HARNESS, {"url": f"{base}/api/whep/play/{room}"})
        )
        return self.posted

    async def first_frame(self, within: float) -> float:
        """The time the first frame was seen decoded (ms), waiting ``within`` seconds."""
        first = await asyncio.wait_for(
            self.page.evaluate("() => window.instant.firstFrame"), within
        )
        return float(first)

    async def state(self) -> dict[str, Any]:
        """The harness's record: times, codec, decoder, every stats sample so far."""
        state: dict[str, Any] = await self.page.evaluate("() => window.instant.state")
        return state

    async def latest(self) -> dict[str, Any]:
        """The newest stats sample, or {}."""
        sample: dict[str, Any] = await self.page.evaluate(
            "() => window.instant?.state.samples.at(-1) ?? {}"
        )
        return sample

    async def close(self) -> None:
        """DELETE the session, close the peer connection and the page's context."""
        with contextlib.suppress(Exception):  # the page may be gone with the browser
            await self.page.evaluate("() => window.instant?.close()")
        await self.context.close()


# -- the publisher ---------------------------------------------------------------------------


def publisher_argv(
    base: str,
    room: str,
    *,
    codec: str,
    interval: float,
    width: int = 640,
    height: int = 360,
    bitrate: int = 1_000_000,
    block: int = 112,
) -> list[str]:
    """``python -m bench.publisher`` as OBS publishes: a keyframe every ``interval`` seconds,
    keyframe requests ignored, keyframes announced."""
    return [
        sys.executable,
        "-m",
        "bench.publisher",
        "--base",
        base,
        "--room",
        room,
        "--codec",
        codec,
        "--keyframe-interval",
        str(interval),
        "--ignore-keyframe-requests",
        "--announce-keyframes",
        "--width",
        str(width),
        "--height",
        str(height),
        "--video-bitrate",
        str(bitrate),
        "--block",
        str(block),
    ]


@dataclass(frozen=True)
class Keyframe:
    index: int
    time: float  # the publisher's wall clock when it was sent, s


@dataclass
class AnnouncingPublisher:
    """A running ``bench.publisher`` (stdin and stdout piped), its stdout read as it comes:
    keyframe announcements kept in order, ``count`` answers handed to whoever asked."""

    process: asyncio.subprocess.Process
    keyframes: list[Keyframe] = field(default_factory=list)
    published: dict[str, Any] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _counts: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _stopped: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.get("event") if isinstance(message, dict) else None
            if event == "keyframe":
                self.keyframes.append(Keyframe(int(message["index"]), float(message["time"])))
            elif event == "publishing":
                self.published = message
            elif event == "count":
                self._counts.put_nowait(message)
            elif event == "stopped":
                self._stopped = message
            self._changed.set()
        self._changed.set()

    @property
    def running(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _until(self, what: str, within: float, *, done: Any) -> None:
        async with asyncio.timeout(within):
            while not done():
                if not self.running:
                    code = await self.process.wait()
                    raise RuntimeError(f"the publisher exited ({code}) before {what}")
                self._changed.clear()
                await self._changed.wait()

    async def publishing(self, within: float = 120.0) -> dict[str, Any]:
        """Wait for ``{"event": "publishing"}`` (the encoding comes first)."""
        await self._until("publishing", within, done=lambda: bool(self.published))
        return self.published

    async def next_keyframe(self, within: float = 30.0) -> Keyframe:
        """The next keyframe announced from now on."""
        seen = len(self.keyframes)
        await self._until("a keyframe", within, done=lambda: len(self.keyframes) > seen)
        return self.keyframes[seen]

    async def count(self, within: float = 10.0) -> dict[str, Any]:
        """Its ``count`` answer: packets, keyframes_sent, keyframe_requests."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"count\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(self._counts.get(), within)

    async def stop(self, within: float = 30.0) -> dict[str, Any]:
        """``stop``: the session ends (DELETE); its ``stopped`` report."""
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self.process.stdin.write(b"stop\n")
                await self.process.stdin.drain()
        try:
            await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
        return self._stopped


def keyframes_between(keyframes: Sequence[Keyframe], start: float, end: float) -> int:
    """How many of ``keyframes`` were sent after ``start`` and before ``end`` (s)."""
    return sum(1 for keyframe in keyframes if start < keyframe.time < end)
