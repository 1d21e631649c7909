"""Fire-and-forget work on the event loop that is still waited for at shutdown and whose
failure is logged rather than lost (asyncio only warns about an unretrieved exception when
the task is garbage-collected, if ever)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)


class BackgroundTasks:
    def __init__(self, failure_event: str, *, level: Literal["warning", "error"] = "error") -> None:
        self._failure_event = failure_event  # what the log says when a task fails
        self._level = level
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the running loop; held until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_at = log.warning if self._level == "warning" else log.error
            log_at(self._failure_event, error=repr(task.exception()))

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109  the bound is the point
        """Wait (at most ``timeout`` seconds) for the tasks running now."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
