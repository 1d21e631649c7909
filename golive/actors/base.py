"""What every golive actor shares: futures the event loop can await, crash handling, tells
that never raise.

pykka runs one thread per actor. The event loop must never block on an actor, so asks made
from the loop return a :class:`CallbackFuture`, which :func:`reply_of` turns into an awaitable
without parking a thread. An unexpected exception in any handler, asked or told, is a crash:
the actor releases what it holds, tells its parent and stops (pykka alone would keep an actor
running after an exception in an *asked* handler, with its state half-changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

import pykka
import structlog
from opentelemetry.util.types import AttributeValue

from golive.actors.messages import TraceCarrier
from golive.tracing import Tracing

log = structlog.get_logger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
A = TypeVar("A", bound="GoliveActor")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class ActorTimeoutError(TimeoutError):
    """An actor did not answer an ask within its timeout (``ACTOR_TIMEOUT_SECONDS``): raised by
    :func:`reply_of`, and only there, so that a request can tell an overloaded actor (503)
    from any other ``TimeoutError`` (asyncio's, aiortc's: a bug, 500)."""


class CallbackFuture(pykka.ThreadingFuture[T]):
    """A pykka future that also runs callbacks once it is resolved (in the resolving thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] | None = []

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        self._run_callbacks()

    def set_exception(self, exc_info: ExcInfo | None = None) -> None:
        super().set_exception(exc_info)
        self._run_callbacks()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once resolved; at once if it already is."""
        with self._callbacks_lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback()

    def _run_callbacks(self) -> None:
        with self._callbacks_lock:
            callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            callback()


async def reply_of(future: pykka.Future[T], timeout: float) -> T:  # noqa: ASYNC109  the bound is the point
    """Await an actor's reply on the event loop without blocking it.

    Raises :class:`ActorTimeoutError` after ``timeout`` seconds and whatever the actor raised
    (``pykka.ActorDeadError`` when it was gone).
    """
    loop = asyncio.get_running_loop()
    if not isinstance(future, CallbackFuture):  # a future made by a plain pykka actor
        waiting = asyncio.ensure_future(asyncio.to_thread(_get, future, timeout))
        return await _within(waiting, timeout)
    result: asyncio.Future[T] = loop.create_future()

    def transfer() -> None:  # on the loop
        if result.done():  # the waiter timed out or was cancelled
            return
        try:
            result.set_result(future.get(timeout=0))
        except Exception as exc:  # noqa: BLE001  the actor's exception goes to the awaiting caller
            result.set_exception(exc)

    def resolved() -> None:  # in the actor's thread
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(transfer)

    future.add_done_callback(resolved)
    return await _within(result, timeout)


def _get(future: pykka.Future[T], timeout: float) -> T:
    """A plain pykka future's value, waited for in a worker thread."""
    try:
        return future.get(timeout=timeout)
    except pykka.Timeout as exc:
        raise ActorTimeoutError(f"no reply within {timeout} s") from exc


async def _within(reply: asyncio.Future[T], timeout: float) -> T:  # noqa: ASYNC109  the bound is the point
    """``reply``'s outcome, or :class:`ActorTimeoutError` once ``timeout`` has passed (only
    this wait's own timeout: a ``TimeoutError`` the reply carries is passed on as it is)."""
    try:
        return await asyncio.wait_for(reply, timeout)
    except TimeoutError:
        if reply.cancelled():  # wait_for ran out of time and cancelled it
            raise ActorTimeoutError(f"no reply within {timeout} s") from None
        raise


def tell_quietly(ref: pykka.ActorRef[Any], message: object) -> bool:
    """Tell ``message``; a dead recipient is not an error (it has ended). True if delivered."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("told a stopped actor", actor=str(ref), message=type(message).__name__)
        return False
    return True


#: How often :func:`stop_all` looks whether an actor it waits for stopped on its own.
STOP_POLL_SECONDS = 0.05
#: Every golive actor whose release (its ``on_stop`` or crash handling) has not run yet, by
#: URN: :func:`stop_all` tells an actor that has ended from one still stopping by it.
_UNRELEASED: set[str] = set()


def stop_all(refs: Iterable[pykka.ActorRef[Any]], timeout: float) -> list[pykka.ActorRef[Any]]:
    """Stop actors concurrently and wait until each has stopped (or was already gone); the
    ones that did not within ``timeout``.

    An actor that stops itself (a subscriber whose transport failed) just as it is asked to
    stop may never answer: pykka checks that it is alive, then queues the stop, and an actor
    that has emptied its inbox and ended meanwhile never sees it. So the wait looks, in short
    slices, whether the actor has ended (no longer alive, its release run) and counts it as
    stopped.
    """
    pending = []
    for ref in refs:
        try:
            pending.append((ref, ref.stop(block=False)))
        except pykka.ActorDeadError:
            continue
    deadline = time.monotonic() + timeout
    late = []
    for ref, future in pending:
        while True:
            try:
                future.get(timeout=max(0.0, min(STOP_POLL_SECONDS, deadline - time.monotonic())))
                break
            except pykka.ActorDeadError:
                break
            except pykka.Timeout:
                if ended(ref):
                    log.debug("actor ended before its stop was handled", actor=str(ref))
                    break
                if time.monotonic() >= deadline:
                    log.error("actor did not stop in time", actor=str(ref), timeout=timeout)
                    late.append(ref)
                    break
    return late


@dataclass(frozen=True, slots=True)
class Barrier:
    """Asked of any golive actor: answered once every message sent before it was handled."""


async def barrier(ref: pykka.ActorRef[Any], timeout: float) -> None:  # noqa: ASYNC109  the bound is the point
    """Wait, on the loop, until ``ref`` has handled everything sent to it so far (or stopped:
    an actor that ends as the barrier is queued never answers it, see :func:`stop_all`)."""
    try:
        reply = asyncio.ensure_future(reply_of(ref.ask(Barrier(), block=False), timeout))
    except pykka.ActorDeadError:
        return
    # Its outcome is looked at below, unless this wait ends first (the actor ended, or the
    # caller was cancelled): a reply that then fails (ActorDeadError as the cancel lands) is
    # nobody's error, not "a task exception never retrieved".
    reply.add_done_callback(_looked_at)
    while not reply.done():
        await asyncio.wait({reply}, timeout=STOP_POLL_SECONDS)
        if not reply.done() and ended(ref):
            reply.cancel()
            return
    with contextlib.suppress(pykka.ActorDeadError):
        reply.result()


def _looked_at(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def ended(ref: pykka.ActorRef[Any]) -> bool:
    """``ref``'s actor has stopped and given back what it held (its release has run)."""
    return not ref.is_alive() and ref.actor_urn not in _UNRELEASED


