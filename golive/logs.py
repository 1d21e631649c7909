"""Structured logging: one JSON object per line, secrets redacted, library logs included.

`configure_logging()` is called once at start-up (and again by tests: it replaces its own
handler and configuration each time). It sets up structlog on top of the standard library:

- structlog loggers (`get_logger(room=..., session=..., role=...)`) hand their event dict to
  the stdlib logger named after the calling module;
- one handler on the root logger renders every record with `structlog.stdlib.ProcessorFormatter`,
  so aiohttp, aiortc, aioice and pykka records become the same JSON lines (with a `logger`
  field);
- each line carries `timestamp` (ISO 8601, UTC, ending in `Z`), `level`, `event`, the
  context bound on the logger and in `structlog.contextvars`, `trace_id`/`span_id` when an
  OpenTelemetry span is current, and a rendered `exception`;
- in a cluster (`REDIS_URL`) every line also carries the process's `node` (its `NODE_URL`'s
  `host:port`) and `worker` (its index; `null` for the supervisor of `WORKERS` > 1): the
  `fields` given to `configure_logging`, added to every record, library ones included;
- `Redactor` runs last before rendering: configured secrets, values under secret-sounding
  keys, SDP `a=ice-pwd:` values, bearer tokens and JWTs become `[REDACTED]`.

Level filtering uses the root logger's level, so it applies to structlog and library loggers
alike and is cheap: structlog events below the level are dropped before any processing.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import structlog
import structlog.contextvars
import structlog.dev
import structlog.processors
import structlog.stdlib
import structlog.tracebacks
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TextIO

    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LEVELS", "REDACTED", "Redactor", "Throttle", "configure_logging", "get_logger"]

REDACTED: Final = "[REDACTED]"

#: LOG_LEVEL values and the stdlib levels they select.
LEVELS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "warn": logging.WARNING,
        "error": logging.ERROR,
    }
)

_HANDLER_NAME: Final = "golive"
SERVER_ERROR: Final = 500
_FIRST_KEYS: Final = ("timestamp", "level", "event", "logger")
_MAX_DEPTH: Final = 16

# Keys whose values are credentials whatever they contain ("jwt_audience" is not one).
_SECRET_KEY: Final = re.compile(
    r"token|passw|pwd|secret|authori[sz]ation|credential|jwt(?!_?aud)", re.IGNORECASE
)
# Values under a secret key that carry no secret: unset, or Config.describe()'s marker.
_HARMLESS: Final = frozenset({"", "<set>", REDACTED})
# Patterns for credentials inside free text. They run before the configured secrets are
# replaced (a short secret inside an ICE password must not hide the rest of it) and each
# swallows an earlier [REDACTED], so applying them twice changes nothing.
_R: Final = re.escape(REDACTED)
_TEXT_PATTERNS: Final = (
    # SDP: a=ice-pwd:<password> (RFC 8839); also inside JSON-escaped SDP.
    (re.compile(r"(a=ice-pwd:)[^\s\\\"']+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # Authorization: Bearer <token>
    (
        re.compile(rf"(\bbearer\s+)(?:{_R}|[A-Za-z0-9._~+/=-])+", re.IGNORECASE),
        rf"\g<1>{REDACTED}",
    ),
    # A JWT anywhere: base64url header starting '{"', payload, signature.
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # key=value / key:value with a secret-sounding key: query strings, reprs, Link headers.
    (
        re.compile(
            r"((?:token|passw(?:or)?d|pwd|secret|jwt|credential|authori[sz]ation)[\w-]*"
            rf"['\"]?[=:]\s*['\"]?)(?:{_R}|[^\s'\"\\,;&)}}\]])+",
            re.IGNORECASE,
        ),
        rf"\g<1>{REDACTED}",
    ),
)


class Redactor:
    """A structlog processor that removes credentials from every value of an event dict.

    Replaces each configured secret wherever it occurs in a string (event, fields, nested
    dicts and lists, exception text, keys), the whole value of any key that sounds like a
    credential (token, password, secret, authorization, credential, jwt), SDP ICE passwords,
    bearer tokens and JWTs. Objects that are not JSON values are turned into their `str()`
    first, so nothing reaches the renderer unredacted.
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        unique = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(
        self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict
    ) -> EventDict:
        return self._mapping(event_dict, 0)

    def redact_text(self, text: str) -> str:
        """`text` with every configured secret and recognised credential replaced."""
        for pattern, replacement in _TEXT_PATTERNS:
            text = pattern.sub(replacement, text)
        if self._secrets is not None:
            # Around the markers only: a secret such as "RED" must not mangle them.
            secrets = self._secrets
            text = REDACTED.join(secrets.sub(REDACTED, part) for part in text.split(REDACTED))
        return text

    def _mapping(self, mapping: Mapping[Any, object], depth: int) -> dict[str, object]:
        redacted: dict[str, object] = {}
        for key, value in mapping.items():
            name = self.redact_text(key if isinstance(key, str) else str(key))
            if _SECRET_KEY.search(name) and not _is_harmless(value):
                redacted[name] = REDACTED
            else:
                redacted[name] = self._value(value, depth + 1)
        return redacted

    def _value(self, value: object, depth: int) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if depth < _MAX_DEPTH:
            if isinstance(value, Mapping):
                return self._mapping(value, depth)
            if isinstance(value, list | tuple | set | frozenset):
                return [self._value(item, depth + 1) for item in value]
        return self.redact_text(str(value))


