"""The recording routes (contract sections 7-8): ``GET /api/records`` and ``/records/{name}``,
against a real server, with recording files made directly on disk.

Requests go through :mod:`http.client`, so that paths reach the server byte for byte (no
client-side normalization of ``..`` or percent-escapes).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.message import Message
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from golive.config import Config
from golive.http.records import if_range_holds
from tests.support import ServerThread

IVF = "lobby_0_1764000000.ivf"  # oldest
OGG = "lobby_1_1764000100.ogg"
MKV = "other-room_cam_1764000200.mkv"  # newest
MISSING = "lobby_0_1764000300.ivf"  # a valid name with no file (only journal files)
SYMLINK = "lobby_9_1764000400.ivf"  # a symlink to the secret file, named like a recording
ETC_LINK = "lobby_8_1764000450.ivf"  # a symlink to /etc/passwd
SUBDIR = "sub_0_1764000500.ivf"  # a directory named like a recording
SIBLING = "lobby_0_1764000000.ivf.gz"  # what FileResponse would serve for Accept-Encoding
NOT_RECORDINGS = (
    ".hidden_0_1764000600.ivf",
    "notes.txt",
    "lobby_0_abc.ivf",
    "lobby_0_1764000700.mp4",
    SIBLING,
)

IVF_BYTES = bytes(range(256)) * 4
OGG_BYTES = b"OggS" + bytes(96)
MKV_BYTES = b"\x1aE\xdf\xa3" + bytes(60)
SECRET = b"TOP-SECRET-never-served-0123456789"
TOKEN = "admin-t0ken"  # noqa: S105  a test credential
CLIENT_TOKEN = "client-t0ken"  # noqa: S105  a test credential


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


def fetch(
    server: ServerThread, path: str, method: str = "GET", headers: Mapping[str, str] = {}
) -> Reply:
    """One request with ``path`` sent exactly as given."""
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers=dict(headers))
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@contextlib.contextmanager
def serving(record_dir: Path, **settings: Any) -> Iterator[ServerThread]:
    """A real server recording into ``record_dir`` (unless told otherwise), stopped afterwards."""
    settings.setdefault("record_enabled", True)
    server = ServerThread(Config(record_dir=record_dir, **settings)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """Three recordings, a secret one level up, and everything that must never be served."""
    directory = tmp_path / "records"
    directory.mkdir()
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / IVF).write_bytes(SECRET)  # a recording name, but outside the directory
    for name, data, mtime in (
        (IVF, IVF_BYTES, 1764000000.75),
        (OGG, OGG_BYTES, 1764000100.0),
        (MKV, MKV_BYTES, 1764000200.25),
    ):
        (directory / name).write_bytes(data)
        os.utime(directory / name, (mtime, mtime))
    (directory / SYMLINK).symlink_to(tmp_path / "secret")
    (directory / ETC_LINK).symlink_to("/etc/passwd")
    (directory / SUBDIR).mkdir()
    for name in NOT_RECORDINGS:
        (directory / name).write_bytes(SECRET)
    return directory


def mark_in_journal(record_dir: Path) -> None:
    """Journal files named like a recording (made after start-up, which tidies the journal)."""
    for state in ("recording", "upload"):
        folder = record_dir / ".golive" / state
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MISSING).write_bytes(SECRET)


def assert_not_found(reply: Reply, message: str = "recording not found") -> None:
    assert reply.status == 404, reply
    assert reply.json() == {"error": message}
    assert SECRET not in reply.body


# -- listing --------------------------------------------------------------------------------


def test_list_names_sizes_times_and_urls_newest_first(record_dir: Path) -> None:
    with serving(record_dir) as server:
        reply = fetch(server, "/api/records")
    assert reply.status == 200
    assert reply.json() == [
        {
            "name": MKV,
            "size": len(MKV_BYTES),
            "modTime": "2025-11-24T16:03:20Z",
            "url": f"/records/{MKV}",
        },
        {
            "name": OGG,
            "size": len(OGG_BYTES),
            "modTime": "2025-11-24T16:01:40Z",
            "url": f"/records/{OGG}",
        },
        {
            "name": IVF,
            "size": len(IVF_BYTES),
            "modTime": "2025-11-24T16:00:00Z",  # whole seconds, truncated
            "url": f"/records/{IVF}",
        },
    ]


def test_list_is_empty_without_recordings(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as server:
        assert fetch(server, "/api/records").json() == []
    with serving(tmp_path / "made-at-start-up") as server:
        assert fetch(server, "/api/records").json() == []


# -- admin ----------------------------------------------------------------------------------


def test_admin_token_guards_list_and_files(record_dir: Path) -> None:
    with serving(record_dir, admin_token=TOKEN, auth_token=CLIENT_TOKEN) as server:
        for path in ("/api/records", f"/records/{IVF}"):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"X-Auth-Token": "wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {CLIENT_TOKEN}"},  # a client token is not admin
            ):
                reply = fetch(server, path, headers=headers)
                assert reply.status == 401, (path, headers)
                assert reply.headers["WWW-Authenticate"] == "Bearer"
                assert reply.json() == {"error": "unauthorized"}
                assert IVF_BYTES not in reply.body
            for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Auth-Token": TOKEN}):
                reply = fetch(server, path, headers=headers)
                assert reply.status == 200, (path, headers)
        listed = fetch(server, "/api/records", headers={"X-Auth-Token": TOKEN}).json()
        assert [r["name"] for r in listed] == [MKV, OGG, IVF]
        served = fetch(server, f"/records/{IVF}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert served.body == IVF_BYTES


def test_open_when_no_credential_is_configured(record_dir: Path) -> None:
    with serving(record_dir) as server:
        assert fetch(server, "/api/records").status == 200
        assert fetch(server, f"/records/{IVF}").body == IVF_BYTES


# -- serving --------------------------------------------------------------------------------


def test_serves_whole_files_with_their_types(record_dir: Path) -> None:
    with serving(record_dir) as server:
        for name, data, content_type in (
            (IVF, IVF_BYTES, "video/x-ivf"),
            (OGG, OGG_BYTES, "audio/ogg"),
            (MKV, MKV_BYTES, "video/x-matroska"),
        ):
            reply = fetch(server, f"/records/{name}")
            assert reply.status == 200
            assert reply.body == data
            assert reply.headers["Content-Type"] == content_type
            assert reply.headers["Content-Length"] == str(len(data))
            assert reply.headers["Content-Disposition"] == f'inline; filename="{name}"'
            assert reply.headers["Accept-Ranges"] == "bytes"
            assert reply.headers["Last-Modified"]
            assert "Content-Encoding" not in reply.headers


def test_ranges(record_dir: Path) -> None:
    size = len(IVF_BYTES)
    with serving(record_dir) as server:
        reply = fetch(server, f"/records/{IVF}", headers={"Range": "bytes=10-19"})
        assert reply.status == 206
        assert reply.body == IVF_BYTES[10:20]
        assert reply.headers["Content-Range"] == f"bytes 10-19/{size}"
        assert reply.headers["Content-Length"] == "10"
        assert reply.headers["Content-Type"] == "video/x-ivf"

        reply = fetch(server, f"/records/{IVF}", headers={"Range": "bytes=-5"})
        assert reply.status == 206
        assert reply.body == IVF_BYTES[-5:]
        assert reply.headers["Content-Range"] == f"bytes {size - 5}-{size - 1}/{size}"

        reply = fetch(server, f"/records/{IVF}", headers={"Range": "bytes=1000-"})
        assert reply.status == 206
        assert reply.body == IVF_BYTES[1000:]

        reply = fetch(server, f"/records/{IVF}", headers={"Range": f"bytes={size}-"})
        assert reply.status == 416
        assert reply.headers["Content-Range"] == f"bytes */{size}"
        assert IVF_BYTES[:16] not in reply.body


def test_head_and_conditional_get(record_dir: Path) -> None:
    with serving(record_dir) as server:
        reply = fetch(server, f"/records/{IVF}", method="HEAD")
        assert reply.status == 200
        assert reply.headers["Content-Length"] == str(len(IVF_BYTES))
        assert reply.headers["Content-Type"] == "video/x-ivf"
        assert reply.body == b""

        last_modified = fetch(server, f"/records/{IVF}").headers["Last-Modified"]
        reply = fetch(server, f"/records/{IVF}", headers={"If-Modified-Since": last_modified})
        assert reply.status == 304
        assert reply.body == b""


def test_if_range_with_the_current_validator_gets_the_range(record_dir: Path) -> None:
    """The validators FileResponse sends are the ones If-Range is checked against."""
    with serving(record_dir) as server:
        whole = fetch(server, f"/records/{IVF}")
        for validator in (whole.headers["ETag"], whole.headers["Last-Modified"]):
            reply = fetch(
                server, f"/records/{IVF}", headers={"Range": "bytes=0-9", "If-Range": validator}
            )
            assert reply.status == 206, validator
            assert reply.body == IVF_BYTES[:10]


def test_if_range_with_a_stale_validator_gets_the_whole_file(record_dir: Path) -> None:
    """RFC 9110 section 13.1.5: a validator that does not match means "send it all" (a 206 of
    the new file would be spliced into the client's copy of the old one). Only a strong ETag
    match, or exactly the Last-Modified date, keeps the range."""
    with serving(record_dir) as server:
        current = fetch(server, f"/records/{IVF}", method="HEAD").headers
        etag, modified = current["ETag"], current["Last-Modified"]
        later = format_datetime(parsedate_to_datetime(modified) + timedelta(days=1), usegmt=True)
        earlier = format_datetime(parsedate_to_datetime(modified) - timedelta(days=1), usegmt=True)
        for stale in (
            '"0-0"',  # another version of the file
            f"W/{etag}",  # weak: never matches strongly
            etag.strip('"'),  # not a quoted entity tag, not a date
            later,  # any date but exactly Last-Modified
            earlier,
            "not a date",
        ):
            reply = fetch(
                server, f"/records/{IVF}", headers={"Range": "bytes=0-9", "If-Range": stale}
            )
            assert reply.status == 200, stale
            assert reply.body == IVF_BYTES
            assert "Content-Range" not in reply.headers


def test_if_range_by_date_is_ignored_while_the_file_changes(record_dir: Path) -> None:
    """A date is a strong validator only for a file older than a second (RFC 9110 section
    8.8.2.2): a recording being written changes within its second."""
    path = record_dir / IVF
    now = time.time()
    os.utime(path, (now, now))
    with serving(record_dir) as server:
        modified = fetch(server, f"/records/{IVF}", method="HEAD").headers["Last-Modified"]
        assert not if_range_holds(path, modified, now=now)
        assert if_range_holds(path, modified, now=now + 2)


def test_never_serves_a_precompressed_sibling(record_dir: Path) -> None:
    (record_dir / f"{IVF}.br").write_bytes(SECRET)
    with serving(record_dir) as server:
        for encoding in ("gzip", "br", "gzip, deflate, br"):
            reply = fetch(server, f"/records/{IVF}", headers={"Accept-Encoding": encoding})
            assert reply.status == 200
            assert reply.body == IVF_BYTES
            assert "Content-Encoding" not in reply.headers


# -- what must never be listed or served ----------------------------------------------------


def test_only_recordings_are_listed(record_dir: Path) -> None:
    with serving(record_dir) as server:
        mark_in_journal(record_dir)
        reply = fetch(server, "/api/records")
    assert reply.status == 200
    assert SECRET not in reply.body
    assert b"root:" not in reply.body
    names = {record["name"] for record in reply.json()}
    assert names == {IVF, OGG, MKV}  # no journal marker, symlink, directory or other name


def test_a_hard_link_is_neither_listed_nor_served(record_dir: Path, tmp_path: Path) -> None:
    """Whoever can write RECORD_DIR could hard-link any file of golive's user into it under a
    recording's name (issue 12, finding 7); golive never links a recording itself."""
    linked = "lobby_5_1764000800.ivf"
    os.link(tmp_path / "secret", record_dir / linked)
    # A recording that gained a second name elsewhere is no longer served either.
    os.link(record_dir / OGG, tmp_path / "copy.ogg")
    with serving(record_dir) as server:
        names = {record["name"] for record in fetch(server, "/api/records").json()}
        assert names == {IVF, MKV}
        for name in (linked, OGG):
            for method in ("GET", "HEAD"):
                reply = fetch(server, f"/records/{name}", method=method)
                assert reply.status == 404, (name, method)
            assert_not_found(fetch(server, f"/records/{name}"))
        (tmp_path / "copy.ogg").unlink()  # a single link again: served
        assert fetch(server, f"/records/{OGG}").body == OGG_BYTES


@pytest.mark.parametrize(
    "path",
    [
        f"/records/{SYMLINK}",
        f"/records/{ETC_LINK}",
        f"/records/{SUBDIR}",
        f"/records/{MISSING}",  # exists only as a journal marker
        f"/records/.golive%2Frecording%2F{MISSING}",
        f"/records/%2Egolive%2frecording%2f{MISSING}",
        "/records/..%2F..%2Fetc%2Fpasswd",
        "/records/..%2Fsecret",
        f"/records/..%2F{IVF}",
        "/records/%2e%2e%2fsecret",
        "/records/%2Fetc%2Fpasswd",
        "/records/..%5Csecret",
        f"/records/{IVF}%00",
        *(f"/records/{name}" for name in NOT_RECORDINGS),
    ],
)
def test_refused_names_are_not_found(record_dir: Path, path: str) -> None:
    with serving(record_dir) as server:
        mark_in_journal(record_dir)
        for method in ("GET", "HEAD"):
            reply = fetch(server, path, method=method)
            assert reply.status == 404, (method, reply)
            assert b"root:" not in reply.body
            if method == "GET":
                assert_not_found(reply)


@pytest.mark.parametrize(
    "path",
    [
        "/records/%2e%2e/secret",
        "/records/../secret",
        f"/records/../{IVF}",
        "/records/%2e%2e/%2e%2e/etc/passwd",
        "/records/sub/../../secret",
        "/api/records/../../secret",
        f"/records/.golive/recording/{MISSING}",
    ],
)
def test_paths_out_of_the_route_are_not_found(record_dir: Path, path: str) -> None:
    with serving(record_dir) as server:
        mark_in_journal(record_dir)
        reply = fetch(server, path)
    assert reply.status == 404, reply
    assert SECRET not in reply.body
    assert b"root:" not in reply.body
    assert reply.json()["error"] in {"not found", "recording not found"}


# -- recording disabled ---------------------------------------------------------------------


def test_disabled_recording_answers_404_on_both_routes(record_dir: Path) -> None:
    for settings in ({}, {"admin_token": TOKEN}):
        with serving(record_dir, record_enabled=False, **settings) as server:
            for path in ("/api/records", f"/records/{IVF}", f"/records/{MISSING}"):
                assert_not_found(fetch(server, path), "recording is disabled")
                assert fetch(server, path, method="HEAD").status == 404
            authorized = fetch(server, f"/records/{IVF}", headers={"X-Auth-Token": TOKEN})
            assert_not_found(authorized, "recording is disabled")
