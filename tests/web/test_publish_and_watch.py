"""Publish from publisher.html with Chromium's fake camera, watch it on player.html, see it on
the rooms page; the player's messages when the publisher goes and comes back, and when the
server refuses (a wrong token, a taken room)."""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.async_api import Response, expect

from tests.support import ServerThread, eventually, running_server
from tests.web.pages import (
    BASE_ENV,
    DEADLINE_MS,
    Pages,
    frames_beyond,
    in_state,
    picture,
    publish,
    save_screenshot,
    says,
    stats,
    watch,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


async def rooms(server: ServerThread) -> list[dict[str, object]]:
    _, body = await asyncio.to_thread(server.get, "/api/rooms")
    listed: list[dict[str, object]] = json.loads(body)
    return listed


async def test_publish_watch_list_and_stop(server: ServerThread, pages: Pages) -> None:
    publisher = await pages.open(server.url + "/web/publisher.html")
    await publish(publisher, "lobby")

    player = await pages.open(server.url + "/web/player.html?room=lobby")
    await says(player, "Playing room lobby")
    # The picture arrives and keeps coming: frames decoded grow, the video has its size.
    first = await frames_beyond(player, 30)
    await frames_beyond(player, first + 15)
    assert await player.evaluate("() => document.getElementById('video').videoWidth") == 640
    # ... and it is a picture, not a blank frame, and it moves (the fake camera animates).
    before = await picture(player, "#video")
    assert before.shows_a_picture(), before.colours().most_common(5)
    await frames_beyond(player, (await stats(player))["frames"] + 10)
    after = await picture(player, "#video")
    assert after.differs_from(before) > 0.002

    # Both pages show their statistics as text.
    await expect(player.locator('[data-stat="resolution"]')).to_have_text(
        "640 \N{MULTIPLICATION SIGN} 360"
    )
    await expect(player.locator('[data-stat="codec"]')).to_have_text("VP8")
    await expect(player.locator('[data-stat="bitrate"]')).to_contain_text("bit/s")
    await expect(player.locator('[data-stat="loss"]')).to_contain_text("%")
    await expect(publisher.locator('[data-stat="resolution"]')).to_have_text(
        "640 \N{MULTIPLICATION SIGN} 360"
    )
    await expect(publisher.locator('[data-stat="bitrate"]')).to_contain_text("bit/s")
    await expect(publisher.locator('[data-stat="fps"]')).to_contain_text("fps")
    await expect(publisher.locator('[data-stat="loss"]')).to_contain_text("%")
    await says(publisher, "Live in room lobby: 1 viewer.")

    # The rooms page (`/` redirects to it) lists the room: publisher, one viewer, its tracks.
    index = await pages.open(server.url + "/")
    assert index.url == server.url + "/web/index.html"
    card = index.locator('li[data-room="lobby"]')
    await expect(card.locator('[data-field="viewers"]')).to_have_text("1", timeout=DEADLINE_MS)
    await expect(card.locator('[data-field="publisher"]')).to_have_text("live")
    await expect(card.locator('[data-field="tracks"]')).to_have_text("video VP8, audio opus")
    watch_link = index.get_by_role("link", name="Watch room lobby")
    assert await watch_link.get_attribute("href") == "player.html?room=lobby"
    await says(index, "1 live room.", "#summary")

    for page, name in ((publisher, "publisher"), (player, "player"), (index, "index")):
        await save_screenshot(page, f"{name}-desktop")

    # Stopping the publisher: the player says it waits, the room leaves the list.
    await publisher.get_by_role("button", name="Stop").click()
    await says(publisher, "Stopped. Room lobby is closed.")
    await says(player, "Waiting for the publisher of room lobby…")
    await says(index, "No live rooms right now.", "#summary")
    await expect(card).to_have_count(0)
    assert await rooms(server) == []
    assert pages.unexpected_errors() == []


async def test_the_player_waits_for_the_publisher_and_comes_back(
    server: ServerThread, pages: Pages
) -> None:
    player = await pages.open(server.url + "/web/player.html")
    await says(player, "Enter a room and press Play.")
    await watch(player, "later")
    await says(player, "Waiting for the publisher of room later…")
    await in_state(player, "waiting")
    assert await rooms(server) == []  # waiting costs the server no session and no room

    publisher = await pages.open(server.url + "/web/publisher.html")
    await publish(publisher, "later")
    await says(player, "Playing room later")
    await frames_beyond(player, 30)

    await publisher.get_by_role("button", name="Stop").click()
    await says(player, "Waiting for the publisher of room later…")
    await in_state(player, "waiting")

    # The publisher comes back (another codec, even): the player plays again by itself.
    await publish(publisher, "later", codec="h264")
    await says(player, "Playing room later")
    await frames_beyond(player, 30)
    await expect(player.locator('[data-stat="codec"]')).to_have_text("H264")
    [room] = await rooms(server)
    assert room["subscribers"] == 1

    # Stop ends the viewer's session on the server (DELETE) and the retries.
    await player.get_by_role("button", name="Stop").click()
    await says(player, "Stopped watching room later.")
    await in_state(player, "idle")
    [room] = await rooms(server)
    assert room["subscribers"] == 0
    assert pages.unexpected_errors() == []


async def test_refusals_read_as_sentences(pages: Pages) -> None:
    env = {**BASE_ENV, "AUTH_TOKEN": "open-sesame"}
    with running_server(env) as server:
        publisher = await pages.open(server.url + "/web/publisher.html")
        await expect(publisher.locator("#token-need")).to_have_text("(this server may need one)")
        await publisher.get_by_label("Room", exact=True).fill("secret")
        await publisher.get_by_role("button", name="Start publishing").click()
        await says(
            publisher,
            "The token is missing or wrong: publishing to room secret needs a valid token.",
        )
        await in_state(publisher, "preview")
        await publish(publisher, "secret", token="open-sesame")  # noqa: S106  a test token

        player = await pages.open(server.url + "/web/player.html")
        await watch(player, "secret", token="wrong")  # noqa: S106  a test token
        await says(player, "The token is missing or wrong: watching room secret needs a valid")
        await in_state(player, "error")  # no retry: a wrong token stays wrong
        await watch(player, "secret", token="open-sesame")  # noqa: S106  a test token
        await says(player, "Playing room secret")

        taken = await pages.open(server.url + "/web/publisher.html")
        await taken.get_by_label("Token").fill("open-sesame")
        await taken.get_by_label("Room", exact=True).fill("secret")
        await says(taken, "Ready")
        await taken.get_by_role("button", name="Start publishing").click()
        await says(taken, "Room secret already has a publisher.")

        await taken.get_by_label("Room", exact=True).fill("no/such")
        await taken.get_by_role("button", name="Start publishing").click()
        await says(taken, 'Room names are 1 to 64 letters, digits, "-" or "_".')
        await expect(taken.get_by_label("Room", exact=True)).to_have_attribute(
            "aria-invalid", "true"
        )
        # Chromium logs each refused request itself; nothing else may reach the console.
        assert pages.unexpected_errors(statuses={401, 409}) == []


async def test_trickle_ice_and_leaving_the_page_ends_the_sessions(
    server: ServerThread, pages: Pages
) -> None:
    publisher = await pages.open(server.url + "/web/publisher.html")
    exchanges: list[tuple[str, str, int, dict[str, str]]] = []

    async def record(response: Response) -> None:
        request = response.request
        if request.method in ("POST", "PATCH", "DELETE"):
            headers = await request.all_headers()
            exchanges.append((request.method, request.url, response.status, headers))

    publisher.on("response", record)
    await publish(publisher, "leaving")
    # The exchanges are recorded as Playwright reports them, which may be after the page says
    # it is live; and the candidates (or at least their end) follow the answer: ICE may
    # connect before their PATCH is answered.
    await eventually(
        lambda: {"POST", "PATCH"} <= {e[0] for e in exchanges},
        what="the POST and a trickled candidate (PATCH)",
        seconds=10,
    )
    patches = [e for e in exchanges if e[0] == "PATCH"]
    [(_, _, created, _)] = [e for e in exchanges if e[0] == "POST"]
    assert created == 201
    for _, url, status, headers in patches:
        assert url.startswith(f"{server.url}/api/whip/publish/leaving/")
        assert status == 204
        assert headers["content-type"] == "application/trickle-ice-sdpfrag"
        assert headers["if-match"].startswith('"')

    player = await pages.open(server.url + "/web/player.html?room=leaving")
    await says(player, "Playing room leaving")
    await says(publisher, "Live in room leaving: 1 viewer.")

    # Closing the viewer's tab ends its session at once (DELETE with keepalive on pagehide),
    # not when ICE consent runs out.
    await player.close()
    await says(publisher, "Live in room leaving: 0 viewers.")
    await publisher.goto("about:blank")
    deadline = asyncio.get_running_loop().time() + 5
    while await rooms(server):
        assert asyncio.get_running_loop().time() < deadline, await rooms(server)
        await asyncio.sleep(0.05)
    assert pages.unexpected_errors() == []
