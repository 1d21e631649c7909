"""Prometheus metrics: Go-Live's four series with their exact names and labels, plus golive's.

One :class:`Metrics` per server, on its own registry (no module-level collectors), so tests and
several servers in one process never mix their numbers. Collectors are thread-safe: actors
update them from their own threads.

In a cluster (``REDIS_URL``) the registry also holds ``golive_node_info{node,workers}`` (1).
With ``WORKERS`` > 1 the figures are the node's (:class:`ClusterScope` with a directory):
prometheus-client's multiprocess mode. Each worker writes its counters, gauges and histograms
to files in the node's private ``PROMETHEUS_MULTIPROC_DIR`` (made by the supervisor,
golive/cluster/workers.py, before it starts the workers, so prometheus-client reads it at
import), and ``/metrics`` on any worker reads them all and adds them up:

- counters and histograms are summed over the workers (those of a worker that died stay in,
  so they never go backwards); gauges that count something (rooms, sessions, subscribers,
  connections, uploads pending, actors) are the sum over the live workers (``livesum``);
- the event-loop lag histogram has a ``worker`` label: each worker's loop is its own, and a
  sum would hide the one that is stuck;
- what prometheus-client cannot add up across processes is per worker, with a ``worker``
  label: the process figures (``process_*``, read from ``/proc/<pid>`` of every live worker
  at scrape time; each worker announces its pid in the directory) and the garbage
  collector's (``python_gc_*``, counters each worker advances from ``gc.get_stats()`` every
  :data:`SAMPLE_INTERVAL`); ``golive_actors`` and ``golive_actor_mailbox_messages`` (pykka's
  registry is per process) are sampled as often into ``livesum`` gauges. ``python_info`` is
  the serving worker's (every worker runs the same interpreter);
- prometheus-client cannot remove a label value in this mode: a finished room's
  ``live_subscribers`` is set to 0 and its counters stay, until the node restarts.
"""

from __future__ import annotations

import asyncio
import gc
import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: Seconds from an offer's POST to a milestone of its session (buckets for a join's stages).
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
#: How late the event loop runs a callback scheduled for now: the packet path's health.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: The variable prometheus-client reads (at import) for its multiprocess mode's directory.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between a worker's samples of what only it can see (actors, GC) with WORKERS > 1.
SAMPLE_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class ClusterScope:
    """Whose figures a worker of a cluster reports: its node (``host:port``), its index, the
    node's number of workers, and, with more than one, the node's multiprocess directory."""

    node: str
    worker: int
    workers: int
    directory: Path | None = None


def pid_file(directory: Path, worker: int) -> Path:
    """Where worker ``worker`` announces its pid in the node's multiprocess directory."""
    return directory / f"worker-{worker}.pid"


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
    # instant start: the keyframe cache (golive/media/keyframes.py)
    keyframe_cache_bytes: Gauge  # golive_keyframe_cache_bytes
    keyframe_cache_dropped: Counter  # golive_keyframe_cache_dropped_total
    viewer_starts: Counter  # golive_viewer_starts_total{start}
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
    # WORKERS > 1: what a worker samples for the node (actors, GC); None otherwise
    sampler: WorkerSampler | None = None

    def forget_room(self, room: str) -> None:
        """Drop a finished room's label values, so label cardinality stays bounded (in
        multiprocess mode, which cannot drop them, its subscribers gauge goes to 0)."""
        if self.sampler is not None:
            self.subscribers.labels(room).set(0)
            return
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


ACTORS_HELP = "Actors alive, by kind."
MAILBOX_HELP = "Messages waiting in the mailboxes of actors of a kind (summed)."


def count_actors() -> tuple[dict[str, int], dict[str, int]]:
    """Actors alive and messages waiting in their mailboxes, by kind, in this process."""
    alive: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for ref in pykka.ActorRegistry.get_all():
        kind = str(getattr(ref.actor_class, "actor_kind", ref.actor_class.__name__))
        alive[kind] = alive.get(kind, 0) + 1
        inbox = ref.actor_inbox  # a queue.Queue for pykka's threading actors
        depth = inbox.qsize() if isinstance(inbox, queue.Queue) else 0
        waiting[kind] = waiting.get(kind, 0) + depth
    return alive, waiting


