"""Traces of real WHIP/WHEP sessions, read from the SDK's in-memory exporter: the server span
of each request (child of the caller's ``traceparent``), the actors' spans as its children
in their own threads, the session spans with their story as events; and the trace ids in the
log lines written under those spans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
import structlog.testing
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from golive.logs import add_trace_ids
from golive.tracing import Tracing
from tests.media.clients import close_all, delete, publish, view
from tests.support import ServerThread, running_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]
DEADLINE = 30.0

# The caller's trace (W3C example ids): golive's spans must join it.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1", "STUN_URLS": ",", "LOG_LEVEL": "warning"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_server(exporter: InMemorySpanExporter) -> Iterator[ServerThread]:
    with running_server(ENV, Tracing.with_exporter(exporter, "golive-under-test")) as server:
        yield server


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format(span.parent.span_id, "016x")


def one(spans: Sequence[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = [
        span
        for span in spans
        if span.name == name
        and all((span.attributes or {}).get(key) == value for key, value in attributes.items())
    ]
    assert len(found) == 1, f"{name} {attributes}: {[s.name for s in spans]}"
    return found[0]


async def finished(
    exporter: InMemorySpanExporter, name: str, **attributes: object
) -> Sequence[ReadableSpan]:
    """Every span ended so far, once one named ``name`` (with ``attributes``) has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        spans = exporter.get_finished_spans()
        if any(
            span.name == name
            and all((span.attributes or {}).get(k) == v for k, v in attributes.items())
            for span in spans
        ):
            return spans
        assert loop.time() < deadline, f"no {name} span ended: {[s.name for s in spans]}"
        await asyncio.sleep(0.02)


async def test_a_session_is_traced_across_the_actor_boundary(
    traced_server: ServerThread, exporter: InMemorySpanExporter
) -> None:
    server = traced_server
    publisher = await publish(server.url, "traced", headers=TRACEPARENT)
    viewer = await view(server.url, "traced", headers=TRACEPARENT)
    try:
        assert (publisher.answer.status, viewer.answer.status) == (201, 201)
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        assert await delete(server.url, publisher.answer.location, TRACEPARENT) == 200
    finally:
        await close_all(publisher, viewer)
    spans = await finished(exporter, "whep session")
    publisher_session = publisher.answer.location.rsplit("/", 1)[1]
    viewer_session = viewer.answer.location.rsplit("/", 1)[1]

    # The WHIP POST: a server span joining the caller's trace, and the actors' handling of it
    # as its children, each in its actor's thread.
    post = one(spans, "POST /api/whip/publish/{room}")
    assert post.kind is SpanKind.SERVER
    assert (hex_trace(post), parent_id(post)) == (TRACE_ID, CALLER_SPAN)
    assert post.attributes is not None
    assert post.attributes["http.response.status_code"] == 201
    assert post.attributes["http.route"] == "/api/whip/publish/{room}"
    assert post.resource.attributes["service.name"] == "golive-under-test"
    claim = one(spans, "directory.claim_publisher")
    ready = one(spans, "room.publisher_ready")
    for child in (claim, ready):
        assert (hex_trace(child), parent_id(child)) == (TRACE_ID, hex_id(post)), child.name
        assert child.attributes is not None
        assert child.attributes["golive.room"] == "traced"
    assert claim.attributes is not None
    assert ready.attributes is not None
    assert claim.attributes["golive.session"] == publisher_session
    assert str(claim.attributes["thread.name"]).startswith("DirectoryActor")
    assert str(ready.attributes["thread.name"]).startswith("RoomActor")

    # The WHEP POST: the room admits the viewer in a child span.
    play = one(spans, "POST /api/whep/play/{room}")
    assert parent_id(play) == CALLER_SPAN
    join = one(spans, "room.join_subscriber")
    assert parent_id(join) == hex_id(play)
    assert join.attributes is not None
    assert join.attributes["golive.session"] == viewer_session

    # Each session's span: child of its POST, outliving it, its story told as events.
    whip = one(spans, "whip session")
    whep = one(spans, "whep session")
    assert (parent_id(whip), parent_id(whep)) == (hex_id(post), hex_id(play))
    story = [
        "session requested",
        "session answered",
        "ice connected",
        "dtls connected",
    ]
    for session, extra in ((whip, []), (whep, ["first keyframe sent"])):
        events = [event.name for event in session.events]
        wanted = [*story, *extra, "session ended"]
        assert [name for name in events if name in wanted] == wanted, events
        assert "dtls state" in events  # state changes on the way (connecting) are events too
        assert session.attributes is not None
        assert session.status.status_code is StatusCode.UNSET
    assert whip.attributes is not None
    assert whep.attributes is not None
    assert whip.attributes["golive.end_reason"] == "publisher_left"
    assert whep.attributes["golive.end_reason"] == "publisher_left"
    assert whep.attributes["golive.session"] == viewer_session
    keyframe = next(e for e in whep.events if e.name == "first keyframe sent")
    assert keyframe.attributes is not None
    assert keyframe.attributes["track"]
    assert 0 < float(str(keyframe.attributes["seconds"])) < DEADLINE

    # The DELETE ends the room: the directory's span, the room's closing as its child, and
    # the viewer's actor closing as a grandchild, three threads down.
    delete_span = one(spans, "DELETE /api/whip/publish/{room}/{session}")
    end_room = one(spans, "directory.end_room")
    close = one(spans, "room.close")
    closed_viewer = one(spans, "subscriber.close")
    assert parent_id(delete_span) == CALLER_SPAN
    assert parent_id(end_room) == hex_id(delete_span)
    assert parent_id(close) == hex_id(end_room)
    assert parent_id(closed_viewer) == hex_id(close)
    assert closed_viewer.attributes is not None
    assert closed_viewer.attributes["golive.session"] == viewer_session
    assert str(closed_viewer.attributes["thread.name"]).startswith("SubscriberActor")


