"""Collecting what ended sessions leave behind.

An ended session's peer connection, transports and tracks refer to one another (aiortc's
event handlers, the receivers' sinks): reference counting alone frees none of it, only a
full collection of the cyclic garbage collector does. CPython runs one when the objects
that survived collections since the last grow past a quarter of those that had survived
before, which with the start-up objects frozen (``gc.freeze()``) came about every 140 s under
the soak's churn: by then a hundred ended sessions (about 50 MiB) were waiting for it.

:class:`SessionGarbage` applies the same rule counted in sessions: a full collection once
the sessions ended since the last one reach a quarter of those still live (at least
:data:`MINIMUM_ENDED`), and as soon as none is left. Its cost grows with the live sessions
(every tracked object is visited), so the collections get rarer as the server gets busier,
as CPython's own do.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

MINIMUM_ENDED = 8  # ended sessions that may wait for a collection, whatever the load
SHARE_OF_LIVE = 0.25  # ... or this share of the live sessions, if more


class SessionGarbage:
    def __init__(
        self,
        *,
        minimum: int = MINIMUM_ENDED,
        share: float = SHARE_OF_LIVE,
        collect: Callable[[], int] = gc.collect,
    ) -> None:
        self._minimum = minimum
        self._share = share
        self._collect = collect
        self._ended = 0  # sessions ended since the last collection
        self._scheduled: asyncio.Handle | None = None

    def session_ended(self, live: int) -> None:
        """A session ended; ``live`` are still there. On the loop."""
        self._ended += 1
        due = live == 0 or self._ended >= max(self._minimum, self._share * live)
        if due and self._scheduled is None:  # (after the callbacks closing it have run)
            self._scheduled = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = None
        ended, self._ended = self._ended, 0
        started = time.perf_counter()
        freed = self._collect()
        log.debug(
            "garbage of ended sessions collected",
            sessions=ended,
            objects=freed,
            seconds=round(time.perf_counter() - started, 4),
        )

    def close(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
