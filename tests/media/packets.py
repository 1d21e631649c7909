"""Hostile datagrams for the packet-level fuzz (``tests/media/test_packet_fuzz.py``): Hypothesis
strategies that build *structured* RTP, RTCP, STUN and DTLS packets (valid structures with
fuzzed fields and lengths, then truncated, extended or flipped) and plain garbage, and the
routes they take to the server.

Strategies never see the live session: a field that only means something against it (the
publisher's SSRC, the negotiated payload types and header extension ids, the sequence number a
viewer just received, the session's ICE credentials) is drawn as a :class:`Ref` (or a
:class:`Near` offset from one) and filled in by :func:`render` when the packet is sent. So the
same drawn examples hit whatever stage (publisher and viewers) is live at the time.

Everything here is pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import binascii
import contextlib
import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from hypothesis import strategies as st
from OpenSSL import SSL

U16 = 0xFFFF
U32 = 0xFFFFFFFF


class Ref(enum.Enum):
    """A value known only once the stage is connected, filled in when the packet is sent."""

    PUB_VIDEO_SSRC = "the publisher's video SSRC"
    PUB_RTX_SSRC = "the publisher's RTX SSRC"
    PUB_AUDIO_SSRC = "the publisher's audio SSRC"
    SERVER_RECEIVER_SSRC = "the server's RTCP SSRC on the publisher's session"
    SERVER_VIDEO_SSRC = "the video SSRC the server sends the fuzzing viewer"
    SERVER_RTX_SSRC = "the RTX SSRC the server repairs the fuzzing viewer's video with"
    SERVER_AUDIO_SSRC = "the audio SSRC the server sends the fuzzing viewer"
    OTHER_VIEWER_VIDEO_SSRC = "the video SSRC the server sends another viewer"
    VIEWER_SSRC = "the fuzzing viewer's own RTCP SSRC"
    VIDEO_PT = "the negotiated video payload type"
    RTX_PT = "the negotiated RTX payload type"
    AUDIO_PT = "the negotiated audio payload type"
    EXT_MID = "the negotiated sdes:mid header extension id"
    EXT_ABS_SEND_TIME = "the negotiated abs-send-time header extension id"
    EXT_AUDIO_LEVEL = "the negotiated ssrc-audio-level header extension id"
    RECENT_SEQ = "the last video sequence number the fuzzing viewer received"
    PUB_AUDIO_SEQ = "the last audio sequence number the publisher sent"
    PUB_VIDEO_SEQ = "the last video sequence number the publisher sent"


@dataclass(frozen=True)
class Near:
    """A value ``offset`` away from a :class:`Ref` (a NACK for a packet just sent)."""

    ref: Ref
    offset: int


Value = int | Ref | Near
Values = Mapping[Ref, int]

SSRC_REFS = [r for r in Ref if r.name.endswith("_SSRC")]
PT_REFS = [Ref.VIDEO_PT, Ref.RTX_PT, Ref.AUDIO_PT]
EXT_REFS = [Ref.EXT_MID, Ref.EXT_ABS_SEND_TIME, Ref.EXT_AUDIO_LEVEL]


def resolve(value: Value, values: Values, mask: int = U32) -> int:
    if isinstance(value, Ref):
        return values.get(value, 0) & mask
    if isinstance(value, Near):
        return (values.get(value.ref, 0) + value.offset) & mask
    return value & mask


# A piece of a packet body: bytes as they are, or a value packed with a struct format.
Piece = bytes | tuple[Value, str]


def pack_pieces(pieces: tuple[Piece, ...], values: Values) -> bytes:
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, bytes):
            out += piece
        else:
            value, fmt = piece
            size = struct.calcsize(fmt)
            out += struct.pack(fmt, resolve(value, values, (1 << (8 * size)) - 1))
    return bytes(out)


# --------------------------------------------------------------------------- RTP


@dataclass(frozen=True)
class HeaderExtension:
    """An RTP header extension block (RFC 8285): the profile (0xBEDE one-byte, 0x1000 two-byte
    or anything), elements as (id, declared length, value) with lengths that may lie, zero
    padding, and a length field that may lie too (``None``: the elements' own, padded)."""

    profile: int
    elements: tuple[tuple[Value, int, bytes], ...]
    padding: int = 0
    words: int | None = None

    def render(self, values: Values) -> bytes:
        body = bytearray()
        for ident, declared, value in self.elements:
            number = resolve(ident, values, 0xFF)
            if self.profile == 0xBEDE:
                body.append(((number & 0x0F) << 4) | ((declared - 1) & 0x0F))
            else:
                body += bytes([number, declared & 0xFF])
            body += value
        body += bytes(self.padding)
        words = self.words
        if words is None:
            body += bytes(-len(body) % 4)
            words = len(body) // 4
        return struct.pack("!HH", self.profile & U16, words & U16) + bytes(body)


@dataclass(frozen=True)
class Rtp:
    version: int = 2
    marker: bool = False
    payload_type: Value = Ref.VIDEO_PT
    sequence: Value = 0
    timestamp: int = 0
    ssrc: Value = Ref.PUB_VIDEO_SSRC
    csrcs: tuple[int, ...] = ()
    csrc_count: int | None = None  # the CC field as written (None: len(csrcs))
    extension: HeaderExtension | None = None
    extension_bit: bool | None = None  # the X bit as written (None: whether there is one)
    payload: bytes = b""
    padding: int = 0  # padding bytes (with the P bit); the last one is the count
    pad_count: int | None = None  # the count as written (None: the right one)

    def render(self, values: Values) -> bytes:
        count = len(self.csrcs) if self.csrc_count is None else self.csrc_count
        x = self.extension is not None if self.extension_bit is None else self.extension_bit
        first = ((self.version & 3) << 6) | (bool(self.padding) << 5) | (x << 4) | (count & 0x0F)
        second = (self.marker << 7) | resolve(self.payload_type, values, 0x7F)
        data = struct.pack(
            "!BBHII",
            first,
            second,
            resolve(self.sequence, values, U16),
            self.timestamp & U32,
            resolve(self.ssrc, values),
        )
        data += b"".join(struct.pack("!I", c & U32) for c in self.csrcs)
        if self.extension is not None:
            data += self.extension.render(values)
        data += self.payload
        if self.padding:
            count_byte = self.padding if self.pad_count is None else self.pad_count
            data += bytes(self.padding - 1) + bytes([count_byte & 0xFF])
        return data


# --------------------------------------------------------------------------- RTCP

RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE, RTCP_APP, RTCP_RTPFB, RTCP_PSFB, RTCP_XR = range(200, 208)


@dataclass(frozen=True)
class RtcpPart:
    """One packet of a compound RTCP packet; its header fields may disagree with its body."""

    packet_type: int
    count: int  # the 5-bit count / FMT field
    body: tuple[Piece, ...]
    length: int | None = None  # the length field (32-bit words minus one); None: the body's
    version: int = 2
    padding: int = 0  # padding bytes (with the P bit); the last one is the count
    pad_count: int | None = None

    def render(self, values: Values) -> bytes:
        body = pack_pieces(self.body, values)
        body += bytes(-len(body) % 4)
        if self.padding:
            count_byte = self.padding if self.pad_count is None else self.pad_count
            body += bytes(self.padding - 1) + bytes([count_byte & 0xFF])
        length = len(body) // 4 if self.length is None else self.length
        first = ((self.version & 3) << 6) | (bool(self.padding) << 5) | (self.count & 0x1F)
        return struct.pack("!BBH", first, self.packet_type & 0xFF, length & U16) + body


@dataclass(frozen=True)
class Rtcp:
    parts: tuple[RtcpPart, ...]

    def render(self, values: Values) -> bytes:
        return b"".join(part.render(values) for part in self.parts)


# --------------------------------------------------------------------------- STUN

STUN_COOKIE = 0x2112A442


class Credentials(enum.Enum):
    """The USERNAME a STUN message carries, from the target session's ICE credentials."""

    NONE = "no USERNAME"
    VALID = "server-ufrag:client-ufrag"
    WRONG_UFRAG = "a wrong local ufrag"
    REVERSED = "client-ufrag:server-ufrag"


class Integrity(enum.Enum):
    NONE = "none"
    VALID = "keyed with the session's ICE password"
    WRONG_KEY = "keyed with another password"
    SHORT = "truncated"


@dataclass(frozen=True)
class IceCredentials:
    """What the target session's SDP says (what an attacker who saw it would know)."""

    server_ufrag: str
    server_pwd: str
    client_ufrag: str


@dataclass(frozen=True)
class StunAttribute:
    kind: int
    value: bytes
    declared: int | None = None  # the length field as written (None: len(value))
    pad: bool = True  # padded to 4 bytes as RFC 8489 wants


@dataclass(frozen=True)
class Stun:
    method: int = 0x0001  # Binding
    message_class: int = 0x0000  # request; 0x0010 indication, 0x0100 response, 0x0110 error
    cookie: int = STUN_COOKIE
    transaction: bytes = bytes(12)
    credentials: Credentials = Credentials.NONE
    attributes: tuple[StunAttribute, ...] = ()
    integrity: Integrity = Integrity.NONE
    fingerprint: bool | None = None  # None: none; True: right; False: wrong
    length: int | None = None  # the header's length field (None: the body's)

    def render(self, ice: IceCredentials) -> bytes:
        attributes = list(self.attributes)
        if self.credentials is not Credentials.NONE:
            username = {
                Credentials.VALID: f"{ice.server_ufrag}:{ice.client_ufrag}",
                Credentials.WRONG_UFRAG: f"x{ice.server_ufrag}:{ice.client_ufrag}",
                Credentials.REVERSED: f"{ice.client_ufrag}:{ice.server_ufrag}",
            }[self.credentials]
            attributes.insert(0, StunAttribute(0x0006, username.encode()))
        body = b"".join(_stun_attribute(a) for a in attributes)
        message_type = (self.method & 0x3EEF) | (self.message_class & 0x0110)

        def header(body_length: int) -> bytes:
            return struct.pack(
                "!HHI12s", message_type, body_length & U16, self.cookie & U32, self.transaction
            )

        if self.integrity is not Integrity.NONE:
            key = (ice.server_pwd if self.integrity is Integrity.VALID else "not-it").encode()
            digest = hmac.new(key, header(len(body) + 24) + body, hashlib.sha1).digest()
            if self.integrity is Integrity.SHORT:
                body += _stun_attribute(StunAttribute(0x0008, digest[:10]))
            else:
                body += _stun_attribute(StunAttribute(0x0008, digest))
        if self.fingerprint is not None:
            crc = binascii.crc32(header(len(body) + 8) + body) ^ 0x5354554E
            body += _stun_attribute(
                StunAttribute(0x8028, struct.pack("!I", crc ^ (0 if self.fingerprint else 1)))
            )
        return header(len(body) if self.length is None else self.length) + body


def _stun_attribute(attribute: StunAttribute) -> bytes:
    declared = len(attribute.value) if attribute.declared is None else attribute.declared
    data = struct.pack("!HH", attribute.kind & U16, declared & U16) + attribute.value
    if attribute.pad:
        data += bytes(-len(attribute.value) % 4)
    return data


# --------------------------------------------------------------------------- DTLS


@dataclass(frozen=True)
class DtlsRecord:
    content_type: int  # 20 change_cipher_spec, 21 alert, 22 handshake, 23 application_data
    version: int  # 0xFEFF DTLS 1.0, 0xFEFD DTLS 1.2, ...
    epoch: int
    sequence: int  # 48 bits
    fragment: bytes
    length: int | None = None  # the length field as written

    def render(self) -> bytes:
        length = len(self.fragment) if self.length is None else self.length
        return (
            struct.pack(
                "!BHHHIH",
                self.content_type & 0xFF,
                self.version & U16,
                self.epoch & U16,
                (self.sequence >> 32) & U16,
                self.sequence & U32,
                length & U16,
            )
            + self.fragment
        )


@dataclass(frozen=True)
class Dtls:
    records: tuple[DtlsRecord, ...]

    def render(self) -> bytes:
        return b"".join(record.render() for record in self.records)


def handshake_fragment(
    msg_type: int, body: bytes, *, message_seq: int, offset: int, total: int | None = None
) -> bytes:
    """A DTLS handshake message header (RFC 6347 4.2.2) and a fragment of its body."""
    total = len(body) + offset if total is None else total
    return (
        struct.pack("!B", msg_type & 0xFF)
        + (total & 0xFFFFFF).to_bytes(3, "big")
        + struct.pack("!H", message_seq & U16)
        + (offset & 0xFFFFFF).to_bytes(3, "big")
        + (len(body) & 0xFFFFFF).to_bytes(3, "big")
        + body
    )


@cache
def client_hello() -> bytes:
    """The body of a real DTLS ClientHello (offering DTLS-SRTP, as a WebRTC peer's does),
    from a throwaway OpenSSL connection that sends nothing anywhere."""
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):  # it waits for a ServerHello
        connection.do_handshake()
    record = connection.bio_read(4096)
    # record header (13) + handshake header (12) + body
    return bytes(record[25:])


