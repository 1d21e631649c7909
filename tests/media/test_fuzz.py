"""Fuzzing a live golive server from its OpenAPI document (Hypothesis), then checking that it
still serves a real session.

Every request is drawn from an operation of :data:`golive.http.openapi.OPENAPI` (or, now and
then, a random method or path): path parameters valid and not (unicode, very long, ``..``,
``%2F``, raw bytes), headers (content types, ``If-Match``, garbage credentials,
``X-Forwarded-For``, ``Range``), bodies (bytes, up to 1.1 MiB, mutations of a real aiortc
offer, trickle fragments). Real offers create real sessions: they join a pool the next
requests draw from (their rooms, ids, ETags, ICE ufrags), so trickle, DELETE, GET and admin
close reach real peer connections; at most a few are kept alive at a time.

Every response must be below 500 (no 503 is expected either: nothing here overloads or
shuts down the server), carry a JSON ``{"error": ...}`` body when it is an error of golive's
own routes (not a parse error of aiohttp's for a request with raw bytes in it, not a body-less
``HEAD``, not aiohttp's own 412/416 of a file), and, for a request to a documented operation
with routable parameters, have a status the document lists for it. Problems are collected, not
raised inside Hypothesis (a live server's examples don't replay for shrinking), and reported
together with the request that caused each one. Exceptions the server's event loop saw and
ERROR log records count as problems too.

Inputs that once broke the server (:func:`regressions`: offers aiortc's parser chokes on,
offers that leave failing background tasks, non-UTF-8 credentials and headers, short trickle
candidates) are sent first, every run, so those failures never depend on luck.

Afterwards every session left is deleted through its ``Location``: ``/api/rooms`` must be
``[]`` and only the actors the server started with remain. The open server then still serves
a real aiortc publisher to a real viewer; the secured one still answers a real offer.

Runs only in the loopback-only network namespace (``tests/media/conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import http.client
import json
import logging
import re
import socket
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pykka
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import given
from hypothesis import strategies as st

from golive.http.openapi import OPENAPI
from tests.media.clients import close_all, delete, publish, view
from tests.support import ServerThread, running_server, wait_until
from tests.test_fuzz import (
    ASCII_TEXT,
    LINE_TEXT,
    fuzz_settings,
    ice_ufrags,
    make_offer,
    mutated_sdp,
    trickle_fragment,
)
from tests.test_openapi import resolve as resolve_ref

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

BASE_ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}
MAX_BODY = 1 << 20
POOL_SIZE = 4  # live sessions kept at a time (each is a real peer connection on the server)
RECORDING = "fuzzroom_v_1700000000.ivf"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

SECRET = "fuzz-jwt-secret-0123456789abcdef"  # noqa: S105  a test key
AUTH_TOKEN = "fuzz-auth-token-0001"  # noqa: S105
ROOM_TOKEN = "fuzz-room-token-0002"  # noqa: S105
ADMIN_TOKEN = "fuzz-admin-token-0003"  # noqa: S105


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    statuses: frozenset[int]
    content_types: tuple[str, ...]


def operations() -> list[Operation]:
    found = []
    for template, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            body = resolve_ref(operation.get("requestBody", {}))
            found.append(
                Operation(
                    method=method.upper(),
                    template=template,
                    statuses=frozenset(int(code) for code in operation["responses"]),
                    content_types=tuple(body.get("content", {})),
                )
            )
    return found


OPERATIONS = operations()


def weight(op: Operation) -> int:
    """How often the fuzz draws an operation: the ones that do the most, more often."""
    if op.method == "POST" and "/api/wh" in op.template:
        return 4
    if op.method == "PATCH":
        return 3
    if op.method in ("DELETE", "GET") and "{session}" in op.template:
        return 2
    return 1


WEIGHTED = [op for op in OPERATIONS for _ in range(weight(op))]
DOCUMENTED = {(op.method, op.template): op for op in OPERATIONS}


# --------------------------------------------------------------------------- wire


@dataclass
class Request:
    method: str
    target: bytes
    headers: list[tuple[str, bytes]]
    body: bytes
    operation: Operation | None = None
    raw: bool = False  # bytes outside printable ASCII in the request line or headers
    routable: bool = True  # every path parameter is a plain segment

    def describe(self) -> str:
        headers = [(name, value[:80]) for name, value in self.headers]
        return (
            f"{self.method} {self.target[:160]!r} headers={headers} "
            f"body({len(self.body)})={self.body[:300]!r}"
        )


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def send(port: int, request: Request) -> Response:
    """One request on its own connection, bytes exactly as given (no client normalises it)."""
    head = [request.method.encode() + b" " + request.target + b" HTTP/1.1"]
    head += [b"Host: 127.0.0.1", b"Connection: close"]
    head += [name.encode() + b": " + value for name, value in request.headers]
    head.append(b"Content-Length: %d" % len(request.body))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        # A server may answer (413) before reading the whole body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + request.body)
        response = http.client.HTTPResponse(sock, method=request.method)
        response.begin()
        return Response(response.status, response.headers, response.read())


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    location: str
    room: str
    kind: str  # "whip" or "whep"
    etag: str
    credential: tuple[str, bytes] | None

    @property
    def id(self) -> str:
        return self.location.rsplit("/", 1)[1]


@dataclass
class Fuzz:
    """What the fuzz run knows and found."""

    port: int
    offers: dict[str, str]  # "whip" / "whep" -> a real offer
    credentials: Sequence[tuple[str, bytes] | None]
    admin: tuple[str, bytes] | None
    publisher: tuple[str, bytes] | None = None  # a credential that may publish anywhere
    sessions: list[Session] = field(default_factory=list)
    # one example per kind of problem: the shortest request that showed it
    problems: dict[str, str] = field(default_factory=dict)
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    created: int = 0

    def problem(self, kind: str, example: str) -> None:
        if kind not in self.problems or len(example) < len(self.problems[kind]):
            self.problems[kind] = example

    @property
    def ufrags(self) -> list[str]:
        return sorted({u for sdp in self.offers.values() for u in ice_ufrags(sdp)})


def cleanup_headers(fuzz: Fuzz, number: int) -> list[tuple[str, bytes]]:
    """An admin credential (if any) and an address of its own, so no bucket runs dry."""
    headers = [("X-Forwarded-For", f"198.18.{number // 250}.{number % 250 + 1}".encode())]
    return headers + ([fuzz.admin] if fuzz.admin else [])


def delete_session(fuzz: Fuzz, session: Session, number: int = 0) -> int:
    request = Request("DELETE", session.location.encode(), cleanup_headers(fuzz, number), b"")
    return send(fuzz.port, request).status


# --------------------------------------------------------------------------- strategies

VALID_ROOMS = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z") | st.sampled_from(["stage", "lobby"])
TRICKY_SEGMENTS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "%2F",
        "a%2Fb",
        "%2e%2e",
        "%2e",
        "a/b",
        "a.b",
        "%00",
        "%zz",
        "a%20b",
        "r" * 65,
        "r" * 4000,
        "stage?x=1",
        "stage#frag",
        "é",
        "%C3%A9",
        "..%2F..%2Fetc",
        "stage;x",
        "~user",
        "*",
        "\\",
        "%5C",
        "stage%0D%0AX-Injected:%201",
    ]
)
RANDOM_PATHS = st.sampled_from(
    [
        b"/",
        b"*",
        b"//api/rooms",
        b"/api/../api/rooms",
        b"/api/rooms/",
        b"/api/rooms?x=1&x=2",
        b"/API/ROOMS",
        b"/api/whip/publish",
        b"/api/whip/publish/",
        b"/api/whip/publish/a/b/c",
        b"/api/whep/play/a/b/c/d",
        b"/api/admin/rooms//close",
        b"/records/",
        b"/records/../../etc/passwd",
        b"/records/%2e%2e/%2e%2e/etc/passwd",
        b"/records/.golive",
        b"/web/",
        b"/debug/pprof",
        b"/%",
        b"/%%",
        b"http://127.0.0.1/api/rooms",
        b"/api/openapi.json/..",
        b"/healthz%00",
    ]
)
METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
)
ODD_METHODS = st.sampled_from(["FOO", "get", "G\x7fT", "PATCH2"])
CONTENT_TYPES = st.sampled_from(
    [
        "application/sdp",
        "application/sdp; charset=utf-8",
        "APPLICATION/SDP",
        "application/trickle-ice-sdpfrag",
        "application/trickle-ice-sdpfrag; charset=utf-8",
        "text/plain",
        "application/json",
        "",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/sdp, text/plain",
        "application/",
        ";",
    ]
)
GARBAGE_HEADER = ASCII_TEXT.map(str.encode) | st.binary(max_size=24).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)
FORWARDED_FOR = st.sampled_from(
    [
        "203.0.113.7",
        "203.0.113.7, 198.51.100.1",
        "::1",
        "[::1]:80",
        "2001:db8::1",
        "::ffff:203.0.113.9",
        "garbage",
        "1.2.3.4:99999",
        ",,,",
        "",
        "999.1.1.1",
        "fe80::1%eth0",
        "unknown, 203.0.113.8",
        "127.0.0.1",
    ]
)
RANGES = st.sampled_from(
    [
        "bytes=0-10",
        "bytes=-5",
        "bytes=5-",
        "bytes=10-5",
        "bytes=0-1,3-4",
        "bytes=",
        "bytes=x-y",
        "bytes=99999999999999999999-",
        "items=0-1",
        "bytes=0-0",
        "bytes=-0",
        "bytes=1000000-",
    ]
)
DATES = st.sampled_from(
    ["Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "yesterday", "", "0"]
)


def segment(value: str) -> tuple[bytes, bool, bool]:
    """A path segment as sent (percent-encoded unless already plain ASCII), raw?, routable?"""
    if value.isascii() and all(0x21 <= ord(c) < 0x7F for c in value):
        # (aiohttp's {name} matches no brace: a segment with one reaches no route)
        routable = bool(value) and value not in (".", "..") and not re.search(r"[/%?#\\{}]", value)
        return value.encode(), False, routable
    return urllib.parse.quote(value, safe="").encode(), False, False


class Slot(enum.Enum):
    """A value taken from the pool of live sessions when the request is sent.

    Strategies never look at the pool (Hypothesis wants data generation independent of
    outside state): they draw slots, and :func:`resolve` fills them in."""

    ROOM = "room"  # the picked session's room
    ID = "id"  # its id
    ETAG = "etag"  # its ETag
    CREDENTIAL = "credential"  # the credential header it was created with


Piece = bytes | Slot
Header = tuple[str, bytes | Slot] | Slot


@dataclass
class Plan:
    """A request with slots still to fill."""

    method: str
    target: list[Piece]
    headers: list[Header]
    body: bytes
    pick: int  # which live session fills the slots
    template: str | None = None
    raw: bool = False
    routable: bool = True


@st.composite
def path_value(draw: Any, name: str, *, resource: bool) -> tuple[Piece, bool, bool]:  # noqa: PLR0911  a kind of value each
    """A path parameter as sent (or a slot), raw?, routable?"""
    if name == "room":
        choice = draw(st.integers(0, 11))
        if choice < (8 if resource else 5):
            return Slot.ROOM, False, True
        if choice < 8:
            return segment(draw(VALID_ROOMS))
        if choice < 10:
            return segment(draw(TRICKY_SEGMENTS))
        if choice < 11:
            return segment(draw(st.text(max_size=70)))
        raw = draw(st.sampled_from([b"\xc3\xa9", b"\xff", b"a b", b"a\tb", b"\x7f"]))
        return raw, True, False
    if name == "session":
        if draw(st.integers(0, 5)):
            return Slot.ID, False, True
        return segment(
            draw(
                st.from_regex(r"\A[0-9a-f]{32}\Z")
                | st.sampled_from(["0" * 32, "A" * 32, "0" * 31, "0" * 33, ".."])
                | TRICKY_SEGMENTS
                | ASCII_TEXT
            )
        )
    # a recording's name
    return segment(
        draw(
            st.sampled_from([RECORDING, RECORDING.upper(), "fuzzroom_v_1.ivf", ".golive"])
            | st.from_regex(r"\A[a-z]{1,8}_[a-z]{1,8}_[0-9]{1,12}\.(ivf|ogg|mkv)\Z")
            | TRICKY_SEGMENTS
        )
    )


def huge(prefix: bytes, size: int) -> bytes:
    return prefix + b"a" * (size - len(prefix))


@st.composite
def body(draw: Any, fuzz: Fuzz, operation: Operation | None) -> tuple[bytes, str]:  # noqa: PLR0911  a kind of body each
    """A body and the content type that fits it."""
    sdp_op = operation is not None and "application/sdp" in operation.content_types
    trickle_op = operation is not None and any("trickle" in t for t in operation.content_types)
    whep = operation is not None and "/whep/" in operation.template
    offer = fuzz.offers["whep" if whep else "whip"]
    if sdp_op:
        choices = ["offer"] * 4 + ["mutated"] * 6 + ["bytes", "text", "empty", "huge"]
    elif trickle_op:
        choices = ["trickle"] * 7 + ["bytes", "empty", "mutated", "huge", "candidates"]
    else:
        choices = ["empty"] * 14 + ["bytes", "text", "trickle", "mutated", "huge"]
    choice = draw(st.sampled_from(choices))
    if choice == "offer":
        return offer.encode(), "application/sdp"
    if choice == "mutated":
        return draw(mutated_sdp(offer)).encode(), "application/sdp"
    if choice == "trickle":
        fragment = draw(trickle_fragment(fuzz.ufrags, mdns=True))
        return fragment.encode(), "application/trickle-ice-sdpfrag"
    if choice == "candidates":  # many good candidates at once
        count = draw(st.integers(1, 64))
        lines = [
            f"a=candidate:{i} 1 udp 2130706431 127.0.0.1 {40000 + i} typ host" for i in range(count)
        ]
        fragment = "a=mid:0\r\n" + "\r\n".join(lines) + "\r\n"
        return fragment.encode(), "application/trickle-ice-sdpfrag"
    if choice == "bytes":
        return draw(st.binary(max_size=2048)), draw(CONTENT_TYPES)
    if choice == "text":
        return "\r\n".join(draw(st.lists(LINE_TEXT, max_size=6))).encode(), draw(CONTENT_TYPES)
    if choice == "huge":
        size = draw(st.sampled_from([MAX_BODY, MAX_BODY + 1, MAX_BODY + 100_000]))
        prefix = b"a=candidate:" if trickle_op else b"v=0\r\n"
        content_type = "application/trickle-ice-sdpfrag" if trickle_op else "application/sdp"
        return huge(prefix, size), content_type
    return b"", draw(CONTENT_TYPES)


@st.composite
def plans(draw: Any, fuzz: Fuzz) -> Plan:
    pick = draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        odd = draw(st.integers(0, 4)) == 0
        payload, natural_type = draw(body(fuzz, None))
        headers, headers_raw = draw(header_list(fuzz, None, natural_type))
        method = draw(ODD_METHODS if odd else METHODS)
        target: list[Piece] = [draw(RANDOM_PATHS)]
        # "*" (asterisk-form) is refused by aiohttp's parser for any method but OPTIONS
        raw = odd or headers_raw or target == [b"*"]
        return Plan(method, target, headers, payload, pick, raw=raw)
    operation = draw(st.sampled_from(WEIGHTED))
    method = operation.method if draw(st.integers(0, 9)) else draw(METHODS)
    target, raw, routable = [], False, True
    for piece in re.split(r"(\{[a-z]+\})", operation.template):
        if piece.startswith("{"):
            resource = "{session}" in operation.template
            value, piece_raw, piece_routable = draw(path_value(piece[1:-1], resource=resource))
            target.append(value)
            raw, routable = raw or piece_raw, routable and piece_routable
        elif piece:
            target.append(piece.encode())
    if draw(st.integers(0, 9)) == 0:
        target.append(b"?" + draw(ASCII_TEXT).replace("#", "").encode())
    payload, natural_type = draw(body(fuzz, operation))
    headers, headers_raw = draw(header_list(fuzz, operation, natural_type))
    return Plan(
        method,
        target,
        headers,
        payload,
        pick,
        template=operation.template,
        raw=raw or headers_raw,
        routable=routable,
    )


@st.composite
def header_list(  # noqa: PLR0912  a header each
    draw: Any, fuzz: Fuzz, operation: Operation | None, natural_type: str
) -> tuple[list[Header], bool]:
    headers: list[Header] = []
    raw = False

    def add(name: str, value: bytes | Slot) -> None:
        nonlocal raw
        if isinstance(value, bytes):
            raw = raw or any(b < 0x20 or b > 0x7E for b in value)
        headers.append((name, value))

    if draw(st.integers(0, 3)):
        add("Content-Type", natural_type.encode())
    elif draw(st.booleans()):
        add("Content-Type", draw(CONTENT_TYPES).encode())
    if (operation is not None and operation.method == "PATCH") or draw(st.integers(0, 9)) == 0:
        choice = draw(st.integers(0, 5))
        if choice < 3:
            add("If-Match", Slot.ETAG)
        elif choice == 3:
            add("If-Match", b"*")
        elif choice == 4:
            add("If-Match", draw(GARBAGE_HEADER | st.just(b'W/"x"')))
    # the session's own credential (its owner's) a third of the time
    owner = [Slot.CREDENTIAL] * max(2, len(fuzz.credentials) // 2)
    credential = draw(st.sampled_from([*fuzz.credentials, *owner]))
    if isinstance(credential, Slot):
        headers.append(credential)
    elif credential is not None:
        add(*credential)
    if draw(st.integers(0, 3)) == 0:
        add(draw(st.sampled_from(["Authorization", "X-Auth-Token"])), draw(GARBAGE_HEADER))
    if draw(st.integers(0, 2)):
        for _ in range(draw(st.integers(1, 2))):
            address = st.ip_addresses().map(str)  # a bucket of its own, mostly
            add("X-Forwarded-For", draw(FORWARDED_FOR | address | ASCII_TEXT).encode())
    records = operation is not None and "/records/" in operation.template
    if records or draw(st.integers(0, 9)) == 0:
        if draw(st.booleans()):
            add("Range", draw(RANGES | ASCII_TEXT).encode())
        if draw(st.booleans()):
            name = draw(
                st.sampled_from(
                    ["If-None-Match", "If-Modified-Since", "If-Range", "If-Unmodified-Since"]
                )
            )
            add(name, draw(DATES | ASCII_TEXT | st.just('"x"')).encode())
        if draw(st.booleans()):
            add("Accept-Encoding", b"gzip, br, zstd")
    if draw(st.integers(0, 4)) == 0:
        add("Origin", draw(st.sampled_from([b"https://example.org", b"null", b""])))
        if draw(st.booleans()):
            add("Access-Control-Request-Method", draw(METHODS).encode())
    if draw(st.integers(0, 6)) == 0:
        name = draw(st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"))
        add(name, draw(GARBAGE_HEADER))
    return headers, raw


def resolve(plan: Plan, fuzz: Fuzz) -> Request:
    """Fill the plan's slots from a live session: of the operation's kind on a session
    resource, a publisher for anything else (to play it, or to find it taken)."""
    template = plan.template or ""
    if "{session}" in template:
        kind = "whep" if "/whep/" in template else "whip"
        candidates = [s for s in fuzz.sessions if s.kind == kind] or fuzz.sessions
    else:
        candidates = [s for s in fuzz.sessions if s.kind == "whip"] or fuzz.sessions
    session = candidates[plan.pick % len(candidates)] if candidates else None
    values = {
        Slot.ROOM: (session.room if session else "stage").encode(),
        Slot.ID: (session.id if session else "0" * 32).encode(),
        Slot.ETAG: (session.etag if session else '"none"').encode(),
    }
    target = b"".join(values[p] if isinstance(p, Slot) else p for p in plan.target)
    headers: list[tuple[str, bytes]] = []
    for header in plan.headers:
        if isinstance(header, Slot):
            if session is not None and session.credential is not None:
                headers.append(session.credential)
        else:
            name, value = header
            headers.append((name, values[value] if isinstance(value, Slot) else value))
    documented = DOCUMENTED.get((plan.method, template)) or (
        DOCUMENTED.get(("GET", template)) if plan.method == "HEAD" else None
    )
    return Request(
        plan.method,
        target,
        headers,
        plan.body,
        operation=documented,
        raw=plan.raw,
        routable=plan.routable,
    )


# --------------------------------------------------------------------------- the checks

FILE_STATUSES = frozenset({304, 412, 416})  # aiohttp's FileResponse: no JSON body


def problems_of(request: Request, response: Response) -> list[str]:
    found = []
    status = response.status
    if status >= 500:
        found.append(f"status {status}")
    if status == 429 and not response.headers.get("Retry-After", "").isdigit():
        found.append("429 without Retry-After")
    if status == 401 and response.headers.get("WWW-Authenticate") != "Bearer":
        found.append("401 without WWW-Authenticate: Bearer")
    if status == 201 and not (response.headers.get("Location") and response.headers.get("ETag")):
        found.append("201 without Location and ETag")
    file = request.target.startswith(b"/records/") and status in FILE_STATUSES
    parser_refusal = request.raw and status == 400
    if status >= 400 and request.method != "HEAD" and not file and not parser_refusal:
        content_type = response.headers.get_content_type()
        try:
            decoded = json.loads(response.body)
        except ValueError:
            decoded = None
        shaped = isinstance(decoded, dict) and set(decoded) == {"error"}
        if (
            content_type != "application/json"
            or not shaped
            or not isinstance(decoded["error"], str)
        ):
            found.append(f"error not JSON {{error}}: {content_type} {response.body[:200]!r}")
    operation = request.operation
    checked = operation is not None and request.routable and not request.raw and status < 500
    if checked and operation is not None and status not in operation.statuses:
        found.append(f"status {status} not documented for {operation.method} {operation.template}")
    return found


def run_one(fuzz: Fuzz, request: Request) -> None:
    try:
        response = send(fuzz.port, request)
    except (OSError, http.client.HTTPException) as exc:
        fuzz.problem(f"no response: {type(exc).__name__}", request.describe())
        return
    operation = request.operation
    key = operation.template if operation else "(random)"
    fuzz.statuses[(request.method, key, response.status)] += 1
    for problem in problems_of(request, response):
        fuzz.problem(f"{request.method} {key}: {problem}", request.describe())
    track_sessions(fuzz, request, response)


def track_sessions(fuzz: Fuzz, request: Request, response: Response) -> None:
    target = request.target.decode(errors="replace")
    if response.status == 201 and request.method == "POST":
        location = response.headers["Location"]
        kind = "whep" if location.startswith("/api/whep/") else "whip"
        credential = next(
            ((n, v) for n, v in request.headers if n in ("Authorization", "X-Auth-Token")),
            None,
        )
        room = location.split("/")[4]
        fuzz.sessions.append(Session(location, room, kind, response.headers["ETag"], credential))
        fuzz.created += 1
        while len(fuzz.sessions) > POOL_SIZE:
            delete_session(fuzz, fuzz.sessions.pop(0), fuzz.created)
    elif request.method == "DELETE" and response.status == 200:
        gone = [s for s in fuzz.sessions if s.location == target]
        ended_rooms = {s.room for s in gone if s.kind == "whip"}
        fuzz.sessions = [s for s in fuzz.sessions if s not in gone and s.room not in ended_rooms]
    elif target.startswith("/api/admin/rooms/") and response.status == 200:
        room = target.split("/")[4]
        fuzz.sessions = [s for s in fuzz.sessions if s.room != room]


def seed(fuzz: Fuzz) -> None:
    """Keep a live publisher, and a viewer of it, in the pool for the fuzz to work on."""
    publishers = [s for s in fuzz.sessions if s.kind == "whip"]
    if publishers and any(s.kind == "whep" for s in fuzz.sessions):
        return
    kind, path = ("whep", "/api/whep/play/") if publishers else ("whip", "/api/whip/publish/")
    room = publishers[0].room if publishers else f"seed{fuzz.created}"
    headers = [
        ("Content-Type", b"application/sdp"),
        ("X-Forwarded-For", f"198.19.{fuzz.created // 250}.{fuzz.created % 250 + 1}".encode()),
    ]
    if fuzz.publisher is not None:
        headers.append(fuzz.publisher)
    request = Request("POST", (path + room).encode(), headers, fuzz.offers[kind].encode())
    response = send(fuzz.port, request)
    if kind == "whep" and response.status == 404:  # the room ended meanwhile (ICE failed)
        fuzz.sessions = [s for s in fuzz.sessions if s.room != room]
    elif response.status != 201:
        fuzz.problem(f"seeding a {kind} session: {response.status}", request.describe())
    track_sessions(fuzz, request, response)


# Inputs this fuzz found that once made the server answer 500, sent before every run.
CRASHING_OFFERS = [  # aiortc's SDP parser raises AssertionError, AttributeError, StopIteration
    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 300\r\n",
    "v=0\r\nm=video 9 udp 96\r\n",
    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap\r\n",
    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fmtp:97 apt=96\r\n",
]
# Offers whose negotiation leaves a task failing with nobody to see it (aiortc's connect, and
# the peer connection's close): no fingerprint at all (answered 201!), a BUNDLE group naming a
# section that is not there.
ICE = "a=ice-ufrag:z5hM\r\na=ice-pwd:VXZm91KezCil2vkhRZxdmR\r\na=setup:actpass\r\n"
AUDIO = "m=audio 9 UDP/TLS/RTP/SAVPF 8\r\n"
PCMA = "a=rtcp-mux\r\na=rtpmap:8 PCMA/8000\r\n"
HOST = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
ORPHAN_TASK_OFFERS = [
    f"v=0\r\n{AUDIO}a=sendonly\r\na=mid:0\r\n{PCMA}{HOST}{ICE}",
    f"v=0\r\na=group:BUNDLE 0 1\r\n{AUDIO}a=mid:1\r\n{PCMA}{ICE}",
]
NOT_UTF8_CREDENTIALS = [("X-Auth-Token", b"\xff"), ("Authorization", b"Bearer \xc3.\xc3.\xc3")]


def plan(method: str, template: str, headers: Sequence[Header], body: bytes = b"") -> Plan:
    """A plan for a path whose ``{room}`` and ``{session}`` are filled from the pool."""
    target: list[Piece] = []
    for piece in re.split(r"(\{room\}|\{session\})", template):
        if piece in ("{room}", "{session}"):
            target.append(Slot.ROOM if piece == "{room}" else Slot.ID)
        elif piece:
            target.append(piece.encode())
    return Plan(method, target, list(headers), body, 0)


def regressions(fuzz: Fuzz) -> list[Plan]:
    sdp = ("Content-Type", b"application/sdp")
    trickle = ("Content-Type", b"application/trickle-ice-sdpfrag")
    publisher: list[Header] = [sdp]
    if fuzz.publisher is not None:
        publisher.append(fuzz.publisher)
    admin: list[Header] = [fuzz.admin] if fuzz.admin else []
    whip, whep = "/api/whip/publish/{room}", "/api/whep/play/{room}"
    found: list[tuple[str, Plan]] = []
    for number, offer in enumerate(ORPHAN_TASK_OFFERS):
        found.append(
            (whip, plan("POST", f"/api/whip/publish/orphan{number}", publisher, offer.encode()))
        )
    for offer in CRASHING_OFFERS:
        found.append((whip, plan("POST", "/api/whip/publish/fresh", publisher, offer.encode())))
        found.append((whep, plan("POST", whep, publisher, offer.encode())))
    for resource in ("/api/whip/publish/{room}/{session}", "/api/whep/play/{room}/{session}"):
        headers: list[Header] = [trickle, ("If-Match", b"*"), Slot.CREDENTIAL]
        found.append((resource, plan("PATCH", resource, headers, b"a=candidate:1 1 udp\r\n")))
    # a header that is not UTF-8 on a recording that is served (aiohttp drops the connection)
    for method in ("GET", "HEAD"):
        not_utf8: list[Header] = [*admin, ("X-Anything", b"\xab")]
        found.append(("/records/{name}", plan(method, f"/records/{RECORDING}", not_utf8)))
    if fuzz.admin is not None:  # credentials configured: every route that checks one
        for credential in NOT_UTF8_CREDENTIALS:
            found += [
                (whip, plan("POST", "/api/whip/publish/stage", [sdp, credential])),
                (whip + "/{session}", plan("GET", whip + "/{session}", [credential])),
                (
                    "/api/admin/rooms/{room}/close",
                    plan("POST", "/api/admin/rooms/stage/close", [credential]),
                ),
                ("/api/records", plan("GET", "/api/records", [credential])),
            ]
    for number, (template, each) in enumerate(found):  # an address each: never a 429
        each.template = template
        each.raw = any(
            isinstance(h, tuple) and isinstance(h[1], bytes) and not h[1].isascii()
            for h in each.headers
        )
        each.headers.append(("X-Forwarded-For", f"198.18.200.{number + 1}".encode()))
    return [each for _, each in found]


def fuzz_server(fuzz: Fuzz, examples: int) -> None:
    for plan in regressions(fuzz):
        seed(fuzz)
        run_one(fuzz, resolve(plan, fuzz))

    @fuzz_settings(examples)
    @given(plan=plans(fuzz))
    def run(plan: Plan) -> None:
        seed(fuzz)
        run_one(fuzz, resolve(plan, fuzz))

    run()


# --------------------------------------------------------------------------- harness


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, str]] = []  # (kind, details)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            return  # aiohttp's parser refusing a malformed request (400): logged at ERROR
        kind = f"log {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            kind += f": {type(record.exc_info[1]).__name__}"
            self.records.append((kind, "".join(traceback.format_exception(*record.exc_info)[-4:])))
        else:
            self.records.append((kind, ""))


@contextlib.contextmanager
def watching(server: ServerThread, fuzz: Fuzz) -> Iterator[None]:
    """Unhandled exceptions on the server's loop and ERROR log records become problems."""
    loop = server._loop
    seen: list[tuple[str, str]] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        where = "".join(traceback.format_exception(exception)[-4:]) if exception else ""
        seen.append((f"loop: {context.get('message')}: {type(exception).__name__}", where))

    records = ErrorRecords()
    logging.getLogger().addHandler(records)
    server.call(lambda: loop.set_exception_handler(handler))
    try:
        yield
    finally:
        # a failed task is reported when it is collected
        server.call(gc.collect)
        time.sleep(0.2)
        server.call(gc.collect)
        server.call(lambda: loop.set_exception_handler(None))
        logging.getLogger().removeHandler(records)
        for kind, details in seen + records.records:
            fuzz.problem(kind, details)


