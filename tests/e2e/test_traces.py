"""One referral's trace, from the clinic's POST to the last email, every service a real process
exporting over OTLP to a receiver in this test (real Kafka, PostgreSQL and SMTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.devstack.stack import Stack
from tests.conftest import Servers
from tests.support.builders import sample_referral
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.system import Client, running_system
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's SpanKind numbers


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as found:
        yield found


@pytest.fixture(scope="module")
def traced(servers: Servers, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    run_dir: Path = tmp_path_factory.mktemp("traced")
    with running_system(servers.pg_admin_url, servers.kafka_bootstrap, run_dir, env=env) as stack:
        yield stack


async def test_one_trace_runs_from_the_clinics_post_to_the_last_email(
    traced: Stack, receiver: Receiver, web: httpx.AsyncClient
) -> None:
    clinic = Client(traced, "demo-clinic")
    body = sample_referral()
    response = await web.post(
        f"{traced.config.url('intake')}/v1/referrals", json=body, headers=await clinic.headers(web, "intake")
    )
    assert response.status_code == 202, response.text
    rid = str(response.json()["id"])

    def ours() -> list[ReceivedSpan]:
        return [s for s in receiver.snapshot() if s.attributes.get("trialroute.referral_id") == rid]

    async def three_emails_traced() -> list[ReceivedSpan] | None:
        emails = [s for s in ours() if s.service == "notifier" and s.name.startswith("email ")]
        return emails if len({s.attributes["trialroute.recipient_role"] for s in emails}) == 3 else None

    emails = await eventually(three_emails_traced, within=90, what="the three emails' spans")
    post = next(
        s
        for s in receiver.snapshot()
        if s.service == "intake"
        and s.kind == SERVER
        and "POST" in s.name
        and s.trace_id == emails[0].trace_id
    )
    trace_id = post.trace_id
    assert post.parent_span_id == "", "the clinic's POST starts the trace"
    assert {s.trace_id for s in emails} == {trace_id}, "every email continues the POST's trace"

    async def whole_trace() -> list[ReceivedSpan] | None:
        spans = [s for s in receiver.snapshot() if s.trace_id == trace_id]
        handled = {(s.service, s.name) for s in spans if s.kind == CONSUMER}
        wanted = {
            ("eligibility", "referral.submitted process"),
            ("site_router", "referral.screened process"),
            ("notifier", "referral.routed process"),
        }
        # Each process exports its spans in batches of its own: wait for every handling's parent too.
        ids = {s.span_id for s in spans}
        orphans = [s for s in spans if s.kind == CONSUMER and s.parent_span_id not in ids]
        return spans if wanted <= handled and not orphans else None

    spans = await eventually(whole_trace, within=30, what="each service's handling in the trace")
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert {"intake", "eligibility", "site_router", "notifier"} <= services

    # Each hop is a child of the one before: POST → publish → process → ... → email.
    def ancestors(span: ReceivedSpan) -> list[str]:
        chain = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append(f"{span.service}:{span.name}")
        return chain

    for email in emails:
        chain = ancestors(email)
        assert chain[-1] == f"intake:{post.name}", chain
        assert (
            "notifier:referral.routed process" in chain and "eligibility:referral.submitted process" in chain
        )
        assert any(name.endswith(" publish") for name in chain), "the relay's publish span is on the way"
    # The records carried the context: each consumer span's parent is a relay's publish span.
    for span in spans:
        if span.kind == CONSUMER:
            parent = by_id.get(span.parent_span_id)
            assert parent is not None and parent.kind == PRODUCER, span
    # Database statements and the notifier's read of the contacts (an HTTP call into intake) are in it.
    statements = [
        s
        for s in spans
        if s.kind == CLIENT and ("db.statement" in s.attributes or "db.query.text" in s.attributes)
    ]
    assert {s.service for s in statements} >= {"intake", "eligibility", "site_router", "notifier"}

    # The notifier's pass reads the contacts of every referral it gathered at once: the read is a span
    # of its own, in this trace when the pass was this referral's alone, else linked to each trace it
    # served; intake's answer to it is its child (through the HTTP client's span).
    async def contacts_read() -> tuple[ReceivedSpan, ReceivedSpan] | None:
        everything = {s.span_id: s for s in receiver.snapshot()}
        reads = [
            s
            for s in everything.values()
            if s.service == "notifier"
            and s.name == "contacts read"
            and (s.trace_id == trace_id or trace_id in s.links)
        ]
        for read in reads:
            for served in everything.values():
                if served.service != "intake" or served.kind != SERVER or "contacts" not in served.name:
                    continue
                client = everything.get(served.parent_span_id)
                if client is not None and client.parent_span_id == read.span_id:
                    return read, served
        return None

    read, served = await eventually(contacts_read, within=30, what="the contacts read and intake's answer")
    assert served.trace_id == read.trace_id
    assert read.trace_id == trace_id or trace_id in read.links

    # No PHI in any span: statements without parameter values, URLs without query strings.
    patient = body["patient"]
    phi = [
        str(patient[k])
        for k in ("email", "given_name", "family_name", "birth_date", "phone")
        if patient.get(k)
    ]
    assert len(phi) >= 4
    for span in receiver.snapshot():
        text = repr(span.attributes)
        assert not [p for p in phi if p in text], span
        for key in ("http.url", "url.full", "http.target", "url.query"):
            assert "?" not in str(span.attributes.get(key, "")), span