class GoliveActor(pykka.ThreadingActor):
    """Base class: awaitable futures, crash = release + tell parent + stop.

    Subclasses handle told events in :meth:`handle`; asked commands are proxy methods.
    """

    actor_kind = "actor"

    def __init__(self, tracing: Tracing | None = None) -> None:
        super().__init__()
        self._released = False
        _UNRELEASED.add(self.actor_urn)
        self.tracing = tracing if tracing is not None else Tracing.disabled()

    def span_attributes(self) -> dict[str, AttributeValue]:
        """What every span of this actor's handling carries (room, session...)."""
        return {"golive.actor": self.actor_kind}

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        # pykka's ask() (and so every proxy call) takes its future from here.
        return CallbackFuture()

    def ping(self) -> None:
        """A barrier: returns once every message sent before it was handled."""

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Barrier):
            return
        self.handle(message)

    def handle(self, message: Any) -> None:
        """Handle a told event. An unknown message is a bug: the actor crashes."""
        raise TypeError(f"{self.actor_kind} cannot handle {message!r}")

    # -- lifecycle ----------------------------------------------------------------------------

    def release(self, *, crashed: bool) -> None:
        """Give back what the actor holds. Runs once, from on_stop or on_failure."""

    def on_stop(self) -> None:
        self._release_once(crashed=False)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,  # noqa: ARG002  pykka's signature
        exception_value: BaseException | None,
        traceback: TracebackType | None,  # noqa: ARG002  pykka's signature
    ) -> None:
        self._crashed(exception_value)

    def _crashed(self, exc: BaseException | None) -> None:
        log.error(
            "actor crashed",
            actor=self.actor_kind,
            urn=self.actor_urn,
            error=repr(exc),
        )
        self.on_crash()
        self._release_once(crashed=True)

    def on_crash(self) -> None:
        """Count the crash, tell the parent. Called before :meth:`release`."""

    def _release_once(self, *, crashed: bool) -> None:
        if self._released:
            return
        self._released = True
        try:
            self.release(crashed=crashed)
        finally:
            _UNRELEASED.discard(self.actor_urn)


def guarded(
    method: Callable[Concatenate[A, P], T],
) -> Callable[Concatenate[A, P], T]:
    """Treat an exception in an asked handler as the actor crashing, then re-raise it to the
    caller. Without this pykka would hand the exception back and keep the actor running."""

    @functools.wraps(method)
    def wrapper(self: A, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._crashed(exc)
            self.stop()
            raise

    return cast(Callable[Concatenate[A, P], T], wrapper)


class _Traced(Protocol):
    """What :func:`traced` needs of a command: the carrier of the request that caused it."""

    @property
    def trace(self) -> TraceCarrier: ...


M = TypeVar("M", bound=_Traced)


def traced(
    name: str,
) -> Callable[[Callable[Concatenate[A, M, P], T]], Callable[Concatenate[A, M, P], T]]:
    """Handle an asked command inside a span named ``name``, child of the span that sent it
    (the ``trace`` carried by the command); nothing when tracing is off or there is none."""

    def decorate(method: Callable[Concatenate[A, M, P], T]) -> Callable[Concatenate[A, M, P], T]:
        @functools.wraps(method)
        def wrapper(self: A, message: M, *args: P.args, **kwargs: P.kwargs) -> T:
            with self.tracing.handling(name, message.trace, self.span_attributes()):
                return method(self, message, *args, **kwargs)

        return cast(Callable[Concatenate[A, M, P], T], wrapper)

    return decorate