def _is_harmless(value: object) -> bool:
    return (
        value is None or isinstance(value, bool) or (isinstance(value, str) and value in _HARMLESS)
    )


def add_trace_ids(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id`` and ``span_id`` (hex, as trace backends show them) when a span is
    current: the HTTP request's on the loop, an actor's handling in its thread, a session's
    while its story is told. A context-variable read when none is."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


class Throttle:
    """At most one log line every ``interval`` seconds for something that can repeat without
    bound (a hostile client's doing): :meth:`allow` says whether to write it now, and how
    many were held back since the last one."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def allow(self) -> int | None:
        """The number held back since the last line if one may be written now, else None."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


class MalformedRequests(logging.Filter):
    """aiohttp logs every malformed HTTP request at ERROR with a traceback, so any client could
    flood the logs with errors that are its own. Such a request is answered 400 and shows in
    the access log; its record becomes one debug line naming the problem, without traceback
    (dropped below debug). Server-side errors (5xx) are left as they are."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.name != "aiohttp.server" or not isinstance(error, HttpProcessingError):
            return True
        if error.code >= SERVER_ERROR:
            return True
        if self._level > logging.DEBUG:
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        problem = error.message.splitlines()[0] if error.message else type(error).__name__
        record.msg, record.args = "malformed HTTP request: %s (%s)", (problem, error.code)
        record.exc_info = record.exc_text = None
        return True


class AddFields:
    """A processor adding the same fields to every event (without replacing one the event
    has): who this process is, in a cluster."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, object]) -> None:
        self._fields = dict(fields)

    def __call__(
        self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict
    ) -> EventDict:
        for key, value in self._fields.items():
            event_dict.setdefault(key, value)
        return event_dict


def _order_keys(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, event and logger first: lines read well in a terminal too."""
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def configure_logging(
    level: str,
    fmt: str,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    fields: Mapping[str, object] | None = None,
) -> None:
    """Route structlog and stdlib logging through one handler writing to `stream` (stdout).

    `level` is a LOG_LEVEL value (debug, info, warning, error), `fmt` is "json" or
    "console"; `secrets` are the values to redact (`Config.secrets()`); `fields` are added to
    every line (a cluster's `node` and `worker`). Calling it again replaces the previous
    configuration.
    """
    try:
        numeric_level = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    if fmt not in {"json", "console"}:
        raise ValueError(f"unknown log format {fmt!r}")
    output = sys.stdout if stream is None else stream

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    who: list[Processor] = [AddFields(fields)] if fields else []
    # Added to records from stdlib loggers (aiohttp, aiortc, aioice, pykka, ...).
    foreign_pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        *who,
        add_trace_ids,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        timestamper,
    ]
    renderer: Processor
    if fmt == "json":
        render_exception: Processor = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        render_exception = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=output.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Exceptions become text before redaction, so their messages are redacted too.
            render_exception,
            Redactor(secrets),
            _order_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(MalformedRequests(numeric_level))

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    # The structlog side only prepares the event dict; rendering and redaction happen in the
    # handler above, so loggers created before a reconfiguration keep working.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *who,
            add_trace_ids,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger picks up the current configuration on every call, so
        # reconfiguring and structlog.testing.capture_logs() affect existing loggers.
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: object) -> structlog.stdlib.BoundLogger:
    """A logger named after the calling module, with `bound` context (room, session, role...).

    Bind context on each actor's logger: contextvars bound in an HTTP handler do not follow
    a message into an actor thread.
    """
    frame = inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    name = str(caller.f_globals.get("__name__", "golive")) if caller is not None else "golive"
    del frame, caller
    return structlog.stdlib.get_logger(name, **bound)
