"""The instant-start bench (bench/instant.py): its judgement on figures made here (playout delay
per frame over a window, the join's phase in the keyframe interval, a run's figures, medians,
the table), and one small run end to end (a server, the OBS-like publisher, Chromium viewers)
in the loopback namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.instant import (
    Configuration,
    Joined,
    delay_per_frame,
    medians,
    phase_of,
    run_figures,
    table,
)
from tests.support import require_loopback_namespace
from tests.web.instant import Keyframe


def sample(t: float, delay: float | None, emitted: int | None, **more: int) -> dict[str, Any]:
    """A stats read as instant.js records it: ``t`` wall-clock ms, delay in seconds."""
    return {"t": t, "jitterBufferDelay": delay, "jitterBufferEmittedCount": emitted, **more}


def test_delay_per_frame_is_the_window_s_delay_over_its_frames() -> None:
    samples = [
        sample(900.0, 1.0, 10),
        sample(1000.0, 2.0, 20),  # the last read at or before the start
        sample(1500.0, 4.0, 35),
        sample(2000.0, 5.0, 50),  # the last at or before the end
        sample(2100.0, 9.0, 51),
    ]
    assert delay_per_frame(samples, 1050.0, 2050.0) == pytest.approx(3.0 / 30 * 1e3)
    assert delay_per_frame(samples, 1000.0, 2000.0) == pytest.approx(100.0)


def test_no_delay_without_a_read_before_the_window_or_a_frame_in_it() -> None:
    samples = [sample(1000.0, 2.0, 20), sample(2000.0, 2.0, 20)]
    assert delay_per_frame(samples, 500.0, 2000.0) is None  # nothing read before the start
    assert delay_per_frame(samples, 1000.0, 2000.0) is None  # no frame emitted meanwhile
    waiting = [sample(1000.0, None, None), sample(2000.0, 0.5, 10)]  # no frame yet at the start
    assert delay_per_frame(waiting, 1000.0, 2000.0) is None
    assert delay_per_frame([], 0.0, 1.0) is None


def test_the_phase_is_the_time_since_the_last_keyframe_before_the_post() -> None:
    keyframes = [Keyframe(0, 100.0), Keyframe(1, 104.0), Keyframe(2, 108.0)]
    assert phase_of(keyframes, 105_500.0) == pytest.approx(1.5)
    assert phase_of(keyframes, 104_000.0) == pytest.approx(0.0)
    assert phase_of(keyframes, 99_000.0) is None


def joined(
    posted: float, first: float | None, *, offset: float = 0.0, reads: int = 60, **last: int
) -> Joined:
    """A viewer that POSTed at ``posted`` ms, decoded at ``first``, whose jitter buffer held
    each frame 50 ms + ``offset`` ms from its first frame on (``reads`` reads, one every
    100 ms)."""
    samples = []
    if first is not None:
        for step in range(reads):
            t = first + step * 100
            frames = step * 3
            samples.append(sample(t, frames * (0.05 + offset / 1e3), frames))
    if samples:
        samples[-1].update(last)
    return Joined(posted, 1.0, first, samples)


def test_a_run_s_figures() -> None:
    reference = joined(0.0, 0.0, reads=500).samples  # 50 s
    joins = [
        joined(10_000.0, 10_100.0, offset=20.0),
        joined(20_000.0, 20_300.0, offset=-10.0, freezeCount=1, pliCount=2, firCount=1),
        joined(30_000.0, 30_200.0, offset=100.0),
        joined(40_000.0, None),  # never decoded
    ]
    figures = run_figures(joins, reference, requests=6, seconds=12.0, starts={"cache": 3.0})
    assert (figures["joins"], figures["failed"]) == (4, 1)
    assert figures["first_frame_ms"] == [100.0, 300.0, 200.0]
    assert (figures["first_frame_p50_ms"], figures["first_frame_p99_ms"]) == (200.0, 300.0)
    assert figures["playout_vs_reference_ms"] == pytest.approx([20.0, -10.0, 100.0])
    assert figures["playout_vs_reference_n"] == 3
    assert figures["playout_vs_reference_p50_ms"] == pytest.approx(20.0)
    assert figures["playout_vs_reference_max_ms"] == pytest.approx(100.0)
    assert figures["playout_vs_reference_abs_max_ms"] == pytest.approx(100.0)
    assert figures["keyframe_requests_per_s"] == pytest.approx(0.5)
    assert (figures["freezes"], figures["keyframe_asks"]) == (1, 3)
    assert figures["started_from_cache_pct"] == pytest.approx(100.0)
    without = run_figures(joins, reference, requests=0, seconds=12.0, starts={})
    assert without["started_from_cache_pct"] is None


def test_medians_over_runs_and_the_table() -> None:
    runs: list[dict[str, Any]] = [
        {"first_frame_p50_ms": 100.0, "failed": 0, "errors": [], "phases_s": [1.0]},
        {"first_frame_p50_ms": 300.0, "failed": 1, "errors": ["x"], "phases_s": [2.0]},
        {"first_frame_p50_ms": None, "failed": 0, "errors": [], "phases_s": []},
    ]
    assert medians(runs) == {"first_frame_p50_ms": 200.0, "failed": 0}
    text = table({Configuration("h264", "off"): medians(runs)})
    assert "H.264, cache off" in text
    assert "POST → first frame" in text
    assert "200 / -" in text  # p50, and no p99 in these runs


@pytest.mark.timeout(150)
def test_a_small_run_end_to_end(tmp_path: Path) -> None:
    require_loopback_namespace()
    output = tmp_path / "instant.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "bench.instant", "--runs", "1", "--joins", "2"),
            *("--at-once", "2", "--codecs", "h264", "--cache", "on", "--interval", "1"),
            *("--json", str(output)),
        ],
        check=True,
        timeout=140,
        stdout=subprocess.DEVNULL,
    )
    document = json.loads(output.read_text())
    (configuration,) = document["configurations"]
    assert configuration["label"] == "H.264, cache on"
    (run,) = configuration["runs"]
    assert (run["joins"], run["failed"], run["errors"]) == (2, 0, [])
    assert len(run["first_frame_ms"]) == 2
    assert run["playout_vs_reference_n"] >= 1
    assert run["keyframe_requests"] >= 0
    assert configuration["median"]["first_frame_p50_ms"] == run["first_frame_p50_ms"]
