"""The PNG decoder the picture checks rely on, against screenshots of known colours."""

from __future__ import annotations

import pytest

from tests.web.pages import Pages, picture
from tests.web.pixels import Picture

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

CELL = 5  # pixels
GRID = 12  # cells a side


def colour(row: int, column: int) -> tuple[int, int, int]:
    return (row * 37 + column * 11) % 256, (column * 53 + 7) % 256, ((row + column) * 29) % 256


def mosaic() -> str:
    """A grid of solid cells, every one another colour: each row of pixels differs from the
    one above only at cell edges, so Chromium's encoder mixes its filters."""
    cells = "".join(
        f'<div style="background:rgb{colour(r, c)}"></div>'
        for r in range(GRID)
        for c in range(GRID)
    )
    size = CELL * GRID
    return (
        '<body style="margin:0">'
        f'<div id="mosaic" style="display:grid;width:{size}px;height:{size}px;'
        f'grid-template-columns:repeat({GRID},{CELL}px);grid-auto-rows:{CELL}px">{cells}</div>'
        '<div id="flat" style="width:64px;height:16px;background:rgb(10,200,30)"></div>'
        '<div id="split" style="display:flex;width:40px;height:20px">'
        '<div style="flex:1;background:rgb(250,20,20)"></div>'
        '<div style="flex:1;background:rgb(20,20,250)"></div></div>'
        '<div id="black" style="width:48px;height:27px;background:#000"></div>'
        "</body>"
    )


async def test_pixels_decode_as_drawn(pages: Pages) -> None:
    page = await pages.open("about:blank")
    await page.set_content(mosaic())

    drawn = await picture(page, "#mosaic")
    assert (drawn.width, drawn.height) == (CELL * GRID, CELL * GRID)
    for y in range(drawn.height):
        for x in range(drawn.width):
            assert drawn.pixels[y * drawn.width + x] == colour(y // CELL, x // CELL), (x, y)

    split = await picture(page, "#split")
    assert split.shows_a_picture()  # two colours, each on half of it
    assert split.pixels[0] == (250, 20, 20)
    assert split.pixels[-1] == (20, 20, 250)

    flat = await picture(page, "#flat")
    assert (flat.width, flat.height) == (64, 16)
    assert set(flat.pixels) == {(10, 200, 30)}
    assert not flat.shows_a_picture()  # one colour is no picture

    black = await picture(page, "#black")
    assert not black.shows_a_picture()
    shifted = Picture(drawn.width, drawn.height, drawn.pixels[1:] + drawn.pixels[:1])
    assert drawn.differs_from(shifted) > 0.1
    assert drawn.differs_from(drawn) == 0
    assert pages.unexpected_errors() == []