# --------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Mutation:
    """What happens to a datagram after it is built: cut short, garbage appended, bytes
    flipped (positions taken modulo the length)."""

    cut: int | None = None
    append: bytes = b""
    flips: tuple[tuple[int, int], ...] = ()

    def apply(self, data: bytes) -> bytes:
        out = bytearray(data if self.cut is None else data[: self.cut])
        for position, mask in self.flips:
            if out:
                out[position % len(out)] ^= mask or 1
        return bytes(out) + self.append


# --------------------------------------------------------------------------- routes


class Route(enum.Enum):
    PUBLISHER_SRTP = "through the publisher's session, SRTP-protected with its own keys"
    VIEWER_SRTP = "through the fuzzing viewer's session, SRTP-protected with its own keys"
    PUBLISHER_RAW = "over the publisher's nominated ICE pair, unprotected"
    VIEWER_RAW = "over the fuzzing viewer's nominated ICE pair, unprotected"
    OFF_PATH = "from an off-path address"


class Target(enum.Enum):
    """Which server media port an off-path datagram goes to."""

    PUBLISHER = "the publisher's session"
    VIEWER = "the fuzzing viewer's session"
    OTHER_VIEWER = "another viewer's session"
    EVERY = "every session of the room"


Packet = Rtp | Rtcp | Stun | Dtls | bytes


