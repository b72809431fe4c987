"""shared.tracing without servers: when it traces, what it records, and what it never lets out."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.observability import _ContextAndPhiFilter
from shared.settings import TracingSettings

pytestmark = pytest.mark.unit


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = tracing.setup("unit", TracingSettings(), exporter=exporter)
    assert provider is not None
    yield exporter
    tracing.shutdown("unit", provider)


def finished(exporter: InMemorySpanExporter) -> dict[str, dict[str, object]]:
    tracing._providers["unit"].force_flush()
    return {span.name: dict(span.attributes or {}) for span in exporter.get_finished_spans()}


def test_the_endpoint_comes_from_opentelemetrys_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TracingSettings().traces_endpoint is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert TracingSettings().traces_endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces")
    assert TracingSettings().traces_endpoint == "http://tempo:4318/v1/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert TracingSettings().traces_endpoint is None
    assert tracing.setup("unit-off", TracingSettings()) is None
    assert not tracing.enabled("unit-off")


def test_query_strings_and_exception_messages_never_leave_the_process(exported: InMemorySpanExporter) -> None:
    tracer = tracing.tracer("unit")
    with tracer.start_as_current_span(
        "GET /v1/sites/nearby",
        kind=SpanKind.SERVER,
        attributes={
            "http.url": "http://x/v1/sites/nearby?postal_code=10021",
            "url.query": "postal_code=10021",
        },
    ) as span:
        span.set_attribute("http.target", "/v1/sites/nearby?postal_code=10021")
        span.record_exception(ValueError("Key (email)=(jane@example.com) already exists"))
    attributes = finished(exported)["GET /v1/sites/nearby"]
    assert attributes["http.url"] == "http://x/v1/sites/nearby"
    assert attributes["http.target"] == "/v1/sites/nearby"
    assert "url.query" not in attributes
    [span_data] = exported.get_finished_spans()
    [event] = span_data.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError", "exception.escaped": "False"}


def test_a_statement_or_call_outside_any_trace_is_not_recorded(exported: InMemorySpanExporter) -> None:
    tracer = tracing.tracer("unit")
    with tracer.start_as_current_span("SELECT outbox", kind=SpanKind.CLIENT):
        pass
    with tracer.start_as_current_span("referral.routed process", kind=SpanKind.CONSUMER):
        with tracer.start_as_current_span("INSERT notification", kind=SpanKind.CLIENT):
            pass
    assert set(finished(exported)) == {"referral.routed process", "INSERT notification"}


def test_a_stored_context_is_continued(exported: InMemorySpanExporter) -> None:
    assert tracing.current_traceparent() is None
    tracer = tracing.tracer("unit")
    with tracer.start_as_current_span("POST /v1/referrals", kind=SpanKind.SERVER):
        stored = tracing.current_traceparent()
    assert stored is not None
    with tracer.start_as_current_span("email site_new_referral", context=tracing.context_of(stored)):
        assert tracing.current_traceparent() is not None
        continued = tracing.current_traceparent()
    assert continued is not None and continued.split("-")[1] == stored.split("-")[1]
    headers = [("traceparent", stored.encode()), ("other", b"x")]
    context = tracing.context_from_headers(headers)
    with tracer.start_as_current_span("referral.submitted process", context=context):
        assert (tracing.current_traceparent() or "").split("-")[1] == stored.split("-")[1]
    assert tracing.context_from_headers([("other", b"x")]) is None
    assert tracing.context_from_headers(None) is None


def test_log_lines_carry_the_trace_in_progress(exported: InMemorySpanExporter) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    with tracing.tracer("unit").start_as_current_span("work") as span:
        _ContextAndPhiFilter().filter(record)
    assert record.trace_id == format(span.get_span_context().trace_id, "032x")


def test_work_for_one_trace_is_its_child_and_work_for_several_is_linked_to_each() -> None:
    one = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    same = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    parent, links = tracing.batch_parent([tracing.context_of(one), None, tracing.context_of(same)])
    assert links == []
    assert f"{tracing.trace.get_current_span(parent).get_span_context().trace_id:032x}" == one.split("-")[1]

    parent, links = tracing.batch_parent([tracing.context_of(one), tracing.context_of(other)])
    assert not tracing.trace.get_current_span(parent).get_span_context().is_valid, "a root of its own"
    assert sorted(f"{link.context.trace_id:032x}" for link in links) == sorted(
        [one.split("-")[1], other.split("-")[1]]
    )

    parent, links = tracing.batch_parent([None])
    assert links == [] and not tracing.trace.get_current_span(parent).get_span_context().is_valid