class ActorCollector(Collector):
    """Actors alive and messages waiting in their mailboxes, by kind, read at scrape time
    from pykka's registry (a mailbox that keeps growing is an actor that cannot keep up).
    pykka's registry is process-wide: with several servers in one process (tests), each
    reports them all."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alive, waiting = count_actors()
        actors = GaugeMetricFamily("golive_actors", ACTORS_HELP, labels=["actor"])
        mailbox = GaugeMetricFamily("golive_actor_mailbox_messages", MAILBOX_HELP, labels=["actor"])
        for kind in sorted(alive):
            actors.add_metric([kind], alive[kind])
            mailbox.add_metric([kind], waiting[kind])
        yield actors
        yield mailbox

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class WorkerProcessCollector(Collector):
    """The process figures (``process_*``) of every live worker of the node, each with its
    ``worker`` label, read at scrape time from ``/proc/<pid>`` of the pids the workers
    announced in the node's multiprocess directory (a pid no longer alive shows nothing)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for path in sorted(self._directory.glob("worker-*.pid")):
            worker = path.stem.removeprefix("worker-")
            try:
                pid = int(path.read_text())
            except (OSError, ValueError):  # gone, or being replaced
                continue
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class WorkerSampler:
    """What one worker alone can see, written every :data:`SAMPLE_INTERVAL` into the node's
    multiprocess files: its actors and mailboxes (``livesum`` gauges) and its garbage
    collector's counts (counters with its ``worker`` label, advanced by what changed)."""

    def __init__(self, worker: int) -> None:
        self._worker = str(worker)
        self.actors = Gauge(
            "golive_actors", ACTORS_HELP, ["actor"], registry=None, multiprocess_mode="livesum"
        )
        self.mailbox = Gauge(
            "golive_actor_mailbox_messages",
            MAILBOX_HELP,
            ["actor"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self._gc = {
            key: Counter(name, help_text, ["worker", "generation"], registry=None)
            for key, name, help_text in (
                ("collected", "python_gc_objects_collected", "Objects collected during gc"),
                (
                    "uncollectable",
                    "python_gc_objects_uncollectable",
                    "Uncollectable objects found during GC",
                ),
                (
                    "collections",
                    "python_gc_collections",
                    "Number of times this generation was collected",
                ),
            )
        }
        self._gc_seen: dict[tuple[str, int], int] = {}
        self._kinds: set[str] = set()

    def sample(self) -> None:
        alive, waiting = count_actors()
        for kind in self._kinds - alive.keys():  # none left of a kind seen before
            self.actors.labels(kind).set(0)
            self.mailbox.labels(kind).set(0)
        self._kinds |= alive.keys()
        for kind, count in alive.items():
            self.actors.labels(kind).set(count)
            self.mailbox.labels(kind).set(waiting[kind])
        for generation, stats in enumerate(gc.get_stats()):
            for key, counter in self._gc.items():
                value = int(stats[key])
                delta = value - self._gc_seen.get((key, generation), 0)
                self._gc_seen[key, generation] = value
                if delta > 0:
                    counter.labels(self._worker, str(generation)).inc(delta)

    async def run(self, interval: float = SAMPLE_INTERVAL) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(interval)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def announce_worker(directory: Path, worker: int) -> None:
    """Write this process's pid as worker ``worker``'s, atomically (a scrape never reads half
    a file)."""
    path = pid_file(directory, worker)
    partial = path.with_suffix(".tmp")
    partial.write_text(str(os.getpid()))
    partial.replace(path)


def create_metrics(cluster: ClusterScope | None = None) -> Metrics:
    """The server's metrics; with ``cluster``, those of a worker of a node (see the module's
    docstring: with a multiprocess directory they are the node's)."""
    directory = cluster.directory if cluster is not None else None
    registry = CollectorRegistry()
    sampler: WorkerSampler | None = None
    if cluster is not None and directory is not None:
        if os.environ.get(MULTIPROC_DIR_ENV) != str(directory):
            raise RuntimeError(
                f"{MULTIPROC_DIR_ENV} must name {directory} before prometheus-client is imported"
            )
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]  # prometheus-client's
        registry.register(WorkerProcessCollector(directory))
        PlatformCollector(registry=registry)
        sampler = WorkerSampler(cluster.worker)
        announce_worker(directory, cluster.worker)
    else:
        registry.register(ActorCollector())
        # The process (CPU, memory, descriptors), platform (Python) and GC figures, as the
        # default registry would have them.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    if cluster is not None:
        Gauge(
            "golive_node_info",
            "This node of a cluster: its name (NODE_URL's host:port) and its workers; always 1.",
            ["node", "workers"],
            registry=None if sampler is not None else registry,
            multiprocess_mode="livemax",
        ).labels(cluster.node, str(cluster.workers)).set(1)
    return _metrics(registry, sampler, cluster)


def _metrics(
    exposed: CollectorRegistry, sampler: WorkerSampler | None, cluster: ClusterScope | None
) -> Metrics:
    # With several workers the metrics live in the multiprocess files, read by the exposed
    # registry's MultiProcessCollector; registered there as well, each would be read twice.
    registry = None if sampler is not None else exposed
    loop_lag = Histogram(
        "golive_event_loop_lag_seconds",
        "How late the event loop (HTTP and every packet) ran a callback due now; sampled "
        "twice a second.",
        ["worker"] if sampler is not None else (),
        buckets=LAG_BUCKETS,
        registry=registry,
    )
    if sampler is not None:
        assert cluster is not None
        loop_lag = loop_lag.labels(str(cluster.worker))
    return Metrics(
        registry=exposed,
        sampler=sampler,
        rooms=Gauge(
            "live_rooms",
            "Rooms that currently exist.",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        subscribers=Gauge(
            "live_subscribers",
            "Subscribers per room.",
            ["room"],
            registry=registry,
            multiprocess_mode="livesum",
        ),
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
            multiprocess_mode="livesum",
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
        keyframe_cache_bytes=Gauge(
            "golive_keyframe_cache_bytes",
            "Bytes held by the video tracks' keyframe caches (the packets since each track's "
            "last keyframe, to start viewers at once; at most KEYFRAME_CACHE_BYTES a track).",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        keyframe_cache_dropped=Counter(
            "golive_keyframe_cache_dropped",
            "Keyframe caches emptied for holding more than KEYFRAME_CACHE_BYTES (viewers who "
            "join then wait for the next keyframe).",
            registry=registry,
        ),
        viewer_starts=Counter(
            "golive_viewer_starts",
            "Viewers' video started, by how: cache (at once, on the cached keyframe, then "
            "brought up to live) or keyframe (on a keyframe as it arrived: cache off, empty, or "
            "a new publisher).",
            ["start"],
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
            multiprocess_mode="livesum",
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
            "DTLS up), first_keyframe (a viewer's first video frame sent, a keyframe), "
            "live (a viewer started from the keyframe cache has been sent all of it: it is "
            "live).",
            ["role", "stage"],
            buckets=SETUP_BUCKETS,
            registry=registry,
        ),
        loop_lag=loop_lag,
        http_connections=Gauge(
            "golive_http_connections",
            "HTTP connections open now.",
            registry=registry,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livesum",
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
