"""golive's configuration: every setting comes from environment variables.

`Config.from_env(os.environ)` reads the variables once at start-up and returns an immutable,
validated `Config`. Nothing here reads `os.environ` by itself and there is no module-level
state, so tests build configurations from plain dicts.

Go-Live's variables keep their names, meanings and defaults (contract section 6); golive's
own additions (`ICE_*`, `LOG_*`, `*_TIMEOUT_SECONDS`) follow the same conventions. As in
Go-Live an empty variable counts as unset. Unlike Go-Live, a malformed value is an error
rather than silently falling back to the default: `load_or_exit` turns a `ConfigError` into
one line on stderr naming the variable and exit status 2.

Secret values (tokens, passwords, S3 keys) never appear in an error message, in `repr()` or
in `Config.describe()`; `Config.secrets()` lists them so the logger can redact them.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "SECRET_VARIABLES",
    "Config",
    "ConfigError",
    "LogFormat",
    "LogLevel",
    "format_http_addr",
    "load_or_exit",
    "parse_bool",
    "parse_http_addr",
    "parse_room_tokens",
    "parse_url_list",
]

_T = TypeVar("_T")

LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
LogFormat: TypeAlias = Literal["json", "console"]

#: Variables whose values must never be shown: not in errors, repr() or describe().
SECRET_VARIABLES: Final = frozenset(
    {
        "AUTH_TOKEN",
        "ROOM_TOKENS",
        "JWT_SECRET",
        "ADMIN_TOKEN",
        "TURN_PASSWORD",
        "TURN_SECRET",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "CLUSTER_SECRET",
    }
)

DEFAULT_HTTP_ADDR: Final = ":8080"
DEFAULT_HTTP_PORT: Final = 8080
DEFAULT_ALLOWED_ORIGIN: Final = "*"
# Go-Live advertises Google's public STUN server when STUN_URLS is unset or empty; setting
# STUN_URLS to "," (a list of empty items) advertises none.
DEFAULT_STUN_URLS: Final = ("stun:stun.l.google.com:19302",)
DEFAULT_RECORD_DIR: Final = "records"
DEFAULT_OTEL_SERVICE_NAME: Final = "golive"
DEFAULT_LOG_LEVEL: Final[LogLevel] = "info"
DEFAULT_LOG_FORMAT: Final[LogFormat] = "json"
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_ACTOR_TIMEOUT_SECONDS: Final = 5.0
# A session not connected (ICE and DTLS) this long after its offer is ended: a client that
# trickles and vanishes before sending a candidate would otherwise hold it (and a room) forever.
DEFAULT_SESSION_CONNECT_TIMEOUT_SECONDS: Final = 30.0
# A room whose publisher vanished (no DELETE) waits this long for a new one, viewers kept.
DEFAULT_PUBLISHER_RECONNECT_SECONDS: Final = 15.0
DEFAULT_UPLOAD_RETRY_BASE_SECONDS: Final = 1.0
DEFAULT_UPLOAD_RETRY_MAX_SECONDS: Final = 60.0
DEFAULT_UPLOAD_MAX_ATTEMPTS: Final = 10
DEFAULT_MAX_SESSIONS: Final = 2000
DEFAULT_MAX_PENDING_NEGOTIATIONS: Final = 64
# TURN REST credentials (TURN_SECRET) live a day, as draft-uberti-behave-turn-rest recommends:
# coturn checks the expiry on every Refresh, so a shorter life would cut a relayed stream
# that runs longer; a leaked credential is useful for a day at most.
DEFAULT_TURN_CREDENTIAL_TTL_SECONDS: Final = 86400
# HTTP connections (docs/operations.md, "HTTP connections"). A request's line and headers
# arrive in one round trip from any real client: 10 s is generous even on a bad mobile link.
DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS: Final = 10.0
# The largest body golive reads is 1 MiB (an SDP offer is a few KiB): 30 s is ~35 KB/s.
DEFAULT_HTTP_BODY_TIMEOUT_SECONDS: Final = 30.0
# nginx's default: longer than the 60 s idle timeout of nginx upstreams and AWS load
# balancers, so a reverse proxy drops a pooled connection before golive does (no 502 race).
DEFAULT_HTTP_KEEPALIVE_TIMEOUT_SECONDS: Final = 75.0
# Well under the usual open-file limit once golive has raised it (docs/operations.md).
DEFAULT_HTTP_MAX_CONNECTIONS: Final = 1000
# A relay (a room pulled from its owner for viewers here) left without viewers stays this long
# for the next one before it disconnects from the owner.
DEFAULT_RELAY_GRACE_SECONDS: Final = 10.0
# The packets since a video track's last keyframe, kept to start viewers at once: 8 s of a
# 6 Mbit/s stream (OBS's default keyframe interval, a high bitrate) fits.
DEFAULT_KEYFRAME_CACHE_BYTES: Final = 8 * 1024 * 1024
#: The most worker processes per node.
MAX_WORKERS: Final = 64

#: Room names, as in the HTTP routes (contract section 2).
ROOM_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

_MAX_PORT: Final = 65535
_SHOW_MAX: Final = 80
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS: Final[Mapping[str, LogLevel]] = MappingProxyType(
    {"debug": "debug", "info": "info", "warning": "warning", "warn": "warning", "error": "error"}
)
_LOG_FORMATS: Final[Mapping[str, LogFormat]] = MappingProxyType(
    {"json": "json", "console": "console"}
)
_INT: Final = re.compile(r"\+?[0-9]{1,30}")  # bounded: int() refuses very long strings
_DECIMAL: Final = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_TURN_QUERY: Final = re.compile(r"transport=(?:udp|tcp)", re.IGNORECASE)


class ConfigError(Exception):
    """A setting is missing, malformed or inconsistent with another one.

    `variable` is the environment variable to fix; `problem` says what is wrong and never
    contains the value of a secret variable.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(variable, problem)
        self.variable = variable
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.variable}: {self.problem}"


