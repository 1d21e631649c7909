"""``/`` and ``/web/{file}``: golive's own pages (rooms, publish, watch, recordings).

The pages are static files shipped inside the package (``golive/web/``, declared as package
data): plain HTML, one stylesheet and vanilla ES modules, no build step and no framework.
They are read once, when the app is built, and served from memory by name. A request names a
file of that fixed set or gets the JSON 404 every unknown route gets: nothing a client sends
ever becomes a path on disk (no traversal, no directory listing, no precompressed sibling).

- ``GET /``, ``GET /web`` and ``GET /web/`` redirect (``302``) to ``/web/index.html``.
- ``GET /web/{file}`` (and ``HEAD``): the file with its content type (``text/javascript`` for
  the modules), a strong ``ETag`` (``If-None-Match`` gets ``304``) and ``Cache-Control:
  no-cache``, so a browser revalidates on each load and never keeps a page of an older
  server. Every file carries ``X-Content-Type-Options: nosniff``; pages also carry a
  ``Content-Security-Policy`` that runs only the server's own scripts and styles (no inline
  script, no other origin's code) and ``Referrer-Policy: same-origin``.

The pages are public, like ``/api/rooms`` and ``/api/bootstrap`` they start from: the
credentials a person types in them go only into the ``Authorization`` header of API calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Final

from aiohttp import hdrs, web

from golive.http.errors import Handler, json_error

INDEX: Final = "/web/index.html"

CONTENT_TYPES: Final = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }
)

# Media from the camera is a MediaStream (srcObject), not subject to media-src; recordings
# fetched with an admin token play from blob: URLs. WHIP/WHEP and /api calls may go to
# another golive (a player link names its server), so connect-src is not limited.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src *; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> StaticFile:
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def load_files() -> Mapping[str, StaticFile]:
    """Every file of ``golive/web/`` with a known extension, by name."""
    files: dict[str, StaticFile] = {}
    for entry in (resources.files("golive") / "web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES and not entry.name.startswith("."):
            files[entry.name] = StaticFile.of(entry.read_bytes(), CONTENT_TYPES[suffix])
    return MappingProxyType(files)


def add_routes(app: web.Application) -> None:
    """Register ``GET /``, ``GET /web``, ``GET /web/`` (redirects) and ``GET /web/{file}``."""
    files = load_files()
    for path in ("/", "/web", "/web/"):
        app.router.add_get(path, _to_index)
    app.router.add_get("/web/{file}", _serve(files))


async def _to_index(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={hdrs.LOCATION: INDEX})


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _serve(files: Mapping[str, StaticFile]) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        found = files.get(request.match_info["file"])
        if found is None:
            return json_error(404, "not found")
        headers = {
            hdrs.ETAG: found.etag,
            hdrs.CACHE_CONTROL: "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if found.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["Referrer-Policy"] = "same-origin"
        if _matches(request.headers.get(hdrs.IF_NONE_MATCH, ""), found.etag):
            return web.Response(status=304, headers=headers)
        headers[hdrs.CONTENT_TYPE] = found.content_type
        return web.Response(body=found.body, headers=headers)

    return serve