def actor_names() -> list[str]:
    return sorted(ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all())


def rooms(server: ServerThread) -> list[Any]:
    _, body = server.get("/api/rooms")
    result = json.loads(body)
    assert isinstance(result, list)
    return result


def clean_up(server: ServerThread, fuzz: Fuzz, baseline: list[str]) -> None:
    """Delete every session left; then no room and no actor beyond the baseline may remain."""
    for number, session in enumerate(fuzz.sessions):
        status = delete_session(fuzz, session, number)
        assert status in (200, 404), (session, status)
    fuzz.sessions.clear()
    wait_until(lambda: rooms(server) == [], timeout=15, what="no room left")
    wait_until(lambda: actor_names() == baseline, timeout=15, what=f"actors back to {baseline}")
    wait_until(
        lambda: server.call(lambda: len(server.rooms.registry)) == 0, timeout=15, what="no session"
    )


def report(fuzz: Fuzz) -> str:
    statuses = "\n".join(f"  {k}: {v}" for k, v in sorted(fuzz.statuses.items()))
    shown = "\n".join(f"- {kind}\n    {example}" for kind, example in sorted(fuzz.problems.items()))
    return f"{len(fuzz.problems)} kinds of problem:\n{shown}\nstatuses:\n{statuses}"


async def offers() -> dict[str, str]:
    return {
        "whip": await make_offer(publisher=True, gather=True),
        "whep": await make_offer(publisher=False, gather=True),
    }


