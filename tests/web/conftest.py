"""golive's pages in Debian's Chromium, against a real server, in the loopback namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.browser import debian_chromium, launch_chromium
from tests.support import ServerThread, require_loopback_namespace, running_server
from tests.web.pages import BASE_ENV, Pages


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    require_loopback_namespace()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with running_server(BASE_ENV) as running:
        yield running


@pytest.fixture
def chromium() -> str:
    return debian_chromium()


@pytest_asyncio.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launch_chromium(chromium) as launched:
        yield launched


@pytest.fixture
def pages(browser: Browser) -> Pages:
    return Pages(browser)
