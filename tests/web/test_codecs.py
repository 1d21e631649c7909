"""Every video codec golive forwards, end to end through the pages: publisher.html sends it
(its codec choice), player.html decodes it (its statistics name it). Formerly
``tests/media/test_browser.py``, which drove scripts injected into ``/healthz``."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.support import ServerThread
from tests.web.pages import Pages, frames_beyond, publish, says

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("codec", "name"), [("vp8", "VP8"), ("h264", "H264"), ("vp9", "VP9"), ("av1", "AV1")]
)
async def test_chromium_publishes_and_chromium_plays(
    server: ServerThread, pages: Pages, codec: str, name: str
) -> None:
    room = f"browser-{codec}"
    publisher = await pages.open(f"{server.url}/web/publisher.html?codec={codec}")
    option = publisher.get_by_label("Video codec").locator(f'option[value="{codec}"]')
    await expect(option).to_be_enabled()  # this Chromium has the codec
    await expect(publisher.get_by_label("Video codec")).to_have_value(codec)  # from ?codec=
    await publish(publisher, room, codec=codec, quality="240")
    await expect(publisher.locator('[data-stat="codec"]')).to_have_text(name)

    player = await pages.open(f"{server.url}/web/player.html?room={room}")
    await says(player, f"Playing room {room}")
    await frames_beyond(player, 30)
    assert await player.evaluate("() => document.getElementById('video').videoHeight") == 240
    await expect(player.locator('[data-stat="codec"]')).to_have_text(name)
    assert pages.unexpected_errors() == []