def port_of(server: ServerThread) -> int:
    return int(server.url.rsplit(":", 1)[1])


def record_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "records"
    directory.mkdir()
    (directory / RECORDING).write_bytes(b"DKIF" + bytes(range(256)) * 4)
    return directory


# --------------------------------------------------------------------------- the tests


async def test_fuzz_open_server(tmp_path: Path) -> None:
    env = {
        **BASE_ENV,
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir(tmp_path)),
        # X-Forwarded-For is read (from loopback) and rate limiting runs, never refusing.
        "TRUSTED_PROXIES": "127.0.0.0/8",
        "RATE_LIMIT_RPS": "100000",
    }
    with running_server(env) as server:
        baseline = actor_names()
        fuzz = Fuzz(port_of(server), await offers(), credentials=[None], admin=None)
        started = time.monotonic()
        with watching(server, fuzz):
            await asyncio.to_thread(fuzz_server, fuzz, 1000)
            await asyncio.to_thread(clean_up, server, fuzz, baseline)
        elapsed = time.monotonic() - started
        print(report(fuzz))  # shown with -s, or when a later check fails
        assert not fuzz.problems, report(fuzz)
        assert fuzz.created > 0, report(fuzz)  # real sessions were made (and fuzzed)
        assert elapsed < 60, report(fuzz)

        # It still serves a real session, end to end.
        publisher = await publish(server.url, "after-fuzz")
        viewer = await view(server.url, "after-fuzz")
        try:
            assert (publisher.answer.status, viewer.answer.status) == (201, 201)
            await asyncio.wait_for(viewer.got_video.wait(), 20)
            assert await delete(server.url, publisher.answer.location) == 200
        finally:
            await close_all(publisher, viewer)
        wait_until(lambda: rooms(server) == [], timeout=15, what="no room left")
        wait_until(lambda: actor_names() == baseline, timeout=15, what="actors back to baseline")


