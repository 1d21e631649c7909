"""Debian's Chromium, driven by Playwright: never a downloaded browser.

Playwright launches ``/usr/bin/chromium`` with the flags a WebRTC test needs in the loopback
network namespace: a fake camera and microphone that need no permission prompt, and host
candidates on loopback (without ``--allow-loopback-in-peer-connection`` Chromium gathers no
candidate there).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


def debian_chromium() -> str:
    """The path of Debian's Chromium; fails the test when it is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it")
    return CHROMIUM


@asynccontextmanager
async def launch_chromium(executable: str) -> AsyncIterator[Browser]:
    """Headless ``executable`` (Debian's Chromium), closed afterwards."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()
