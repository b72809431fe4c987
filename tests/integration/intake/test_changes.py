"""Amending and withdrawing: allowed until the site accepts, refused with the reason afterwards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.events import Envelope, ReferralAmended, ReferralWithdrawn
from tests.integration.intake import events
from tests.integration.intake.conftest import IDENTITY, RunningIntake, Tokens, bearer, submit
from tests.support.builders import referral_body
from tests.support.kafka import publish
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_an_amendment_replaces_the_clinical_block_and_is_published(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    block = {"diagnosis": "aml", "disease_status": "primary_refractory", "ecog": 0}
    response = await http.post(
        f"{intake.url}/v1/referrals/{rid}/amendments",
        json={"clinical": block, "reason": "new biopsy"},
        headers=bearer(tokens.clinic_a),
    )
    assert response.status_code == 202, response.text
    assert response.json()["revision"] == 2 and response.json()["status"] == "received"
    _, row = await intake.outbox()
    envelope = Envelope.from_bytes(row.payload.encode())
    amended = envelope.payload()
    assert isinstance(amended, ReferralAmended)
    assert amended.revision == 2 and amended.clinical == block and amended.clinic_id == "CLINIC-A"
    assert amended.referral_day == datetime.now(UTC).date()
    for value in IDENTITY:
        assert value not in row.payload
    view = (await http.get(f"{intake.url}/v1/referrals/{rid}", headers=bearer(tokens.clinic_a))).json()
    assert view["clinical"] == block and view["revision"] == 2
    assert view["timeline"][-1]["reason"] == "amended to revision 2: new biopsy"

    invalid = await http.post(
        f"{intake.url}/v1/referrals/{rid}/amendments",
        json={"clinical": {"ecog": 7, "diagnosis": "flu"}},
        headers=bearer(tokens.clinic_a),
    )
    assert invalid.status_code == 422
    assert {e["field"] for e in invalid.json()["errors"]} == {"clinical.ecog", "clinical.diagnosis"}
    assert len(await intake.outbox()) == 2


async def test_a_withdrawal_is_published_and_final(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    url = f"{intake.url}/v1/referrals/{rid}"
    response = await http.post(
        f"{url}/withdraw", json={"reason": "patient moved abroad"}, headers=bearer(tokens.clinic_a)
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "withdrawn"
    _, row = await intake.outbox()
    withdrawn = Envelope.from_bytes(row.payload.encode()).payload()
    assert withdrawn == ReferralWithdrawn(clinic_id="CLINIC-A", reason="patient moved abroad")

    again = await http.post(f"{url}/withdraw", headers=bearer(tokens.clinic_a))
    amend = await http.post(f"{url}/amendments", json={"clinical": {}}, headers=bearer(tokens.clinic_a))
    for refused in (again, amend):
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        assert "withdrawn" in refused.json()["detail"] and refused.json()["current_status"] == "withdrawn"
    assert len(await intake.outbox()) == 2


async def test_after_the_site_accepted_nothing_can_be_changed(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake = consuming
    rid = await submit(intake, http, tokens.clinic_a)
    t = datetime.now(UTC) + timedelta(seconds=1)
    for minute, data in enumerate(
        [events.screened(), events.routed(), events.notified(), events.site_decided("accepted")], start=1
    ):
        await publish(intake.kafka, events.envelope(rid, data, t + timedelta(minutes=minute)))
    url = f"{intake.url}/v1/referrals/{rid}"

    async def accepted() -> bool:
        response = await http.get(url, headers=bearer(tokens.clinic_a))
        return bool(response.json()["status"] == "accepted")

    await eventually(accepted, what="the acceptance on the timeline")
    amend = await http.post(f"{url}/amendments", json={"clinical": {}}, headers=bearer(tokens.clinic_a))
    withdraw = await http.post(f"{url}/withdraw", headers=bearer(tokens.clinic_a))
    for refused in (amend, withdraw):
        assert refused.status_code == 409, refused.text
        problem = refused.json()
        assert "accepted" in problem["detail"] and problem["current_status"] == "accepted"
    assert [r.topic for r in await intake.outbox()] == ["referral.submitted"]

    patient_told = events.envelope(
        rid, events.notified("patient", "patient_accepted"), t + timedelta(minutes=6)
    )
    await publish(intake.kafka, patient_told)
    closed = events.envelope(rid, events.site_decided("closed", "enrolled"), t + timedelta(minutes=7))
    await publish(intake.kafka, closed)

    async def is_closed() -> bool:
        body = (await http.get(url, headers=bearer(tokens.clinic_a))).json()
        return bool(body["status"] == "closed" and len(body["notifications"]) == 2)

    await eventually(is_closed, what="the closure")
    body = (await http.get(url, headers=bearer(tokens.clinic_a))).json()
    assert [e["status"] for e in body["timeline"]][-3:] == ["accepted", "notified", "closed"]
    reopened = await http.post(
        f"{intake.url}/v1/referrals", json=referral_body(), headers=bearer(tokens.clinic_a)
    )
    assert reopened.status_code == 202  # a closed referral frees its clinic reference
    assert json.loads((await intake.outbox())[-1].payload)["type"] == "referral.submitted"


async def test_changes_need_the_write_scope(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    url = f"{intake.url}/v1/referrals/{rid}"
    amend = await http.post(
        f"{url}/amendments", json={"clinical": {}}, headers=bearer(tokens.clinic_a_reader)
    )
    withdraw = await http.post(f"{url}/withdraw", headers=bearer(tokens.clinic_a_reader))
    assert amend.status_code == withdraw.status_code == 403
    assert len(await intake.outbox()) == 1