def token(claims: Mapping[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(dict(claims), key, algorithm=algorithm)


def credentials() -> list[tuple[str, bytes] | None]:
    values = [
        AUTH_TOKEN,
        ROOM_TOKEN,
        ADMIN_TOKEN,
        token({"room": "stage", "sub": "alice"}),
        token({"sub": "bob"}),
        token({"role": "admin"}),
        token({"admin": True, "room": "elsewhere"}),
        token({"room": "stage", "exp": 1}),
        token({"room": "stage", "nbf": 4102444800}),
        token({"room": "stage"}, key="another-jwt-secret-0123456789abcdef"),
        token({"room": ["stage"]}),
        token({"sub": 42}),
        jwt.encode({"room": "stage"}, "", algorithm="none"),
        "a.b.c",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ]
    found: list[tuple[str, bytes] | None] = [None, None]
    for value in values:
        found += [("Authorization", f"Bearer {value}".encode()), ("X-Auth-Token", value.encode())]
    found += [("Authorization", f"bearer  {AUTH_TOKEN} ".encode()), ("Authorization", b"Basic x")]
    found += [
        ("Authorization", b"Bearer"),
        ("X-Auth-Token", b"\xff\xfe"),
        ("Authorization", b"Bearer \xc3"),
    ]
    return found


async def test_fuzz_secured_server(tmp_path: Path) -> None:
    env = {
        **BASE_ENV,
        "AUTH_TOKEN": AUTH_TOKEN,
        "ROOM_TOKENS": f"stage:{ROOM_TOKEN}",
        "JWT_SECRET": SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir(tmp_path)),
        "TRUSTED_PROXIES": "127.0.0.0/8",
        "RATE_LIMIT_RPS": "50",
        "RATE_LIMIT_BURST": "20",
    }
    with running_server(env) as server:
        baseline = actor_names()
        admin = ("X-Auth-Token", ADMIN_TOKEN.encode())
        fuzz = Fuzz(
            port_of(server),
            await offers(),
            credentials=credentials(),
            admin=admin,
            publisher=("X-Auth-Token", AUTH_TOKEN.encode()),
        )
        with watching(server, fuzz):
            await asyncio.to_thread(fuzz_server, fuzz, 600)
            await asyncio.to_thread(clean_up, server, fuzz, baseline)
        assert not fuzz.problems, report(fuzz)

        # It still answers a real offer, for the right credential only.
        headers = [("Content-Type", b"application/sdp"), ("X-Forwarded-For", b"198.18.9.9")]
        offer = fuzz.offers["whip"].encode()
        refused = send(fuzz.port, Request("POST", b"/api/whip/publish/stage", headers, offer))
        assert refused.status == 401
        credential = ("Authorization", f"Bearer {ROOM_TOKEN}".encode())
        answered = send(
            fuzz.port, Request("POST", b"/api/whip/publish/stage", [*headers, credential], offer)
        )
        assert answered.status == 201, answered.body
        location = answered.headers["Location"]
        session = Session(location, "stage", "whip", answered.headers["ETag"], credential)
        assert delete_session(fuzz, session, 999) == 200
        wait_until(lambda: rooms(server) == [], timeout=15, what="no room left")