@dataclass(frozen=True)
class Example:
    route: Route
    packet: Packet
    mutation: Mutation | None = None
    target: Target = Target.EVERY  # OFF_PATH only
    source: int = 0  # OFF_PATH only: which off-path socket (127.0.0.1, 127.0.0.2)

    def describe(self, rendered: bytes | None = None) -> str:
        where = self.route.name.lower()
        if self.route is Route.OFF_PATH:
            where += f" (from socket {self.source} to {self.target.name.lower()})"
        text = f"{where}: {self.packet!r}"
        if len(text) > 900:
            text = text[:900] + "…"
        if self.mutation is not None:
            text += f" mutated {self.mutation!r}"
        if rendered is not None:
            shown = rendered[:96].hex()
            text += (
                f"\n      sent {len(rendered)} bytes: {shown}{'…' if len(rendered) > 96 else ''}"
            )
        return text


def render(packet: Packet, values: Values, ice: IceCredentials) -> bytes:
    if isinstance(packet, bytes):
        return packet
    if isinstance(packet, Stun):
        return packet.render(ice)
    if isinstance(packet, Dtls):
        return packet.render()
    return packet.render(values)


# --------------------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, U16)
u32 = st.integers(0, U32)


def mostly(value: Any, otherwise: st.SearchStrategy[Any], odds: int = 8) -> st.SearchStrategy[Any]:
    """``value``, except one time in ``odds`` something drawn from ``otherwise``."""
    return st.integers(0, odds - 1).flatmap(
        lambda n: otherwise if n == odds - 1 else st.just(value)
    )


