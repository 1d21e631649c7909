"""Prometheus metrics: Go-Live's four series with their exact names and labels, plus golive's.

One :class:`Metrics` per server, on its own registry (no module-level collectors), so tests and
several servers in one process never mix their numbers. Collectors are thread-safe: actors
update them from their own threads.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from dataclasses import dataclass

import pykka
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Seconds from an offer's POST to a milestone of its session (buckets for a join's stages).
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
#: How late the event loop runs a callback scheduled for now: the packet path's health.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    # Go-Live's, unchanged
    rooms: Gauge  # live_rooms
    subscribers: Gauge  # live_subscribers{room}
    rtp_bytes: Counter  # live_rtp_bytes_total{room}
    rtp_packets: Counter  # live_rtp_packets_total{room}
    # golive's
    sessions: Gauge  # golive_sessions{role}
    sessions_ended: Counter  # golive_sessions_ended_total{role,reason}
    join_refusals: Counter  # golive_join_refusals_total{role,reason}
    actor_crashes: Counter  # golive_actor_crashes_total{actor}
    packets_dropped: Counter  # golive_rtp_packets_dropped_total{reason}
    retransmitted: Counter  # golive_rtp_packets_retransmitted_total
    nacks: Counter  # golive_rtcp_nacks_received_total
    keyframe_requests: Counter  # golive_keyframe_requests_total
    takeovers: Counter  # golive_publisher_takeovers_total
    # hostile input refused on the media plane
    datagrams_dropped: Counter  # golive_media_datagrams_dropped_total{reason}
    receive_errors: Counter  # golive_media_receive_errors_total{error}
    retransmissions_refused: Counter  # golive_rtp_retransmissions_refused_total{reason}
    # recording and upload
    recordings_started: Counter  # golive_recordings_started_total{codec}
    recordings_finished: Counter  # golive_recordings_finished_total{codec}
    recordings_failed: Counter  # golive_recordings_failed_total{codec}
    recording_bytes: Counter  # golive_recording_bytes_written_total
    recording_frames_dropped: Counter  # golive_recording_frames_dropped_total{reason}
    uploads: Counter  # golive_uploads_total{outcome}
    upload_retries: Counter  # golive_upload_retries_total
    uploads_pending: Gauge  # golive_uploads_pending
    rate_limited: Counter  # golive_http_rate_limited_total{method}
    session_setup: Histogram  # golive_session_setup_seconds{role,stage}
    loop_lag: Histogram  # golive_event_loop_lag_seconds
    # HTTP connections (golive/http/connections.py)
    http_connections: Gauge  # golive_http_connections
    http_connections_refused: Counter  # golive_http_connections_refused_total
    http_connections_timed_out: Counter  # golive_http_connections_timed_out_total{reason}
    http_accept_failures: Counter  # golive_http_accept_failures_total
    # relays (golive/cluster/relay.py): rooms pulled from their owner for viewers here
    relays: Gauge  # golive_relays
    relays_started: Counter  # golive_relays_started_total
    relays_ended: Counter  # golive_relays_ended_total{reason}
    relay_pulls_failed: Counter  # golive_relay_pulls_failed_total{reason}

    def forget_room(self, room: str) -> None:
        """Drop a finished room's label values, so label cardinality stays bounded."""
        for collector in (self.subscribers, self.rtp_bytes, self.rtp_packets):
            try:
                collector.remove(room)
            except KeyError:
                continue

    def render(self) -> bytes:
        return generate_latest(self.registry)


LAG_INTERVAL = 0.5


