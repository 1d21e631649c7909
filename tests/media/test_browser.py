"""Chromium publishes over WHIP and another Chromium page plays over WHEP: VP8, H264, VP9, AV1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from tests.media.browser import CHROMIUM, CHROMIUM_FLAGS, PLAY, PUBLISH, VIDEO_STATS
from tests.support import ServerThread

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    return CHROMIUM


@pytest_asyncio.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.parametrize("codec", ["vp8", "h264", "vp9", "av1"])
async def test_chromium_publishes_and_chromium_plays(
    server: ServerThread, browser: Browser, codec: str
) -> None:
    room = f"browser-{codec}"
    publisher = await browser.new_page()
    viewer = await browser.new_page()
    errors: list[str] = []
    for page in (publisher, viewer):
        page.on("pageerror", lambda error: errors.append(str(error)))
    await publisher.goto(server.url + "/healthz")
    await viewer.goto(server.url + "/healthz")

    published = await publisher.evaluate(PUBLISH, {"room": room, "codec": codec})
    assert published["status"] == 201, published
    assert published["location"].startswith(f"/api/whip/publish/{room}/")
    played = await viewer.evaluate(PLAY, {"room": room})
    assert played["status"] == 201, played

    deadline = asyncio.get_running_loop().time() + 45
    while True:
        stats = await viewer.evaluate(VIDEO_STATS)
        if stats["framesDecoded"] > 30 and stats["videoWidth"] > 0:
            break
        assert asyncio.get_running_loop().time() < deadline, stats
        await viewer.wait_for_timeout(250)  # the browser's own clock: poll getStats
    assert stats["framesDecoded"] > 30
    assert stats["videoWidth"] == 320
    assert stats["codec"].lower() == f"video/{codec}"
    assert errors == []
