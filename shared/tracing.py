"""Traces: OpenTelemetry across HTTP, the database and Kafka, set up once for every service.

A service traces only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, the SDK's own variables); otherwise nothing is instrumented and
every tracer is OpenTelemetry's no-op one, so tracing costs nothing.

Each service has a ``TracerProvider`` of its own (its ``service.name``), kept by name here, because tests
run several services in one process; ``tracer(service)`` is what the consumer loop, the relay and the
notifier's dispatchers start their spans with. The W3C trace context of the transaction that writes an
event is stored on its outbox row (``current_traceparent``), the relay sends it as the record's
``traceparent`` header and the consumer loop continues the trace from it (``context_from_headers``), so
one referral's trace runs from the clinic's POST to the last email.

No PHI in spans: SQL statements are recorded without their parameter values (the SQLAlchemy
instrumentation records the statement text only), query strings and exception messages are cut from
every span before it is exported (``_ScrubbingExporter``), and the spans this project starts carry ids
only. Spans that would begin a
trace of their own from a background poll (a database query or an HTTP call with no parent: the relay's
claim every 50 ms, the JWKS refresh) are not recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, Status, TraceState
from opentelemetry.util.types import Attributes
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import TracingSettings

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"


class _RootClientSampler(Sampler):
    """Follows the parent's decision and records every root span, except a client span (a database
    statement, an HTTP call) that would start a trace of its own: a background poll's."""

    def __init__(self) -> None:
        self._delegate = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind == SpanKind.CLIENT and not links:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "TrialrouteSampler"


_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_DROPPED_ATTRIBUTES = ("url.query", "exception.message", "exception.stacktrace")


def scrub(attributes: Attributes) -> dict[str, Any]:
    """``attributes`` without query strings (their values may name a patient, a postal code, a token)
    and without exception messages (a database error quotes the values it refused)."""
    cleaned = dict(attributes or {})
    for key in _URL_ATTRIBUTES:
        value = cleaned.get(key)
        if isinstance(value, str) and "?" in value:
            cleaned[key] = value.split("?", 1)[0]
    for key in _DROPPED_ATTRIBUTES:
        cleaned.pop(key, None)
    return cleaned


class _ScrubbingExporter(SpanExporter):
    """Hands ``exporter`` each span with its attributes, events and status scrubbed: the last step
    before a span leaves the process, whatever an instrumentation recorded and when."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([_scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    status = span.status
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub(span.attributes),
        events=[Event(e.name, scrub(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=Status(status.status_code) if status.description else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


_providers: dict[str, TracerProvider] = {}
_NOOP = trace.NoOpTracer()


def setup(
    service: str, settings: TracingSettings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The service's tracer provider, exporting over OTLP when an endpoint is configured (or to
    ``exporter``, for tests); None, and nothing traced, otherwise."""
    endpoint = settings.traces_endpoint
    if exporter is None and endpoint is None:
        _providers.pop(service, None)
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}), sampler=_RootClientSampler())
    provider.add_span_processor(BatchSpanProcessor(_ScrubbingExporter(exporter)))
    _providers[service] = provider
    return provider


def shutdown(service: str, provider: TracerProvider) -> None:
    """Flush and stop ``provider`` (blocking: run it in a thread from async code)."""
    if _providers.get(service) is provider:
        del _providers[service]
    provider.shutdown()


def tracer(service: str) -> trace.Tracer:
    """The tracer for ``service``'s own spans: the no-op tracer when it does not trace."""
    provider = _providers.get(service)
    return provider.get_tracer("trialroute") if provider is not None else _NOOP


def enabled(service: str) -> bool:
    return service in _providers


def instrument(
    provider: TracerProvider,
    *,
    app: FastAPI | None = None,
    engine: AsyncEngine | None = None,
    clients: Sequence[httpx.AsyncClient] = (),
) -> None:
    """Server spans for ``app``'s requests, client spans for ``engine``'s statements (text only, no
    parameter values) and ``clients``' requests (which carry ``traceparent`` on to the next service)."""
    if app is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            meter_provider=NoOpMeterProvider(),
            excluded_urls="healthz,readyz,metrics",
            exclude_spans=["receive", "send"],
        )
    if engine is not None:
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

        usage = (
            NoOpMeterProvider().get_meter("trialroute").create_up_down_counter("db.client.connections.usage")
        )
        EngineTracer(  # type: ignore[no-untyped-call]
            provider.get_tracer("trialroute.db"), engine.sync_engine, usage, enable_commenter=False
        )
    if clients:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        for client in clients:
            HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the span in progress, to store beside work done later (an outbox
    row, a pending email); None outside any span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def context_of(traceparent: str | None) -> Context | None:
    """The context a stored ``traceparent`` names, to continue its trace; None without one."""
    if not traceparent:
        return None
    return propagate.extract({TRACEPARENT: traceparent})


def batch_parent(parents: Sequence[Context | None]) -> tuple[Context, list[Link]]:
    """Where a span for work done for several traces at once belongs: the child of their one trace, or
    a root span linked to each of theirs when they come from several (OpenTelemetry's way for batches,
    so that no trace claims work done for the others)."""
    contexts = [trace.get_current_span(p).get_span_context() for p in parents if p is not None]
    contexts = [c for c in contexts if c.is_valid]
    if len({c.trace_id for c in contexts}) <= 1:
        first = next((p for p in parents if p is not None), None)
        return (first if first is not None else Context()), []
    return Context(), [Link(c) for c in contexts]


def context_from_headers(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    """The trace context a Kafka record's headers carry, if any."""
    carrier: Mapping[str, str] = {
        key: value.decode("latin-1") for key, value in headers or () if key in (TRACEPARENT, "tracestate")
    }
    return propagate.extract(carrier) if TRACEPARENT in carrier else None