def ssrcs() -> st.SearchStrategy[Value]:
    return st.one_of(st.sampled_from(SSRC_REFS), u32, st.just(0))


def small_bytes(max_size: int = 32) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


@st.composite
def header_extensions(draw: st.DrawFn) -> HeaderExtension:
    profile = draw(st.sampled_from([0xBEDE, 0xBEDE, 0x1000, 0x1000]) | u16)
    one_byte = profile == 0xBEDE

    @st.composite
    def element(draw: st.DrawFn) -> tuple[Value, int, bytes]:
        ident: Value = draw(st.sampled_from(EXT_REFS) | st.integers(0, 15 if one_byte else 255))
        if draw(st.booleans()):  # a value of the length it declares
            declared = draw(st.integers(1, 16) if one_byte else st.integers(0, 255))
            return ident, declared, draw(st.binary(min_size=declared, max_size=declared))
        # abs-send-time is 3 bytes, audio level 1, mid a string: lengths that lie or differ
        return ident, draw(st.integers(0, 17) | u8), draw(st.binary(max_size=20))

    elements = tuple(draw(st.lists(element(), max_size=5)))
    words = draw(st.none() | st.none() | st.integers(0, 8) | u16)
    return HeaderExtension(profile, elements, draw(st.integers(0, 5)), words)


