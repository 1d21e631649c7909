"""Tests for golive.logs: JSON lines, console output, library logs, redaction, levels."""

from __future__ import annotations

import io
import json
import logging
import string
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import structlog
import structlog.contextvars
import structlog.testing
from hypothesis import assume, given
from hypothesis import strategies as st

from golive.logs import REDACTED, Redactor, configure_logging, get_logger

if TYPE_CHECKING:
    from collections.abc import Iterator

# Fake credentials (names chosen so that linters do not mistake them for real ones).
HIDDEN = "s3cr3t-Value-9f8e7d"
HIDDEN_ROOM_CODE = "room-code-XYZ123"
HIDDEN_SHORT = "q7z"
ICE_PW = "asd88fgpdd777uzjYhagZg"
SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=ice-ufrag:EsAw\r\n"
    f"a=ice-pwd:{ICE_PW}\r\n"
    "a=fingerprint:sha-256 19:E2:1C:3B:4B:9F:81:E6:B8:5C:F4:A5:A8:D8:73:04:BB:05:2F:70\r\n"
)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoiYSJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def setup(level: str = "info", fmt: str = "json", secrets: tuple[str, ...] = ()) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, fmt, secrets=secrets, stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, object]]:
    """Every output line parsed as one JSON object."""
    lines = stream.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(item, dict) for item in parsed)
    return parsed


