"""OTLP export as an operator turns it on: a golive process with ``OTEL_EXPORTER_OTLP_ENDPOINT``
and ``OTEL_SERVICE_NAME`` set sends its spans over OTLP/HTTP to a small receiver on loopback,
which decodes them with the OTLP protobuf definitions."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.s3 import free_port
from tests.test_server import StartGolive, records, start_golive  # noqa: F401  the fixture

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
DEADLINE = 20.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: every export request, decoded."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # path, content type
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, path: str, content_type: str, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes: dict[str, object] = {}
                    for attribute in span.attributes:
                        value = attribute.value
                        kind = value.WhichOneof("value")
                        attributes[attribute.key] = getattr(value, kind) if kind else None
                    received.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=attributes,
                        )
                    )
        with self.lock:
            self.requests.append((path, content_type))
            self.spans.extend(received)

    def named(self, name: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, *names: str, timeout: float = DEADLINE) -> dict[str, ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while True:
            found = {name: self.named(name) for name in names}
            if all(found.values()):
                return {name: spans[0] for name, spans in found.items()}
            if time.monotonic() > deadline:
                with self.lock:
                    raise AssertionError(f"spans {names} not received: {self.spans}")
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server: ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            sink.take(self.path, self.headers.get("Content-Type", ""), body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: object) -> None:  # quiet: the test reads what it needs
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_spans_reach_an_otlp_http_receiver(
    start_golive: StartGolive,  # noqa: F811  the fixture
    receiver: Receiver,
) -> None:
    golive = start_golive(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "golive-otlp-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch interval, in milliseconds
        }
    )
    golive.wait_listening()
    assert golive.get("/api/rooms", TRACEPARENT)[0] == 200
    status, _, _ = golive.request("POST", "/api/admin/rooms/nowhere/close", TRACEPARENT)
    assert status == 404
    spans = receiver.wait_for(
        "GET /api/rooms", "POST /api/admin/rooms/{room}/close", "directory.end_room"
    )
    rooms, close, end_room = spans.values()
    assert receiver.requests[0] == ("/v1/traces", "application/x-protobuf")
    for span in spans.values():
        assert (span.service, span.trace_id) == ("golive-otlp-test", TRACE_ID), span
    assert rooms.parent_id == close.parent_id == CALLER_SPAN
    assert rooms.attributes["http.response.status_code"] == 200
    assert end_room.parent_id == close.span_id  # across the actor boundary, then exported
    assert end_room.attributes["golive.refusal"] == "no_such_room"
    assert golive.stop() == 0
    assert not [r for r in records(golive.stdout) if r["level"] in {"warning", "error"}]


def test_spans_still_buffered_are_exported_at_shutdown(
    start_golive: StartGolive,  # noqa: F811  the fixture
    receiver: Receiver,
) -> None:
    golive = start_golive(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    )
    golive.wait_listening()
    assert golive.get("/healthz", TRACEPARENT)[0] == 200
    assert not receiver.named("GET /healthz")  # held in the batch (ten minutes)
    assert golive.stop(signal.SIGTERM) == 0
    healthz = receiver.wait_for("GET /healthz", timeout=1)["GET /healthz"]
    assert (healthz.service, healthz.trace_id) == ("golive", TRACE_ID)


def test_an_unreachable_collector_costs_neither_service_nor_a_clean_exit(
    start_golive: StartGolive,  # noqa: F811  the fixture
) -> None:
    port = free_port()
    golive = start_golive(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",  # nothing listens
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        }
    )
    golive.wait_listening()
    for _ in range(5):
        assert golive.get("/api/rooms", TRACEPARENT)[0] == 200
    assert golive.stop() == 0
