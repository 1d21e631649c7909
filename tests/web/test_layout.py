"""Every page works from the keyboard, labels its controls, shows where the focus is, and
fits a phone-sized screen (390 by 844 pixels) without scrolling sideways: with a live room, a
viewer and a recording on show, screenshots of each."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.support import running_server
from tests.web.pages import (
    BASE_ENV,
    DESKTOP,
    PHONE,
    Pages,
    frames_beyond,
    in_state,
    no_horizontal_scroll,
    publish,
    save_screenshot,
    says,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

NAVIGATION = ["Skip to content", "golive", "Rooms", "Publish", "Watch", "Recordings"]

# What Tab reaches after the navigation, in order (disabled buttons are skipped).
CONTROLS = {
    "index.html": ["Publish from this browser"],
    "publisher.html": [
        "Room",
        "Token (optional)",
        "Camera",
        "Microphone",
        "Resolution",
        "Video codec",
        "Start publishing",
    ],
    "player.html": ["Room name or link", "Token (optional)", "Play", "Unmute", "Fullscreen"],
    "records.html": ["Admin token", "Show recordings"],
}

# The name a person (or a screen reader) gets for the focused element, its outline, and
# whether it is on screen.
FOCUSED = """() => {
  const el = document.activeElement;
  const labels = el.labels ? [...el.labels].map((l) => l.textContent.trim()) : [];
  const name = labels[0] || el.getAttribute('aria-label') || el.textContent.trim();
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return {name: name.replace(/\\s+/g, ' '), outline: style.outlineStyle,
          width: parseFloat(style.outlineWidth), visible: box.top >= 0 && box.height > 0};
}"""

# Every control shown without a name: inputs and selects need a <label>, buttons and links
# text (or aria-label), videos aria-label.
UNLABELLED = """() => [...document.querySelectorAll('input, select, button, a, video')]
  .filter((el) => el.getClientRects().length > 0)
  .filter((el) => {
    if (el.matches('input, select')) return el.labels.length === 0;
    return !(el.getAttribute('aria-label') || el.textContent.trim());
  })
  .map((el) => el.outerHTML)"""


async def tab_through(page: Page, count: int) -> list[str]:
    """Press Tab ``count`` times; the name of each element reached, each with its focus ring."""
    names = []
    for _ in range(count):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED)
        assert focused["outline"] != "none", focused
        assert focused["width"] >= 2, focused
        assert focused["visible"], focused
        names.append(focused["name"])
    return names


@pytest.mark.parametrize("name", list(CONTROLS))
async def test_keyboard_labels_and_focus(pages: Pages, name: str) -> None:
    with running_server(BASE_ENV) as server:
        page = await pages.open(f"{server.url}/web/{name}", DESKTOP)
        if name == "publisher.html":
            await in_state(page, "preview")
            await says(page, "Ready")
        assert await page.evaluate(UNLABELLED) == []
        expected = NAVIGATION + CONTROLS[name]
        assert await tab_through(page, len(expected)) == expected
        current = page.get_by_role("navigation", name="Pages").locator('[aria-current="page"]')
        await expect(current).to_have_attribute("href", name)
        assert await page.evaluate("() => document.documentElement.lang") == "en"
        assert pages.unexpected_errors() == []


async def test_phone_sized_pages(pages: Pages, tmp_path: Path) -> None:
    env = {**BASE_ENV, "RECORD_ENABLED": "1", "RECORD_DIR": str(tmp_path / "records")}
    with running_server(env) as server:
        publisher = await pages.open(server.url + "/web/publisher.html", PHONE)
        await publish(publisher, "earlier")  # a first session, for a recording to list
        await frames_beyond(publisher, 20)
        await publisher.get_by_role("button", name="Stop").click()
        await says(publisher, "Stopped.")
        await publish(publisher, "phone-room")

        player = await pages.open(server.url + "/web/player.html?room=phone-room", PHONE)
        await says(player, "Playing room phone-room")
        await frames_beyond(player, 30)
        await player.evaluate("() => window.scrollTo(0, 0)")

        index = await pages.open(server.url + "/", PHONE)
        await expect(
            index.locator('li[data-room="phone-room"] [data-field="viewers"]')
        ).to_have_text("1")

        records = await pages.open(server.url + "/web/records.html", PHONE)
        await says(records, "recordings, newest first.")
        await expect(records.locator('tr[data-name^="earlier_"]')).to_have_count(2)

        await publisher.evaluate("() => window.scrollTo(0, 0)")
        for page, name in (
            (index, "index"),
            (publisher, "publisher"),
            (player, "player"),
            (records, "records"),
        ):
            assert await no_horizontal_scroll(page), name
            await save_screenshot(page, f"{name}-phone")
        assert pages.unexpected_errors() == []
