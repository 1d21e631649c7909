"""Admission limits the HTTP layer enforces before any negotiation starts (contract 2, 7).

Negotiating a session (certificate, ICE gathering, SDP) is the most expensive thing a request
can make the server do, so two caps turn overload into ``503`` with ``Retry-After`` rather than
a server that falls over: ``MAX_PENDING_NEGOTIATIONS`` offers being answered at once, and
``MAX_SESSIONS`` sessions in all. Offers being negotiated count towards it (an admitted one
may count twice for a moment), so concurrent offers make it refuse a little early, never
late. Both 0 = no limit. Runs on the event loop only: plain counters, no locks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from aiohttp import web

from golive.http.errors import json_error

BUSY_RETRY_AFTER: Final = "1"
FULL_RETRY_AFTER: Final = "5"


class Busy(Exception):  # noqa: N818  an answer, not an error
    """Admission refused for now: ``response`` is the 503 to send."""

    def __init__(self, response: web.Response, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


class AdmissionLimits:
    def __init__(self, *, max_sessions: int, max_pending: int) -> None:
        self._max_sessions = max_sessions
        self._max_pending = max_pending
        self.pending = 0

    @contextmanager
    def negotiation(self, sessions: int) -> Iterator[None]:
        """Hold one negotiation slot while an offer is answered; raises :class:`Busy`.

        ``sessions`` is how many sessions exist now (admitted, answered or not)."""
        if self._max_pending and self.pending >= self._max_pending:
            raise Busy(
                json_error(
                    503, "too many sessions being set up, try again", _retry(BUSY_RETRY_AFTER)
                ),
                "busy",
            )
        if self._max_sessions and sessions + self.pending >= self._max_sessions:
            raise Busy(
                json_error(503, "server full, try again later", _retry(FULL_RETRY_AFTER)),
                "server_full",
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1


def _retry(seconds: str) -> dict[str, str]:
    return {"Retry-After": seconds}
