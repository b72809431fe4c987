"""Logs, metrics and context shared by every service.

Logs are JSON lines that carry the referral id and trace id of the work in progress (from context
variables), never a patient's identity: the PHI guard redacts anything shaped like an email address or a
phone number, as a second line of defence behind code that never logs such fields.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

referral_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("referral_id", default=None)
trace_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")


class _Metrics:
    """One registry-wide set of metrics, labelled by service, so several services share a process."""

    def __init__(self) -> None:
        self.requests = Histogram(
            "trialroute_http_request_seconds", "HTTP requests", ["service", "method", "route", "status"]
        )
        self.events_consumed = Counter(
            "trialroute_events_consumed_total", "Events consumed", ["service", "topic", "outcome"]
        )
        self.consumer_lag = Gauge(
            "trialroute_consumer_lag",
            "Records behind the end: end offset minus the group's committed offset",
            ["service", "group", "topic", "partition"],
        )
        self.outbox_published = Counter("trialroute_outbox_published_total", "Outbox rows", ["service"])
        self.outbox_backlog = Gauge("trialroute_outbox_backlog", "Outbox rows not yet published", ["service"])
        self.outbox_oldest_unsent = Gauge(
            "trialroute_outbox_oldest_unsent_seconds", "Age of the oldest unpublished outbox row", ["service"]
        )
        self.dead_letters = Counter("trialroute_dead_letters_total", "Dead letters", ["service", "topic"])
        self.emails = Counter(
            "trialroute_emails_total",
            "Emails by outcome: sent, skipped, retried, failed",
            ["service", "template", "role", "outcome"],
        )
        self.webhooks = Counter(
            "trialroute_webhooks_total",
            "Webhook deliveries by outcome: sent, retried, failed",
            ["service", "event_type", "outcome"],
        )
        self.token_failures = Counter(
            "trialroute_token_failures_total",
            "Refused tokens: at a resource server (a token a caller presented) and at the token endpoint "
            "(a token asked for), by reason",
            ["service", "reason"],
        )


metrics = _Metrics()


@contextmanager
def referral_context(referral_id: object, trace: str | None = None) -> Iterator[None]:
    """Tag every log line inside the block with the referral (an opaque id, never PHI)."""
    token_r = referral_id_var.set(str(referral_id))
    token_t = trace_var.set(trace)
    try:
        yield
    finally:
        referral_id_var.reset(token_r)
        trace_var.reset(token_t)


class _ContextAndPhiFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.referral_id = referral_id_var.get()
        span = trace.get_current_span().get_span_context()  # the trace in progress, when tracing
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else trace_var.get()
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact(text: str) -> str:
    return _PHONE.sub("[redacted]", _EMAIL.sub("[redacted]", text))


def configure_logging(service: str, level: str = "INFO", log_file: Path | None = None) -> None:
    """JSON lines on stderr (or a file), each with service, referral id and trace id."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(referral_id)s %(trace_id)s",
            static_fields={"service": service},
            rename_fields={"asctime": "time", "levelname": "level"},
        )
    )
    handler.addFilter(_ContextAndPhiFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
