"""``/debug/``: what the process is doing, for an operator chasing a stall, a leak or a hot path.

Off by default: with ``PPROF`` unset no ``/debug/`` route exists (the app's usual 404 JSON).
With ``PPROF=1`` these answer ``GET`` (the Python counterpart of Go's ``net/http/pprof``):

- ``/debug/``: a JSON index of what follows.
- ``/debug/threads``: the stack of every thread, named (each pykka actor runs in a thread of its
  own, ``DirectoryActor-1``, ``RoomActor-7``...; the event loop is marked), most recent call
  last. ``SIGUSR1`` logs the same thing; this is the same without log access.
- ``/debug/tasks``: every asyncio task on the event loop: its name, coroutine and the chain of
  coroutines it is suspended in (followed through ``await``, deeper than ``Task.get_stack``,
  which stops at the task's own coroutine), and what the innermost one awaits (a ``Future``...).
- ``/debug/memory?top=N``: the top ``N`` (default 25, at most 1000) allocation sites of live
  memory, by size, from :mod:`tracemalloc`. The first call starts tracing (the answer says so):
  only allocations made after that are counted, so ask again later to see growth.
  ``?stop=1`` stops tracing (and answers with nothing else).
- ``/debug/profile?seconds=N``: a CPU profile of the event loop thread for ``N`` seconds
  (default 5, from 1 to 60, whole seconds), as :mod:`pstats` text sorted by cumulative time
  (top 50). One profile at a time: another request meanwhile gets 409.

Typical use: ``curl -H "Authorization: Bearer $ADMIN_TOKEN" http://HOST:8080/debug/threads``.

**What the profile sees.** :class:`cProfile.Profile` profiles only the thread that enables it;
it is enabled on the event loop thread, where every request, every session's packet path
(aiortc) and the loop's callbacks run. It does not see the actor threads (rooms, fan-out,
recording, upload) nor the default executor's threads: Python 3.11 has no
``threading.setprofile_all_threads`` (3.12+), and a profiler cannot be attached to a thread
that is already running. For those, ``/debug/threads`` taken a few times shows where they
spend their time.

**Costs.** Thread and task dumps are cheap (the loop is held only while the tasks are listed;
formatting runs in a worker thread). A profile slows the loop thread while it runs (often by
half or more, in call-heavy code such as the packet path): keep it short on a busy server.
tracemalloc slows every allocation in every thread and keeps a record per live allocation
until it is stopped: stop it (``?stop=1``) when done. Snapshots are taken in a worker thread.

**Access and secrets.** When any credential is configured (``ADMIN_TOKEN``, ``AUTH_TOKEN``,
``ROOM_TOKENS``, ``JWT_SECRET``) every ``/debug/`` route is admin-only (``ADMIN_TOKEN`` or an
admin JWT; 401 with ``WWW-Authenticate: Bearer`` otherwise); with none it is as open as the
rest of the server, so enable ``PPROF`` on an open server only where its port is private. The
answers show code locations (file, line, function, the source line) and names (threads,
tasks, coroutines), never the values of variables, the environment or the configuration.
"""

from __future__ import annotations

import asyncio
import cProfile
import inspect
import io
import linecache
import pstats
import sys
import threading
import time
import traceback
import tracemalloc
import types
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from golive.config import Config
from golive.http.auth import admin_allowed, unauthorized
from golive.http.errors import Handler, json_error

PREFIX: Final = "/debug/"
DEFAULT_PROFILE_SECONDS: Final = 5
MAX_PROFILE_SECONDS: Final = 60
PROFILE_TOP: Final = 50
DEFAULT_MEMORY_TOP: Final = 25
MAX_MEMORY_TOP: Final = 1000
MAX_AWAIT_DEPTH: Final = 200  # a bound on following ``await`` chains (no cycle in practice)
TEXT: Final = "text/plain"

ENDPOINTS: Final = {
    "/debug/threads": "stack of every thread (each actor is a thread), text",
    "/debug/tasks": "every asyncio task with the coroutines it is suspended in, text",
    "/debug/memory?top=N": (
        "top N allocation sites (tracemalloc; the first call starts tracing; ?stop=1 stops it)"
    ),
    "/debug/profile?seconds=N": (
        f"CPU profile of the event loop thread for N seconds (default "
        f"{DEFAULT_PROFILE_SECONDS}, 1 to {MAX_PROFILE_SECONDS}), pstats text"
    ),
}

_MEMORY_FILTERS: Final = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, linecache.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


@dataclass(slots=True)
class ProfilerState:
    """Whether this app's CPU profile is running (one at a time)."""

    running: bool = False


PROFILER = web.AppKey("debug_profiler", ProfilerState)

# The iterator a C Future's ``await`` goes through, by the name an operator knows.
_AWAITABLE_NAMES: Final = {"FutureIter": "Future"}

# A code location: file, line, function (qualified name).
Location = tuple[str, int, str]


