"""The soak's judgement (bench/soak.py): reading the server's figures, the baseline, the
tolerance, when the server has settled, and the report. No server: figures made here, a real
metrics registry, this process's own /proc."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from bench.soak import (
    CSV_FIELDS,
    FIGURES,
    Sample,
    Tolerance,
    baseline_of,
    departures,
    log_problems,
    parse_metrics,
    phase_spans,
    plot,
    process_figures,
    settled_at,
    slope_per_minute,
    summary_table,
    write_csv,
)
from golive.actors.base import GoliveActor
from golive.metrics import create_metrics

IDLE = {
    "rss_mib": 96.0,
    "fds": 7,
    "threads": 4,
    "actors": 1,
    "sessions": 0,
    "rooms": 0,
    "http_connections": 1,
}


def sample(t: float = 0.0, phase: str = "settle", /, **figures: float) -> Sample:
    """An idle server's sample, with ``figures`` changed."""
    values = {**IDLE, **figures}
    return Sample(
        t=t,
        phase=phase,
        rss_mib=values["rss_mib"],
        fds=int(values["fds"]),
        threads=int(values["threads"]),
        actors=int(values["actors"]),
        sessions=int(values["sessions"]),
        publishers=0,
        subscribers=int(values["sessions"]),
        rooms=int(values["rooms"]),
        http_connections=int(values["http_connections"]),
        mailbox=0,
        crashes=0,
        cpu_s=t / 10,
    )


class Probe(GoliveActor):
    actor_kind = "probe"


def test_metrics_are_read_from_a_real_registry() -> None:
    metrics = create_metrics()
    metrics.sessions.labels("publisher").set(2)
    metrics.sessions.labels("subscriber").set(5)
    metrics.rooms.set(2)
    metrics.http_connections.set(3)
    metrics.actor_crashes.labels("room").inc()
    metrics.sessions_ended.labels("subscriber", "ice_failed").inc(4)
    metrics.join_refusals.labels("publisher", "room_taken").inc()
    probes = [Probe.start() for _ in range(3)]
    try:
        scrape = parse_metrics(metrics.render().decode())
    finally:
        for probe in probes:
            probe.stop()
    assert (scrape.publishers, scrape.subscribers) == (2, 5)
    assert (scrape.rooms, scrape.http_connections, scrape.crashes) == (2, 3, 1)
    assert scrape.actor_kinds["probe"] == 3
    assert scrape.ended == {"subscriber/ice_failed": 4}
    assert scrape.refused == {"publisher/room_taken": 1}


def test_an_idle_registry_reads_as_nothing() -> None:
    scrape = parse_metrics(create_metrics().render().decode())
    assert (scrape.publishers, scrape.subscribers, scrape.rooms, scrape.crashes) == (0, 0, 0, 0)
    assert sum(scrape.actor_kinds.values()) == 0


def test_process_figures_come_from_proc() -> None:
    rss, fds, threads = process_figures(os.getpid())
    assert rss > 1
    assert fds >= 3  # stdin, stdout, stderr at least
    assert threads >= threading.active_count()
    read, write = os.pipe()
    try:
        assert process_figures(os.getpid())[1] == fds + 2
    finally:
        os.close(read)
        os.close(write)


def test_the_baseline_is_the_median_of_each_figure() -> None:
    baseline = baseline_of(
        [sample(rss_mib=90), sample(rss_mib=100, fds=9), sample(rss_mib=95, fds=7)]
    )
    assert baseline["rss_mib"] == 95
    assert baseline["fds"] == 7
    assert set(baseline) == set(FIGURES)
    with pytest.raises(ValueError, match="no baseline"):
        baseline_of([])


def test_departures_name_what_is_above_its_tolerance() -> None:
    baseline = baseline_of([sample()])
    tolerance = Tolerance(rss_mib=20.0, fds=2)
    assert departures(baseline, sample(rss_mib=116, fds=9), tolerance) == {}
    assert departures(baseline, sample(rss_mib=116.5, fds=10, sessions=1), tolerance) == {
        "rss_mib": 116.5,
        "fds": 10,
        "sessions": 1,
    }
    # below the baseline is not a leak
    assert departures(baseline, sample(threads=3, fds=5), tolerance) == {}