@st.composite
def vp8_payloads(draw: st.DrawFn) -> bytes:
    """A VP8 payload descriptor (RFC 7741) with fuzzed bits, and a frame header after it."""
    first = draw(u8) | draw(st.sampled_from([0x10, 0x90, 0x00]))
    rest = draw(st.binary(max_size=6))
    return bytes([first]) + rest + draw(st.binary(max_size=64))


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=2),  # an RTX payload too short for the original seq
        vp8_payloads(),
        st.binary(max_size=200),
        st.binary(min_size=900, max_size=1200),
        st.binary(min_size=1400, max_size=2000),  # past a 1500-byte MTU (and SRTP's buffer)
    )


@st.composite
def rtp_packets(draw: st.DrawFn) -> Rtp:
    csrcs = tuple(draw(st.lists(u32, max_size=15)))
    padding = draw(mostly(0, st.integers(1, 255), 4))
    extension = draw(st.none() | header_extensions())
    return Rtp(
        version=draw(st.sampled_from([2, 2, 2, 2, 2, 0, 1, 3])),
        marker=draw(st.booleans()),
        payload_type=draw(st.sampled_from(PT_REFS) | st.integers(0, 127)),
        sequence=draw(u16),
        timestamp=draw(u32),
        ssrc=draw(ssrcs()),
        csrcs=csrcs,
        csrc_count=draw(st.none() | st.none() | st.integers(0, 15)),
        extension=extension,
        extension_bit=draw(st.none() | st.none() | st.none() | st.booleans()),
        payload=draw(payloads()),
        padding=padding,
        pad_count=draw(st.none() | st.just(0) | u8) if padding else None,
    )


@st.composite
def report_blocks(draw: st.DrawFn) -> tuple[Piece, ...]:
    """One RR/SR report block (RFC 3550 6.4.1)."""
    return (
        (draw(ssrcs()), "!I"),
        (draw(u8), "!B"),
        draw(st.binary(min_size=3, max_size=3)),
        (draw(u32), "!I"),
        (draw(u32), "!I"),
        (draw(u32), "!I"),
        (draw(u32), "!I"),
    )


def counted(draw: st.DrawFn, actual: int) -> int:
    """The count field: the right one, mostly, else one that disagrees."""
    return int(draw(st.just(actual) | st.just(actual) | st.integers(0, 31))) & 0x1F


@st.composite
def sender_reports(draw: st.DrawFn) -> RtcpPart:
    reports = draw(st.lists(report_blocks(), max_size=4))
    info: tuple[Piece, ...] = (
        (draw(ssrcs()), "!I"),
        (draw(st.integers(0, (1 << 64) - 1)), "!Q"),
        (draw(u32), "!I"),
        (draw(u32), "!I"),
        (draw(u32), "!I"),
    )
    body = info + tuple(p for r in reports for p in r)
    return RtcpPart(RTCP_SR, counted(draw, len(reports)), body)


@st.composite
def receiver_reports(draw: st.DrawFn) -> RtcpPart:
    reports = draw(st.lists(report_blocks(), max_size=6))
    body = ((draw(ssrcs()), "!I"), *(p for r in reports for p in r))
    return RtcpPart(RTCP_RR, counted(draw, len(reports)), body)


@st.composite
def source_descriptions(draw: st.DrawFn) -> RtcpPart:
    chunks = draw(
        st.lists(st.tuples(ssrcs(), st.lists(st.tuples(u8, small_bytes()), max_size=3)), max_size=3)
    )
    body: list[Piece] = []
    for ssrc, items in chunks:
        body.append((ssrc, "!I"))
        for kind, value in items:
            declared = draw(st.just(len(value)) | u8)
            body.append(bytes([kind, declared]) + value)
        if draw(st.booleans()):
            body.append(b"\x00")  # the end of the chunk's items
    return RtcpPart(RTCP_SDES, counted(draw, len(chunks)), tuple(body))


