"""Rate limiting (contract sections 2 and 7): a token bucket per client IP on POST, PATCH and
DELETE, and another on ``GET /api/rooms``, answered ``429 {"error": "too many requests"}``
with ``Retry-After``.

The buckets and :func:`client_ip` are tested on their own (time from a fake clock, never a
sleep), the middleware on a small app of its own, then the whole thing through a real golive
server on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from golive.config import Config
from golive.http.errors import error_middleware
from golive.http.ratelimit import (
    DEFAULT_MAX_ENTRIES,
    TokenBuckets,
    client_ip,
    rate_limit_middleware,
    retry_after_seconds,
    trusted_networks,
)
from tests.support import ServerThread, labelled, metric_samples, running_server


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- the buckets


def test_a_burst_is_let_through_then_requests_are_refused() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(1.0, 3, clock=clock)
    assert [buckets.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.acquire("a") == pytest.approx(1.0)
    assert buckets.acquire("a") == pytest.approx(1.0)  # a refusal takes no token
    assert buckets.refused == 2
    # Another key has a bucket of its own.
    assert buckets.acquire("b") == 0.0


def test_buckets_refill_at_the_configured_rate() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(4.0, 2, clock=clock)  # a token every 0.25 s
    assert buckets.acquire("a") == 0.0
    assert buckets.acquire("a") == 0.0
    assert buckets.acquire("a") == 0.25
    clock.advance(0.125)
    assert buckets.acquire("a") == 0.125  # half a token is no token
    clock.advance(0.125)
    assert buckets.acquire("a") == 0.0
    assert buckets.acquire("a") == 0.25
    # Refilling stops at the burst size however long the key was idle.
    clock.advance(3600.0)
    assert buckets.tokens("a") == 2.0
    assert [buckets.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.25]


def test_a_slow_rate_waits_seconds_for_its_next_token() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(0.05, 1, clock=clock)  # one token every 20 s
    assert buckets.acquire("a") == 0.0
    assert retry_after_seconds(buckets.acquire("a")) == 20
    clock.advance(5.0)
    assert retry_after_seconds(buckets.acquire("a")) == 15
    clock.advance(14.5)
    assert retry_after_seconds(buckets.acquire("a")) == 1  # half a second: rounded up
    clock.advance(0.5)
    assert buckets.acquire("a") == 0.0


@pytest.mark.parametrize(
    ("wait", "seconds"),
    [
        (1e-6, 1),
        (0.5, 1),
        (1.0, 1),
        (1.0 + 1e-12, 1),  # float noise is not another second
        (1.01, 2),
        (2.0, 2),
        (19.999, 20),
        (20.0, 20),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    wait: float, seconds: int
) -> None:
    assert retry_after_seconds(wait) == seconds


@pytest.mark.parametrize(
    ("rate", "burst", "max_entries"),
    [(0.0, 1, 10), (-1.0, 1, 10), (math.inf, 1, 10), (math.nan, 1, 10), (1.0, 0, 10), (1.0, 1, 0)],
)
def test_nonsense_parameters_are_refused(rate: float, burst: int, max_entries: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBuckets(rate, burst, max_entries=max_entries)


def test_a_bucket_that_has_refilled_is_dropped() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(1.0, 4, clock=clock)
    buckets.acquire("a")  # 3 tokens left: full again in 1 s
    clock.advance(0.5)
    buckets.acquire("b")
    assert "a" in buckets
    clock.advance(0.5)
    buckets.acquire("c")  # "a" is full again: dropped; "b" is not yet
    assert "a" not in buckets
    assert "b" in buckets
    assert len(buckets) == 2
    # A dropped bucket comes back full, exactly as if it had been kept.
    assert [buckets.acquire("a") for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, 1.0]
    # Once everyone is idle long enough, one request leaves one bucket behind.
    clock.advance(60.0)
    buckets.acquire("d")
    assert len(buckets) == 1


def test_memory_stays_bounded_under_a_flood_of_addresses() -> None:
    clock = FakeClock()  # frozen: nothing refills, so nothing expires on its own
    buckets = TokenBuckets(1.0, 2, clock=clock)
    addresses = [f"2001:db8::{n >> 16:x}:{n & 0xFFFF:x}" for n in range(200_000)]
    largest = 0
    for address in addresses:
        buckets.acquire(address)
        largest = max(largest, len(buckets))
    assert largest == DEFAULT_MAX_ENTRIES
    assert len(buckets) == DEFAULT_MAX_ENTRIES
    # The least recently used were evicted, the latest kept.
    assert addresses[0] not in buckets
    assert addresses[-DEFAULT_MAX_ENTRIES - 1] not in buckets
    assert all(address in buckets for address in addresses[-DEFAULT_MAX_ENTRIES:])


def test_the_cap_evicts_the_least_recently_used_bucket() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(1.0, 2, max_entries=3, clock=clock)
    for key in ("a", "b", "c"):
        buckets.acquire(key)
    buckets.acquire("a")  # "a" is now the most recently used
    buckets.acquire("d")
    assert {key for key in "abcd" if key in buckets} == {"a", "c", "d"}
    assert buckets.acquire("a") == pytest.approx(1.0)  # "a" kept its (empty) bucket


def test_a_flood_while_time_passes_keeps_only_recent_buckets() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(10.0, 5, clock=clock)  # a bucket is full 0.1 s after one request
    for n in range(20_000):
        clock.advance(0.001)
        buckets.acquire(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    # Only the keys seen in the last 0.1 s are left.
    assert len(buckets) <= 101


# Dyadic rates and steps keep every float exact, so an exact model can be compared with it.
RATES = st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
STEPS = st.lists(
    st.tuples(st.integers(0, 256).map(lambda n: n / 64), st.sampled_from("abc")), max_size=80
)


@dataclass
class Model:
    """The token bucket written the obvious way, in exact arithmetic, keeping every bucket."""

    rate: Fraction
    burst: Fraction

    def __post_init__(self) -> None:
        self.buckets: dict[str, tuple[Fraction, Fraction]] = {}

    def acquire(self, key: str, now: Fraction) -> Fraction:
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return Fraction(0)
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


@settings(max_examples=200, deadline=None)
@given(rate=RATES, burst=st.integers(1, 5), steps=STEPS)
def test_buckets_behave_like_the_exact_model(
    rate: float, burst: int, steps: Sequence[tuple[float, str]]
) -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate, burst, clock=clock)
    model = Model(Fraction(rate), Fraction(burst))
    now = Fraction(0)
    for step, key in steps:
        clock.advance(step)
        now += Fraction(step)
        assert buckets.acquire(key) == model.acquire(key, now)
        assert len(buckets) <= 3


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.01, 1000.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: Sequence[float]
) -> None:
    clock = FakeClock(0.0)
    buckets = TokenBuckets(rate, burst, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.advance(gap)
        wait = buckets.acquire("a")
        if wait == 0.0:
            allowed += 1
        else:
            # The wait is when the next token is due: not earlier, and then it is there.
            assert wait > 0.0
            assert buckets.tokens("a") < 1.0
            if wait > 1e-6:
                clock.advance(wait - 1e-6)
                assert buckets.tokens("a") < 1.0
                clock.advance(1e-6 - wait)
            clock.advance(wait + 1e-6)
            assert buckets.tokens("a") >= 1.0
            clock.advance(-(wait + 1e-6))
    assert allowed <= burst + rate * clock.now + 1e-6


# --------------------------------------------------------------------------- client_ip


def request(remote: str | None, forwarded: Sequence[str] = ()) -> web.Request:
    headers = CIMultiDict([("X-Forwarded-For", value) for value in forwarded])
    mocked = make_mocked_request("POST", "/api/whip/publish/x", headers=headers)
    return mocked if remote is None else mocked.clone(remote=remote)


PROXIES = trusted_networks(["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        ("198.51.100.7", ["10.0.0.1"], "198.51.100.7"),
        ("198.51.100.7", [], "198.51.100.7"),
        # A trusted proxy: the rightmost untrusted address.
        ("10.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),  # what the client sent is left
        ("10.0.0.1", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),  # several headers: one list
        ("10.0.0.1", ["1.1.1.1, 203.0.113.9, 192.0.2.1, 10.9.9.9"], "203.0.113.9"),  # chain
        ("192.0.2.1", [" 203.0.113.9 ,10.1.2.3 "], "203.0.113.9"),
        # Every hop trusted: the leftmost (last good) one.
        ("10.0.0.1", ["10.0.0.2, 10.0.0.3"], "10.0.0.2"),
        # A trusted proxy without the header is the client.
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        # Garbage stops the walk at the last good address.
        ("10.0.0.1", ["unknown"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.9, 10.0.0.2, garbage"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.9, garbage, 10.0.0.2"], "10.0.0.2"),
        ("10.0.0.1", ["203.0.113.9,,10.0.0.2"], "10.0.0.2"),
        ("10.0.0.1", ["999.1.1.1"], "10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4/24"], "10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4:x"], "10.0.0.1"),
        ("10.0.0.1", ["[::1"], "10.0.0.1"),
        ("10.0.0.1", ["<script>"], "10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4" * 2000], "10.0.0.1"),
        # Ports, as some proxies write them, are not part of the address.
        ("10.0.0.1", ["203.0.113.9:51234"], "203.0.113.9"),
        ("10.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("10.0.0.1", ["[2001:db8::5]"], "2001:db8::5"),
        # IPv6 peers and entries, in canonical form.
        ("2001:db8:ffff::1", ["2001:DB8:0:0::7"], "2001:db8::7"),
        ("2001:db8:ffff::1", ["203.0.113.9, 2001:db8:ffff::2"], "203.0.113.9"),
        ("2001:db8::1", ["203.0.113.9"], "2001:db8::1"),
        ("2001:0db8:0000::0001", [], "2001:db8::1"),
        # An IPv4-mapped IPv6 address is the IPv4 address (a dual-stack socket's peers).
        ("::ffff:10.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("::ffff:198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        ("10.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9"),
    ],
)
def test_client_ip(remote: str, forwarded: list[str], expected: str) -> None:
    assert client_ip(request(remote, forwarded), PROXIES) == expected


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_ip(request("127.0.0.1", ["203.0.113.9"]), ()) == "127.0.0.1"


def test_a_request_without_a_peer_address() -> None:
    assert client_ip(request(None, ["203.0.113.9"]), PROXIES) == "unknown"


@settings(max_examples=300, deadline=None)
@given(
    peer=st.ip_addresses(v=4).filter(lambda a: a not in PROXIES[0]).map(str),
    header=st.text(max_size=60),
)
def test_an_untrusted_peer_is_the_client_whatever_the_header_says(peer: str, header: str) -> None:
    assert client_ip(request(peer, [header]), PROXIES) == peer


@settings(max_examples=300, deadline=None)
@given(header=st.text(alphabet="0123456789abcdef.:[], %", max_size=80))
def test_any_header_from_a_proxy_gives_a_real_address(header: str) -> None:
    ip = client_ip(request("10.0.0.1", [header]), PROXIES)
    assert ipaddress.ip_address(ip.split("%")[0])


# --------------------------------------------------------------------------- the middleware


def config(env: Mapping[str, str]) -> Config:
    return Config.from_env(env)


@dataclass
class Counter:
    calls: int = 0


def small_app(env: Mapping[str, str], clock: FakeClock, counter: Counter) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        counter.calls += 1
        return web.Response(text="done")

    app = web.Application(
        middlewares=[error_middleware, rate_limit_middleware(config(env), clock=clock)]
    )
    for method in ("GET", "HEAD", "OPTIONS", "POST", "PATCH", "DELETE", "PUT"):
        app.router.add_route(method, "/thing", handler)
    app.router.add_get("/api/rooms", handler)  # (and HEAD)
    app.router.add_post("/api/rooms", handler)
    return app


@pytest.mark.asyncio
async def test_refused_requests_never_reach_the_handler(aiohttp_client: AiohttpClient) -> None:
    clock, counter = FakeClock(), Counter()
    client = await aiohttp_client(
        small_app({"RATE_LIMIT_RPS": "2", "RATE_LIMIT_BURST": "3"}, clock, counter)
    )
    statuses = [(await client.request(m, "/thing")).status for m in ("POST", "PATCH", "DELETE")]
    assert statuses == [200, 200, 200]
    assert counter.calls == 3
    for method in ("POST", "PATCH", "DELETE"):
        response = await client.request(method, "/thing")
        assert response.status == 429
        assert response.content_type == "application/json"
        assert json.loads(await response.text()) == {"error": "too many requests"}
        assert response.headers["Retry-After"] == "1"
    assert counter.calls == 3
    # Reading methods are never limited, and take no token.
    for method in ("GET", "HEAD", "OPTIONS", "GET", "HEAD", "OPTIONS"):
        assert (await client.request(method, "/thing")).status == 200
    assert counter.calls == 9
    clock.advance(0.5)  # one token back
    assert (await client.post("/thing")).status == 200
    assert (await client.post("/thing")).status == 429
    assert counter.calls == 10


@pytest.mark.asyncio
async def test_listing_rooms_takes_tokens_from_a_bucket_of_its_own(
    aiohttp_client: AiohttpClient,
) -> None:
    clock, counter = FakeClock(), Counter()
    client = await aiohttp_client(
        small_app({"RATE_LIMIT_RPS": "1", "RATE_LIMIT_BURST": "2"}, clock, counter)
    )
    assert [(await client.get("/api/rooms")).status for _ in range(2)] == [200, 200]
    for method in ("GET", "HEAD"):
        response = await client.request(method, "/api/rooms")
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
    assert counter.calls == 2
    # Writes have their own bucket, untouched by the listing (a POST to the same path too);
    # other reads are never limited.
    assert [(await client.post("/api/rooms")).status for _ in range(3)] == [200, 200, 429]
    for method in ("GET", "HEAD", "OPTIONS") * 3:
        assert (await client.request(method, "/thing")).status == 200
    assert counter.calls == 13
    clock.advance(1.0)  # a token back in each bucket
    assert (await client.get("/api/rooms")).status == 200
    assert (await client.get("/api/rooms")).status == 429
    assert (await client.delete("/thing")).status == 200
    assert counter.calls == 15


@pytest.mark.asyncio
async def test_refusals_are_logged_at_debug_only(aiohttp_client: AiohttpClient) -> None:
    clock, counter = FakeClock(), Counter()
    client = await aiohttp_client(small_app({"RATE_LIMIT_RPS": "0.1"}, clock, counter))
    with structlog.testing.capture_logs() as captured:
        assert (await client.post("/thing")).status == 200
        response = await client.post("/thing")
    assert response.status == 429
    assert response.headers["Retry-After"] == "10"
    limited = [event for event in captured if event.get("event") == "rate limited"]
    assert len(limited) == 1
    assert limited[0]["log_level"] == "debug"
    assert limited[0]["client_ip"] == "127.0.0.1"
    assert limited[0]["retry_after"] == 10
    assert not [event for event in captured if event["log_level"] != "debug"]


@pytest.mark.asyncio
async def test_when_off_the_handler_response_goes_out_untouched() -> None:
    middleware = rate_limit_middleware(config({}))
    sentinel = web.Response(status=201, text="mine", headers={"X-Mine": "1"})

    async def handler(_request: web.Request) -> web.StreamResponse:
        return sentinel

    for _ in range(100):
        assert await middleware(request("127.0.0.1"), handler) is sentinel
    assert sentinel.headers["X-Mine"] == "1"
    assert "Retry-After" not in sentinel.headers


# --------------------------------------------------------------------------- a real server


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: str

    def json(self) -> object:
        assert self.headers["Content-Type"].startswith("application/json")
        return json.loads(self.body)


def send(
    server: ServerThread, method: str, path: str, headers: Mapping[str, str] | None = None
) -> Reply:
    data = b"not an offer" if method == "POST" else None
    plain = {"Content-Type": "text/plain"} if method == "POST" else {}
    http_request = urllib.request.Request(  # noqa: S310  a loopback URL built by the server
        server.url + path, data=data, method=method, headers={**plain, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(http_request, timeout=10) as response:  # noqa: S310  loopback
            return Reply(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, dict(error.headers), error.read().decode())


PUBLISH = "/api/whip/publish/x"


def publish(server: ServerThread, headers: Mapping[str, str] | None = None) -> int:
    return send(server, "POST", PUBLISH, headers).status


@pytest.mark.timeout(60)
def test_the_third_post_is_refused_with_retry_after_and_cors() -> None:
    env = {"RATE_LIMIT_RPS": "0.2", "RATE_LIMIT_BURST": "2", "ALLOWED_ORIGIN": "*"}
    with running_server(env) as server:
        # Let through: the handler refuses the body (415), so the limiter ran first.
        assert publish(server) == 415
        assert publish(server) == 415
        reply = send(server, "POST", PUBLISH, {"Origin": "https://example.com"})
        assert reply.status == 429
        assert reply.json() == {"error": "too many requests"}
        assert reply.headers["Retry-After"] == "5"
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in reply.headers["Access-Control-Expose-Headers"]
        # Nothing was created: no room.
        assert server.get("/api/rooms") == (200, b"[]")


@pytest.mark.timeout(60)
def test_patch_delete_and_unknown_routes_share_the_bucket() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "3"}
    with running_server(env) as server:
        assert send(server, "PATCH", PUBLISH + "/nosession").status == 404
        assert send(server, "DELETE", PUBLISH + "/nosession").status == 404
        assert send(server, "POST", "/no/such/route").status == 404
        for method, path in (("POST", PUBLISH), ("PATCH", PUBLISH + "/s"), ("DELETE", "/x")):
            reply = send(server, method, path)
            assert reply.status == 429
            assert reply.headers["Retry-After"] == "20"
        samples = metric_samples(server.get("/metrics")[1].decode())
        assert labelled(samples, "golive_http_rate_limited_total", "method") == {
            "POST": 1,
            "PATCH": 1,
            "DELETE": 1,
        }


UNLIMITED = ("/healthz", "/metrics", "/api/bootstrap", "/api/openapi.json", "/web/index.html")
PREFLIGHT = {"Origin": "https://example.com", "Access-Control-Request-Method": "GET"}


@pytest.mark.timeout(60)
def test_health_checks_metrics_pages_and_preflights_are_never_limited() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "1"}
    with running_server(env) as server:
        assert publish(server) == 415
        assert publish(server) == 429
        assert send(server, "GET", "/api/rooms").status == 200
        assert send(server, "GET", "/api/rooms").status == 429
        for _ in range(10):
            for path in UNLIMITED:
                assert send(server, "GET", path).status == 200, path
            assert send(server, "HEAD", "/healthz").status == 200
            assert send(server, "OPTIONS", PUBLISH).status == 204
            assert send(server, "OPTIONS", "/api/rooms", PREFLIGHT).status == 204
        assert publish(server) == 429
        assert send(server, "GET", "/api/rooms").status == 429


@pytest.mark.timeout(60)
def test_listing_rooms_is_limited_apart_from_publishing() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "2", "ALLOWED_ORIGIN": "*"}
    with running_server(env) as server:
        # A client that used up its publishing budget can still list the rooms...
        assert [publish(server) for _ in range(3)] == [415, 415, 429]
        assert [send(server, "GET", "/api/rooms").status for _ in range(2)] == [200, 200]
        # ...up to its own budget for that.
        reply = send(server, "GET", "/api/rooms", {"Origin": "https://example.com"})
        assert reply.status == 429
        assert reply.json() == {"error": "too many requests"}
        assert reply.headers["Retry-After"] == "20"
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        head = send(server, "HEAD", "/api/rooms")
        assert head.status == 429
        assert head.headers["Retry-After"] == "20"
        samples = metric_samples(server.get("/metrics")[1].decode())
        assert labelled(samples, "golive_http_rate_limited_total", "method") == {
            "POST": 1,
            "GET": 1,
            "HEAD": 1,
        }


@pytest.mark.timeout(60)
def test_each_client_behind_a_trusted_proxy_lists_on_its_own_budget() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "1", "TRUSTED_PROXIES": "127.0.0.1"}
    alice = {"X-Forwarded-For": "203.0.113.1"}
    bob = {"X-Forwarded-For": "203.0.113.2"}
    with running_server(env) as server:
        assert [send(server, "GET", "/api/rooms", alice).status for _ in range(2)] == [200, 429]
        assert [send(server, "GET", "/api/rooms", bob).status for _ in range(2)] == [200, 429]


@pytest.mark.timeout(60)
def test_behind_a_trusted_proxy_each_client_has_its_own_bucket() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "2", "TRUSTED_PROXIES": "127.0.0.1"}
    alice = {"X-Forwarded-For": "203.0.113.1"}
    bob = {"X-Forwarded-For": "198.51.100.2, 203.0.113.2"}  # bob's own first entry: ignored
    with running_server(env) as server:
        assert [publish(server, alice) for _ in range(3)] == [415, 415, 429]
        assert [publish(server, bob) for _ in range(3)] == [415, 415, 429]
        # The proxy's own requests (no header) and a third client are untouched.
        assert [publish(server) for _ in range(3)] == [415, 415, 429]
        assert publish(server, {"X-Forwarded-For": "203.0.113.2, 203.0.113.3"}) == 415
        assert publish(server, {"X-Forwarded-For": "198.51.100.2"}) == 415
        assert publish(server, alice) == 429


@pytest.mark.timeout(60)
def test_without_trusted_proxies_x_forwarded_for_is_ignored() -> None:
    env = {"RATE_LIMIT_RPS": "0.05", "RATE_LIMIT_BURST": "2"}
    with running_server(env) as server:
        assert publish(server, {"X-Forwarded-For": "203.0.113.1"}) == 415
        assert publish(server, {"X-Forwarded-For": "203.0.113.2"}) == 415
        assert publish(server, {"X-Forwarded-For": "203.0.113.3"}) == 429
        assert publish(server) == 429


@pytest.mark.timeout(60)
def test_off_by_default() -> None:
    with running_server({}) as server:
        assert [publish(server) for _ in range(30)] == [415] * 30
