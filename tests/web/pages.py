"""Driving golive's pages the way a person does: by their labels, buttons and messages.

The tests read a page's ``window.golive`` debug handle (``state``, ``stats``) only to wait
for media (frames decoded) and states; every message they check is the text a person reads,
in the page's ``role="status"`` element.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.web.pixels import Picture, decode_png

BASE_ENV: Final = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
DESKTOP: Final = ViewportSize(width=1280, height=800)
PHONE: Final = ViewportSize(width=390, height=844)
DEADLINE_MS: Final = 30_000

ROOT: Final = Path(__file__).resolve().parents[2]
ARTIFACTS: Final = ROOT / "test-artifacts" / "web"  # ignored by git
DOCS_SCREENSHOTS: Final = ROOT / "docs" / "screenshots"
# GOLIVE_DOCS_SCREENSHOTS=1 also copies each screenshot into docs/screenshots/.
UPDATE_DOCS: Final = os.environ.get("GOLIVE_DOCS_SCREENSHOTS") == "1"

# Chromium logs an HTTP error answer to fetch() as a console error; a test that provokes one
# on purpose (a wrong token) names the statuses it expects.
FAILED_LOAD: Final = re.compile(
    r"Failed to load resource: the server responded with a status of (\d+)"
)


@dataclass
class Pages:
    """Opens pages, each in its own browser context, and collects their console errors."""

    browser: Browser
    errors: list[str] = field(default_factory=list)

    async def open(self, url: str, viewport: ViewportSize = DESKTOP) -> Page:
        phone = viewport["width"] < 600
        context = await self.browser.new_context(
            viewport=viewport, device_scale_factor=1, is_mobile=phone, has_touch=phone
        )
        page = await context.new_page()
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"{page.url}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        await page.goto(url)
        return page

    def unexpected_errors(self, *, statuses: Collection[int] = ()) -> list[str]:
        """Every console error but the failed loads with one of ``statuses``."""
        return [
            error
            for error in self.errors
            if not ((found := FAILED_LOAD.search(error)) and int(found[1]) in statuses)
        ]


async def says(page: Page, text: str, selector: str = "#status") -> None:
    """Wait until the page's status message contains ``text``."""
    await expect(page.locator(selector)).to_contain_text(text, timeout=DEADLINE_MS)


async def in_state(page: Page, state: str) -> None:
    await page.wait_for_function(
        "(state) => window.golive && window.golive.state === state", arg=state, timeout=DEADLINE_MS
    )


async def stats(page: Page) -> dict[str, Any]:
    """The page's latest statistics sample (``window.golive.stats``), or ``{}``."""
    result: dict[str, Any] = await page.evaluate("() => window.golive.stats ?? {}")
    return result


async def frames_beyond(page: Page, count: int) -> int:
    """Wait until more than ``count`` frames are decoded (player) or sent (publisher)."""
    await page.wait_for_function(
        "(count) => (window.golive.stats?.frames ?? 0) > count", arg=count, timeout=DEADLINE_MS
    )
    frames: int = (await stats(page))["frames"]
    return frames


async def publish(
    page: Page, room: str, *, codec: str = "vp8", token: str = "", quality: str = "360"
) -> None:
    """Fill the publisher's form and start; returns once the page says it is live."""
    await in_state(page, "preview")
    await page.get_by_label("Room", exact=True).fill(room)
    await page.get_by_label("Token").fill(token)
    await page.get_by_label("Resolution").select_option(quality)  # (Start waits for the camera)
    await page.get_by_label("Video codec").select_option(codec)
    await page.get_by_role("button", name="Start publishing").click()
    await says(page, f"Live in room {room}")


async def watch(page: Page, room: str, *, token: str = "") -> None:
    """Type the room (and token) in the player and press Enter, as a keyboard user does."""
    await page.get_by_label("Token").fill(token)
    await page.get_by_label("Room name or link").fill(room)
    await page.get_by_label("Room name or link").press("Enter")


async def picture(page: Page, selector: str) -> Picture:
    return decode_png(await page.locator(selector).screenshot())


async def no_horizontal_scroll(page: Page) -> bool:
    fits: bool = await page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"
    )
    return fits


async def save_screenshot(page: Page, name: str) -> Path:
    """The whole page as ``test-artifacts/web/{name}.png`` (and in docs/ when asked to)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=path, full_page=True, animations="disabled", caret="hide")
    if UPDATE_DOCS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)
    return path
