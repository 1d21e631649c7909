"""``GET /api/records`` and ``GET /records/{name}``: the recordings on disk (contract section 8).

- ``GET /api/records`` lists the recordings of ``RECORD_DIR``, newest first, as Go-Live does:
  ``[{"name", "size", "modTime", "url"}]``. ``modTime`` is RFC 3339 in UTC with a ``Z``,
  truncated to whole seconds (``2026-11-24T06:03:00Z``): a form Go's ``time.Time`` JSON
  itself produces (it omits a zero fraction), which Go and JavaScript's ``Date`` parse, and
  the precision of an HTTP ``Last-Modified``. ``url`` is relative: ``/records/{name}``.
- ``GET /records/{name}`` (and ``HEAD``) serves one recording with :class:`web.FileResponse`:
  ``Range`` (206; 416 with ``Content-Range: bytes */SIZE`` and an empty body),
  ``If-Modified-Since`` / ``ETag`` (304) and ``HEAD`` come from it; ``If-Range`` is checked
  here (:func:`if_range_holds`: a stale validator gets the whole file, 200). The content
  type follows the extension (``.ivf``, ``.ogg``, ``.mkv``), the file is offered ``inline``
  under its own name, and ``Cache-Control: private`` keeps shared caches from handing it to
  non-admins.

Both routes are admin-only (``ADMIN_TOKEN``, or nothing configured at all). Contract section
7 puts ``/records/`` behind auth like the list: a recording is a copy of a room's media, so
it is no more public than the list that names it. (The security issue may later admit a
room's own token for that room's recordings.) With ``RECORD_ENABLED`` off, both answer 404
``{"error": "recording is disabled"}`` before the credential check: ``/api/bootstrap``
already says publicly whether recording is on.

A name reaches the disk only through :meth:`RecordingStore.find` (a name of the recording
pattern, a regular file directly in the directory, not a symlink, with no other hard link);
user input is never joined into a path here. So the journal (``RECORD_DIR/.golive/...``),
dotfiles, subdirectories, links and any other name are neither listed nor served.
``Accept-Encoding`` is withheld from :class:`web.FileResponse`, which would otherwise serve a
``NAME.gz`` or ``NAME.br`` lying beside the recording in its place: only the recording itself
is served.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from golive.config import Config
from golive.http.auth import admin_allowed, unauthorized
from golive.http.errors import Handler, json_error
from golive.http.keys import CLUSTER
from golive.recordings import RecordingFile, RecordingStore

CONTENT_TYPES: Final = {
    ".ivf": "video/x-ivf",
    ".ogg": "audio/ogg",
    ".mkv": "video/x-matroska",
}
FALLBACK_CONTENT_TYPE: Final = "application/octet-stream"


def add_routes(app: web.Application, config: Config) -> None:
    """Register the recording routes (always: when recording is off they say so in JSON)."""
    store = RecordingStore(config.record_dir)
    app.router.add_get("/api/records", _list(config, store))
    app.router.add_get("/records/{name}", _serve(config, store))


def go_time(mtime: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC, whole seconds: ``2026-11-24T06:03:00Z``."""
    return datetime.fromtimestamp(math.floor(mtime), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_url(name: str) -> str:
    return f"/records/{name}"  # the name pattern needs no quoting


def record_json(record: RecordingFile) -> dict[str, object]:
    return {
        "name": record.name,
        "size": record.size,
        "modTime": go_time(record.mtime),
        "url": record_url(record.name),
    }


def refused(config: Config, request: web.Request) -> web.Response | None:
    """The answer when recording is off or the caller is not an admin, else None."""
    if not config.record_enabled:
        return json_error(404, "recording is disabled")
    if not admin_allowed(config, request):
        return unauthorized()
    return None


def _list(config: Config, store: RecordingStore) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        refusal = refused(config, request)
        if refusal is not None:
            return refusal
        files = await asyncio.to_thread(store.files)
        listed = [record_json(record) for record in files]
        cluster = request.app.get(CLUSTER)
        if cluster is not None:  # every node's recordings, each marked with its node
            for entry in listed:
                entry["node"] = cluster.identity.node
            listed.extend(await cluster.records(request))
            listed.sort(key=lambda entry: str(entry["modTime"]), reverse=True)
        return web.json_response(listed)

    return handler


class RecordingResponse(web.FileResponse):
    """A :class:`web.FileResponse` that never swaps in a precompressed ``.gz``/``.br`` sibling
    and evaluates ``If-Range`` as RFC 9110 section 13.1.5 says."""

    def __init__(self, path: Path, headers: Mapping[str, str]) -> None:
        super().__init__(path, headers=headers)
        self.recording = path

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        dropped = {hdrs.ACCEPT_ENCODING.lower(), hdrs.IF_RANGE.lower()}
        if_range = request.headers.get(hdrs.IF_RANGE)
        if if_range is not None and not await asyncio.to_thread(
            if_range_holds, self.recording, if_range
        ):
            dropped.add(hdrs.RANGE.lower())  # a stale validator: the whole file, 200
        # (Headers aiohttp cannot re-encode for the clone are left out: none matters here.)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in dropped and _encodable(name, value)
        )
        return await super().prepare(request.clone(headers=headers))


def if_range_holds(path: Path, if_range: str, now: float | None = None) -> bool:
    """Whether ``If-Range`` names the file as it is now (else its ``Range`` is ignored).

    An entity tag must match the file's strongly (a weak one never does); a date must be
    exactly the file's ``Last-Modified``, and only counts once the file is at least a second
    older than now (a date is a strong validator only then, RFC 9110 section 8.8.2.2: a
    recording still being written changes within its second). The file's validators are
    computed as :class:`web.FileResponse` sends them (``tests/test_records_http.py`` checks
    they agree).
    """
    try:
        st = path.stat()
    except OSError:
        return False
    value = if_range.strip()
    if value.startswith('"'):
        return value == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    if value.startswith("W/"):
        return False
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    if date.tzinfo is None:  # "-0000" parses as naive: it is still UTC
        date = date.replace(tzinfo=UTC)
    modified = math.ceil(st.st_mtime)  # FileResponse's Last-Modified rounds up
    current = time.time() if now is None else now
    return date.timestamp() == modified and st.st_mtime <= current - 1


def _encodable(name: str, value: str) -> bool:
    try:
        name.encode()
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _serve(config: Config, store: RecordingStore) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        refusal = refused(config, request)
        if refusal is not None:
            return refusal
        path = await asyncio.to_thread(store.find, request.match_info["name"])
        cluster = request.app.get(CLUSTER)
        if path is None and cluster is not None:  # another node's, maybe
            elsewhere = await cluster.fetch_record(request)
            if elsewhere is not None:
                return elsewhere
        if path is None:
            return json_error(404, "recording not found")
        return RecordingResponse(
            path,
            headers={
                hdrs.CONTENT_TYPE: CONTENT_TYPES.get(path.suffix, FALLBACK_CONTENT_TYPE),
                hdrs.CONTENT_DISPOSITION: f'inline; filename="{path.name}"',
                # only an admin may fetch it: no shared cache may keep a copy for others
                hdrs.CACHE_CONTROL: "private",
            },
        )

    return handler