def add_routes(app: web.Application, config: Config) -> None:
    """Register ``/debug/`` when ``PPROF`` is on; otherwise nothing (so 404)."""
    if not config.pprof:
        return
    app[PROFILER] = ProfilerState()
    app.router.add_get(PREFIX, _admin_only(config, index))
    app.router.add_get(PREFIX + "threads", _admin_only(config, threads))
    app.router.add_get(PREFIX + "tasks", _admin_only(config, tasks))
    app.router.add_get(PREFIX + "memory", _admin_only(config, memory))
    app.router.add_get(PREFIX + "profile", _admin_only(config, profile))


def _admin_only(config: Config, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not admin_allowed(config, request):
            return unauthorized()
        return await handler(request)

    return guarded


def _text(body: str) -> web.Response:
    return web.Response(text=body, content_type=TEXT, headers={"Cache-Control": "no-store"})


def _whole_number(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an int in ``[low, high]``; None when it is anything else."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdecimal()) or len(raw) > 6:
        return None
    value = int(raw)
    return value if low <= value <= high else None


async def index(_request: web.Request) -> web.Response:
    return web.json_response({"endpoints": ENDPOINTS})


# --- threads -------------------------------------------------------------------------------


async def threads(_request: web.Request) -> web.Response:
    loop_ident = threading.get_ident()
    return _text(await asyncio.to_thread(thread_dump, loop_ident))


def thread_dump(loop_ident: int | None = None) -> str:
    """Every thread's stack (code locations and source lines, no variable values)."""
    frames = sys._current_frames()  # noqa: SLF001  the documented way to see other threads
    named = {thread.ident: thread for thread in threading.enumerate()}
    out = [f"{len(frames)} threads (most recent call last)\n"]
    for ident, frame in sorted(frames.items(), key=lambda item: _thread_order(named, item[0])):
        thread = named.get(ident)
        name = thread.name if thread is not None else "<not a threading.Thread>"
        notes = []
        if thread is not None and thread.daemon:
            notes.append("daemon")
        if ident == loop_ident:
            notes.append("event loop")
        if ident == threading.get_ident():
            notes.append("this dump")
        extra = f" [{', '.join(notes)}]" if notes else ""
        out.append(f'\nthread "{name}" ident={ident}{extra}:\n')
        out.extend(traceback.format_stack(frame))
    return "".join(out)


def _thread_order(named: dict[int | None, threading.Thread], ident: int) -> tuple[int, str]:
    thread = named.get(ident)
    if thread is threading.main_thread():
        return (0, "")
    return (1, thread.name if thread is not None else "")


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskInfo:
    name: str
    coroutine: str
    state: str
    frames: tuple[Location, ...]
    awaiting: str | None


async def tasks(_request: web.Request) -> web.Response:
    current = asyncio.current_task()
    here = inspect.currentframe()
    infos = [task_info(task, current, here) for task in asyncio.all_tasks()]  # cheap
    return _text(await asyncio.to_thread(format_tasks, infos))


def task_info(
    task: asyncio.Task[object],
    current: asyncio.Task[object] | None = None,
    here: types.FrameType | None = None,
) -> TaskInfo:
    """What a task is doing, as plain data (taken on the loop, formatted elsewhere).
    ``current`` is the running task, whose stack ends at frame ``here``."""
    coro = task.get_coro()
    frames, awaiting = await_chain(coro, here)
    if task.done():
        state = "cancelled" if task.cancelled() else "done"
    elif task is current:
        state = "running (this request)"
    else:
        state = "pending"
    return TaskInfo(task.get_name(), _qualname(coro), state, frames, awaiting)


def _qualname(coro: object) -> str:
    code = _frame_of(coro)
    if code is not None:
        return f"{code.f_code.co_filename}:{code.f_code.co_qualname}"
    return getattr(coro, "__qualname__", type(coro).__name__)


def _frame_of(obj: object) -> types.FrameType | None:
    if isinstance(obj, types.CoroutineType):
        return obj.cr_frame
    if isinstance(obj, types.GeneratorType):
        return obj.gi_frame
    if isinstance(obj, types.AsyncGeneratorType):
        return obj.ag_frame
    return None


def _awaited_by(obj: object) -> object | None:
    if isinstance(obj, types.CoroutineType):
        return obj.cr_await
    if isinstance(obj, types.GeneratorType):
        return obj.gi_yieldfrom
    if isinstance(obj, types.AsyncGeneratorType):
        return obj.ag_await
    return None


def await_chain(
    coro: object, here: types.FrameType | None = None
) -> tuple[tuple[Location, ...], str | None]:
    """The frames of ``coro`` and of what it awaits, outermost first, and the type of the
    innermost awaitable that is not a coroutine (a ``Future``...), if any. A running
    coroutine's callees are followed on this thread's stack down to frame ``here``."""
    frames: list[Location] = []
    current: object | None = coro
    for _ in range(MAX_AWAIT_DEPTH):
        if current is None:
            return tuple(frames), None
        frame = _frame_of(current)
        if frame is None:
            # Not a coroutine: what the chain waits on. Only its type: a repr could show data.
            kind = type(current).__name__
            return tuple(frames), _AWAITABLE_NAMES.get(kind, kind)
        frames.append(_location(frame))
        awaited = _awaited_by(current)
        if awaited is None and here is not None and getattr(current, "cr_running", False):
            # The running coroutine (the task of this request): its frame's callees are on
            # this thread's stack, not in an await chain.
            frames.extend(_callees(frame, here))
        current = awaited
    return tuple(frames), "..."


def _location(frame: types.FrameType) -> Location:
    return (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_qualname)


def _callees(outer: types.FrameType, inner: types.FrameType) -> list[Location]:
    """The frames called from ``outer`` down to ``inner``, outermost first (none if ``outer``
    is not among ``inner``'s callers)."""
    callees: list[Location] = []
    frame: types.FrameType | None = inner
    while frame is not None and frame is not outer:
        callees.append(_location(frame))
        frame = frame.f_back
    return callees[::-1] if frame is outer else []


def format_tasks(infos: list[TaskInfo]) -> str:
    out = [f"{len(infos)} asyncio tasks on the event loop (outermost coroutine first)\n"]
    for info in sorted(infos, key=lambda i: (i.state, i.name)):
        out.append(f'\ntask "{info.name}" {info.state}: {info.coroutine}\n')
        for filename, lineno, name in info.frames:
            out.append(f'  File "{filename}", line {lineno}, in {name}\n')
            line = linecache.getline(filename, lineno).strip()
            if line:
                out.append(f"    {line}\n")
        if info.awaiting is not None:
            out.append(f"  awaiting a {info.awaiting}\n")
    return "".join(out)


# --- memory --------------------------------------------------------------------------------


async def memory(request: web.Request) -> web.Response:
    stop = request.query.get("stop", "0").lower()
    if stop not in {"0", "1", "false", "true"}:
        return json_error(400, "stop must be 1 or 0")
    if stop in {"1", "true"}:
        was = tracemalloc.is_tracing()
        tracemalloc.stop()
        return _text("tracemalloc stopped\n" if was else "tracemalloc was not tracing\n")
    top = _whole_number(request, "top", DEFAULT_MEMORY_TOP, 1, MAX_MEMORY_TOP)
    if top is None:
        return json_error(400, f"top must be a whole number from 1 to {MAX_MEMORY_TOP}")
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        body = await asyncio.to_thread(memory_top, top)
    except RuntimeError:  # stopped by another request meanwhile
        return json_error(409, "tracemalloc was stopped meanwhile")
    if started:
        body = (
            "tracemalloc was not tracing: started now. Only allocations from now on are "
            "counted: ask again later. Tracing slows allocations and costs memory until "
            "stopped with ?stop=1.\n\n" + body
        )
    return _text(body)


def memory_top(top: int) -> str:
    """The ``top`` allocation sites of traced live memory, by size (``file:line: size=...``)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(_MEMORY_FILTERS)
    statistics = snapshot.statistics("lineno")
    current, peak = tracemalloc.get_traced_memory()
    out = [
        (
            f"traced memory: current {_mib(current)}, peak {_mib(peak)}; "
            f"tracemalloc's own use {_mib(tracemalloc.get_tracemalloc_memory())}\n"
        ),
        f"top {min(top, len(statistics))} of {len(statistics)} allocation sites by size:\n",
    ]
    out.extend(f"{statistic}\n" for statistic in statistics[:top])
    return "".join(out)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# --- profile -------------------------------------------------------------------------------


async def profile(request: web.Request) -> web.Response:
    """Profile the event loop thread (the only one cProfile sees: see the module docstring)."""
    seconds = _whole_number(request, "seconds", DEFAULT_PROFILE_SECONDS, 1, MAX_PROFILE_SECONDS)
    if seconds is None:
        return json_error(400, f"seconds must be a whole number from 1 to {MAX_PROFILE_SECONDS}")
    state = request.app[PROFILER]
    if state.running:
        return json_error(409, "a profile is already running")
    profiler = cProfile.Profile()
    try:
        profiler.enable()  # on this thread, the loop's, until disabled
    except ValueError:  # 3.12+: another profiler (sys.monitoring) holds the process
        return json_error(409, "another profiler is active in this process")
    state.running = True
    started = time.monotonic()
    try:
        await asyncio.sleep(seconds)
    finally:
        profiler.disable()
        state.running = False
    elapsed = time.monotonic() - started
    return _text(await asyncio.to_thread(profile_text, profiler, elapsed))


def profile_text(profiler: cProfile.Profile, elapsed: float) -> str:
    stream = io.StringIO()
    stream.write(
        f"CPU profile of the event loop thread for {elapsed:.1f} s (actor threads not "
        f"included), top {PROFILE_TOP} by cumulative time\n"
    )
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(PROFILE_TOP)
    return stream.getvalue()