def _show(value: str) -> str:
    """Quote a (non-secret) value for an error message: one line, bounded length."""
    if len(value) > _SHOW_MAX:
        value = value[:_SHOW_MAX] + "..."
    return repr(value)


# --------------------------------------------------------------------------- parsers


def parse_bool(var: str, s: str, default: bool) -> bool:  # noqa: FBT001  public signature (var, s, default)
    """Parse a boolean: 1/0/true/false/yes/no/on/off (any case); empty means `default`."""
    text = s.strip().lower()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(var, f"expected one of 1/0/true/false/yes/no/on/off, got {_show(s)}")


def _parse_int(var: str, s: str, default: int, minimum: int, maximum: int | None = None) -> int:
    text = s.strip()
    if not text:
        return default
    value = int(text) if _INT.fullmatch(text) else None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        wanted = f"an integer >= {minimum}" if maximum is None else f"{minimum}..{maximum}"
        raise ConfigError(var, f"expected {wanted}, got {_show(s)}")
    return value


def _parse_float(var: str, s: str, default: float, *, positive: bool) -> float:
    text = s.strip()
    if not text:
        return default
    value = float(text) if _DECIMAL.fullmatch(text) else None
    if value is None or not math.isfinite(value) or (positive and value == 0):
        wanted = "a number > 0" if positive else "a number >= 0"
        raise ConfigError(var, f"expected {wanted}, got {_show(s)}")
    return value


def _parse_choice(var: str, s: str, choices: Mapping[str, _T], wanted: str) -> _T | None:
    text = s.strip()
    if not text:
        return None
    choice = choices.get(text.lower())
    if choice is None:
        raise ConfigError(var, f"expected {wanted}, got {_show(s)}")
    return choice