async def watch_loop_lag(histogram: Histogram, interval: float = LAG_INTERVAL) -> None:
    """Sample, until cancelled, how late the running loop wakes a sleeper: a loop busy with
    packets or blocked by a slow call shows here before anything else does."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - due))


class ActorCollector(Collector):
    """Actors alive and messages waiting in their mailboxes, by kind, read at scrape time
    from pykka's registry (a mailbox that keeps growing is an actor that cannot keep up).
    pykka's registry is process-wide: with several servers in one process (tests), each
    reports them all."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alive: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for ref in pykka.ActorRegistry.get_all():
            kind = str(getattr(ref.actor_class, "actor_kind", ref.actor_class.__name__))
            alive[kind] = alive.get(kind, 0) + 1
            inbox = ref.actor_inbox  # a queue.Queue for pykka's threading actors
            depth = inbox.qsize() if isinstance(inbox, queue.Queue) else 0
            waiting[kind] = waiting.get(kind, 0) + depth
        actors = GaugeMetricFamily("golive_actors", "Actors alive, by kind.", labels=["actor"])
        mailbox = GaugeMetricFamily(
            "golive_actor_mailbox_messages",
            "Messages waiting in the mailboxes of actors of a kind (summed).",
            labels=["actor"],
        )
        for kind in sorted(alive):
            actors.add_metric([kind], alive[kind])
            mailbox.add_metric([kind], waiting[kind])
        yield actors
        yield mailbox

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def create_metrics() -> Metrics:
    registry = CollectorRegistry()
    registry.register(ActorCollector())
    # The process (CPU, memory, descriptors), platform (Python) and GC figures, as the
    # default registry would have them.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return Metrics(
        registry=registry,
        rooms=Gauge("live_rooms", "Rooms that currently exist.", registry=registry),
        subscribers=Gauge("live_subscribers", "Subscribers per room.", ["room"], registry=registry),
        rtp_bytes=Counter(
            "live_rtp_bytes", "RTP payload bytes forwarded, per room.", ["room"], registry=registry
        ),
        rtp_packets=Counter(
            "live_rtp_packets", "RTP packets forwarded, per room.", ["room"], registry=registry
        ),
        sessions=Gauge(
            "golive_sessions",
            "Sessions that currently exist, by role.",
            ["role"],
            registry=registry,
        ),
        sessions_ended=Counter(
            "golive_sessions_ended",
            "Sessions ended, by role and reason.",
            ["role", "reason"],
            registry=registry,
        ),
        join_refusals=Counter(
            "golive_join_refusals",
            "Publish or play requests refused by a room, by role and reason.",
            ["role", "reason"],
            registry=registry,
        ),
        actor_crashes=Counter(
            "golive_actor_crashes",
            "Actors that died of an unexpected error, by kind.",
            ["actor"],
            registry=registry,
        ),
        packets_dropped=Counter(
            "golive_rtp_packets_dropped",
            "RTP packets not forwarded, by reason (backpressure: a viewer's socket was backed "
            "up; ssrc_limit: the publisher used more SSRCs on a track than allowed).",
            ["reason"],
            registry=registry,
        ),
        retransmitted=Counter(
            "golive_rtp_packets_retransmitted",
            "RTP packets resent to viewers from the packet cache after a NACK.",
            registry=registry,
        ),
        nacks=Counter(
            "golive_rtcp_nacks_received", "NACKs received from viewers.", registry=registry
        ),
        datagrams_dropped=Counter(
            "golive_media_datagrams_dropped",
            "Datagrams dropped on media sockets before DTLS, SRTP or RTCP parsing, by reason "
            "(off_path: not from the session's ICE peer; short; not_media; malformed_stun).",
            ["reason"],
            registry=registry,
        ),
        receive_errors=Counter(
            "golive_media_receive_errors",
            "Datagrams from a session's own peer whose handling raised, dropped (the session "
            "goes on), by exception type.",
            ["error"],
            registry=registry,
        ),
        retransmissions_refused=Counter(
            "golive_rtp_retransmissions_refused",
            "Sequence numbers viewers NACKed that were not resent, by reason (duplicate, "
            "too_many, recent, budget, not_cached).",
            ["reason"],
            registry=registry,
        ),
        keyframe_requests=Counter(
            "golive_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers, after coalescing.",
            registry=registry,
        ),
        takeovers=Counter(
            "golive_publisher_takeovers",
            "Rooms taken over by a new publisher, their viewers kept (publisher reconnects).",
            registry=registry,
        ),
        recordings_started=Counter(
            "golive_recordings_started",
            "Recordings opened, one per recorded track, by codec.",
            ["codec"],
            registry=registry,
        ),
        recordings_finished=Counter(
            "golive_recordings_finished",
            "Recordings closed and finalized, by codec.",
            ["codec"],
            registry=registry,
        ),
        recordings_failed=Counter(
            "golive_recordings_failed",
            "Recordings that failed (disk error, recorder crash), by codec; what was written "
            "before the failure stays on disk.",
            ["codec"],
            registry=registry,
        ),
        recording_bytes=Counter(
            "golive_recording_bytes_written",
            "Bytes of media written to recording files.",
            registry=registry,
        ),
        recording_frames_dropped=Counter(
            "golive_recording_frames_dropped",
            "Frames not written to a recording, by reason (damaged: packets lost; "
            "before_keyframe: waiting for a keyframe to resume).",
            ["reason"],
            registry=registry,
        ),
        uploads=Counter(
            "golive_uploads",
            "Recording uploads to S3 by outcome (succeeded, or failed after every retry).",
            ["outcome"],
            registry=registry,
        ),
        upload_retries=Counter(
            "golive_upload_retries",
            "Upload attempts that failed and were retried after a backoff.",
            registry=registry,
        ),
        uploads_pending=Gauge(
            "golive_uploads_pending",
            "Recordings waiting to be uploaded (queued, in flight or backing off).",
            registry=registry,
        ),
        rate_limited=Counter(
            "golive_http_rate_limited",
            "Requests refused with 429 by the per-client-IP rate limit, by method.",
            ["method"],
            registry=registry,
        ),
        session_setup=Histogram(
            "golive_session_setup_seconds",
            "Seconds from a session's offer (POST) to a stage of its setup: connected (ICE and "
            "DTLS up), first_keyframe (a viewer's first video frame sent, a keyframe).",
            ["role", "stage"],
            buckets=SETUP_BUCKETS,
            registry=registry,
        ),
        loop_lag=Histogram(
            "golive_event_loop_lag_seconds",
            "How late the event loop (HTTP and every packet) ran a callback due now; sampled "
            "twice a second.",
            buckets=LAG_BUCKETS,
            registry=registry,
        ),
        http_connections=Gauge(
            "golive_http_connections", "HTTP connections open now.", registry=registry
        ),
        http_connections_refused=Counter(
            "golive_http_connections_refused",
            "HTTP connections closed as soon as accepted: HTTP_MAX_CONNECTIONS were open.",
            registry=registry,
        ),
        http_connections_timed_out=Counter(
            "golive_http_connections_timed_out",
            "HTTP connections closed by a timeout, by reason (header: request line and headers "
            "not complete in time; body: body not complete in time; keepalive: idle after a "
            "response).",
            ["reason"],
            registry=registry,
        ),
        http_accept_failures=Counter(
            "golive_http_accept_failures",
            "Connections the server could not accept: out of file descriptors (or memory).",
            registry=registry,
        ),
        relays=Gauge(
            "golive_relays",
            "Relay rooms live here: rooms pulled from their owner elsewhere in the cluster.",
            registry=registry,
        ),
        relays_started=Counter(
            "golive_relays_started", "Relay rooms that went live here.", registry=registry
        ),
        relays_ended=Counter(
            "golive_relays_ended",
            "Relay rooms ended, by reason (the origin's, origin_gone, relay_idle, shutdown...).",
            ["reason"],
            registry=registry,
        ),
        relay_pulls_failed=Counter(
            "golive_relay_pulls_failed",
            "Pulls of a room from its owner that failed, by reason (no_publisher: the owner "
            "has none; unavailable: unreachable, 5xx, timed out or an unusable answer; "
            "room_taken: the name is taken here).",
            ["reason"],
            registry=registry,
        ),
    )