@st.composite
def goodbyes(draw: st.DrawFn) -> RtcpPart:
    sources = draw(st.lists(ssrcs(), max_size=5))
    body: list[Piece] = [(s, "!I") for s in sources]
    if draw(st.booleans()):
        reason = draw(small_bytes())
        body.append(bytes([draw(st.just(len(reason)) | u8)]) + reason)
    return RtcpPart(RTCP_BYE, counted(draw, len(sources)), tuple(body))


@st.composite
def nacks(draw: st.DrawFn) -> RtcpPart:
    """Generic NACK (RFC 4585 6.2.1): many FCIs, duplicates, PIDs near what was just sent."""
    pid: st.SearchStrategy[Value] = u16 | st.builds(
        Near, st.just(Ref.RECENT_SEQ), st.integers(-64, 0)
    )
    items = draw(st.lists(st.tuples(pid, u16), max_size=17))
    repeat = draw(st.booleans())
    if items and repeat:
        items = items * draw(st.integers(2, 8))  # the same FCIs again and again
    body: list[Piece] = [
        (draw(ssrcs()), "!I"),
        (draw(mostly(Ref.SERVER_VIDEO_SSRC, ssrcs(), 3)), "!I"),
    ]
    for p, blp in items:
        body += [(p, "!H"), (blp, "!H")]
    fmt = draw(st.just(1) | st.just(1) | st.integers(0, 31))
    return RtcpPart(RTCP_RTPFB, fmt, tuple(body))


@st.composite
def payload_feedback(draw: st.DrawFn) -> RtcpPart:
    """PLI, FIR, REMB (with SSRC counts that exceed its length), SLI/RPSI/anything."""
    fmt = draw(st.sampled_from([1, 4, 15, 15, 2, 3]) | st.integers(0, 31))
    usual = draw(st.booleans())
    media: Value = draw(ssrcs())
    if usual:
        media = Ref.SERVER_VIDEO_SSRC if draw(st.booleans()) else 0
    body: list[Piece] = [(draw(ssrcs()), "!I"), (media, "!I")]
    if fmt == 4:
        for ssrc, sequence in draw(st.lists(st.tuples(ssrcs(), u8), max_size=4)):
            body += [(ssrc, "!I"), bytes([sequence, 0, 0, 0])]
    elif fmt == 15 and draw(st.integers(0, 3)):
        listed = draw(st.lists(ssrcs(), max_size=6))
        body += [
            draw(st.just(b"REMB") | st.binary(min_size=4, max_size=4)),
            bytes([draw(st.just(len(listed)) | u8)]),
            draw(st.binary(min_size=3, max_size=3)),
            *((s, "!I") for s in listed),
        ]
    elif fmt != 1 or draw(st.booleans()):
        body.append(draw(small_bytes(40)))
    return RtcpPart(RTCP_PSFB, fmt, tuple(body))


@st.composite
def other_rtcp(draw: st.DrawFn) -> RtcpPart:
    """APP, XR and types nobody parses (192-223 look like RTCP to the demultiplexer)."""
    packet_type = draw(st.sampled_from([RTCP_APP, RTCP_XR, 192, 193, 195, 208]) | u8)
    body: tuple[Piece, ...] = ((draw(ssrcs()), "!I"), draw(small_bytes(60)))
    return RtcpPart(packet_type, draw(st.integers(0, 31)), body)


@st.composite
def lying(draw: st.DrawFn, part: RtcpPart) -> RtcpPart:
    """The part's header, mostly honest, sometimes not: version, length, padding."""
    if draw(st.integers(0, 3)):
        return part
    padding = draw(st.sampled_from([0, 4]) | st.integers(1, 12))
    return RtcpPart(
        part.packet_type,
        part.count,
        part.body,
        length=draw(st.none() | st.integers(0, 40) | u16),
        version=draw(st.sampled_from([2, 2, 0, 1, 3])),
        padding=padding,
        pad_count=draw(st.none() | st.just(0) | u8) if padding else None,
    )


