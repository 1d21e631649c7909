"""Rate limiting: a token bucket per client IP on POST, PATCH and DELETE (contract section 7),
and one on listing the rooms.

Every client IP has a bucket holding up to ``RATE_LIMIT_BURST`` tokens that refills at
``RATE_LIMIT_RPS`` tokens a second; each POST, PATCH or DELETE takes one. A request that
finds no whole token is answered ``429 {"error": "too many requests"}`` with ``Retry-After``
(whole seconds, at least 1) saying when the next token is due, and never reaches its
handler, so a refused request costs no actor, room or peer-connection work. Refused requests
take no token, so a client that keeps hammering is let in again as soon as it slows down to
the configured rate.

``GET`` (and ``HEAD``) ``/api/rooms`` is the one public read that costs the actors something
(an ask to the directory, a JSON array the size of the room list), so it is limited too, with
the same rate and burst but a second bucket per client IP: the pages poll the list every two
seconds, and that must never cost the same address's publish or trickle a 429 (nor a burst
of trickle PATCHes its list). Every other GET, HEAD and OPTIONS is never limited: health
checks, metrics scrapers, the pages and CORS preflights.

The middleware is the innermost one, so a 429 goes out through ``error_middleware`` and
``cors_middleware`` and carries CORS headers like any other error (a browser can read it).

Client IP (:func:`client_ip`): the TCP peer, unless the peer is a trusted proxy
(``TRUSTED_PROXIES``); then ``X-Forwarded-For`` is walked from the right, skipping trusted
proxies, and the first untrusted address is the client. Only the right end of that header
can be believed (each proxy appends the address it saw), so a client can't pick its own
address by sending the header itself; a malformed entry stops the walk at the last good
address. IPv4-mapped IPv6 addresses count as the IPv4 address they carry.

Memory (:class:`TokenBuckets`): buckets live in an LRU-ordered dict. A bucket that has
refilled completely is no different from a new one, so it is dropped; the least recently
used buckets are checked first on every call, which keeps the cost amortised O(1). A hard
cap on entries (``DEFAULT_MAX_ENTRIES``) evicts the least recently used bucket first, so a
flood of distinct addresses (an IPv6 /64 holds plenty) can't grow the store without bound; an
evicted client only gets a fresh, full bucket. Time comes from an injectable monotonic
clock, so tests don't sleep.

With ``RATE_LIMIT_RPS=0`` (the default) the middleware hands every request straight to its
handler and returns the handler's response untouched.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from golive.config import Config
from golive.http.errors import Handler, json_error
from golive.http.keys import METRICS

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "LIMITED_METHODS",
    "LIMITED_READS",
    "Network",
    "TokenBuckets",
    "client_ip",
    "rate_limit_middleware",
    "retry_after_seconds",
    "trusted_networks",
]

log = structlog.get_logger(__name__)

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Clock: TypeAlias = Callable[[], float]

#: The methods that take a token: the ones that create, change or end something.
LIMITED_METHODS: Final = frozenset({"POST", "PATCH", "DELETE"})
#: Routes (as the router names them) whose GET and HEAD take a token from the read buckets.
LIMITED_READS: Final = frozenset({"/api/rooms"})
_READ_METHODS: Final = frozenset({"GET", "HEAD"})
#: At most this many buckets are kept; beyond it the least recently used one is dropped.
DEFAULT_MAX_ENTRIES: Final = 100_000
#: What :func:`client_ip` says when the request has no peer address at all.
UNKNOWN_CLIENT: Final = "unknown"
TOO_MANY_REQUESTS: Final = "too many requests"

# Float noise must not turn a wait of exactly N seconds into a Retry-After of N + 1.
_EPSILON: Final = 1e-9


class TokenBuckets:
    """One token bucket per key, refilling at ``rate`` tokens a second up to ``burst``.

    :meth:`acquire` takes a token and returns 0.0, or takes nothing and returns how many
    seconds until the key's next token is due. Full buckets are dropped and at most
    ``max_entries`` are kept (least recently used evicted first). Not thread-safe: it is
    used from the event loop only.
    """

    __slots__ = ("_buckets", "_burst", "_clock", "_max_entries", "_rate", "refused")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Clock = time.monotonic,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._max_entries = max_entries
        self._clock = clock
        # key -> (tokens, when they were counted); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0  # requests refused so far

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def acquire(self, key: str) -> float:
        """Take one token from ``key``'s bucket: 0.0, or the seconds until one is due."""
        now = self._clock()
        self._expire(now)
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            tokens = self._burst
        else:
            tokens = self._refilled(entry, now)
            buckets.move_to_end(key)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self._rate
            self.refused += 1
        buckets[key] = (tokens, now)
        if len(buckets) > self._max_entries:
            buckets.popitem(last=False)
        return wait

    def tokens(self, key: str) -> float:
        """The tokens ``key`` has now (``burst`` for a key without a bucket)."""
        entry = self._buckets.get(key)
        return self._burst if entry is None else self._refilled(entry, self._clock())

    def _refilled(self, entry: tuple[float, float], now: float) -> float:
        tokens, then = entry
        return min(self._burst, tokens + max(0.0, now - then) * self._rate)

    def _expire(self, now: float) -> None:
        """Drop buckets that are full again, least recently used first."""
        buckets = self._buckets
        while buckets:
            key, entry = next(iter(buckets.items()))
            if self._refilled(entry, now) < self._burst:
                return
            del buckets[key]


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` for a wait of ``wait`` seconds: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait - _EPSILON))


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` (addresses or CIDR networks) as network objects."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _host(text: str) -> str | None:
    """The address in ``addr``, ``a.b.c.d:port``, ``[v6]`` or ``[v6]:port``; None if malformed."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if bracket and ":" in host and (not rest or (rest[0] == ":" and _is_port(rest[1:]))):
            return host
        return None
    if text.count(":") == 1:  # an IPv6 address has at least two
        host, _, port = text.partition(":")
        return host if _is_port(port) else None
    return text


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _address(text: str) -> Address | None:
    """An address as a peer or an ``X-Forwarded-For`` entry gives it, or None if malformed.

    Accepts a bare address and, as some proxies write them, ``a.b.c.d:port``, ``[v6]`` and
    ``[v6]:port``. IPv4-mapped IPv6 addresses become IPv4.
    """
    host = _host(text.strip())
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted)


def client_ip(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client's IP address: the peer, or what trusted proxies say in X-Forwarded-For.

    ``X-Forwarded-For`` is read only when the peer is in ``trusted``; it is walked from the
    right, skipping trusted proxies, and the first untrusted address is the client. A
    malformed entry ends the walk: the last good address (or the peer) is the client.
    """
    remote = request.remote
    if remote is None:
        return UNKNOWN_CLIENT
    peer = _address(remote)
    if peer is None:
        return remote
    if not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    client = peer
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    if not forwarded:
        return str(client)
    for entry in reversed(forwarded.split(",")):
        address = _address(entry)
        if address is None:
            break
        client = address
        if not _is_trusted(address, trusted):
            break
    return str(client)


