"""What one session may ask of the server: hard caps on offers, trickled candidates, SSRCs and
retransmissions, so that no client can make the event loop work without bound.

aiortc's SDP parser and aioice's candidate handling are quadratic in places (SSRC and codec
lookups scan lists; every remote candidate re-sorts the check list), and every room's media
waits while they run. :func:`check_offer` and :func:`count_candidates` read the text once,
line by line, before aiortc sees it, and refuse what exceeds a cap with
:class:`LimitExceededError` (HTTP 413 with the reason): under the caps the work is small
(``bench`` and ``tests/media/test_hostile_sdp.py`` measure it).

The caps are far above what real clients send: Chromium's offer has 2-3 media sections,
about 170 codec lines in its video section, 4-8 SSRC lines and a dozen candidates at most;
OBS and GStreamer send fewer.
"""

from __future__ import annotations

from typing import Final

#: Lines in an SDP offer (Chromium's has about 100 per media section).
MAX_OFFER_LINES: Final = 4000
#: Media sections (``m=`` lines) in an offer: tracks per session are at most this.
MAX_MEDIA_SECTIONS: Final = 16
#: Payload types listed on one ``m=`` line (there are only 128 RTP payload types).
MAX_FORMATS_PER_SECTION: Final = 128
#: ``a=rtpmap``, ``a=fmtp`` and ``a=rtcp-fb`` lines in one media section.
MAX_CODEC_LINES_PER_SECTION: Final = 512
#: ``a=ssrc`` and ``a=ssrc-group`` lines in an offer.
MAX_SSRC_LINES: Final = 64
#: ICE candidates a session may give, in its offer and trickled by PATCH together (each one
#: is paired with the server's and checked: a cap on the STUN checks it can aim anywhere).
MAX_CANDIDATES_PER_SESSION: Final = 64

#: SSRCs a published track may use (its media and RTX streams, and a few restarts); packets
#: of further SSRCs are dropped and counted, and leave no state behind.
MAX_SSRCS_PER_TRACK: Final = 8

#: At most this many distinct sequence numbers of one NACK packet are considered.
MAX_NACK_SEQUENCES: Final = 128
#: A viewer's retransmissions may take this share of the track's incoming byte rate...
RTX_BUDGET_SHARE: Final = 0.25
#: ...saved up for at most this long (a burst after an outage), and never less than this
#: many bytes a second (before the track's rate is known, and for audio).
RTX_BUDGET_SECONDS: Final = 1.0
RTX_BUDGET_MIN_RATE: Final = 16_000
#: A packet is resent to the same viewer at most once in this many seconds.
RTX_RESEND_INTERVAL: Final = 0.1

#: RTCP bytes a session's peer may send a second, and save up (a second's worth). Real peers
#: send a few hundred (reports once a second, NACKs and PLIs as needed); handling a NACK costs
#: about 0.5 ms per kB (aiortc's parser expands each 4-byte entry into 17 numbers), so a flood
#: of RTCP from one peer costs the loop at most about 10 ms a second.
RTCP_BYTES_PER_SECOND: Final = 20_000


class ByteBudget:
    """A token bucket of bytes: refilled at ``rate`` bytes a second (the caller's, each time:
    it may follow a stream's measured rate), holding at most ``seconds`` of it, full at
    first."""

    __slots__ = ("_seconds", "_tokens", "_updated")

    def __init__(self, rate: float, seconds: float, now: float) -> None:
        self._seconds = seconds
        self._tokens = rate * seconds
        self._updated = now

    def take(self, size: int, rate: float, now: float) -> bool:
        """Spend ``size`` bytes if the budget holds them."""
        self._tokens = min(rate * self._seconds, self._tokens + rate * (now - self._updated))
        self._updated = now
        if size > self._tokens:
            return False
        self._tokens -= size
        return True


class LimitExceededError(ValueError):
    """An offer or a trickle fragment asks for more than a cap allows: 413 with the reason."""


_CODEC_ATTRIBUTES: Final = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")
_SSRC_ATTRIBUTES: Final = ("a=ssrc:", "a=ssrc-group:")


def check_offer(sdp: str) -> None:
    """Refuse an offer beyond any cap (:class:`LimitExceededError`, naming the cap). One pass
    over the lines, nothing else."""
    lines = sdp.splitlines()
    if len(lines) > MAX_OFFER_LINES:
        raise LimitExceededError(f"the offer has more than {MAX_OFFER_LINES} lines")
    sections = codec_lines = ssrc_lines = candidates = 0  # codec lines: of the current section
    for line in lines:
        if line.startswith("m="):
            sections += 1
            if sections > MAX_MEDIA_SECTIONS:
                raise LimitExceededError(f"the offer has more than {MAX_MEDIA_SECTIONS} m-lines")
            if len(line.split()) - 3 > MAX_FORMATS_PER_SECTION:
                raise LimitExceededError(
                    f"an m-line lists more than {MAX_FORMATS_PER_SECTION} payload types"
                )
            codec_lines = 0
        elif line.startswith(_CODEC_ATTRIBUTES):
            codec_lines += 1
            if codec_lines > MAX_CODEC_LINES_PER_SECTION:
                raise LimitExceededError(
                    f"a media section has more than {MAX_CODEC_LINES_PER_SECTION} "
                    "rtpmap/fmtp/rtcp-fb lines"
                )
        elif line.startswith(_SSRC_ATTRIBUTES):
            ssrc_lines += 1
            if ssrc_lines > MAX_SSRC_LINES:
                raise LimitExceededError(f"the offer has more than {MAX_SSRC_LINES} ssrc lines")
        elif line.startswith("a=candidate:"):
            candidates += 1
            if candidates > MAX_CANDIDATES_PER_SESSION:
                raise LimitExceededError(too_many_candidates())


def too_many_candidates() -> str:
    return f"more than {MAX_CANDIDATES_PER_SESSION} ICE candidates for one session"
