"""Submitting referrals: what is stored, what is published, and what never leaves intake."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime

import httpx
import pytest
from sqlalchemy import select

from services.intake.domain import age_in_years
from services.intake.store import Referral, TimelineEntry
from shared.events import Envelope, ReferralSubmitted
from tests.integration.intake.conftest import (
    IDENTITY,
    RunningIntake,
    StartIntake,
    Tokens,
    bearer,
)
from tests.support.builders import referral_body
from tests.support.kafka import read_topic
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_referral_is_stored_and_published_without_identity(
    start_intake: StartIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    async with start_intake() as intake:  # API and relay: the event reaches the topic
        response = await http.post(
            f"{intake.url}/v1/referrals", json=referral_body(), headers=bearer(tokens.clinic_a)
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "received" and body["revision"] == 1
        assert response.headers["location"] == f"/v1/referrals/{body['id']}"

        async def published() -> bool:
            return len(await read_topic(intake.kafka, "referral.submitted")) == 1

        await eventually(published, what="referral.submitted on the topic")
        (record,) = await read_topic(intake.kafka, "referral.submitted")

    assert record.key == body["id"].encode()
    for value in IDENTITY:
        assert value.encode() not in record.value, f"{value!r} left intake"
    envelope = Envelope.from_bytes(record.value)
    event = envelope.payload()
    assert isinstance(event, ReferralSubmitted)
    assert str(envelope.referral_id) == body["id"] and envelope.producer == "intake"

    async with intake.db.session() as session:
        stored = (await session.execute(select(Referral))).scalar_one()
        (entry,) = (await session.execute(select(TimelineEntry))).scalars().all()
    today = datetime.now(UTC).date()
    assert (stored.given_name, stored.family_name, stored.email) == (
        "Maria",
        "Lopez",
        "maria.lopez@example.com",
    )
    assert stored.date_of_birth == date(1968, 3, 14) and stored.phone == "+1 212 555 0142"
    assert stored.clinic_id == "CLINIC-A" and stored.client_id == "clinic-a"
    assert event.clinic_id == "CLINIC-A" and event.revision == 1
    assert event.referral_day == today == stored.referral_day
    assert event.age_years == age_in_years(date(1968, 3, 14), today)
    assert (event.postal_code, event.country, event.consent_to_contact) == ("10021", "US", True)
    assert event.referrer.name == "Dr. Ana Smith" and event.referrer.email == "asmith@clinic.example.org"
    assert event.clinical == referral_body()["clinical"] == stored.clinical
    assert entry.event_id == envelope.id and entry.status == "received" and entry.source == "intake"
    assert set(envelope.data) == {
        "clinic_id", "revision", "referral_day", "age_years", "postal_code", "country",
        "consent_to_contact", "referrer", "clinical",
    }  # fmt: skip


async def test_study_defaults_to_the_deployments_and_an_unknown_one_is_refused(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    without = referral_body("CLN-1")
    del without["study"]
    response = await http.post(f"{intake.url}/v1/referrals", json=without, headers=bearer(tokens.clinic_a))
    assert response.status_code == 202, response.text
    async with intake.db.session() as session:
        assert (await session.execute(select(Referral.study))).scalar_one() == "UCART123-AMELI-01"

    other = referral_body("CLN-2") | {"study": "SOME-OTHER-TRIAL"}
    refused = await http.post(f"{intake.url}/v1/referrals", json=other, headers=bearer(tokens.clinic_a))
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in refused.json()["errors"]] == ["study"]
    assert await intake.count() == 1 and len(await intake.outbox()) == 1


async def test_a_second_open_referral_with_the_same_clinic_reference_is_a_409(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    first = await http.post(url, json=referral_body("CLN-7"), headers=bearer(tokens.clinic_a))
    again = await http.post(url, json=referral_body("CLN-7"), headers=bearer(tokens.clinic_a))
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["existing_id"] == first.json()["id"]

    other_clinic = await http.post(url, json=referral_body("CLN-7"), headers=bearer(tokens.clinic_b))
    assert other_clinic.status_code == 202  # references are the clinic's own namespace

    withdrawn = await http.post(f"{url}/{first.json()['id']}/withdraw", headers=bearer(tokens.clinic_a))
    assert withdrawn.status_code == 200, withdrawn.text
    reopened = await http.post(url, json=referral_body("CLN-7"), headers=bearer(tokens.clinic_a))
    assert reopened.status_code == 202, reopened.text
    assert await intake.count() == 3


async def test_concurrent_duplicates_of_a_clinic_reference_create_one_referral(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    responses = await asyncio.gather(
        *(
            http.post(
                f"{intake.url}/v1/referrals", json=referral_body("CLN-RACE"), headers=bearer(tokens.clinic_a)
            )
            for _ in range(8)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 7, [r.text for r in responses]
    created = next(r.json()["id"] for r in responses if r.status_code == 202)
    assert {r.json()["existing_id"] for r in responses if r.status_code == 409} == {created}
    assert await intake.count() == 1 and len(await intake.outbox()) == 1


async def test_the_write_scope_and_a_clinic_token_are_required(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    assert (await http.post(url, json=referral_body())).status_code == 401
    reader = await http.post(url, json=referral_body(), headers=bearer(tokens.clinic_a_reader))
    assert reader.status_code == 403 and "referrals:write" in reader.json()["detail"]
    assert await intake.count() == 0


async def test_the_outbox_row_is_the_published_envelope_with_the_trace(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    url = f"{intake.url}/v1/referrals"
    response = await http.post(url, json=referral_body(), headers=bearer(tokens.clinic_a, traceparent=trace))
    odd = await http.post(
        url, json=referral_body("CLN-2"), headers=bearer(tokens.clinic_a, traceparent="x" * 900)
    )
    assert odd.status_code == 202  # a malformed trace header is dropped, not refused
    first, second = await intake.outbox()
    assert first.topic == "referral.submitted" and first.key == response.json()["id"]
    payload = json.loads(first.payload)
    assert payload["type"] == "referral.submitted" and payload["data"]["clinic_id"] == "CLINIC-A"
    assert payload["trace"] == trace and json.loads(second.payload)["trace"] is None
    for value in IDENTITY:
        assert value not in first.payload