async def test_a_request_without_traceparent_starts_its_own_trace(
    traced_server: ServerThread, exporter: InMemorySpanExporter
) -> None:
    viewer = await view(traced_server.url, "nobody-here")
    await close_all(viewer)
    assert viewer.answer.status == 404
    spans = await finished(exporter, "POST /api/whep/play/{room}")
    post = one(spans, "POST /api/whep/play/{room}")
    assert post.parent is None
    assert post.attributes is not None
    assert post.attributes["http.response.status_code"] == 404
    assert post.status.status_code is StatusCode.UNSET  # a refusal is not a server error


async def test_log_lines_carry_the_ids_of_the_span_they_were_written_in(
    traced_server: ServerThread, exporter: InMemorySpanExporter
) -> None:
    server = traced_server
    publisher = await publish(server.url, "logged", headers=TRACEPARENT)
    try:
        with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
            viewer = await view(server.url, "logged", headers=TRACEPARENT)
            try:
                await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
                assert await delete(server.url, viewer.answer.location) == 200
            finally:
                await close_all(viewer)
    finally:
        await delete(server.url, publisher.answer.location)
        await close_all(publisher)
    spans = await finished(exporter, "whep session")
    session = viewer.answer.location.rsplit("/", 1)[1]
    join = one(spans, "room.join_subscriber", **{"golive.session": session})
    whep = one(spans, "whep session", **{"golive.session": session})

    # Written by the room actor, in its thread, while it handled the join.
    admitted = next(e for e in logs if e["event"] == "subscriber admitted")
    assert (admitted["trace_id"], admitted["span_id"]) == (TRACE_ID, hex_id(join))
    # The session's story, written on the loop under the session's span.
    for event in ("session answered", "ice connected", "first keyframe sent", "session ended"):
        entry = next(e for e in logs if e["event"] == event and e.get("session") == session)
        assert (entry["trace_id"], entry["span_id"]) == (TRACE_ID, hex_id(whep)), event


async def test_without_tracing_nothing_is_traced_and_logs_carry_no_ids(
    server: ServerThread,
) -> None:
    """The default: no exporter, no server spans, empty carriers, no ids in any line."""
    with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
        publisher = await publish(server.url, "untraced", headers=TRACEPARENT)
        try:
            assert publisher.answer.status == 201
            assert await delete(server.url, publisher.answer.location, TRACEPARENT) == 200
        finally:
            await close_all(publisher)
    assert {e["event"] for e in logs} >= {"session requested", "session answered", "room ended"}
    assert not [e for e in logs if "trace_id" in e or "span_id" in e]
