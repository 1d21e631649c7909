"""The cluster bench's judgement (bench/cluster.py): its steps, the node's processes found in
/proc, loss and CPU per delivered packet (per worker too), the capacity at < 0.5 % loss, the
relay's cost, and the report. No node: figures made here, real child processes for /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from bench.cluster import (
    acceptable,
    by_worker,
    capacity,
    loss_pct,
    node_processes,
    parent_of,
    process_cpu,
    relay_cost,
    step_figures,
    steps_from,
    summary,
    worker_index,
    worker_of,
)


def viewer(
    worker: str | None = "127.0.0.1:8080/0",
    *,
    received: int = 1000,
    expected: int = 1000,
    connected: bool = True,
    receiving: bool = True,
    error: str | None = None,
) -> dict[str, Any]:
    """One viewer as bench.viewers reports it."""
    return {
        "worker": worker,
        "to_rtp_ms": 40.0 if connected else None,
        "received": received,
        "expected": expected,
        "receiving_at_end": receiving,
        "error": error,
    }


def step(audience: int, delivered: float | None, loss: float | None, **more: Any) -> dict[str, Any]:
    return {
        "audience": audience,
        "connected": more.pop("connected", audience),
        "alive": more.pop("alive", True),
        "delivered_per_s": delivered,
        "loss_pct": loss,
        "us_per_packet": more.pop("us", 5.0),
        **more,
    }


def test_steps_are_growing_audiences() -> None:
    assert steps_from("150, 300,450") == [150, 300, 450]
    for wrong in ("", "0,10", "100,100", "200,100"):
        with pytest.raises(ValueError, match="growing"):
            steps_from(wrong)


def test_the_serving_worker_is_read_from_its_header() -> None:
    assert worker_index("127.0.0.1:8080/1") == 1
    assert worker_index("node.example:443/12") == 12
    assert worker_index(None) is None
    assert worker_index("127.0.0.1:8080/") is None


def test_proc_entries_name_the_worker_and_the_parent() -> None:
    assert worker_of(b"PATH=/bin\0GOLIVE_WORKER=3\0HOME=/root\0") == 3
    assert worker_of(b"PATH=/bin\0GOLIVE_WORKERS=3\0") is None
    assert worker_of(b"") is None
    # a command with spaces and parentheses in its name: the fields after the last ")"
    assert parent_of("4242 (golive (w 1)) S 4100 4242 4100 0 -1") == 4100


def test_the_workers_are_the_supervisors_children_by_their_index() -> None:
    """Real children of this process, with and without GOLIVE_WORKER: only the workers are
    found, by index; with one worker the node is its one process."""
    sleeper = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    env = dict(os.environ)
    children = [
        subprocess.Popen(sleeper, stdin=subprocess.PIPE, env={**env, "GOLIVE_WORKER": "1"}),
        subprocess.Popen(sleeper, stdin=subprocess.PIPE, env={**env, "GOLIVE_WORKER": "0"}),
        subprocess.Popen(sleeper, stdin=subprocess.PIPE, env=env),
    ]
    try:
        me = os.getpid()
        assert node_processes(me, 2) == {
            "supervisor": me,
            "worker0": children[1].pid,
            "worker1": children[0].pid,
        }
        assert node_processes(me, 3) == {}  # not every worker there yet
        assert node_processes(me, 1) == {"worker0": me}
    finally:
        for child in children:
            child.communicate(timeout=10)


def test_process_cpu_counts_every_thread_in_nanoseconds() -> None:
    before = process_cpu(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    spent = process_cpu(os.getpid()) - before
    assert 0.04 < spent < 5  # (finer than a clock tick, and this process's own)


def test_loss_counts_what_connected_viewers_missed() -> None:
    viewers = [viewer(received=990, expected=1000), viewer(received=1000, expected=1000)]
    assert loss_pct(viewers, sent=1000) == pytest.approx(0.5)
    # one that never connected is not counted; one that stopped expected what was sent
    assert loss_pct([*viewers, viewer(connected=False)], sent=1000) == pytest.approx(0.5)
    stopped = viewer(received=500, expected=500, receiving=False)
    assert loss_pct([stopped], sent=1000) == pytest.approx(50.0)
    assert loss_pct([viewer(connected=False)], sent=1000) is None


def test_viewers_and_packets_per_serving_worker() -> None:
    viewers = [
        viewer("n/0", expected=100),
        viewer("n/1", expected=120),
        viewer("n/1", expected=130),
        viewer("n/1", connected=False, error="POST 503"),
        viewer(None, connected=False, error="timeout"),
    ]
    assert by_worker(viewers) == {0: (1, 100), 1: (2, 250)}


def test_step_figures_share_the_node_cpu_over_delivered_packets() -> None:
    viewers = [
        viewer("n/0", received=3000, expected=3000),
        viewer("n/1", received=3000, expected=3000),
    ]
    figures = step_figures(
        audience=2,
        viewers=viewers,
        sent=3000,
        cpu={"supervisor": 0.001, "worker0": 0.03, "worker1": 0.02},
        seconds=10.0,
        delivered=6000,
        owner=0,
        alive=True,
    )
    assert figures["delivered_per_s"] == pytest.approx(600)
    assert figures["us_per_packet"] == pytest.approx(0.051 / 6000 * 1e6)
    assert figures["node_cpu_cores"] == pytest.approx(0.0051)
    assert figures["supervisor_cpu_cores"] == pytest.approx(0.0001)
    assert figures["loss_pct"] == 0.0
    assert figures["workers"]["0"] == {
        "viewers": 1,
        "owner": True,
        "cpu_cores": pytest.approx(0.003),
        "us_per_packet": pytest.approx(10.0),
    }
    assert figures["workers"]["1"]["owner"] is False
    assert figures["workers"]["1"]["us_per_packet"] == pytest.approx(0.02 / 3000 * 1e6)
    # a room that ended: nothing per packet
    dead = step_figures(
        audience=2, viewers=viewers, sent=3000, cpu={"worker0": 0.03}, seconds=10.0,
        delivered=6000, owner=0, alive=False,
    )  # fmt: skip
    assert dead["delivered_per_s"] is None
    assert dead["us_per_packet"] is None
    assert not acceptable(dead)


def test_capacity_is_the_most_delivered_at_acceptable_loss() -> None:
    steps = [
        step(150, 38_000, 0.0),
        step(300, 77_000, 0.2),
        step(450, 90_000, 0.7),  # too much loss
    ]
    assert acceptable(steps[1])
    assert not acceptable(steps[2])
    assert capacity(steps) == steps[1]
    # viewers that did not connect, a room that ended, no loss figure: not acceptable
    assert not acceptable(step(600, 120_000, 0.1, connected=590))
    assert not acceptable(step(600, 120_000, 0.1, alive=False))
    assert not acceptable(step(600, 120_000, None))
    assert capacity([step(150, 38_000, 0.6)]) is None
    # the step stopping at the limit exactly is over it
    assert not acceptable(step(150, 38_000, 0.5))


def test_the_relay_cost_is_what_serving_through_it_adds_per_packet() -> None:
    """Windows of 1000 packets sent each; the owner (worker 1) ingests the publisher at
    10 µs a packet, a delivery costs 4 µs, the relay's pull costs the owner 4 µs, the
    relay's ingest 12 µs, and the other worker idles at 1 µs a packet's time."""
    viewers = 25
    windows = {
        "A": {"worker0": 0.001, "worker1": 0.010},
        "B": {"worker0": 0.001, "worker1": 0.010 + viewers * 0.004},
        "C": {"worker0": 0.001 + 0.012 + viewers * 0.004, "worker1": 0.010 + 0.004},
    }
    cost = relay_cost(windows, owner=1, sent={"A": 1000, "B": 1000, "C": 1000})
    assert cost["relay_added_us"] == pytest.approx(16.0)  # the pull and the ingest
    assert cost["owner_pull_us"] == pytest.approx(4.0)
    assert cost["relay_ingest_us"] == pytest.approx(12.0)
    assert cost["owner_idle_us"] == pytest.approx(10.0)
    assert cost["other_idle_us"] == pytest.approx(1.0)
    # per packet sent: a window that saw twice the packets costs twice the CPU, no more
    doubled = {k: {w: v * 2 for w, v in window.items()} for k, window in windows.items()}
    again = relay_cost(doubled, owner=1, sent={"A": 2000, "B": 2000, "C": 2000})
    assert again["relay_added_us"] == pytest.approx(16.0)


def test_the_report_names_capacity_steps_workers_and_the_relay() -> None:
    def run(best: float) -> dict[str, Any]:
        workers = {
            "0": {"viewers": 75, "owner": True, "cpu_cores": 0.2, "us_per_packet": 5.5},
            "1": {"viewers": 75, "owner": False, "cpu_cores": 0.2, "us_per_packet": 5.0},
        }
        figures = {
            "node_cpu_cores": 0.4,
            "loader_cpu_cores": 0.3,
            "loader_cpu_max_cores": 0.3,
            "udp_drops_at_node": 0,
            "udp_drops_at_viewers": 0,
            "loop_waiting_pct": 1.0,
            "workers": workers,
        }
        return {
            "steps": [step(150, best, 0.0, **figures), step(300, 2 * best, 1.0, **figures)],
            "relay": {
                "relay_added_us": 15.0,
                "owner_pull_us": 4.0,
                "relay_ingest_us": 11.0,
                "owner_us_per_delivered": 6.0,
                "relay_us_per_delivered": 7.0,
            },
        }

    lines = summary({2: [run(38_000), run(40_000), run(39_000)]})
    text = "\n".join(lines)
    assert "WORKERS=2: most delivered/s at loss < 0.5 %: 39 000 packets/s" in text
    assert "N=150 (3 run(s)): 39 000 pkt/s" in text
    assert "the owner: 75 viewers, 5.50 µs/pkt" in text
    assert "the others: 75 viewers, 5.00 µs/pkt" in text
    assert "it adds 15.0 µs per packet of the room" in text
    none = summary({1: [{"steps": [step(150, 38_000, 0.9)], "relay": None}]})
    assert "most delivered/s at loss < 0.5 %: - packets/s" in none[0]
