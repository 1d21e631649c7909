"""Fuzzing golive's parsers with Hypothesis, in-process and without any network.

- :func:`golive.media.peers.parse_offer` on mutations of a real aiortc offer (deleted,
  duplicated, truncated and garbled lines, swapped ``m=`` sections, bogus codecs and payload
  types, missing ICE credentials and fingerprints): only :class:`InvalidOfferError` may escape.
- The trickle ICE path of ``PATCH`` (:func:`golive.media.peers.add_candidates`, through
  aiortc's ``candidate_from_sdp``): garbage candidates, truncated ones, new ufrags,
  ``a=end-of-candidates``: every line is added or skipped, nothing raises.
- :func:`golive.actors.messages.parse_room_name` against an independent oracle.
- :meth:`golive.config.Config.from_env` on random environments: only :class:`ConfigError`
  escapes, and no secret value ever shows in an error, a ``repr`` or ``describe()``.

The strategies here (SDP mutations, trickle fragments) are shared with the live-server fuzz
in ``tests/media/test_fuzz.py``. The real offers are made by ``createOffer`` only: no ICE
gathering, so nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import functools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from golive.actors.messages import parse_room_name
from golive.config import SECRET_VARIABLES, Config, ConfigError
from golive.media.peers import InvalidOfferError, add_candidates, parse_offer
from tests.media.clients import PatternTrack


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, no deadline, no example database (a live server's examples don't replay)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- real offers


async def make_offer(*, publisher: bool, gather: bool = False) -> str:
    """A real aiortc offer: a publisher's (sendonly VP8/H.264 + Opus) or a viewer's
    (recvonly). ``gather`` sets it as local description first, so it carries the ICE
    candidates (only inside the loopback network namespace)."""
    pc = RTCPeerConnection()
    try:
        if publisher:
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        else:
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
        offer = await pc.createOffer()
        if not gather:
            return str(offer.sdp)
        await pc.setLocalDescription(offer)
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@functools.cache
def offline_offer(*, publisher: bool) -> str:
    return asyncio.run(make_offer(publisher=publisher))


def ice_ufrags(sdp: str) -> list[str]:
    return sorted(set(re.findall(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)))


# --------------------------------------------------------------------------- strategies

LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=24)
ASCII_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24)
JUNK = LINE_TEXT | ASCII_TEXT

EXTRA_SDP_LINES = st.sampled_from(
    [
        "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
        "a=candidate:garbage",
        "a=end-of-candidates",
        "a=rtpmap:96",
        "a=rtpmap:96 VP8",
        "a=rtpmap:x VP8/90000",
        "a=fmtp:96",
        "a=fmtp:97 apt=x",
        "a=fmtp:97 apt=255",
        "a=rtcp-fb:* nack",
        "a=rtcp-fb:x",
        "a=extmap:999 urn:x",
        "a=extmap:x/y z",
        "a=extmap:1/sendonly urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=ssrc:abc cname:x",
        "a=ssrc:1",
        "a=ssrc-group:FID a b",
        "a=ssrc-group:FID",
        "a=msid:x",
        "a=msid:",
        "a=rid:1 send",
        "a=simulcast:send 1;2",
        "a=sctp-port:x",
        "a=max-message-size:x",
        "a=rtcp:x",
        "a=rtcp:9 IN IP4 garbage",
        "c=IN IP4 garbage",
        "c=IN IP6 ::1",
        "c=",
        "b=AS:-1",
        "a=group:BUNDLE 9 9",
        "a=group:BUNDLE",
        "a=group:",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "m=audio",
        "m=",
        "o=",
        "v=1",
        "t=x",
        "a=",
        "=",
        "a=ice-options:trickle",
        "a=ice-lite",
        "a=setup:",
        "a=setup:holdconn",
        "a=fingerprint:",
        "a=fingerprint:sha-256",
        "a=fingerprint:md5 00",
        "a=mid:",
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=recvonly",
        "a=inactive",
    ]
)
CODEC_NAMES = st.sampled_from(
    ["H265", "FOO", "", "VP8", "VP9", "AV1", "H264", "opus", "rtx", "red", "ulpfec", "PCMU"]
)
CLOCK_RATES = st.sampled_from(["90000", "48000/2", "0", "-1", "x", "99999999999999999999", ""])
PAYLOAD_TYPES = st.sampled_from(
    [
        "-1",
        "0",
        "35",
        "63",
        "72",
        "76",
        "96",
        "127",
        "128",
        "255",
        "256",
        "abc",
        "",
        "1e3",
        "99999999999999999999",
    ]
)
REMOVABLE = st.sampled_from(
    [
        "a=ice-ufrag",
        "a=ice-pwd",
        "a=fingerprint",
        "a=setup",
        "a=mid",
        "a=group",
        "a=rtpmap",
        "a=fmtp",
        "a=msid",
        "c=",
        "a=rtcp-mux",
        "a=ssrc",
        "a=sendonly",
        "a=recvonly",
        "a=candidate",
        "a=end-of-candidates",
        "a=extmap",
        "m=",
        "v=",
        "o=",
        "s=",
        "t=",
    ]
)

Lines = list[str]
Draw = Callable[[st.SearchStrategy[Any]], Any]


def _index(draw: Draw, lines: Lines) -> int:
    return cast(int, draw(st.integers(0, max(0, len(lines) - 1))))


def _delete(draw: Draw, lines: Lines) -> Lines:
    i = _index(draw, lines)
    return lines[:i] + lines[i + 1 :]


def _duplicate(draw: Draw, lines: Lines) -> Lines:
    i, j = _index(draw, lines), _index(draw, lines)
    return [*lines[:j], lines[i], *lines[j:]] if lines else lines


def _truncate(draw: Draw, lines: Lines) -> Lines:
    if not lines:
        return lines
    i = _index(draw, lines)
    keep = draw(st.integers(0, len(lines[i])))
    return [*lines[:i], lines[i][:keep], *lines[i + 1 :]]


def _garble(draw: Draw, lines: Lines) -> Lines:
    if not lines:
        return lines
    i = _index(draw, lines)
    line = lines[i]
    at = draw(st.integers(0, len(line)))
    cut = draw(st.integers(0, 4))
    return [*lines[:i], line[:at] + draw(JUNK) + line[at + cut :], *lines[i + 1 :]]


def _swap_sections(draw: Draw, lines: Lines) -> Lines:
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return lines
    head = lines[: starts[0]]
    sections = [lines[a:b] for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]
    shuffled = draw(st.permutations(sections))
    return head + [line for section in shuffled for line in section]


def _codec(draw: Draw, lines: Lines) -> Lines:
    found = [i for i, line in enumerate(lines) if line.startswith("a=rtpmap:")]
    if not found:
        return lines
    i = draw(st.sampled_from(found))
    pt = lines[i][len("a=rtpmap:") :].split(" ", 1)[0]
    replaced = f"a=rtpmap:{pt} {draw(CODEC_NAMES)}/{draw(CLOCK_RATES)}"
    return [*lines[:i], replaced, *lines[i + 1 :]]


def _payload_type(draw: Draw, lines: Lines) -> Lines:
    """Replace one payload type everywhere it appears (m=, rtpmap, fmtp, rtcp-fb, apt=),
    or in just one line."""
    numbers = sorted({int(n) for n in re.findall(r"a=rtpmap:(\d+)", "\n".join(lines))})
    if not numbers:
        return lines
    old = str(draw(st.sampled_from(numbers)))
    new = draw(PAYLOAD_TYPES)
    pattern = re.compile(rf"(?<![0-9]){old}(?![0-9])")
    if draw(st.booleans()):
        return [pattern.sub(new, line) if _carries_pt(line) else line for line in lines]
    found = [i for i, line in enumerate(lines) if _carries_pt(line) and pattern.search(line)]
    i = draw(st.sampled_from(found))
    return [*lines[:i], pattern.sub(new, lines[i], count=1), *lines[i + 1 :]]


def _carries_pt(line: str) -> bool:
    return line.startswith(("m=", "a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))


def _remove_attribute(draw: Draw, lines: Lines) -> Lines:
    prefix = draw(REMOVABLE)
    return [line for line in lines if not line.startswith(prefix)]


def _media_line(draw: Draw, lines: Lines) -> Lines:
    found = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not found:
        return lines
    i = draw(st.sampled_from(found))
    formats = lines[i].split(" ", 3)[3:] or [""]
    kind = draw(st.sampled_from(["video", "audio", "application", "text", "VIDEO", ""]))
    port = draw(st.sampled_from(["9", "0", "-1", "65536", "x"]))
    proto = draw(
        st.sampled_from(["UDP/TLS/RTP/SAVPF", "RTP/AVP", "udp", "UDP/DTLS/SCTP", "RTP/SAVP", ""])
    )
    return [*lines[:i], f"m={kind} {port} {proto} {formats[0]}", *lines[i + 1 :]]


def _direction(draw: Draw, lines: Lines) -> Lines:
    directions = ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive")
    new = draw(st.sampled_from([*directions, ""]))
    return [new if line in directions else line for line in lines]


def _ice_and_dtls(draw: Draw, lines: Lines) -> Lines:
    """Bogus values of ``a=setup``, ``a=fingerprint``, ``a=ice-ufrag``, ``a=ice-pwd``."""
    attribute = draw(st.sampled_from(["a=setup:", "a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"]))
    value = draw(
        st.sampled_from(
            [
                "",
                "x",
                "active",
                "passive",
                "actpass",
                "holdconn",
                "sha-256 ZZ",
                "sha-1 00:11",
                "a" * 300,
                "sha-256",
                "sha-256 " + ":".join(["AB"] * 32),
                "é",
            ]
        )
        | JUNK
    )
    return [attribute + value if line.startswith(attribute) else line for line in lines]


def _insert(draw: Draw, lines: Lines) -> Lines:
    j = draw(st.integers(0, len(lines)))
    new = draw(EXTRA_SDP_LINES | JUNK.map(lambda s: "a=" + s) | LINE_TEXT)
    return [*lines[:j], new, *lines[j:]]


MUTATIONS: dict[str, Callable[[Draw, Lines], Lines]] = {
    "delete": _delete,
    "duplicate": _duplicate,
    "truncate": _truncate,
    "garble": _garble,
    "swap_sections": _swap_sections,
    "codec": _codec,
    "payload_type": _payload_type,
    "remove_attribute": _remove_attribute,
    "media_line": _media_line,
    "direction": _direction,
    "ice_and_dtls": _ice_and_dtls,
    "insert": _insert,
}


@st.composite
def mutated_sdp(draw: Draw, base: str, max_mutations: int = 4) -> str:
    """``base`` with 0 to ``max_mutations`` mutations, joined with CRLF (mostly) or LF."""
    lines = base.rstrip("\r\n").split("\r\n")
    for _ in range(draw(st.integers(0, max_mutations))):
        lines = MUTATIONS[draw(st.sampled_from(sorted(MUTATIONS)))](draw, lines)
    newline: str = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    end: str = draw(st.sampled_from([newline, newline, ""]))
    return newline.join(lines) + end


CANDIDATE_HOSTS = st.sampled_from(
    [
        "127.0.0.1",
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "1.2.3",
        "999.1.1.1",
        "example.invalid",
        "x",
        "fe80::1%lo",
        "::ffff:127.0.0.1",
    ]
)


@st.composite
def candidate_line(draw: Draw, *, mdns: bool = False) -> str:
    """An ``a=candidate:`` line: well formed, with bogus fields, or cut short."""
    hosts = CANDIDATE_HOSTS
    if mdns:  # resolving one takes up to a second, and only inside the network namespace
        hosts = hosts | st.just("0b3cb1f8-3bd6-4d2d-a5a5-92b1c2b0b0a1.local")
    fields = [
        draw(st.sampled_from(["1", "0", "foundation", "x" * 40]) | ASCII_TEXT),
        draw(st.sampled_from(["1", "2", "0", "-1", "x", "256", "99999999999999999999"])),
        draw(st.sampled_from(["udp", "UDP", "tcp", "TCP", "sctp", "x"])),
        draw(st.sampled_from(["2130706431", "0", "-1", "4294967296", "1e9", "x"])),
        draw(hosts | ASCII_TEXT),
        draw(st.sampled_from(["9", "0", "65535", "65536", "-1", "x", "50000"])),
        draw(st.sampled_from(["typ", "typ", "TYP", "x"])),
        draw(st.sampled_from(["host", "host", "srflx", "prflx", "relay", "x", "HOST"])),
    ]
    fields += draw(
        st.lists(
            st.sampled_from(
                [
                    "raddr 0.0.0.0",
                    "rport 9",
                    "rport x",
                    "tcptype active",
                    "tcptype",
                    "raddr",
                    "generation 0",
                    "ufrag x",
                    "network-id 1",
                    "rport 99999999999999999999",
                ]
            ),
            max_size=3,
        )
    )
    if draw(st.booleans()):
        fields = fields[: draw(st.integers(0, len(fields)))]
    separator: str = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    return "a=candidate:" + separator.join(fields)


TRICKLE_LINES = st.sampled_from(
    [
        "a=end-of-candidates",
        "a=end-of-candidates",
        "m=audio 9 RTP/AVP 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 0",
        "m=",
        "a=mid:0",
        "a=mid:1",
        "a=mid:",
        "a=mid:zzz",
        "a=ice-pwd:brandnewpasswordbrandnew",
        "a=ice-options:trickle",
        "",
        "a=candidate:",
        "a=candidate",
        " a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
        "a=end-of-candidates extra",
    ]
)


@st.composite
def trickle_fragment(draw: Draw, ufrags: Sequence[str] = (), *, mdns: bool = False) -> str:
    """An RFC 8840 fragment, or something like one: candidates (good, bad, cut short),
    ``m=``/``a=mid:`` lines, ufrags (the session's own, or new: an ICE restart), junk."""
    ufrag_values = st.sampled_from([*ufrags, "brandnew", ""]) if ufrags else ASCII_TEXT
    line = st.one_of(
        candidate_line(mdns=mdns),
        TRICKLE_LINES,
        ufrag_values.map(lambda u: "a=ice-ufrag:" + u),
        LINE_TEXT,
    )
    lines = draw(st.lists(line, max_size=8))
    newline: str = draw(st.sampled_from(["\r\n", "\n"]))
    end: str = draw(st.sampled_from(["", newline]))
    return newline.join(lines) + end


# --------------------------------------------------------------------------- parse_offer


def test_parse_offer_only_raises_invalid_offer() -> None:
    bases = [offline_offer(publisher=True), offline_offer(publisher=False)]

    @fuzz_settings(600)
    @given(sdp=st.sampled_from(bases).flatmap(mutated_sdp) | LINE_TEXT.map(lambda s: "v=0" + s))
    # found by this fuzz: aiortc's parser asserts on these (AssertionError, not ValueError)
    @example(sdp="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 300\r\n")  # payload type over 255
    @example(sdp="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 72\r\n")  # forbidden (RTCP) type
    @example(sdp="v=0\r\nm=video 9 udp 96\r\n")  # m= line not matching aiortc's pattern
    @example(sdp="v=0\r\nm=video x UDP/TLS/RTP/SAVPF 96\r\n")
    def check(sdp: str) -> None:
        try:
            parsed = parse_offer(sdp)
        except InvalidOfferError:
            return
        assert any(m.kind in ("audio", "video") for m in parsed.media)

    check()


def test_parse_offer_accepts_real_offers() -> None:
    for publisher in (True, False):
        parsed = parse_offer(offline_offer(publisher=publisher))
        assert [m.kind for m in parsed.media] == ["video", "audio"]


# --------------------------------------------------------------------------- trickle ICE


@dataclass
class FakePeerConnection:
    """What ``add_candidates`` uses of aiortc's RTCPeerConnection, with its checks."""

    added: list[RTCIceCandidate | None] = field(default_factory=list)

    async def addIceCandidate(self, candidate: RTCIceCandidate | None) -> None:  # noqa: N802  aiortc's name
        if candidate is not None and candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            raise ValueError("Candidate must have either sdpMid or sdpMLineIndex")
        self.added.append(candidate)


def trickled(fragment: str) -> list[RTCIceCandidate | None]:
    """Run ``add_candidates`` against a fake peer connection; it never suspends, so no loop is
    needed."""
    pc = FakePeerConnection()
    coroutine = add_candidates(pc, fragment)
    try:
        coroutine.send(None)
    except StopIteration:
        return pc.added
    coroutine.close()
    raise AssertionError("add_candidates suspended on a fake peer connection")


def test_trickle_candidates_are_added_or_skipped() -> None:
    @fuzz_settings(400)
    @given(fragment=trickle_fragment(["gl30"]) | LINE_TEXT.map(lambda s: "a=candidate:" + s))
    # found by this fuzz: aiortc's candidate_from_sdp asserts on fewer than 8 fields
    @example(fragment="a=candidate:1 1 udp")
    @example(fragment="a=candidate:")
    def check(fragment: str) -> None:
        added = trickled(fragment)
        lines = [line.strip() for line in fragment.splitlines()]
        wanted = sum(1 for line in lines if line.startswith("a=candidate:"))
        ends = sum(1 for line in lines if line == "a=end-of-candidates")
        assert len(added) <= wanted + ends
        assert added.count(None) == ends

    check()


def test_trickle_well_formed_candidates_are_added() -> None:
    fragment = (
        "a=ice-ufrag:gl30\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
        "a=candidate:2 1 tcp 1 127.0.0.1 9 typ host tcptype active\r\n"
        "a=end-of-candidates\r\n"
    )
    added = trickled(fragment)
    assert [(c.ip, c.port, c.sdpMid) for c in added if c is not None] == [
        ("127.0.0.1", 50000, "0"),
        ("127.0.0.1", 9, "0"),
    ]
    assert added[-1] is None


# --------------------------------------------------------------------------- room names

ROOM_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-")


@fuzz_settings(500)
@given(
    raw=st.text(max_size=80)
    | st.from_regex(r"\A[A-Za-z0-9_-]{1,70}\Z")
    | st.text(st.sampled_from([*sorted(ROOM_CHARACTERS), "\n", ".", "/", "٣", "é"]), max_size=70)
)
@example(raw="a\n")
@example(raw="a" * 64)
@example(raw="a" * 65)
@example(raw="")
@example(raw="٣")  # a digit, but not an ASCII one
@example(raw="..")
def test_parse_room_name(raw: str) -> None:
    valid = 1 <= len(raw) <= 64 and all(c in ROOM_CHARACTERS for c in raw)
    assert parse_room_name(raw) == (raw if valid else None)


# --------------------------------------------------------------------------- configuration

VARIABLES = sorted(Config().describe())
SECRET_MARK = "s3cr3t"  # noqa: S105  a mark to look for, not a secret
PLAUSIBLE_VALUES = st.sampled_from(
    [
        "",
        " ",
        "0",
        "1",
        "-1",
        "true",
        "yes",
        "off",
        "maybe",
        "1.5",
        "1e309",
        "nan",
        "inf",
        "-inf",
        "0x10",
        "1_000",
        "١٢",
        "²",
        "65535",
        "65536",
        "99999999999999999999",
        ":8080",
        ":0",
        "127.0.0.1:0",
        "[::1]:80",
        "[::1",
        "localhost:8080",
        "host:port",
        "stun:stun.example.org",
        "stun:",
        "turn:u@h:3478",
        "turns:h?transport=tcp",
        ",",
        ",,",
        "room:tok",
        "a:b;c:d",
        "a:b;a:c",
        ":x",
        "a:",
        ";;;",
        "10.0.0.0/8",
        "::/0",
        "1.2.3.4/33",
        "127.0.0.1",
        "127.0.0.1,::1",
        "not-an-ip",
        "debug",
        "json",
        "console",
        "WARNING",
        "records/x",
        "records",
        "http://minio:9000",
        "minio:9000",
        "minio:x",
        "bucket",
    ]
)
ENV_VALUES = PLAUSIBLE_VALUES | LINE_TEXT | st.lists(PLAUSIBLE_VALUES, max_size=4).map(",".join)


@st.composite
def environments(draw: Draw) -> dict[str, str]:
    env: dict[str, str] = draw(
        st.dictionaries(st.sampled_from(VARIABLES) | ASCII_TEXT, ENV_VALUES, max_size=10)
    )
    for name in SECRET_VARIABLES & env.keys():  # every secret carries a mark to look for
        env[name] = env[name] + SECRET_MARK + draw(ASCII_TEXT)
    return env


@fuzz_settings(300)
@given(env=environments())
@example(env={"RATE_LIMIT_RPS": "1e309"})
@example(env={"ICE_PORT_MIN": "١٢", "ICE_PORT_MAX": "1"})
@example(env={"ROOM_TOKENS": "room s3cr3t"})
def test_config_from_env_only_raises_config_error(env: dict[str, str]) -> None:
    error: ConfigError | None = None
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.variable
        assert SECRET_MARK not in str(error)
        return
    assert SECRET_MARK not in repr(config)
    assert SECRET_MARK not in repr(config.describe())