def strings(value: object) -> Iterator[str]:
    """Every string in a nested structure of dicts and lists, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def only(stream: io.StringIO) -> dict[str, object]:
    [record] = records(stream)
    return record


# --------------------------------------------------------------------------- format


def test_json_lines_with_timestamp_level_event() -> None:
    stream = setup()
    log = get_logger()
    before = datetime.now(UTC)
    log.info("first")
    log.warning("second", count=2)
    log.error("third")
    after = datetime.now(UTC)

    lines = records(stream)
    assert [line["event"] for line in lines] == ["first", "second", "third"]
    assert [line["level"] for line in lines] == ["info", "warning", "error"]
    assert lines[1]["count"] == 2
    for line in lines:
        timestamp = line["timestamp"]
        assert isinstance(timestamp, str)
        assert timestamp.endswith("Z")
        parsed = datetime.fromisoformat(timestamp)
        assert parsed.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= parsed <= after + timedelta(seconds=1)


def test_one_object_per_line_even_with_newlines_in_values() -> None:
    stream = setup()
    get_logger().info("multi\nline", sdp="v=0\r\ns=-\r\n")
    assert stream.getvalue().count("\n") == 1
    assert only(stream)["event"] == "multi\nline"


def test_logger_name_is_the_calling_module() -> None:
    stream = setup()
    get_logger().info("named")
    assert only(stream)["logger"] == __name__


def test_bound_context_appears() -> None:
    stream = setup()
    log = get_logger(room="lobby", session="abc123", role="publisher")
    log.info("joined")
    log.bind(track="video").info("track added")
    first, second = records(stream)
    for line in (first, second):
        assert line["room"] == "lobby"
        assert line["session"] == "abc123"
        assert line["role"] == "publisher"
    assert second["track"] == "video"


def test_contextvars_are_merged_into_structlog_and_library_lines() -> None:
    stream = setup()
    structlog.contextvars.bind_contextvars(request_id="req-1", room="lobby")
    get_logger().info("handled")
    logging.getLogger("aiohttp.web").info("library line")
    for line in records(stream):
        assert line["request_id"] == "req-1"
        assert line["room"] == "lobby"


def test_positional_arguments_are_formatted() -> None:
    stream = setup()
    get_logger().info("%d viewers in %s", 3, "lobby")
    assert only(stream)["event"] == "3 viewers in lobby"


@pytest.mark.parametrize("name", ["aiortc", "aioice.ice", "aiohttp.access", "pykka"])
def test_library_logs_use_the_same_json(name: str) -> None:
    stream = setup()
    logging.getLogger(name).warning("connection %s failed", "c1")
    line = only(stream)
    assert line["event"] == "connection c1 failed"
    assert line["logger"] == name
    assert line["level"] == "warning"
    assert isinstance(line["timestamp"], str)
    assert line["timestamp"].endswith("Z")


def test_aiohttp_access_info_is_logged() -> None:
    stream = setup()
    logging.getLogger("aiohttp.access").info('127.0.0.1 "GET /healthz HTTP/1.1" 200')
    assert only(stream)["level"] == "info"


def test_exceptions_are_rendered_in_json() -> None:
    stream = setup()
    log = get_logger(room="lobby")
    try:
        raise ValueError("broken pipe")  # noqa: TRY301  the test needs a live traceback
    except ValueError:
        log.exception("forwarding failed")
        logging.getLogger("aiortc").exception("library failure")
    for line in records(stream):
        assert line["level"] == "error"
        assert "broken pipe" in json.dumps(line["exception"])
        assert "ValueError" in json.dumps(line["exception"])
        assert "exc_info" not in line


def test_console_format_is_not_json() -> None:
    stream = setup(fmt="console")
    get_logger(room="lobby").info("console event", viewers=3)
    logging.getLogger("aiortc").info("library event")
    output = stream.getvalue()
    lines = output.splitlines()
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "console event" in lines[0]
    assert "room=lobby" in lines[0]
    assert "viewers=3" in lines[0]
    assert "library event" in lines[1]
    assert "\x1b[" not in output  # not a terminal: no colours


def test_console_format_redacts_exceptions() -> None:
    stream = setup(fmt="console", secrets=(HIDDEN,))
    try:
        raise RuntimeError(f"bad credential {HIDDEN}")  # noqa: TRY301  needs a traceback
    except RuntimeError:
        get_logger().exception("failed")
    output = stream.getvalue()
    assert "RuntimeError" in output
    assert HIDDEN not in output


# --------------------------------------------------------------------------- redaction


def test_configured_secrets_are_redacted_everywhere() -> None:
    stream = setup(secrets=(HIDDEN, HIDDEN_ROOM_CODE, HIDDEN_SHORT, ""))
    log = get_logger(room="lobby", bound=f"x{HIDDEN}x")
    log.info(
        "token %s rejected",
        HIDDEN,
        value=HIDDEN,
        inside=f"prefix-{HIDDEN_ROOM_CODE}-suffix",
        short=f"<{HIDDEN_SHORT}>",
        nested={"list": [HIDDEN, {"deeper": (HIDDEN_ROOM_CODE, 1)}], HIDDEN: "as a key"},
        number=42,
        flag=True,
        nothing=None,
        obj=ValueError(HIDDEN),
    )
    logging.getLogger("aiortc").info("library saw %s and %s", HIDDEN, HIDDEN_SHORT)
    output = stream.getvalue()
    for secret in (HIDDEN, HIDDEN_ROOM_CODE, HIDDEN_SHORT):
        assert secret not in output
    first, second = records(stream)
    assert first["event"] == f"token {REDACTED} rejected"
    assert first["value"] == REDACTED
    assert first["inside"] == f"prefix-{REDACTED}-suffix"
    assert first["short"] == f"<{REDACTED}>"
    assert first["nested"] == {"list": [REDACTED, {"deeper": [REDACTED, 1]}], REDACTED: "as a key"}
    assert first["bound"] == f"x{REDACTED}x"
    assert (first["number"], first["flag"], first["nothing"]) == (42, True, None)
    assert first["obj"] == REDACTED
    assert first["room"] == "lobby"  # the empty "secret" redacts nothing
    assert second["event"] == f"library saw {REDACTED} and {REDACTED}"


def test_a_secret_containing_another_is_redacted_whole() -> None:
    stream = setup(secrets=("abcd", "abcdefgh"))
    get_logger().info("x abcdefgh y")
    assert only(stream)["event"] == f"x {REDACTED} y"


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "auth_token",
        "X-Auth-Token",
        "room_tokens",
        "password",
        "TURN_PASSWORD",
        "secret",
        "client_secret",
        "Authorization",
        "credential",
        "credentials",
        "jwt",
        "JWT",
        "ice_pwd",
    ],
)
def test_values_of_secret_keys_are_redacted(key: str) -> None:
    stream = setup()
    get_logger().info("request", **{key: "plain-value-1"}, nested={key: ["plain-value-2"]})
    line = only(stream)
    assert line[key] == REDACTED
    assert line["nested"] == {key: REDACTED}
    assert "plain-value" not in stream.getvalue()


def test_harmless_values_under_secret_keys_are_kept() -> None:
    stream = setup()
    fields: dict[str, object] = {
        "AUTH_TOKEN": "<set>",  # Config.describe()'s marker
        "ADMIN_TOKEN": "",
        "token_required": False,
        "jwt_secret": None,
        "JWT_AUDIENCE": "golive",
    }
    get_logger().info("config", **fields)
    line = only(stream)
    assert {key: line[key] for key in fields} == fields


def test_ice_password_in_sdp_is_redacted() -> None:
    stream = setup()
    get_logger(session="s1").info("answer created", sdp=SDP)
    logging.getLogger("aiortc.rtcpeerconnection").debug("unused")  # filtered at info
    logging.getLogger("aiortc.rtcpeerconnection").warning("remote sdp %s", SDP)
    get_logger().info("nested", offers=[{"sdp": SDP}])
    get_logger().info("offer as event: %s", SDP)
    output = stream.getvalue()
    assert ICE_PW not in output
    assert output.count(f"a=ice-pwd:{REDACTED}") == 4
    assert "a=ice-ufrag:EsAw" in output  # the rest of the SDP stays readable
    assert records(stream)[0]["sdp"] == SDP.replace(ICE_PW, REDACTED)


def test_ice_password_is_redacted_even_when_a_short_secret_occurs_inside_it() -> None:
    stream = setup(secrets=(ICE_PW[3:6],))
    get_logger().info("answer", sdp=SDP)
    assert "fgpdd777uzjYhagZg" not in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        (f"Authorization: Bearer {HIDDEN}", HIDDEN),
        (f"x-auth-token: {HIDDEN}", HIDDEN),
        (f"POST /api/whip/publish/lobby?token={HIDDEN}&x=1", HIDDEN),
        (f"RTCIceParameters(usernameFragment='u', password='{HIDDEN}')", HIDDEN),
        (f'<turn:turn.example.com>; rel="ice-server"; credential="{HIDDEN}"', HIDDEN),
        (f"jwt={JWT}", JWT),
        (f"got {JWT} from client", JWT),
    ],
)
def test_credentials_in_free_text_are_redacted(text: str, hidden: str) -> None:
    stream = setup()
    get_logger().info(text)
    logging.getLogger("aiohttp.access").info(text)
    output = stream.getvalue()
    assert hidden not in output
    assert REDACTED in output


def test_redaction_is_idempotent() -> None:
    redactor = Redactor((HIDDEN, "RED"))
    text = f"a=ice-pwd:{ICE_PW} token={HIDDEN} Bearer {JWT} RED"
    once = redactor.redact_text(text)
    assert redactor.redact_text(once) == once
    assert REDACTED in once
    assert "[[" not in once


@given(
    secret=st.text(alphabet=string.ascii_letters + string.digits, min_size=1),
    before=st.text(),
    after=st.text(),
)
def test_redactor_never_lets_a_secret_through(secret: str, before: str, after: str) -> None:
    assume(secret not in REDACTED)
    redactor = Redactor((secret,))
    assert secret not in redactor.redact_text(f"{before}{secret}{after}")
    redacted = redactor(None, "info", {"event": before, f"k{secret}": [secret, {"x": after}]})
    for text in strings(redacted):
        assert secret not in text


@given(pwd=st.text(alphabet=string.ascii_letters + string.digits + "+/", min_size=22, max_size=256))
def test_redactor_hides_any_ice_password(pwd: str) -> None:
    sdp = f"v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:{pwd}\r\na=setup:passive\r\n"
    assert pwd not in Redactor().redact_text(sdp)


# --------------------------------------------------------------------------- levels


def test_level_filtering_for_structlog_and_stdlib() -> None:
    stream = setup(level="warning")
    log = get_logger()
    log.debug("structlog debug")
    log.info("structlog info")
    log.warning("structlog warning")
    logging.getLogger("aiortc").info("stdlib info")
    logging.getLogger("aioice").error("stdlib error")
    assert [line["event"] for line in records(stream)] == ["structlog warning", "stdlib error"]


def test_debug_level_shows_debug() -> None:
    stream = setup(level="DEBUG")
    get_logger().debug("structlog debug")
    logging.getLogger("pykka").debug("stdlib debug")
    assert [line["level"] for line in records(stream)] == ["debug", "debug"]


def test_error_level_hides_warnings() -> None:
    stream = setup(level="error")
    get_logger().warning("hidden")
    get_logger().error("shown")
    assert [line["event"] for line in records(stream)] == ["shown"]


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_invalid_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, stream=io.StringIO())


# --------------------------------------------------------------------------- reconfiguring


def test_reconfiguring_replaces_the_handler() -> None:
    log = get_logger(room="lobby")  # created before either configuration
    first = setup(level="info")
    log.info("to first")
    second = setup(level="error", secrets=(HIDDEN,))
    log.info("dropped by the new level")
    log.error("to second %s", HIDDEN)
    logging.getLogger("aiortc").error("library to second")

    assert [line["event"] for line in records(first)] == ["to first"]
    assert [line["event"] for line in records(second)] == [
        f"to second {REDACTED}",
        "library to second",
    ]
    golive_handlers = [h for h in logging.getLogger().handlers if h.get_name() == "golive"]
    assert len(golive_handlers) == 1


def test_capture_logs_sees_loggers_created_before() -> None:
    setup()
    log = get_logger(room="lobby", role="subscriber")
    with structlog.testing.capture_logs() as captured:
        log.info("viewer joined", session="s9")
    assert captured == [
        {
            "event": "viewer joined",
            "log_level": "info",
            "room": "lobby",
            "role": "subscriber",
            "session": "s9",
        }
    ]


def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger().info("to stdout")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "to stdout"
