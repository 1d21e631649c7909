"""The soak's load (bench/churn.py): its garbage is what it says it is (near the body limit,
past golive's caps), and every kind of request it makes gets the answer it expects from a real
server: the warm-up (one of everything) as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

import pytest

from bench.churn import (
    GARBAGE,
    Tally,
    fragment,
    junk_sdp,
    large_offer,
    real_offer,
)
from golive.http.whip import MAX_BODY
from golive.media.limits import MAX_OFFER_LINES
from golive.media.peers import InvalidOfferError, parse_offer
from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.asyncio
async def test_a_large_offer_is_within_the_body_limit_and_past_the_line_cap() -> None:
    offer, pc = await real_offer()
    await pc.close()
    body = large_offer(offer, MAX_BODY - 100)
    assert MAX_BODY - 400 < len(body) <= MAX_BODY
    assert body.count(b"\r\n") > MAX_OFFER_LINES
    assert body.decode().endswith(offer[offer.index("m=") :])


def test_a_fragment_has_its_candidates() -> None:
    lines = fragment("u", 5).decode().splitlines()
    assert lines[0] == "a=ice-ufrag:u"
    assert sum(1 for line in lines if line.startswith("a=candidate:")) == 5


def test_junk_is_not_an_offer() -> None:
    for seed in range(20):
        with pytest.raises(InvalidOfferError):
            parse_offer(junk_sdp(random.Random(seed)).decode())  # noqa: S311  test data


def test_tally_keeps_the_unexpected() -> None:
    tally = Tally()
    tally.note("play", 201, (201,))
    tally.note("play", 500, (201, 404))
    tally.note("garbage over_limit", "ClientOSError", (413, "ClientOSError"))
    assert tally.counts == {"play 201": 1, "play 500": 1, "garbage over_limit ClientOSError": 1}
    assert tally.unexpected == ["play: 500"]


@pytest.mark.asyncio
async def test_the_warmup_gets_every_answer_it_expects(server: ServerThread) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.churn",
        "--base",
        server.url,
        "--warmup",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    events = [json.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["unexpected"] == []
    counts = stopped["counts"]
    assert counts["publish 201"] == 1
    assert counts["play 201"] == 2
    assert counts["viewer delete 200"] == 2
    assert counts["publisher delete 200"] == 1
    sent = {key.split()[1] for key in counts if key.startswith("garbage ")}
    # every kind but the stalled body (30 s for its 408), bad PATCHes under their own names
    assert sent >= set(GARBAGE) - {"stalled_body", "bad_patch"}
    assert any(kind.startswith("patch_") for kind in sent)