def rtcp_parts() -> st.SearchStrategy[RtcpPart]:
    return st.one_of(
        sender_reports(),
        receiver_reports(),
        source_descriptions(),
        goodbyes(),
        nacks(),
        payload_feedback(),
        other_rtcp(),
    ).flatmap(lying)


def rtcp_packets() -> st.SearchStrategy[Rtcp]:
    return st.lists(rtcp_parts(), min_size=1, max_size=5).map(lambda parts: Rtcp(tuple(parts)))


# STUN attributes aioice decodes, each with a value of its right length and of wrong ones.
STUN_ATTRIBUTE_SIZES = {
    0x0001: 8,  # MAPPED-ADDRESS
    0x0006: 4,  # USERNAME
    0x0008: 20,  # MESSAGE-INTEGRITY
    0x0009: 4,  # ERROR-CODE
    0x000C: 4,  # CHANNEL-NUMBER
    0x000D: 4,  # LIFETIME
    0x0020: 8,  # XOR-MAPPED-ADDRESS
    0x0024: 4,  # PRIORITY
    0x0025: 0,  # USE-CANDIDATE
    0x8022: 8,  # SOFTWARE
    0x8028: 4,  # FINGERPRINT
    0x8029: 8,  # ICE-CONTROLLED
    0x802A: 8,  # ICE-CONTROLLING
}


def stun_address(draw: st.DrawFn) -> bytes:
    """A (XOR-)MAPPED-ADDRESS value: family IPv4 or IPv6, or another, and a port."""
    family = draw(st.sampled_from([1, 1, 2, 0, 3]))
    size = {1: 4, 2: 16}.get(family, draw(st.integers(0, 16)))
    return bytes([0, family]) + draw(st.binary(min_size=2 + size, max_size=2 + size))


@st.composite
def stun_attributes(draw: st.DrawFn) -> StunAttribute:
    """Mostly well-formed attributes aioice decodes; sometimes of a wrong length, with a
    length field that lies, unpadded, or of a type nobody knows."""
    kind = draw(st.sampled_from(sorted(STUN_ATTRIBUTE_SIZES)) | u16)
    if kind in (0x0001, 0x0020):
        value = stun_address(draw)
    elif kind in (0x0006, 0x8022):
        value = draw(st.text(max_size=20)).encode()
    elif kind == 0x0009:
        value = bytes([0, 0, draw(st.integers(3, 6)), draw(st.integers(0, 99))])
        value += draw(st.text(max_size=12)).encode()
    else:
        size = STUN_ATTRIBUTE_SIZES.get(kind, draw(st.integers(0, 12)))
        value = draw(st.binary(min_size=size, max_size=size))
    if draw(st.integers(0, 4)):
        return StunAttribute(kind, value)
    return StunAttribute(
        kind,
        draw(st.just(value) | st.binary(max_size=24)),
        declared=draw(st.none() | st.sampled_from([0, U16, 0x8000]) | u16),
        pad=draw(st.booleans()),
    )


@st.composite
def stun_messages(draw: st.DrawFn) -> Stun:
    """Binding requests, responses, indications and errors (and other methods), with and
    without valid MESSAGE-INTEGRITY and FINGERPRINT, right and wrong ufrags, lying lengths."""
    return Stun(
        method=draw(mostly(0x0001, st.sampled_from([0x0003, 0x0004, 0x0009]) | u16, 3)),
        message_class=draw(st.sampled_from([0x0000] * 4 + [0x0010, 0x0100, 0x0110])),
        cookie=draw(mostly(STUN_COOKIE, u32)),
        transaction=draw(st.binary(min_size=12, max_size=12)),
        credentials=draw(st.sampled_from([Credentials.VALID] * 3 + list(Credentials))),
        attributes=tuple(draw(st.lists(stun_attributes(), max_size=5))),
        integrity=draw(st.sampled_from([Integrity.VALID] * 3 + list(Integrity))),
        fingerprint=draw(st.sampled_from([None, True, True, True, False])),
        length=draw(mostly(None, u16)),
    )


