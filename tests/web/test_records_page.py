"""records.html with recording on: a session published from publisher.html is listed (name,
size, time) once its publisher stops; it downloads byte for byte with the admin token, and
its audio plays in the page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.support import running_server
from tests.web.pages import (
    BASE_ENV,
    DEADLINE_MS,
    Pages,
    frames_beyond,
    publish,
    save_screenshot,
    says,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ADMIN = "admin-t0ken"  # test credentials
CLIENT = "client-t0ken"


async def test_the_records_page_lists_downloads_and_plays(pages: Pages, tmp_path: Path) -> None:
    record_dir = tmp_path / "records"
    env = {
        **BASE_ENV,
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
        "ADMIN_TOKEN": ADMIN,
        "AUTH_TOKEN": CLIENT,
    }
    with running_server(env) as server:
        publisher = await pages.open(server.url + "/web/publisher.html")
        await publish(publisher, "recorded", token=CLIENT)
        await frames_beyond(publisher, 60)  # three seconds at the fake camera's 20 fps
        await publisher.get_by_role("button", name="Stop").click()
        await says(publisher, "Stopped. Room recorded is closed.")  # files are final now
        files = {path.suffix: path for path in record_dir.iterdir() if path.is_file()}
        assert sorted(files) == [".ivf", ".ogg"]
        video, audio = files[".ivf"], files[".ogg"]

        records = await pages.open(server.url + "/web/records.html")
        await says(records, "Enter the admin token (ADMIN_TOKEN) and press Show recordings.")
        token = records.get_by_label("Admin token")
        await token.fill("not-the-token")
        await token.press("Enter")
        await says(records, "The admin token is missing or wrong.")
        await expect(records.locator("#records")).to_be_hidden()
        await token.fill(ADMIN)
        await records.get_by_role("button", name="Show recordings").click()
        await says(records, "2 recordings, newest first.")

        for path in (video, audio):
            row = records.locator(f'tr[data-name="{path.name}"]')
            await expect(row).to_have_count(1)
            size = row.locator('[data-field="size"]')
            await expect(size).to_have_attribute("title", f"{path.stat().st_size} bytes")
            await expect(size).to_contain_text("KiB")
            stamp = await row.locator("time").get_attribute("datetime")
            assert stamp is not None
            assert stamp.endswith("Z")
            await expect(row.get_by_role("link", name=f"Download {path.name}")).to_be_visible()

        # The link cannot carry the token: the page fetches the file with it instead.
        async with records.expect_download(timeout=DEADLINE_MS) as started:
            await records.get_by_role("link", name=f"Download {video.name}").click()
        download = await started.value
        assert download.suggested_filename == video.name
        saved = await asyncio.to_thread(Path(await download.path()).read_bytes)
        assert saved == await asyncio.to_thread(video.read_bytes)

        # An Ogg/Opus recording plays in the browser (IVF does not: no Play button for it).
        await expect(records.get_by_role("button", name=f"Play {video.name}")).to_have_count(0)
        await records.get_by_role("button", name=f"Play {audio.name}").click()
        await says(records, f"Playing {audio.name}.")
        await records.wait_for_function(
            "() => { const a = document.querySelector('#playback audio');"
            " return a !== null && a.error === null && a.duration > 2; }",
            timeout=DEADLINE_MS,
        )
        await save_screenshot(records, "records-desktop")
        assert pages.unexpected_errors(statuses={401}) == []


async def test_the_records_page_says_when_recording_is_off(
    pages: Pages,
) -> None:
    with running_server(BASE_ENV) as server:
        records = await pages.open(server.url + "/web/records.html")
        await says(records, "Recording is off on this server: start golive with RECORD_ENABLED=1")
        await expect(records.locator("#records")).to_be_hidden()
        assert pages.unexpected_errors() == []
