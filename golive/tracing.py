"""OpenTelemetry tracing: one server span per HTTP request, child spans for the actors'
handling of it, one long span per WHIP/WHEP session.

A :class:`Tracing` belongs to one server (no global tracer provider: tests run several
servers, each with its own exporter). Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set: spans go to ``{endpoint}/v1/traces`` over OTLP/HTTP (protobuf), in batches, from the
batch processor's own thread. Otherwise :meth:`Tracing.disabled` makes every call here a
constant-time no-op: no SDK objects, no context extraction, nothing recorded.

The context crosses the thread boundary in the messages: :meth:`Tracing.carrier` writes the
current span's W3C ``traceparent`` (and ``tracestate``) into a message's ``trace`` field on
the event loop, and :meth:`Tracing.handling` starts the actor's span as a child of it in the
actor's thread, current there while the handler runs (so its log lines carry the ids).

In a cluster the resource names the worker: ``service.instance.id`` is ``node/worker`` (as the
``Golive-Worker`` header), with ``golive.node`` and ``golive.worker`` beside it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from golive import __version__
from golive.actors.messages import TraceCarrier
from golive.cluster.identity import WorkerIdentity
from golive.config import Config

__all__ = ["Tracing", "traces_endpoint"]

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_NOTHING: Final = contextlib.nullcontext()  # reusable: it holds no state
_INSTRUMENTATION: Final = "golive"
TRACES_PATH: Final = "/v1/traces"
Attributes = Mapping[str, AttributeValue]


def traces_endpoint(base: str) -> str:
    """Where OTLP/HTTP spans go for ``OTEL_EXPORTER_OTLP_ENDPOINT=base``: the base URL with
    the signal's path appended, as the OpenTelemetry specification says for that variable."""
    return base.rstrip("/") + TRACES_PATH


def resource_attributes(
    service_name: str, identity: WorkerIdentity | None = None
) -> dict[str, AttributeValue]:
    """The tracer's resource: the service, and in a cluster the worker this process is."""
    attributes: dict[str, AttributeValue] = {
        SERVICE_NAME: service_name,
        SERVICE_VERSION: __version__,
    }
    if identity is not None:
        attributes[SERVICE_INSTANCE_ID] = identity.name
        attributes["golive.node"] = identity.node
        attributes["golive.worker"] = identity.worker
    return attributes


class Tracing:
    """One server's tracer provider (or none) and the helpers golive traces with."""

    __slots__ = ("_provider", "enabled", "tracer")

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self.enabled = provider is not None
        self.tracer: Tracer = (
            provider.get_tracer(_INSTRUMENTATION, __version__)
            if provider is not None
            else trace.NoOpTracer()
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_config(cls, config: Config, identity: WorkerIdentity | None = None) -> Tracing:
        """OTLP/HTTP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else disabled;
        ``identity``: the worker of a cluster this process is (named in the resource).

        The exporter reads its other standard variables (``OTEL_EXPORTER_OTLP_HEADERS``,
        ``..._TIMEOUT``, ``..._COMPRESSION``, ``..._CERTIFICATE``) from the environment itself.
        """
        if not config.tracing_enabled:
            return cls.disabled()
        # Imported here: the exporter pulls in protobuf and requests, needed only when on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=traces_endpoint(config.otel_exporter_otlp_endpoint))
        return cls.with_processor(BatchSpanProcessor(exporter), config.otel_service_name, identity)

    @classmethod
    def with_exporter(
        cls,
        exporter: SpanExporter,
        service_name: str = "golive",
        identity: WorkerIdentity | None = None,
    ) -> Tracing:
        """Every span handed to ``exporter`` as it ends (tests: the SDK's in-memory one)."""
        return cls.with_processor(SimpleSpanProcessor(exporter), service_name, identity)

    @classmethod
    def with_processor(
        cls, processor: SpanProcessor, service_name: str, identity: WorkerIdentity | None = None
    ) -> Tracing:
        resource = Resource.create(resource_attributes(service_name, identity))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is still buffered and stop. Blocks (network): call it off the loop."""
        if self._provider is not None:
            self._provider.shutdown()

    # -- crossing boundaries ------------------------------------------------------------------

    def carrier(self) -> TraceCarrier:
        """The current span's context as a message's ``trace`` field (empty when off or when
        no span is active)."""
        if not self.enabled:
            return ()
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        return tuple(sorted(headers.items()))

    def extract(self, headers: Mapping[str, str]) -> Context | None:
        """The remote parent an incoming request names in ``traceparent``, if any."""
        if not self.enabled:
            return None
        return _PROPAGATOR.extract(headers)

    def handling(
        self, name: str, carrier: TraceCarrier, attributes: Attributes | None = None
    ) -> contextlib.AbstractContextManager[Span | None]:
        """An actor's span for handling a message, child of the span that sent it, current in
        this thread while the block runs. Nothing when off or when the message carries no
        context (events the loop tells on its own, such as a transport failing)."""
        if not self.enabled or not carrier:
            return _NOTHING
        return self._handling(name, carrier, attributes)

    @contextlib.contextmanager
    def _handling(
        self, name: str, carrier: TraceCarrier, attributes: Attributes | None
    ) -> Iterator[Span | None]:
        parent = _PROPAGATOR.extract(dict(carrier))
        here = {**(attributes or {}), "thread.name": threading.current_thread().name}
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.INTERNAL, attributes=here
        ) as span:
            yield span

    def start_session(self, name: str, started_ns: int, attributes: Attributes) -> Span:
        """A WHIP/WHEP session's span, from its offer (``started_ns``, epoch nanoseconds) until
        it ends, child of the current (HTTP) span. Its story is told as events on it."""
        if not self.enabled:
            return trace.INVALID_SPAN
        return self.tracer.start_span(
            name, kind=SpanKind.INTERNAL, attributes=attributes, start_time=started_ns
        )
