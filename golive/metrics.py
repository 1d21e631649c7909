"""Prometheus metrics: Go-Live's four series with their exact names and labels, plus golive's.

One :class:`Metrics` per server, on its own registry (no module-level collectors), so tests and
several servers in one process never mix their numbers. Collectors are thread-safe: actors
update them from their own threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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

    def forget_room(self, room: str) -> None:
        """Drop a finished room's label values, so label cardinality stays bounded."""
        for collector in (self.subscribers, self.rtp_bytes, self.rtp_packets):
            try:
                collector.remove(room)
            except KeyError:
                continue

    def render(self) -> bytes:
        return generate_latest(self.registry)


def create_metrics() -> Metrics:
    registry = CollectorRegistry()
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
            "RTP packets not forwarded to a viewer, by reason (backpressure: its socket was "
            "backed up).",
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
        keyframe_requests=Counter(
            "golive_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers, after coalescing.",
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
    )