def _is_hostname_or_ipv4(host: str) -> bool:
    """A DNS name made of RFC 1123 labels, or an IPv4 address in dotted-quad form."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        # "999.1.1.1" is neither an address nor a name: top-level labels are never numeric.
        and not labels[-1].isdigit()
    )


def _split_host_port(var: str, text: str, shown: str) -> tuple[str, str | None]:
    """Split Go-style `host:port`, `[v6]:port`, `host` or `[v6]` into host and port text.

    Checks the host's syntax (empty allowed) but not the port's. `shown` is how the
    whole value may appear in an error message.
    """
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1 :]) if end > 0 else ("", "")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                var, f"brackets must hold an IPv6 address such as '[::1]', got {shown}"
            ) from None
        if rest and not rest.startswith(":"):
            raise ConfigError(var, f"unexpected text after ']' in {shown}")
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:
        raise ConfigError(var, f"an IPv6 address needs brackets, e.g. '[::1]:8080', got {shown}")
    host, colon, port = text.partition(":")
    if host and not _is_hostname_or_ipv4(host):
        raise ConfigError(var, f"expected a host name or IP address, got {shown}")
    return host, (port if colon else None)


def _parse_port(var: str, port: str, shown: str, minimum: int) -> int:
    if not _INT.fullmatch(port) or port.startswith("+") or not minimum <= int(port) <= _MAX_PORT:
        raise ConfigError(var, f"port must be a number {minimum}..{_MAX_PORT}, got {shown}")
    return int(port)


def parse_http_addr(s: str) -> tuple[str | None, int]:
    """Parse `HTTP_ADDR` the way Go's `net.Listen` reads it.

    `":8080"` → `(None, 8080)` (every interface); `"127.0.0.1:0"` → `("127.0.0.1", 0)`;
    `"[::1]:8080"` → `("::1", 8080)`; `"localhost:9000"` → `("localhost", 9000)`.
    """
    var = "HTTP_ADDR"
    text = s.strip()
    shown = _show(s)
    if not text:
        raise ConfigError(var, "must not be empty; use ':8080' for every interface")
    host, port = _split_host_port(var, text, shown)
    if port is None:
        raise ConfigError(
            var, f"expected [host]:port such as ':8080' or '127.0.0.1:8080', got {shown}"
        )
    return (host or None), _parse_port(var, port, shown, minimum=0)


def format_http_addr(host: str | None, port: int) -> str:
    """Inverse of `parse_http_addr`: `(None, 8080)` → `":8080"`, `("::1", 80)` → `"[::1]:80"`."""
    if host is None:
        return f":{port}"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_room_tokens(s: str) -> Mapping[str, str]:
    """Parse `ROOM_TOKENS`: `room1:tok1;room2:tok2` → an immutable `{room: token}` mapping.

    Entries are separated by `;` and split at their first `:`; whitespace around entries,
    rooms and tokens is ignored, and so are empty entries. Errors name an entry by its
    position, never by its text: the text may be a token.
    """
    var = "ROOM_TOKENS"
    tokens: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    entries = [entry.strip() for entry in s.split(";")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        room, colon, token = entry.partition(":")
        room, token = room.strip(), token.strip()
        if not colon:
            raise ConfigError(var, f"entry {number} is not of the form room:token")
        if not ROOM_NAME_PATTERN.fullmatch(room):
            raise ConfigError(var, f"entry {number}: room name must match ^[A-Za-z0-9_-]{{1,64}}$")
        if not token:
            raise ConfigError(var, f"entry {number}: token is empty")
        if room in first_seen:
            raise ConfigError(var, f"entry {number} repeats the room of entry {first_seen[room]}")
        first_seen[room] = number
        tokens[room] = token
    return MappingProxyType(tokens)


def _check_url(var: str, number: int, item: str, schemes: Collection[str]) -> None:
    # A URL with '@' may carry credentials: never echo it.
    shown = f"item {number}" if "@" in item else f"item {number} ({_show(item)})"
    wanted = " or ".join(f"'{scheme}:'" for scheme in schemes)
    match = _URL_SCHEME.fullmatch(item)
    if match is None or match.group(1).lower() not in schemes:
        raise ConfigError(var, f"{shown} must start with {wanted}")
    scheme, rest = match.group(1).lower(), match.group(2)
    if "@" in rest:
        raise ConfigError(
            var, f"{shown}: credentials do not belong in the URL; use TURN_USERNAME/TURN_PASSWORD"
        )
    if rest.startswith("//"):
        raise ConfigError(var, f"{shown}: write '{scheme}:host:port', without '//'")
    address, question, query = rest.partition("?")
    if question and not (scheme.startswith("turn") and _TURN_QUERY.fullmatch(query)):
        raise ConfigError(var, f"{shown}: the only query allowed is '?transport=udp|tcp' on TURN")
    host, port = _split_host_port(var, address, shown)
    if not host:
        raise ConfigError(var, f"{shown} has no host")
    if port is not None:
        _parse_port(var, port, shown, minimum=1)


def parse_url_list(var: str, s: str, schemes: Collection[str]) -> tuple[str, ...]:
    """Parse a comma-separated list of STUN/TURN URLs (RFC 7064/7065).

    Each item must be `scheme:host[:port]` with a scheme from `schemes` (lower case, e.g.
    `("stun", "stuns")`); TURN URLs may end in `?transport=udp|tcp`. Items are stripped,
    empty items ignored, the order kept.
    """
    urls: list[str] = []
    items = [item.strip() for item in s.split(",")]
    for number, item in enumerate((i for i in items if i), start=1):
        _check_url(var, number, item, schemes)
        urls.append(item)
    return tuple(urls)


def _parse_ip_list(var: str, s: str) -> tuple[str, ...]:
    addresses: list[str] = []
    for item in (i.strip() for i in s.split(",")):
        if not item:
            continue
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise ConfigError(
                var, f"expected comma-separated IP addresses, got {_show(item)}"
            ) from None
        if address.is_unspecified or address.is_multicast:
            raise ConfigError(
                var,
                f"{_show(item)} is not a host address (leave {var} empty for every interface)",
            )
        if str(address) not in addresses:
            addresses.append(str(address))
    return tuple(addresses)


def _parse_networks(var: str, s: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR networks (``10.0.0.0/8, 192.0.2.7``)."""
    networks: list[str] = []
    for item in (i.strip() for i in s.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                var, f"expected comma-separated IP addresses or networks, got {_show(item)}"
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    return tuple(networks)


def _parse_s3_endpoint(var: str, s: str) -> str:
    text = s.strip()
    if not text:
        return ""
    shown = "the value" if "@" in text else _show(s)
    if "://" in text or "/" in text or "@" in text:
        raise ConfigError(
            var,
            f"expected host[:port] without scheme or path (S3_USE_SSL picks https), got {shown}",
        )
    host, port = _split_host_port(var, text, shown)
    if not host:
        raise ConfigError(var, f"expected host[:port], got {shown}")
    if port is not None:
        _parse_port(var, port, shown, minimum=1)
    return text


_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_NODE_SCHEMES: Final = frozenset({"http", "https"})


def _parse_redis_url(var: str, s: str) -> str:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix://path``
    (redis-py's forms); "" when unset. The URL is never echoed: it may carry a password."""
    if not s:
        return ""
    parts = urlsplit(s)
    if parts.scheme.lower() not in _REDIS_SCHEMES:
        raise ConfigError(var, "must start with redis://, rediss:// or unix://")
    if parts.scheme.lower() != "unix" and not parts.hostname:
        raise ConfigError(var, "has no host")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(var, "has an invalid port") from None
    return s


def _parse_node_url(var: str, s: str) -> str:
    """``http(s)://host[:port]``, without a path, query or credentials; "" when unset."""
    if not s:
        return ""
    parts = urlsplit(s)
    if parts.scheme.lower() not in _NODE_SCHEMES:
        raise ConfigError(var, f"{_show(s)} must start with http:// or https://")
    if not parts.hostname or parts.username or parts.password:
        raise ConfigError(var, f"{_show(s)} must name a host, without credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(var, f"{_show(s)} must be a base URL, without a path or query")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(var, f"{_show(s)} has an invalid port") from None
    return s.rstrip("/")


def _url_password(url: str) -> str:
    return (urlsplit(url).password or "") if url else ""


def _without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``<set>``."""
    parts = urlsplit(url)
    if not url or parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:<set>@{netloc}"))


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def auth_configured_in(config: Config) -> bool:
    """Any credential is configured (then nodes must present ``CLUSTER_SECRET``)."""
    return bool(config.auth_token or config.room_tokens or config.jwt_secret or config.admin_token)


def _optional_path(s: str) -> Path | None:
    text = s.strip()
    return Path(text) if text else None


# --------------------------------------------------------------------------- Config


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """golive's validated settings; build it with `Config.from_env(os.environ)`.

    Fields are named after their environment variables in lower case, except `http_host` /
    `http_port` (from `HTTP_ADDR`). Direct construction (in tests) gets the same defaults
    and the cross-field checks, but not the per-variable syntax checks of `from_env`.
    """

    # Go-Live's variables.
    http_host: str | None = None
    http_port: int = DEFAULT_HTTP_PORT
    allowed_origin: str = DEFAULT_ALLOWED_ORIGIN
    auth_token: str = field(default="", repr=False)
    room_tokens: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, hash=False
    )
    jwt_secret: str = field(default="", repr=False)
    jwt_audience: str = ""
    admin_token: str = field(default="", repr=False)
    stun_urls: tuple[str, ...] = DEFAULT_STUN_URLS
    turn_urls: tuple[str, ...] = ()
    turn_username: str = ""
    turn_password: str = field(default="", repr=False)
    record_enabled: bool = False
    record_dir: Path = Path(DEFAULT_RECORD_DIR)
    upload_recordings: bool = False
    delete_recording_after_upload: bool = False
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_bucket: str = ""
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_use_ssl: bool = True
    s3_path_style: bool = False
    s3_prefix: str = ""
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 0
    max_subs_per_room: int = 0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    pprof: bool = False
    otel_service_name: str = DEFAULT_OTEL_SERVICE_NAME
    otel_exporter_otlp_endpoint: str = ""
    # golive's own.
    ice_host_addresses: tuple[str, ...] = ()
    ice_port_min: int = 0
    ice_port_max: int = 0
    log_level: LogLevel = DEFAULT_LOG_LEVEL
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    shutdown_timeout_seconds: float = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    actor_timeout_seconds: float = DEFAULT_ACTOR_TIMEOUT_SECONDS
    session_connect_timeout_seconds: float = DEFAULT_SESSION_CONNECT_TIMEOUT_SECONDS
    publisher_reconnect_seconds: float = DEFAULT_PUBLISHER_RECONNECT_SECONDS  # 0 = end at once
    upload_retry_base_seconds: float = DEFAULT_UPLOAD_RETRY_BASE_SECONDS
    upload_retry_max_seconds: float = DEFAULT_UPLOAD_RETRY_MAX_SECONDS
    upload_max_attempts: int = DEFAULT_UPLOAD_MAX_ATTEMPTS
    trusted_proxies: tuple[str, ...] = ()  # networks whose X-Forwarded-For is believed
    max_sessions: int = DEFAULT_MAX_SESSIONS  # 0 = no limit
    max_pending_negotiations: int = DEFAULT_MAX_PENDING_NEGOTIATIONS  # 0 = no limit
    # TURN REST credentials (coturn's use-auth-secret) instead of TURN_USERNAME/TURN_PASSWORD.
    turn_secret: str = field(default="", repr=False)
    turn_credential_ttl_seconds: int = DEFAULT_TURN_CREDENTIAL_TTL_SECONDS
    # HTTP connections: timeouts and a cap on open connections (0 = no limit).
    http_header_timeout_seconds: float = DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS
    http_body_timeout_seconds: float = DEFAULT_HTTP_BODY_TIMEOUT_SECONDS
    http_keepalive_timeout_seconds: float = DEFAULT_HTTP_KEEPALIVE_TIMEOUT_SECONDS
    http_max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    # The cluster (docs/deployment.md): without REDIS_URL one process, everything in memory.
    redis_url: str = field(default="", repr=False)  # may carry a password
    node_url: str = ""  # how other nodes reach this one; derived from a concrete HTTP_ADDR
    workers: int = 1
    cluster_secret: str = field(default="", repr=False)
    # The port of worker i's own listener, where HTTP_ADDR listens, reached at NODE_URL's host
    # (by the other nodes and workers): CLUSTER_PORT + i, or any free port when 0.
    cluster_port: int = 0
    relay_grace_seconds: float = DEFAULT_RELAY_GRACE_SECONDS
    # Per video track: the packets since its last keyframe, to start a viewer at once (0: off;
    # viewers then wait for the publisher's next keyframe).
    keyframe_cache_bytes: int = DEFAULT_KEYFRAME_CACHE_BYTES

    def __post_init__(self) -> None:
        if not isinstance(self.room_tokens, MappingProxyType):
            object.__setattr__(self, "room_tokens", MappingProxyType(dict(self.room_tokens)))
        self._check_cross_fields()

    def _check_cross_fields(self) -> None:
        if self.upload_recordings and not self.s3_bucket:
            raise ConfigError("S3_BUCKET", "must be set when UPLOAD_RECORDINGS=1")
        if self.upload_recordings and not self.s3_endpoint:
            raise ConfigError("S3_ENDPOINT", "must be set when UPLOAD_RECORDINGS=1")
        if self.delete_recording_after_upload and not self.upload_recordings:
            raise ConfigError("DELETE_RECORDING_AFTER_UPLOAD", "requires UPLOAD_RECORDINGS=1")
        if self.tls_cert_file is not None and self.tls_key_file is None:
            raise ConfigError("TLS_KEY_FILE", "must be set when TLS_CERT_FILE is set")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ConfigError("TLS_CERT_FILE", "must be set when TLS_KEY_FILE is set")
        low, high = self.ice_port_min, self.ice_port_max
        if low == 0 and high != 0:
            raise ConfigError("ICE_PORT_MIN", "must be set when ICE_PORT_MAX is set")
        if high == 0 and low != 0:
            raise ConfigError("ICE_PORT_MAX", "must be set when ICE_PORT_MIN is set")
        if low > high:
            raise ConfigError("ICE_PORT_MIN", f"must not exceed ICE_PORT_MAX ({low} > {high})")
        if self.upload_retry_base_seconds > self.upload_retry_max_seconds:
            raise ConfigError(
                "UPLOAD_RETRY_BASE_SECONDS", "must not exceed UPLOAD_RETRY_MAX_SECONDS"
            )
        self._check_cluster()
        if self.turn_secret and (self.turn_username or self.turn_password):
            raise ConfigError(
                "TURN_SECRET",
                "cannot be combined with TURN_USERNAME/TURN_PASSWORD: it makes a fresh "
                "username and password for each answer; set one scheme only",
            )

    def _check_cluster(self) -> None:
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                "WORKERS", "needs REDIS_URL: the workers of a node share their rooms through Redis"
            )
        if not self.redis_url:
            return
        if not self.effective_node_url or (
            not self.node_url and self.http_port == 0 and self.workers == 1
        ):
            raise ConfigError(
                "NODE_URL",
                "must be set with REDIS_URL (the base URL other nodes reach this one at, e.g. "
                "http://10.0.0.5:8080) unless HTTP_ADDR names a concrete address and port",
            )
        if auth_configured_in(self) and not self.cluster_secret:
            raise ConfigError(
                "CLUSTER_SECRET",
                "must be set with REDIS_URL when credentials are configured: nodes present it "
                "to each other",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read and validate every variable; raise `ConfigError` naming the first bad one."""

        def get(name: str) -> str:
            return env.get(name, "").strip()

        host, port = parse_http_addr(get("HTTP_ADDR") or DEFAULT_HTTP_ADDR)
        stun = get("STUN_URLS")
        log_level = _parse_choice(
            "LOG_LEVEL", get("LOG_LEVEL"), _LOG_LEVELS, "debug, info, warning or error"
        )
        log_format = _parse_choice("LOG_FORMAT", get("LOG_FORMAT"), _LOG_FORMATS, "json or console")
        return cls(
            http_host=host,
            http_port=port,
            allowed_origin=get("ALLOWED_ORIGIN") or DEFAULT_ALLOWED_ORIGIN,
            auth_token=get("AUTH_TOKEN"),
            room_tokens=parse_room_tokens(get("ROOM_TOKENS")),
            jwt_secret=get("JWT_SECRET"),
            jwt_audience=get("JWT_AUDIENCE"),
            admin_token=get("ADMIN_TOKEN"),
            stun_urls=(
                parse_url_list("STUN_URLS", stun, ("stun", "stuns")) if stun else DEFAULT_STUN_URLS
            ),
            turn_urls=parse_url_list("TURN_URLS", get("TURN_URLS"), ("turn", "turns")),
            turn_username=get("TURN_USERNAME"),
            turn_password=get("TURN_PASSWORD"),
            record_enabled=parse_bool("RECORD_ENABLED", get("RECORD_ENABLED"), False),
            record_dir=Path(get("RECORD_DIR") or DEFAULT_RECORD_DIR),
            upload_recordings=parse_bool("UPLOAD_RECORDINGS", get("UPLOAD_RECORDINGS"), False),
            delete_recording_after_upload=parse_bool(
                "DELETE_RECORDING_AFTER_UPLOAD", get("DELETE_RECORDING_AFTER_UPLOAD"), False
            ),
            s3_endpoint=_parse_s3_endpoint("S3_ENDPOINT", get("S3_ENDPOINT")),
            s3_region=get("S3_REGION"),
            s3_bucket=get("S3_BUCKET"),
            s3_access_key=get("S3_ACCESS_KEY"),
            s3_secret_key=get("S3_SECRET_KEY"),
            s3_use_ssl=parse_bool("S3_USE_SSL", get("S3_USE_SSL"), True),
            s3_path_style=parse_bool("S3_PATH_STYLE", get("S3_PATH_STYLE"), False),
            s3_prefix=get("S3_PREFIX"),
            rate_limit_rps=_parse_float(
                "RATE_LIMIT_RPS", get("RATE_LIMIT_RPS"), 0.0, positive=False
            ),
            rate_limit_burst=_parse_int("RATE_LIMIT_BURST", get("RATE_LIMIT_BURST"), 0, 0),
            max_subs_per_room=_parse_int("MAX_SUBS_PER_ROOM", get("MAX_SUBS_PER_ROOM"), 0, 0),
            tls_cert_file=_optional_path(get("TLS_CERT_FILE")),
            tls_key_file=_optional_path(get("TLS_KEY_FILE")),
            pprof=parse_bool("PPROF", get("PPROF"), False),
            otel_service_name=get("OTEL_SERVICE_NAME") or DEFAULT_OTEL_SERVICE_NAME,
            otel_exporter_otlp_endpoint=get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            ice_host_addresses=_parse_ip_list("ICE_HOST_ADDRESSES", get("ICE_HOST_ADDRESSES")),
            ice_port_min=_parse_int("ICE_PORT_MIN", get("ICE_PORT_MIN"), 0, 0, _MAX_PORT),
            ice_port_max=_parse_int("ICE_PORT_MAX", get("ICE_PORT_MAX"), 0, 0, _MAX_PORT),
            log_level=log_level or DEFAULT_LOG_LEVEL,
            log_format=log_format or DEFAULT_LOG_FORMAT,
            shutdown_timeout_seconds=_parse_float(
                "SHUTDOWN_TIMEOUT_SECONDS",
                get("SHUTDOWN_TIMEOUT_SECONDS"),
                DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
                positive=True,
            ),
            actor_timeout_seconds=_parse_float(
                "ACTOR_TIMEOUT_SECONDS",
                get("ACTOR_TIMEOUT_SECONDS"),
                DEFAULT_ACTOR_TIMEOUT_SECONDS,
                positive=True,
            ),
            session_connect_timeout_seconds=_parse_float(
                "SESSION_CONNECT_TIMEOUT_SECONDS",
                get("SESSION_CONNECT_TIMEOUT_SECONDS"),
                DEFAULT_SESSION_CONNECT_TIMEOUT_SECONDS,
                positive=True,
            ),
            publisher_reconnect_seconds=_parse_float(
                "PUBLISHER_RECONNECT_SECONDS",
                get("PUBLISHER_RECONNECT_SECONDS"),
                DEFAULT_PUBLISHER_RECONNECT_SECONDS,
                positive=False,
            ),
            upload_retry_base_seconds=_parse_float(
                "UPLOAD_RETRY_BASE_SECONDS",
                get("UPLOAD_RETRY_BASE_SECONDS"),
                DEFAULT_UPLOAD_RETRY_BASE_SECONDS,
                positive=True,
            ),
            upload_retry_max_seconds=_parse_float(
                "UPLOAD_RETRY_MAX_SECONDS",
                get("UPLOAD_RETRY_MAX_SECONDS"),
                DEFAULT_UPLOAD_RETRY_MAX_SECONDS,
                positive=True,
            ),
            upload_max_attempts=_parse_int(
                "UPLOAD_MAX_ATTEMPTS", get("UPLOAD_MAX_ATTEMPTS"), DEFAULT_UPLOAD_MAX_ATTEMPTS, 1
            ),
            trusted_proxies=_parse_networks("TRUSTED_PROXIES", get("TRUSTED_PROXIES")),
            max_sessions=_parse_int("MAX_SESSIONS", get("MAX_SESSIONS"), DEFAULT_MAX_SESSIONS, 0),
            max_pending_negotiations=_parse_int(
                "MAX_PENDING_NEGOTIATIONS",
                get("MAX_PENDING_NEGOTIATIONS"),
                DEFAULT_MAX_PENDING_NEGOTIATIONS,
                0,
            ),
            turn_secret=get("TURN_SECRET"),
            turn_credential_ttl_seconds=_parse_int(
                "TURN_CREDENTIAL_TTL_SECONDS",
                get("TURN_CREDENTIAL_TTL_SECONDS"),
                DEFAULT_TURN_CREDENTIAL_TTL_SECONDS,
                1,
            ),
            http_header_timeout_seconds=_parse_float(
                "HTTP_HEADER_TIMEOUT_SECONDS",
                get("HTTP_HEADER_TIMEOUT_SECONDS"),
                DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS,
                positive=True,
            ),
            http_body_timeout_seconds=_parse_float(
                "HTTP_BODY_TIMEOUT_SECONDS",
                get("HTTP_BODY_TIMEOUT_SECONDS"),
                DEFAULT_HTTP_BODY_TIMEOUT_SECONDS,
                positive=True,
            ),
            http_keepalive_timeout_seconds=_parse_float(
                "HTTP_KEEPALIVE_TIMEOUT_SECONDS",
                get("HTTP_KEEPALIVE_TIMEOUT_SECONDS"),
                DEFAULT_HTTP_KEEPALIVE_TIMEOUT_SECONDS,
                positive=True,
            ),
            http_max_connections=_parse_int(
                "HTTP_MAX_CONNECTIONS",
                get("HTTP_MAX_CONNECTIONS"),
                DEFAULT_HTTP_MAX_CONNECTIONS,
                0,
            ),
            redis_url=_parse_redis_url("REDIS_URL", get("REDIS_URL")),
            node_url=_parse_node_url("NODE_URL", get("NODE_URL")),
            workers=_parse_int("WORKERS", get("WORKERS"), 1, 1, MAX_WORKERS),
            cluster_secret=get("CLUSTER_SECRET"),
            cluster_port=_parse_int("CLUSTER_PORT", get("CLUSTER_PORT"), 0, 0, _MAX_PORT),
            relay_grace_seconds=_parse_float(
                "RELAY_GRACE_SECONDS",
                get("RELAY_GRACE_SECONDS"),
                DEFAULT_RELAY_GRACE_SECONDS,
                positive=False,
            ),
            keyframe_cache_bytes=_parse_int(
                "KEYFRAME_CACHE_BYTES",
                get("KEYFRAME_CACHE_BYTES"),
                DEFAULT_KEYFRAME_CACHE_BYTES,
                0,
            ),
        )

    # ---------------------------------------------------------------- derived values

    @property
    def http_addr(self) -> str:
        """`HTTP_ADDR` in Go form, e.g. `":8080"` or `"[::1]:8080"`."""
        return format_http_addr(self.http_host, self.http_port)

    @property
    def rate_limit_enabled(self) -> bool:
        return self.rate_limit_rps > 0

    @property
    def effective_rate_limit_burst(self) -> int:
        """The token-bucket size: `RATE_LIMIT_BURST`, or `max(1, ceil(rps))` when that is 0.

        0 when rate limiting is off (`RATE_LIMIT_RPS=0`).
        """
        if not self.rate_limit_enabled:
            return 0
        return self.rate_limit_burst or max(1, math.ceil(self.rate_limit_rps))

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def tracing_enabled(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint)

    @property
    def clustered(self) -> bool:
        """This node is one of a cluster sharing its rooms in Redis (``REDIS_URL``)."""
        return bool(self.redis_url)

    @property
    def effective_node_url(self) -> str:
        """``NODE_URL``, or the URL of a concrete ``HTTP_ADDR`` (not a wildcard), or ""."""
        if self.node_url:
            return self.node_url
        host = self.http_host
        if host is None or _is_wildcard(host):
            return ""
        scheme = "https" if self.tls_enabled else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.http_port}"

    def secrets(self) -> tuple[str, ...]:
        """Every non-empty secret value (each room token included), for log redaction."""
        values = (
            self.auth_token,
            *self.room_tokens.values(),
            self.jwt_secret,
            self.admin_token,
            self.turn_password,
            self.turn_secret,
            self.s3_access_key,
            self.s3_secret_key,
            self.cluster_secret,
            _url_password(self.redis_url),
        )
        return tuple(dict.fromkeys(value for value in values if value))

    def describe(self) -> dict[str, object]:
        """Every variable's effective value, secrets as `"<set>"` or `""`: for a start-up log."""

        def secret(value: object) -> str:
            return "<set>" if value else ""

        def path(value: Path | None) -> str:
            return "" if value is None else str(value)

        return {
            "HTTP_ADDR": self.http_addr,
            "ALLOWED_ORIGIN": self.allowed_origin,
            "AUTH_TOKEN": secret(self.auth_token),
            "ROOM_TOKENS": secret(self.room_tokens),
            "JWT_SECRET": secret(self.jwt_secret),
            "JWT_AUDIENCE": self.jwt_audience,
            "ADMIN_TOKEN": secret(self.admin_token),
            "STUN_URLS": list(self.stun_urls),
            "TURN_URLS": list(self.turn_urls),
            "TURN_USERNAME": self.turn_username,
            "TURN_PASSWORD": secret(self.turn_password),
            "RECORD_ENABLED": self.record_enabled,
            "RECORD_DIR": str(self.record_dir),
            "UPLOAD_RECORDINGS": self.upload_recordings,
            "DELETE_RECORDING_AFTER_UPLOAD": self.delete_recording_after_upload,
            "S3_ENDPOINT": self.s3_endpoint,
            "S3_REGION": self.s3_region,
            "S3_BUCKET": self.s3_bucket,
            "S3_ACCESS_KEY": secret(self.s3_access_key),
            "S3_SECRET_KEY": secret(self.s3_secret_key),
            "S3_USE_SSL": self.s3_use_ssl,
            "S3_PATH_STYLE": self.s3_path_style,
            "S3_PREFIX": self.s3_prefix,
            "RATE_LIMIT_RPS": self.rate_limit_rps,
            "RATE_LIMIT_BURST": self.effective_rate_limit_burst,
            "MAX_SUBS_PER_ROOM": self.max_subs_per_room,
            "TLS_CERT_FILE": path(self.tls_cert_file),
            "TLS_KEY_FILE": path(self.tls_key_file),
            "PPROF": self.pprof,
            "OTEL_SERVICE_NAME": self.otel_service_name,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otel_exporter_otlp_endpoint,
            "ICE_HOST_ADDRESSES": list(self.ice_host_addresses),
            "ICE_PORT_MIN": self.ice_port_min,
            "ICE_PORT_MAX": self.ice_port_max,
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": self.log_format,
            "SHUTDOWN_TIMEOUT_SECONDS": self.shutdown_timeout_seconds,
            "ACTOR_TIMEOUT_SECONDS": self.actor_timeout_seconds,
            "SESSION_CONNECT_TIMEOUT_SECONDS": self.session_connect_timeout_seconds,
            "PUBLISHER_RECONNECT_SECONDS": self.publisher_reconnect_seconds,
            "UPLOAD_RETRY_BASE_SECONDS": self.upload_retry_base_seconds,
            "UPLOAD_RETRY_MAX_SECONDS": self.upload_retry_max_seconds,
            "UPLOAD_MAX_ATTEMPTS": self.upload_max_attempts,
            "TRUSTED_PROXIES": list(self.trusted_proxies),
            "MAX_SESSIONS": self.max_sessions,
            "MAX_PENDING_NEGOTIATIONS": self.max_pending_negotiations,
            "TURN_SECRET": secret(self.turn_secret),
            "TURN_CREDENTIAL_TTL_SECONDS": self.turn_credential_ttl_seconds,
            "HTTP_HEADER_TIMEOUT_SECONDS": self.http_header_timeout_seconds,
            "HTTP_BODY_TIMEOUT_SECONDS": self.http_body_timeout_seconds,
            "HTTP_KEEPALIVE_TIMEOUT_SECONDS": self.http_keepalive_timeout_seconds,
            "HTTP_MAX_CONNECTIONS": self.http_max_connections,
            "REDIS_URL": _without_password(self.redis_url),
            "NODE_URL": self.effective_node_url if self.clustered else self.node_url,
            "WORKERS": self.workers,
            "CLUSTER_SECRET": secret(self.cluster_secret),
            "CLUSTER_PORT": self.cluster_port,
            "RELAY_GRACE_SECONDS": self.relay_grace_seconds,
            "KEYFRAME_CACHE_BYTES": self.keyframe_cache_bytes,
        }


def load_or_exit(env: Mapping[str, str]) -> Config:
    """`Config.from_env(env)`, or one line on stderr and exit status 2 (contract section 1)."""
    try:
        return Config.from_env(env)
    except ConfigError as error:
        sys.stderr.write(f"golive: invalid configuration: {error}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