@st.composite
def dtls_fragments(draw: st.DrawFn, content_type: int) -> bytes:
    if content_type == 22:  # handshake: pieces of a real ClientHello, and other messages
        hello = client_hello()
        msg_type = draw(st.sampled_from([1, 1, 2, 3, 11, 12, 14, 16, 20]) | u8)
        start = draw(st.integers(0, len(hello)))
        end = draw(st.integers(start, len(hello)))
        body = hello[start:end] if msg_type == 1 else draw(st.binary(max_size=120))
        return handshake_fragment(
            msg_type,
            body,
            message_seq=draw(st.integers(0, 3) | u16),
            offset=draw(st.just(start) | st.integers(0, 0xFFFFFF)),
            total=draw(st.none() | st.just(len(hello)) | st.integers(0, 0xFFFFFF)),
        )
    if content_type == 21:  # alert: (level, description), close_notify and fatal ones
        level = draw(st.sampled_from([1, 2]) | u8)
        description = draw(st.sampled_from([0, 10, 20, 40, 42, 48, 50, 51, 90]) | u8)
        return bytes([level, description])
    if content_type == 20:
        return draw(st.just(b"\x01") | st.binary(max_size=4))
    return draw(st.binary(max_size=200))


@st.composite
def dtls_records(draw: st.DrawFn) -> DtlsRecord:
    content_type = draw(st.sampled_from([20, 21, 22, 23, 24, 25]) | st.integers(20, 63) | u8)
    fragment = draw(dtls_fragments(content_type))
    return DtlsRecord(
        content_type=content_type,
        version=draw(st.sampled_from([0xFEFD, 0xFEFD, 0xFEFF, 0xFEFC, 0x0303]) | u16),
        epoch=draw(st.sampled_from([0, 0, 1, 1, 2]) | u16),
        sequence=draw(st.integers(0, 8) | st.integers(0, (1 << 48) - 1)),
        fragment=fragment,
        length=draw(st.none() | st.none() | st.none() | u16),
    )


def dtls_packets() -> st.SearchStrategy[Dtls]:
    return st.lists(dtls_records(), min_size=1, max_size=3).map(lambda r: Dtls(tuple(r)))


@st.composite
def classed_bytes(draw: st.DrawFn, min_size: int = 0, max_size: int = 80) -> bytes:
    """Garbage whose first byte puts it in one of RFC 7983's demultiplexing ranges."""
    first = draw(
        st.sampled_from([0, 1, 3, 20, 22, 23, 63, 64, 79, 127, 128, 191, 192, 255])
        | st.integers(0, 255)
    )
    return bytes([first]) + draw(st.binary(min_size=min_size, max_size=max_size))


def raw_datagrams() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=1),
        st.binary(min_size=2, max_size=20),
        classed_bytes(),
        st.binary(max_size=1500),
        classed_bytes(1490, 2100),  # around and past SRTP's 1500-byte buffer
    )


@st.composite
def mutations(draw: st.DrawFn) -> Mutation | None:
    if draw(st.integers(0, 3)):
        return None
    return Mutation(
        cut=draw(st.none() | st.integers(0, 40) | st.integers(0, 1500)),
        append=draw(st.just(b"") | st.binary(max_size=40)),
        flips=tuple(draw(st.lists(st.tuples(u16, u8), max_size=3))),
    )


PROTECTED_KINDS: list[st.SearchStrategy[Packet]] = [rtp_packets(), rtcp_packets()]
ANY_KINDS: list[st.SearchStrategy[Packet]] = [
    rtp_packets(),
    rtcp_packets(),
    stun_messages(),
    stun_messages(),  # twice: most STUN paths need a well-formed, authenticated request
    dtls_packets(),
    raw_datagrams(),
]
# Off-path datagrams twice as often as each in-path route: anyone on the internet can send them.
ROUTES = [*Route, Route.OFF_PATH]


@st.composite
def examples(draw: st.DrawFn) -> Example:
    """A hostile datagram and its route, each kind of packet about as often as the others."""
    route = draw(st.sampled_from(ROUTES))
    srtp = route in (Route.PUBLISHER_SRTP, Route.VIEWER_SRTP)
    packet = draw(draw(st.sampled_from(PROTECTED_KINDS if srtp else ANY_KINDS)))
    mutation = draw(mutations())
    if route is not Route.OFF_PATH:
        return Example(route, packet, mutation)
    target = draw(st.sampled_from(list(Target)))
    return Example(route, packet, mutation, target, draw(st.integers(0, 1)))