def test_sessions_actors_and_threads_must_come_back_exactly() -> None:
    baseline = baseline_of([sample()])
    for figure in ("sessions", "rooms", "actors", "threads", "http_connections"):
        assert departures(baseline, sample(**{figure: IDLE[figure] + 1}), Tolerance()) == {
            figure: IDLE[figure] + 1
        }


def test_settled_at_the_first_of_enough_samples_in_a_row() -> None:
    baseline = baseline_of([sample()])
    tolerance = Tolerance()
    samples = [
        sample(sessions=5),
        sample(),  # a run of one, broken
        sample(sessions=1),
        sample(),
        sample(),
        sample(),
        sample(),
    ]
    assert settled_at(samples, baseline, tolerance, hold=3) == 3
    assert settled_at(samples, baseline, tolerance, hold=1) == 1
    assert settled_at(samples, baseline, tolerance, hold=5) is None
    assert settled_at([], baseline, tolerance, hold=1) is None


def test_memory_that_stays_up_never_settles() -> None:
    baseline = baseline_of([sample()])
    samples = [sample(rss_mib=96 + 30) for _ in range(10)]
    assert settled_at(samples, baseline, Tolerance(rss_mib=24), hold=2) is None
    assert settled_at(samples, baseline, Tolerance(rss_mib=40), hold=2) == 0


def test_slope_per_minute() -> None:
    assert slope_per_minute([(0, 100), (60, 102), (120, 104)]) == pytest.approx(2.0)
    assert slope_per_minute([(t, 50) for t in range(0, 100, 2)]) == pytest.approx(0.0)
    assert slope_per_minute([(5, 1)]) is None
    assert slope_per_minute([(5, 1), (5, 2)]) is None


def test_log_problems_counts_levels_and_names_warnings() -> None:
    lines = [
        json.dumps({"level": "info", "event": "room created"}),
        json.dumps({"level": "error", "event": "actor crashed"}),
        json.dumps({"level": "error", "event": "actor crashed"}),
        json.dumps({"level": "warning", "event": "offer refused: overloaded\nmore"}),
        "Traceback (most recent call last):",
        json.dumps(["not", "an", "object"]),
    ]
    levels, events = log_problems(lines)
    assert levels == {"info": 1, "error": 2, "warning": 1, "not json": 1}
    assert events == {"error: actor crashed": 2, "warning: offer refused: overloaded": 1}


def test_phase_spans_reach_the_next_phase() -> None:
    samples = [sample(0, "idle"), sample(2, "idle"), sample(4, "churn"), sample(6, "settle")]
    assert phase_spans(samples) == [("idle", 0, 4), ("churn", 4, 6), ("settle", 6, 6)]


def test_the_table_says_what_came_back() -> None:
    samples = [
        sample(0, "idle"),
        sample(2, "baseline"),
        sample(4, "churn", sessions=10, rss_mib=110),
        sample(6, "settle", sessions=0, rss_mib=105),
    ]
    baseline = baseline_of([samples[1]])
    table = summary_table(samples, baseline, Tolerance(rss_mib=5), samples[3:])
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert rows["sessions"].endswith("ok")
    assert "10" in rows["sessions"]
    assert rows["rss_mib"].endswith("NOT BACK")
    assert "<= 101.0" in rows["rss_mib"]
    nothing_settled = summary_table(samples, baseline, Tolerance(), [])
    assert all(line.endswith("NOT BACK") for line in nothing_settled.splitlines()[1:])


def test_samples_are_written_as_csv(tmp_path: Path) -> None:
    samples = [sample(0, "idle"), sample(2, "churn", sessions=3)]
    path = tmp_path / "samples.csv"
    write_csv(samples, path)
    with path.open() as written:
        rows = list(csv.DictReader(written))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [(r["phase"], r["sessions"]) for r in rows] == [("idle", "0"), ("churn", "3")]
    assert "actor_kinds" not in CSV_FIELDS
    assert set(FIGURES) <= {f.name for f in dataclasses.fields(Sample)}


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    samples = [
        sample(t, phase, sessions=s, rss_mib=96 + s)
        for t, phase, s in [
            (0, "idle", 0),
            (2, "warm-up", 3),
            (4, "baseline", 0),
            (6, "churn", 12),
            (8, "churn", 9),
            (10, "settle", 0),
        ]
    ]
    path = tmp_path / "docs" / "soak.png"
    plot(samples, baseline_of(samples[2:3]), Tolerance(), path, "a soak")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
