"""Tests for golive.config: defaults, valid and invalid values, secrets, exit behaviour."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from golive.config import (
    SECRET_VARIABLES,
    Config,
    ConfigError,
    format_http_addr,
    load_or_exit,
    parse_bool,
    parse_http_addr,
    parse_room_tokens,
    parse_url_list,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LIST_VARIABLES = frozenset({"STUN_URLS", "TURN_URLS", "ICE_HOST_ADDRESSES"})

# Every variable of contract section 6 plus golive's own; describe() must cover exactly these.
ALL_VARIABLES = frozenset(
    {
        "HTTP_ADDR",
        "ALLOWED_ORIGIN",
        "AUTH_TOKEN",
        "ROOM_TOKENS",
        "JWT_SECRET",
        "JWT_AUDIENCE",
        "ADMIN_TOKEN",
        "STUN_URLS",
        "TURN_URLS",
        "TURN_USERNAME",
        "TURN_PASSWORD",
        "RECORD_ENABLED",
        "RECORD_DIR",
        "UPLOAD_RECORDINGS",
        "DELETE_RECORDING_AFTER_UPLOAD",
        "S3_ENDPOINT",
        "S3_REGION",
        "S3_BUCKET",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "S3_USE_SSL",
        "S3_PATH_STYLE",
        "S3_PREFIX",
        "RATE_LIMIT_RPS",
        "RATE_LIMIT_BURST",
        "MAX_SUBS_PER_ROOM",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "PPROF",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "ICE_HOST_ADDRESSES",
        "ICE_PORT_MIN",
        "ICE_PORT_MAX",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "SHUTDOWN_TIMEOUT_SECONDS",
        "ACTOR_TIMEOUT_SECONDS",
        "SESSION_CONNECT_TIMEOUT_SECONDS",
        "PUBLISHER_RECONNECT_SECONDS",
        "UPLOAD_RETRY_BASE_SECONDS",
        "UPLOAD_RETRY_MAX_SECONDS",
        "UPLOAD_MAX_ATTEMPTS",
        "TRUSTED_PROXIES",
        "MAX_SESSIONS",
        "MAX_PENDING_NEGOTIATIONS",
        "TURN_SECRET",
        "TURN_CREDENTIAL_TTL_SECONDS",
        "HTTP_HEADER_TIMEOUT_SECONDS",
        "HTTP_BODY_TIMEOUT_SECONDS",
        "HTTP_KEEPALIVE_TIMEOUT_SECONDS",
        "HTTP_MAX_CONNECTIONS",
        "REDIS_URL",
        "NODE_URL",
        "WORKERS",
        "CLUSTER_SECRET",
        "CLUSTER_PORT",
        "RELAY_GRACE_SECONDS",
        "KEYFRAME_CACHE_BYTES",
    }
)

SECRET_ENV = {
    "AUTH_TOKEN": "auth-SECRET-0001",
    "ROOM_TOKENS": "lobby:room-SECRET-0002;stage:room-SECRET-0003",
    "JWT_SECRET": "jwt-SECRET-0004",
    "ADMIN_TOKEN": "admin-SECRET-0005",
    "TURN_PASSWORD": "turn-SECRET-0006",
    "S3_ACCESS_KEY": "s3-access-SECRET-0007",
    "S3_SECRET_KEY": "s3-secret-SECRET-0008",
}
SECRET_VALUES = (
    "auth-SECRET-0001",
    "room-SECRET-0002",
    "room-SECRET-0003",
    "jwt-SECRET-0004",
    "admin-SECRET-0005",
    "turn-SECRET-0006",
    "s3-access-SECRET-0007",
    "s3-secret-SECRET-0008",
)

FULL_ENV = {
    **SECRET_ENV,
    "HTTP_ADDR": "127.0.0.1:9090",
    "ALLOWED_ORIGIN": "https://example.com",
    "JWT_AUDIENCE": "golive-clients",
    "STUN_URLS": "stun:stun.example.com:3478, stuns:stun2.example.com",
    "TURN_URLS": "turn:turn.example.com:3478?transport=udp,turns:[2001:db8::1]:5349",
    "TURN_USERNAME": "alice",
    "RECORD_ENABLED": "1",
    "RECORD_DIR": "/var/lib/golive/records",
    "UPLOAD_RECORDINGS": "true",
    "DELETE_RECORDING_AFTER_UPLOAD": "yes",
    "S3_ENDPOINT": "minio.internal:9000",
    "S3_REGION": "eu-west-1",
    "S3_BUCKET": "recordings",
    "S3_USE_SSL": "0",
    "S3_PATH_STYLE": "on",
    "S3_PREFIX": "live/",
    "RATE_LIMIT_RPS": "2.5",
    "RATE_LIMIT_BURST": "7",
    "MAX_SUBS_PER_ROOM": "50",
    "TLS_CERT_FILE": "/etc/golive/cert.pem",
    "TLS_KEY_FILE": "/etc/golive/key.pem",
    "PPROF": "1",
    "OTEL_SERVICE_NAME": "golive-test",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
    "ICE_HOST_ADDRESSES": "203.0.113.7, 2001:db8::7",
    "ICE_PORT_MIN": "40000",
    "ICE_PORT_MAX": "40100",
    "LOG_LEVEL": "DEBUG",
    "LOG_FORMAT": "Console",
    "SHUTDOWN_TIMEOUT_SECONDS": "2.5",
    "ACTOR_TIMEOUT_SECONDS": "0.75",
    "SESSION_CONNECT_TIMEOUT_SECONDS": "12.5",
    "PUBLISHER_RECONNECT_SECONDS": "0",
    "UPLOAD_RETRY_BASE_SECONDS": "0.5",
    "UPLOAD_RETRY_MAX_SECONDS": "30",
    "UPLOAD_MAX_ATTEMPTS": "4",
    "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7",
    "MAX_SESSIONS": "500",
    "MAX_PENDING_NEGOTIATIONS": "8",
    "TURN_CREDENTIAL_TTL_SECONDS": "3600",
    "HTTP_HEADER_TIMEOUT_SECONDS": "2.5",
    "HTTP_BODY_TIMEOUT_SECONDS": "7",
    "HTTP_KEEPALIVE_TIMEOUT_SECONDS": "120",
    "HTTP_MAX_CONNECTIONS": "250",
}
# TURN_SECRET excludes TURN_USERNAME/TURN_PASSWORD, so FULL_ENV (which has those) lacks it.
TURN_REST_SECRET = "turn-rest-SECRET-0009"  # noqa: S105  a test value


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    return info.value


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = Config.from_env({})

    assert config.http_host is None
    assert config.http_port == 8080
    assert config.http_addr == ":8080"
    assert config.allowed_origin == "*"
    assert config.auth_token == ""
    assert dict(config.room_tokens) == {}
    assert config.jwt_secret == ""
    assert config.jwt_audience == ""
    assert config.admin_token == ""
    assert config.stun_urls == ("stun:stun.l.google.com:19302",)  # Go-Live's default
    assert config.turn_urls == ()
    assert config.turn_username == ""
    assert config.turn_password == ""
    assert config.record_enabled is False
    assert config.record_dir == Path("records")
    assert config.upload_recordings is False
    assert config.delete_recording_after_upload is False
    assert config.s3_endpoint == ""
    assert config.s3_region == ""
    assert config.s3_bucket == ""
    assert config.s3_access_key == ""
    assert config.s3_secret_key == ""
    assert config.s3_use_ssl is True
    assert config.s3_path_style is False
    assert config.s3_prefix == ""
    assert config.rate_limit_rps == 0
    assert config.rate_limit_burst == 0
    assert config.rate_limit_enabled is False
    assert config.effective_rate_limit_burst == 0
    assert config.max_subs_per_room == 0
    assert config.tls_cert_file is None
    assert config.tls_key_file is None
    assert config.tls_enabled is False
    assert config.pprof is False
    assert config.otel_service_name == "golive"
    assert config.otel_exporter_otlp_endpoint == ""
    assert config.tracing_enabled is False
    assert config.ice_host_addresses == ()
    assert config.ice_port_min == 0
    assert config.ice_port_max == 0
    assert config.log_level == "info"
    assert config.log_format == "json"
    assert config.shutdown_timeout_seconds == 10
    assert config.actor_timeout_seconds == 5
    assert config.session_connect_timeout_seconds == 30
    assert config.publisher_reconnect_seconds == 15
    assert config.turn_secret == ""
    assert config.turn_credential_ttl_seconds == 86400
    assert config.http_header_timeout_seconds == 10
    assert config.http_body_timeout_seconds == 30
    assert config.http_keepalive_timeout_seconds == 75
    assert config.http_max_connections == 1000
    assert config.secrets() == ()


def test_defaults_match_direct_construction() -> None:
    assert Config.from_env({}) == Config()


def test_empty_and_blank_values_mean_default() -> None:
    blank = dict.fromkeys(ALL_VARIABLES, "")
    assert Config.from_env(blank) == Config()
    spaces = dict.fromkeys(ALL_VARIABLES, "  ")
    assert Config.from_env(spaces) == Config()


def test_unrelated_variables_are_ignored() -> None:
    assert Config.from_env({"PATH": "/usr/bin", "HOME": "/root", "FOO": "bar"}) == Config()


# --------------------------------------------------------------------------- valid values


def test_every_variable_set() -> None:
    config = Config.from_env(FULL_ENV)

    assert config.http_host == "127.0.0.1"
    assert config.http_port == 9090
    assert config.http_addr == "127.0.0.1:9090"
    assert config.allowed_origin == "https://example.com"
    assert config.auth_token == SECRET_ENV["AUTH_TOKEN"]
    assert dict(config.room_tokens) == {"lobby": "room-SECRET-0002", "stage": "room-SECRET-0003"}
    assert config.jwt_secret == SECRET_ENV["JWT_SECRET"]
    assert config.jwt_audience == "golive-clients"
    assert config.admin_token == SECRET_ENV["ADMIN_TOKEN"]
    assert config.stun_urls == ("stun:stun.example.com:3478", "stuns:stun2.example.com")
    assert config.turn_urls == (
        "turn:turn.example.com:3478?transport=udp",
        "turns:[2001:db8::1]:5349",
    )
    assert config.turn_username == "alice"
    assert config.turn_password == SECRET_ENV["TURN_PASSWORD"]
    assert config.record_enabled is True
    assert config.record_dir == Path("/var/lib/golive/records")
    assert config.upload_recordings is True
    assert config.delete_recording_after_upload is True
    assert config.s3_endpoint == "minio.internal:9000"
    assert config.s3_region == "eu-west-1"
    assert config.s3_bucket == "recordings"
    assert config.s3_access_key == SECRET_ENV["S3_ACCESS_KEY"]
    assert config.s3_secret_key == SECRET_ENV["S3_SECRET_KEY"]
    assert config.s3_use_ssl is False
    assert config.s3_path_style is True
    assert config.s3_prefix == "live/"
    assert config.rate_limit_rps == 2.5
    assert config.rate_limit_burst == 7
    assert config.rate_limit_enabled is True
    assert config.effective_rate_limit_burst == 7
    assert config.max_subs_per_room == 50
    assert config.tls_cert_file == Path("/etc/golive/cert.pem")
    assert config.tls_key_file == Path("/etc/golive/key.pem")
    assert config.tls_enabled is True
    assert config.pprof is True
    assert config.otel_service_name == "golive-test"
    assert config.otel_exporter_otlp_endpoint == "http://otel-collector:4318"
    assert config.tracing_enabled is True
    assert config.ice_host_addresses == ("203.0.113.7", "2001:db8::7")
    assert config.ice_port_min == 40000
    assert config.ice_port_max == 40100
    assert config.log_level == "debug"
    assert config.log_format == "console"
    assert config.shutdown_timeout_seconds == 2.5
    assert config.actor_timeout_seconds == 0.75
    assert config.session_connect_timeout_seconds == 12.5
    assert config.publisher_reconnect_seconds == 0
    assert config.turn_credential_ttl_seconds == 3600
    assert config.http_header_timeout_seconds == 2.5
    assert config.http_body_timeout_seconds == 7
    assert config.http_keepalive_timeout_seconds == 120
    assert config.http_max_connections == 250


def test_turn_secret_is_a_secret_of_its_own() -> None:
    config = Config.from_env(
        {"TURN_URLS": "turn:turn.example.com", "TURN_SECRET": TURN_REST_SECRET}
    )
    assert config.turn_secret == TURN_REST_SECRET
    assert config.secrets() == (TURN_REST_SECRET,)
    assert TURN_REST_SECRET not in repr(config)
    assert config.describe()["TURN_SECRET"] == "<set>"  # noqa: S105  the marker, not a secret
    assert TURN_REST_SECRET not in repr(config.describe())


@pytest.mark.parametrize("other", ["TURN_USERNAME", "TURN_PASSWORD"])
def test_turn_secret_excludes_a_static_turn_password(other: str) -> None:
    error = config_error({"TURN_SECRET": TURN_REST_SECRET, other: "SeCrEt-static"})
    assert error.variable == "TURN_SECRET"
    assert other in error.problem
    assert "SeCrEt" not in str(error)
    assert TURN_REST_SECRET not in str(error)


def test_no_http_connection_limit() -> None:
    assert Config.from_env({"HTTP_MAX_CONNECTIONS": "0"}).http_max_connections == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":8080", (None, 8080)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:443", ("::", 443)),
        ("localhost:9000", ("localhost", 9000)),
        ("media-1.example.com:65535", ("media-1.example.com", 65535)),
        ("  :8081  ", (None, 8081)),
    ],
)
def test_http_addr_valid(value: str, expected: tuple[str | None, int]) -> None:
    assert parse_http_addr(value) == expected
    config = Config.from_env({"HTTP_ADDR": value})
    assert (config.http_host, config.http_port) == expected


@pytest.mark.parametrize(
    ("rps", "burst", "effective"),
    [("0", "", 0), ("0", "5", 0), ("0.2", "", 1), ("1", "0", 1), ("2.5", "", 3), ("10", "4", 4)],
)
def test_effective_rate_limit_burst(rps: str, burst: str, effective: int) -> None:
    config = Config.from_env({"RATE_LIMIT_RPS": rps, "RATE_LIMIT_BURST": burst})
    assert config.effective_rate_limit_burst == effective
    assert config.rate_limit_enabled is (float(rps) > 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        (" 1 ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_parse_bool_values(text: str, expected: bool) -> None:  # noqa: FBT001  parametrized
    assert parse_bool("PPROF", text, not expected) is expected


@pytest.mark.parametrize("default", [True, False])
def test_parse_bool_empty_is_default(default: bool) -> None:  # noqa: FBT001  parametrized
    assert parse_bool("S3_USE_SSL", "", default) is default
    assert parse_bool("S3_USE_SSL", "   ", default) is default


def test_room_tokens_tolerates_whitespace_and_empty_entries() -> None:
    tokens = parse_room_tokens(" room1 : tok1 ;; room-2:tok:with:colons ;")
    assert dict(tokens) == {"room1": "tok1", "room-2": "tok:with:colons"}
    assert isinstance(tokens, MappingProxyType)


def test_room_tokens_are_immutable() -> None:
    config = Config.from_env({"ROOM_TOKENS": "a:b"})
    with pytest.raises(TypeError):
        config.room_tokens["c"] = "d"  # type: ignore[index]
    direct = Config(room_tokens={"x": "y"})
    assert isinstance(direct.room_tokens, MappingProxyType)


def test_room_name_may_be_64_characters() -> None:
    room = "r" * 64
    assert dict(parse_room_tokens(f"{room}:t")) == {room: "t"}


def test_url_lists_ignore_empty_items() -> None:
    assert parse_url_list("STUN_URLS", " , stun:a.example ,, stun:b.example:3478 ,", ("stun",)) == (
        "stun:a.example",
        "stun:b.example:3478",
    )


def test_stun_urls_of_only_separators_advertise_none() -> None:
    assert Config.from_env({"STUN_URLS": ","}).stun_urls == ()


def test_ice_host_addresses_normalized_and_deduplicated() -> None:
    config = Config.from_env({"ICE_HOST_ADDRESSES": "127.0.0.1, ,2001:DB8:0::1,127.0.0.1"})
    assert config.ice_host_addresses == ("127.0.0.1", "2001:db8::1")


def test_ice_port_range_single_port() -> None:
    config = Config.from_env({"ICE_PORT_MIN": "50000", "ICE_PORT_MAX": "50000"})
    assert (config.ice_port_min, config.ice_port_max) == (50000, 50000)


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", "debug"), ("INFO", "info"), ("Warning", "warning"), ("warn", "warning")],
)
def test_log_levels(text: str, level: str) -> None:
    assert Config.from_env({"LOG_LEVEL": text}).log_level == level


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.http_port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- bad values


BAD_VALUES: list[tuple[str, str]] = [
    ("HTTP_ADDR", "nonsense"),
    ("HTTP_ADDR", "8080"),
    ("HTTP_ADDR", ":"),
    ("HTTP_ADDR", ":70000"),
    ("HTTP_ADDR", ":-1"),
    ("HTTP_ADDR", ":+80"),
    ("HTTP_ADDR", ":http"),
    ("HTTP_ADDR", "::1:8080"),
    ("HTTP_ADDR", "[::1"),
    ("HTTP_ADDR", "[::1]"),
    ("HTTP_ADDR", "[::1]x:80"),
    ("HTTP_ADDR", "[localhost]:80"),
    ("HTTP_ADDR", "bad_host:80"),
    ("HTTP_ADDR", "999.1.1.1:80"),
    ("HTTP_ADDR", "-host:80"),
    ("STUN_URLS", "http://stun.example.com"),
    ("STUN_URLS", "stun:"),
    ("STUN_URLS", "stun://stun.example.com"),
    ("STUN_URLS", "turn:turn.example.com"),
    ("STUN_URLS", "stun:host:0"),
    ("STUN_URLS", "stun:host:99999"),
    ("STUN_URLS", "stun:host?transport=udp"),
    ("STUN_URLS", "stun:good.example, stun:bad host"),
    ("TURN_URLS", "turn:"),
    ("TURN_URLS", "stun:stun.example.com"),
    ("TURN_URLS", "turn:host?transport=sctp"),
    ("TURN_URLS", "turns:[2001:db8::1:5349"),
    ("TURN_URLS", "turn:2001:db8::1"),
    ("RECORD_ENABLED", "maybe"),
    ("UPLOAD_RECORDINGS", "2"),
    ("DELETE_RECORDING_AFTER_UPLOAD", "y"),
    ("S3_USE_SSL", "enabled"),
    ("S3_PATH_STYLE", "-1"),
    ("PPROF", "t"),
    ("S3_ENDPOINT", "http://minio:9000"),
    ("S3_ENDPOINT", "minio:9000/bucket"),
    ("S3_ENDPOINT", "minio:0"),
    ("S3_ENDPOINT", "minio:abc"),
    ("S3_ENDPOINT", ":9000"),
    ("RATE_LIMIT_RPS", "abc"),
    ("RATE_LIMIT_RPS", "-1"),
    ("RATE_LIMIT_RPS", "inf"),
    ("RATE_LIMIT_RPS", "nan"),
    ("RATE_LIMIT_RPS", "1e999"),
    ("RATE_LIMIT_RPS", "1,5"),
    ("RATE_LIMIT_BURST", "-1"),
    ("RATE_LIMIT_BURST", "1.5"),
    ("RATE_LIMIT_BURST", "lots"),
    ("RATE_LIMIT_BURST", "9" * 5000),
    ("MAX_SUBS_PER_ROOM", "-3"),
    ("MAX_SUBS_PER_ROOM", "many"),
    ("ICE_HOST_ADDRESSES", "not-an-ip"),
    ("ICE_HOST_ADDRESSES", "example.com"),
    ("ICE_HOST_ADDRESSES", "0.0.0.0"),
    ("ICE_HOST_ADDRESSES", "::"),
    ("ICE_HOST_ADDRESSES", "224.0.0.1"),
    ("ICE_HOST_ADDRESSES", "10.0.0.1,,10.0.0.300"),
    ("ICE_PORT_MIN", "70000"),
    ("ICE_PORT_MIN", "-1"),
    ("ICE_PORT_MAX", "x"),
    ("ICE_PORT_MAX", "65536"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "critical"),
    ("LOG_FORMAT", "xml"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "0"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "-5"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "ten"),
    ("ACTOR_TIMEOUT_SECONDS", "0.0"),
    ("ACTOR_TIMEOUT_SECONDS", "soon"),
    ("SESSION_CONNECT_TIMEOUT_SECONDS", "0"),
    ("SESSION_CONNECT_TIMEOUT_SECONDS", "later"),
    ("PUBLISHER_RECONNECT_SECONDS", "-1"),
    ("PUBLISHER_RECONNECT_SECONDS", "soon"),
    ("UPLOAD_RETRY_BASE_SECONDS", "0"),
    ("UPLOAD_RETRY_MAX_SECONDS", "forever"),
    ("UPLOAD_MAX_ATTEMPTS", "0"),
    ("TRUSTED_PROXIES", "proxy.local"),
    ("MAX_SESSIONS", "-1"),
    ("MAX_PENDING_NEGOTIATIONS", "many"),
    ("TURN_CREDENTIAL_TTL_SECONDS", "0"),
    ("TURN_CREDENTIAL_TTL_SECONDS", "1.5"),
    ("TURN_CREDENTIAL_TTL_SECONDS", "a day"),
    ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
    ("HTTP_HEADER_TIMEOUT_SECONDS", "-1"),
    ("HTTP_BODY_TIMEOUT_SECONDS", "never"),
    ("HTTP_BODY_TIMEOUT_SECONDS", "inf"),
    ("HTTP_KEEPALIVE_TIMEOUT_SECONDS", "0"),
    ("HTTP_MAX_CONNECTIONS", "-1"),
    ("HTTP_MAX_CONNECTIONS", "lots"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    error = config_error({variable: value})
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")
    assert str(error) == f"{error.variable}: {error.problem}"
    assert "\n" not in str(error)
    assert len(str(error)) < 300


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (variable, value)
        for variable, value in BAD_VALUES
        if len(value) < 40 and variable not in LIST_VARIABLES
    ],
)
def test_bad_value_is_quoted_in_the_message(variable: str, value: str) -> None:
    # Non-secret values are shown so the operator sees what was read.
    assert repr(value.strip()) in config_error({variable: value}).problem


def test_rate_limit_rps_message() -> None:
    error = config_error({"RATE_LIMIT_RPS": "abc"})
    assert str(error) == "RATE_LIMIT_RPS: expected a number >= 0, got 'abc'"


def test_value_with_newline_stays_on_one_line() -> None:
    error = config_error({"LOG_LEVEL": "info\nerror"})
    assert "\n" not in str(error)
    assert "info\\nerror" in error.problem


def test_long_value_is_shortened() -> None:
    error = config_error({"RATE_LIMIT_BURST": "x" * 500})
    assert len(error.problem) < 150


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("STUN_URLS", "stun:good.example, stun:bad host", "item 2 ('stun:bad host')"),
        ("ICE_HOST_ADDRESSES", "10.0.0.1,,10.0.0.300", "'10.0.0.300'"),
    ],
)
def test_bad_list_item_is_quoted(variable: str, value: str, shown: str) -> None:
    assert shown in config_error({variable: value}).problem


@pytest.mark.parametrize(
    "value",
    [
        "room1",
        "room1:",
        ":tok",
        "bad room:tok",
        "bad.room:tok",
        "r" * 65 + ":tok",
        "room1:tok1;room1:tok2",
        "room1:tok1;broken",
    ],
)
def test_room_tokens_malformed(value: str) -> None:
    error = config_error({"ROOM_TOKENS": value})
    assert error.variable == "ROOM_TOKENS"
    assert str(error).startswith("ROOM_TOKENS: ")


def test_room_tokens_errors_name_entries_by_position() -> None:
    error = config_error({"ROOM_TOKENS": "a:1; ;b:2;a:3"})
    assert error.problem == "entry 3 repeats the room of entry 1"
    assert config_error({"ROOM_TOKENS": "a:1;b"}).problem.startswith("entry 2 ")


def test_parse_bool_error_names_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse_bool("RECORD_ENABLED", "perhaps", False)
    assert info.value.variable == "RECORD_ENABLED"
    assert "'perhaps'" in info.value.problem


def test_parse_url_list_error_names_given_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url_list("MY_URLS", "http://x", ("stun",))
    assert info.value.variable == "MY_URLS"


def test_config_error_attributes() -> None:
    error = ConfigError("RATE_LIMIT_RPS", "expected a number >= 0, got 'abc'")
    assert isinstance(error, Exception)
    assert (error.variable, error.problem) == (
        "RATE_LIMIT_RPS",
        "expected a number >= 0, got 'abc'",
    )
    assert str(error) == "RATE_LIMIT_RPS: expected a number >= 0, got 'abc'"


# --------------------------------------------------------------------------- cross-field


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"UPLOAD_RECORDINGS": "1"}, "S3_BUCKET"),
        ({"UPLOAD_RECORDINGS": "1", "S3_ENDPOINT": "minio:9000"}, "S3_BUCKET"),
        ({"UPLOAD_RECORDINGS": "1", "S3_BUCKET": "b"}, "S3_ENDPOINT"),
        ({"DELETE_RECORDING_AFTER_UPLOAD": "1"}, "DELETE_RECORDING_AFTER_UPLOAD"),
        ({"TLS_CERT_FILE": "cert.pem"}, "TLS_KEY_FILE"),
        ({"TLS_KEY_FILE": "key.pem"}, "TLS_CERT_FILE"),
        ({"ICE_PORT_MIN": "40000"}, "ICE_PORT_MAX"),
        ({"ICE_PORT_MAX": "40000"}, "ICE_PORT_MIN"),
        ({"ICE_PORT_MIN": "40100", "ICE_PORT_MAX": "40000"}, "ICE_PORT_MIN"),
    ],
)
def test_cross_field_checks(env: dict[str, str], variable: str) -> None:
    error = config_error(env)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")


def test_upload_error_mentions_upload_recordings() -> None:
    assert "UPLOAD_RECORDINGS=1" in str(config_error({"UPLOAD_RECORDINGS": "1"}))


def test_cross_field_checks_pass_when_consistent() -> None:
    config = Config.from_env(
        {
            "UPLOAD_RECORDINGS": "1",
            "DELETE_RECORDING_AFTER_UPLOAD": "1",
            "S3_BUCKET": "b",
            "S3_ENDPOINT": "minio:9000",
            "TLS_CERT_FILE": "c.pem",
            "TLS_KEY_FILE": "k.pem",
        }
    )
    assert config.upload_recordings
    assert config.delete_recording_after_upload
    assert config.tls_enabled


def test_direct_construction_runs_cross_field_checks() -> None:
    with pytest.raises(ConfigError) as info:
        Config(upload_recordings=True, s3_endpoint="minio:9000")
    assert info.value.variable == "S3_BUCKET"


# --------------------------------------------------------------------------- secrets


def test_secret_variables_constant() -> None:
    assert frozenset(SECRET_ENV) | {"TURN_SECRET", "CLUSTER_SECRET"} == SECRET_VARIABLES


def test_secrets_lists_every_secret_value() -> None:
    assert set(Config.from_env(FULL_ENV).secrets()) == set(SECRET_VALUES)


def test_secrets_are_deduplicated_and_skip_empty() -> None:
    config = Config.from_env({"AUTH_TOKEN": "same", "ADMIN_TOKEN": "same", "ROOM_TOKENS": "a:x"})
    assert config.secrets() == ("same", "x")


def test_repr_hides_secrets() -> None:
    text = repr(Config.from_env(FULL_ENV))
    for secret in SECRET_VALUES:
        assert secret not in text


def test_describe_covers_every_variable_and_hides_secrets() -> None:
    description = Config.from_env(FULL_ENV).describe()
    assert set(description) == ALL_VARIABLES
    for name in SECRET_ENV:
        assert description[name] == "<set>"
    for secret in SECRET_VALUES:
        assert secret not in repr(description)
    assert description["HTTP_ADDR"] == "127.0.0.1:9090"
    assert description["RATE_LIMIT_BURST"] == 7
    assert description["ICE_HOST_ADDRESSES"] == ["203.0.113.7", "2001:db8::7"]


def test_describe_defaults() -> None:
    description = Config().describe()
    for name in SECRET_VARIABLES:
        assert description[name] == ""
    assert description["HTTP_ADDR"] == ":8080"
    assert description["OTEL_SERVICE_NAME"] == "golive"
    assert description["TLS_CERT_FILE"] == ""


@pytest.mark.parametrize(
    "env",
    [
        {"ROOM_TOKENS": "SeCrEt-TOKEN-42"},
        {"ROOM_TOKENS": "SeCrEt-TOKEN-42:"},
        {"ROOM_TOKENS": "bad room:SeCrEt-TOKEN-42"},
        {"ROOM_TOKENS": "SeCrEt TOKEN 42:tok"},
        {"ROOM_TOKENS": "a:SeCrEt-TOKEN-42;a:SeCrEt-TOKEN-42"},
        {"ROOM_TOKENS": "a:SeCrEt-TOKEN-42;SeCrEt-TOKEN-42"},
        {"TURN_URLS": "turn:alice:SeCrEt-TOKEN-42@turn.example.com"},
        {"TURN_URLS": "http://alice:SeCrEt-TOKEN-42@turn.example.com"},
        {"S3_ENDPOINT": "https://key:SeCrEt-TOKEN-42@minio:9000"},
        {"AUTH_TOKEN": "SeCrEt-TOKEN-42", "RATE_LIMIT_RPS": "x"},
        {"TURN_PASSWORD": "SeCrEt-TOKEN-42", "UPLOAD_RECORDINGS": "1"},
        {
            "S3_SECRET_KEY": "SeCrEt-TOKEN-42",
            "S3_ACCESS_KEY": "SeCrEt-TOKEN-42",
            "TLS_KEY_FILE": "k",
        },
    ],
)
def test_secrets_never_in_error_messages(env: dict[str, str]) -> None:
    error = config_error(env)
    for text in (str(error), repr(error), error.problem, error.variable):
        assert "SeCrEt-TOKEN-42" not in text
        assert "SeCrEt" not in text


# --------------------------------------------------------------------------- load_or_exit


def test_load_or_exit_returns_config() -> None:
    assert load_or_exit({"HTTP_ADDR": ":9000"}).http_port == 9000


def test_load_or_exit_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_or_exit({"RATE_LIMIT_RPS": "abc"})
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "golive: invalid configuration: RATE_LIMIT_RPS: expected a number >= 0, got 'abc'\n"
    )


def test_load_or_exit_one_line_even_for_multiline_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        load_or_exit({"HTTP_ADDR": "no\nport\r\n"})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith("\n")
    assert err.startswith("golive: invalid configuration: HTTP_ADDR: ")


def test_load_or_exit_hides_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_or_exit({"ROOM_TOKENS": "SeCrEt-TOKEN-42"})
    err = capsys.readouterr().err
    assert "SeCrEt" not in err
    assert "ROOM_TOKENS" in err


def test_load_or_exit_in_a_subprocess() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ALL_VARIABLES}
    env["RATE_LIMIT_RPS"] = "abc"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from golive.config import load_or_exit; import os; load_or_exit(os.environ)",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("golive: invalid configuration: RATE_LIMIT_RPS: ")


# --------------------------------------------------------------------------- properties

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
TOP_LABEL = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOSTNAMES = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(LABEL, max_size=3), TOP_LABEL
)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
# A host as it appears in an address, and as parse_http_addr returns it.
ADDRESS_HOSTS = st.one_of(
    st.just(("", None)),
    IPV4.map(lambda host: (host, host)),
    IPV6.map(lambda host: (f"[{host}]", host)),
    HOSTNAMES.map(lambda host: (host, host)),
)
URL_HOSTS = st.one_of(IPV4, IPV6.map(lambda host: f"[{host}]"), HOSTNAMES)
WHITESPACE = st.sampled_from(["", "", " ", "  ", "\t"])
ROOMS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
# Tokens from a safe alphabet: no ':' or ';', no surrounding whitespace.
TOKENS = st.from_regex(r"[A-Za-z0-9._~+/=-]{1,40}", fullmatch=True)
ROOM_ENTRY = re.compile(
    r"entry \d+ is not of the form room:token"
    r"|entry \d+: room name must match \^\[A-Za-z0-9_-\]\{1,64\}\$"
    r"|entry \d+: token is empty"
    r"|entry \d+ repeats the room of entry \d+"
)


@given(host=ADDRESS_HOSTS, port=st.integers(0, 65535))
def test_parse_http_addr_round_trips(host: tuple[str, str | None], port: int) -> None:
    text, expected_host = host
    assert parse_http_addr(f"{text}:{port}") == (expected_host, port)
    assert parse_http_addr(format_http_addr(expected_host, port)) == (expected_host, port)


@given(
    host=ADDRESS_HOSTS,
    port=st.one_of(st.integers(min_value=65536), st.integers(max_value=-1)),
)
def test_parse_http_addr_rejects_ports_out_of_range(
    host: tuple[str, str | None], port: int
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_http_addr(f"{host[0]}:{port}")
    assert info.value.variable == "HTTP_ADDR"


@given(host=ADDRESS_HOSTS)
def test_parse_http_addr_requires_a_port(host: tuple[str, str | None]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_http_addr(host[0] or " ")
    assert info.value.variable == "HTTP_ADDR"


@st.composite
def room_token_texts(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """A valid {room: token} dict and its entries, with random whitespace and empty ones."""
    tokens = draw(st.dictionaries(ROOMS, TOKENS, max_size=6))
    entries: list[str] = []
    for room, token in tokens.items():
        entries.extend(draw(st.lists(WHITESPACE, max_size=2)))  # empty entries
        entries.append(
            f"{draw(WHITESPACE)}{room}{draw(WHITESPACE)}:{draw(WHITESPACE)}{token}{draw(WHITESPACE)}"
        )
    return tokens, entries


@given(data=room_token_texts(), trailing=st.booleans())
def test_parse_room_tokens_round_trips(
    data: tuple[dict[str, str], list[str]],
    trailing: bool,  # noqa: FBT001  drawn by Hypothesis
) -> None:
    tokens, entries = data
    text = ";".join(entries) + (";" if trailing else "")
    parsed = parse_room_tokens(text)
    assert dict(parsed) == tokens
    assert list(parsed) == list(tokens)


@given(
    data=room_token_texts(),
    bad_kind=st.sampled_from(["no-colon", "empty-token", "bad-room", "duplicate"]),
    bad_room=st.one_of(
        st.just(""),
        st.from_regex(r"[A-Za-z0-9_-]{65,80}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_-]{0,5}[.!@#/][A-Za-z0-9_-]{0,5}", fullmatch=True),
    ),
    token=TOKENS,
    position=st.integers(min_value=0),
)
def test_parse_room_tokens_rejects_malformed(
    data: tuple[dict[str, str], list[str]],
    bad_kind: str,
    bad_room: str,
    token: str,
    position: int,
) -> None:
    tokens, entries = data
    if bad_kind == "duplicate":
        room = next(iter(tokens), None)
        if room is None:
            room = "dup"
            entries.append(f"{room}:{token}")
        entries.append(f"{room}:{token}")
    else:
        bad = {
            "no-colon": token,
            "empty-token": "room:" + " " * (position % 3),
            "bad-room": f"{bad_room}:{token}",
        }[bad_kind]
        entries.insert(position % (len(entries) + 1), bad)
    with pytest.raises(ConfigError) as info:
        parse_room_tokens(";".join(entries))
    assert info.value.variable == "ROOM_TOKENS"
    # The message has a fixed shape with positions only: no room or token can leak.
    assert ROOM_ENTRY.fullmatch(info.value.problem)


@st.composite
def url_lists(draw: st.DrawFn, schemes: tuple[str, ...]) -> list[str]:
    urls: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        scheme = draw(st.sampled_from(schemes))
        if draw(st.booleans()):
            scheme = scheme.upper()
        url = f"{scheme}:{draw(URL_HOSTS)}"
        if draw(st.booleans()):
            url += f":{draw(st.integers(1, 65535))}"
        if scheme.lower().startswith("turn") and draw(st.booleans()):
            url += f"?transport={draw(st.sampled_from(['udp', 'tcp']))}"
        urls.append(url)
    return urls


@st.composite
def joined(draw: st.DrawFn, items: list[str]) -> str:
    """`items` joined by commas, with random whitespace and empty items."""
    parts: list[str] = []
    for item in items:
        parts.extend(draw(st.lists(WHITESPACE, max_size=2)))
        parts.append(f"{draw(WHITESPACE)}{item}{draw(WHITESPACE)}")
    parts.extend(draw(st.lists(WHITESPACE, max_size=2)))
    return ",".join(parts)


@given(data=st.data(), kind=st.sampled_from(["STUN_URLS", "TURN_URLS"]))
def test_parse_url_list_round_trips(data: st.DataObject, kind: str) -> None:
    schemes = ("stun", "stuns") if kind == "STUN_URLS" else ("turn", "turns")
    urls = data.draw(url_lists(schemes))
    text = data.draw(joined(urls))
    assert parse_url_list(kind, text, schemes) == tuple(urls)
    if text.strip():  # STUN_URLS empty means Go-Live's default
        assert getattr(Config.from_env({kind: text}), kind.lower()) == tuple(urls)


@given(
    urls=url_lists(("stun", "stuns")),
    bad=st.one_of(
        url_lists(("turn", "http", "https", "stunx")).filter(bool).map(lambda urls: urls[0]),
        URL_HOSTS,
        st.builds(lambda host: f"stun://{host}", URL_HOSTS),
        st.builds(lambda host, port: f"stun:{host}:{port}", URL_HOSTS, st.integers(65536)),
    ),
    position=st.integers(min_value=0),
)
def test_parse_url_list_rejects_malformed(urls: list[str], bad: str, position: int) -> None:
    urls.insert(position % (len(urls) + 1), bad)
    with pytest.raises(ConfigError) as info:
        parse_url_list("STUN_URLS", ",".join(urls), ("stun", "stuns"))
    assert info.value.variable == "STUN_URLS"


@given(rps=st.floats(min_value=0, max_value=1e6, allow_nan=False), burst=st.integers(0, 10**6))
def test_effective_burst_property(rps: float, burst: int) -> None:
    config = Config.from_env({"RATE_LIMIT_RPS": repr(rps), "RATE_LIMIT_BURST": str(burst)})
    assert config.rate_limit_rps == rps
    if rps == 0:
        assert config.effective_rate_limit_burst == 0
    elif burst:
        assert config.effective_rate_limit_burst == burst
    else:
        assert config.effective_rate_limit_burst == max(1, math.ceil(rps))
