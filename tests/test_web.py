"""Serving the pages (``golive/http/web.py``): ``/`` and ``/web/`` redirect, every file of
``golive/web/`` with its type and caching headers, nothing else; the files ship in the
package and refer only to one another. (The pages at work: ``tests/web/``.)"""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path
from typing import TypeAlias

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from golive.config import Config
from golive.http.app import create_app
from golive.http.web import CONTENT_SECURITY_POLICY, load_files

Client: TypeAlias = TestClient[web.Request, web.Application]

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "golive" / "web"
PAGES = ("index.html", "publisher.html", "player.html", "records.html")
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@pytest_asyncio.fixture
async def client(aiohttp_client: AiohttpClient) -> AsyncIterator[Client]:
    yield await aiohttp_client(create_app(Config()))


def web_files() -> list[Path]:
    return sorted(path for path in WEB.iterdir() if path.is_file())


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/", "/web", "/web/"])
async def test_the_root_redirects_to_the_rooms_page(client: Client, path: str) -> None:
    response = await client.get(path, allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/web/index.html"


@pytest.mark.asyncio
async def test_every_file_is_served_with_its_type(client: Client) -> None:
    files = web_files()
    assert {path.name for path in files} >= {*PAGES, "whip.js", "golive.css"}
    for path in files:
        response = await client.get(f"/web/{path.name}")
        assert response.status == 200, path.name
        assert response.content_type == TYPES[path.suffix], path.name
        assert await response.read() == path.read_bytes()
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])
        if path.suffix == ".html":
            assert response.charset == "utf-8"
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        else:
            assert "Content-Security-Policy" not in response.headers


@pytest.mark.asyncio
async def test_revalidation_and_head(client: Client) -> None:
    first = await client.get("/web/player.js")
    etag = first.headers["ETag"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get("/web/player.js", headers={"If-None-Match": value})
        assert again.status == 304, value
        assert await again.read() == b""
        assert again.headers["ETag"] == etag
    changed = await client.get("/web/player.js", headers={"If-None-Match": '"other"'})
    assert changed.status == 200
    head = await client.head("/web/index.html")
    assert head.status == 200
    assert head.content_type == "text/html"
    assert await head.read() == b""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        "/web/nothing.html",
        "/web/web.py",
        "/web/INDEX.HTML",
        "/web/index.html/",
        "/web/..%2Fhttp%2Fweb.py",
        "/web/%2e%2e%2f__init__.py",
        "/web/.hidden",
        "/web//index.html",
        "/web/sub/index.html",
        "/index.html",
    ],
)
async def test_nothing_else_is_served(client: Client, path: str) -> None:
    response = await client.get(path, allow_redirects=False)
    assert response.status == 404, path
    assert await response.json() == {"error": "not found"}


def test_the_files_ship_in_the_package() -> None:
    """Every file of golive/web/ is package data (so the wheel has it), and is served."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = settings["tool"]["setuptools"]["package-data"]["golive"]
    for path in web_files():
        relative = path.relative_to(ROOT / "golive").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
    assert sorted(load_files()) == [path.name for path in web_files()]


def test_the_files_refer_only_to_one_another() -> None:
    """Each ``src``/``href`` of a page and each ``import`` of a module names a served file (a
    renamed module would otherwise fail only in a browser)."""
    served = set(load_files())
    for path in web_files():
        text = path.read_text()
        if path.suffix == ".html":
            referred = re.findall(r'(?:src|href)="([^"#?:]+)"', text)
            assert "golive.css" in referred, path.name
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), "inline script"
            assert not re.search(r"\sstyle=|<style", text), "inline style"
        elif path.suffix == ".js":
            referred = [name.removeprefix("./") for name in re.findall(r"from '([^']+)'", text)]
        else:
            continue
        for name in referred:
            assert name in served, f"{path.name} refers to {name}"