def _route(request: web.Request) -> str | None:
    """The route the router matched (its canonical path), whatever spelling reached it."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def rate_limit_middleware(config: Config, *, clock: Clock = time.monotonic) -> Middleware:
    """The rate-limiting middleware for ``config``: a pass-through when it is off."""
    if not config.rate_limit_enabled:

        @web.middleware
        async def unlimited(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await handler(request)

        return unlimited

    rate, burst = config.rate_limit_rps, config.effective_rate_limit_burst
    writes = TokenBuckets(rate, burst, clock=clock)
    reads = TokenBuckets(rate, burst, clock=clock)
    trusted = trusted_networks(config.trusted_proxies)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in LIMITED_METHODS:
            buckets = writes
        elif request.method in _READ_METHODS and _route(request) in LIMITED_READS:
            buckets = reads
        else:
            return await handler(request)
        ip = client_ip(request, trusted)
        wait = buckets.acquire(ip)
        if wait > 0.0:
            retry_after = retry_after_seconds(wait)
            log.debug(
                "rate limited",
                client_ip=ip,
                method=request.method,
                path=request.path,
                retry_after=retry_after,
            )
            metrics = request.app.get(METRICS)
            if metrics is not None:
                metrics.rate_limited.labels(request.method).inc()
            return json_error(429, TOO_MANY_REQUESTS, {"Retry-After": str(retry_after)})
        return await handler(request)

    return middleware
