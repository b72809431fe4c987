"""The notifier's contact API: scope contact:read, a service token, and a log of every read."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from services.intake.store import ContactAccess
from tests.integration.intake.conftest import RunningIntake, StartIntake, Tokens, bearer, referral_body

pytestmark = pytest.mark.integration


async def submit(intake: RunningIntake, http: httpx.AsyncClient, token: str, **patient: object) -> str:
    body = referral_body(patient=dict(patient)) if patient else referral_body()
    response = await http.post(f"{intake.url}/v1/referrals", json=body, headers=bearer(token))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def access_log(intake: RunningIntake) -> list[ContactAccess]:
    async with intake.db.session() as session:
        return list((await session.execute(select(ContactAccess).order_by(ContactAccess.id))).scalars())  # type: ignore[arg-type]


async def test_the_notifier_reads_contact_details_and_each_read_is_logged(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    url = f"{intake.url}/internal/v1/referrals/{rid}/contact"
    for _ in range(2):
        response = await http.get(url, headers=bearer(tokens.notifier))
        assert response.status_code == 200, response.text
    assert response.json() == {
        "referral_id": rid,
        "status": "received",
        "patient": {
            "given_name": "Maria",
            "family_name": "Lopez",
            "email": "maria.lopez@example.com",
            "preferred_language": "en",
            "consent_to_contact": True,
        },
        "referrer": {"name": "Dr. Ana Smith", "email": "asmith@clinic.example.org"},
    }
    log = await access_log(intake)
    assert [(str(x.referral_id), x.client_id) for x in log] == [(rid, "notifier")] * 2
    assert log[0].accessed_at <= log[1].accessed_at


async def test_without_the_scope_or_with_a_clinic_token_contact_details_are_refused(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    url = f"{intake.url}/internal/v1/referrals/{rid}/contact"
    assert (await http.get(url)).status_code == 401
    for token in (tokens.clinic_a, tokens.clinic_a_reader):
        response = await http.get(url, headers=bearer(token))
        assert response.status_code == 403
        assert "contact:read" in response.json()["detail"]
    missing = await http.get(
        f"{intake.url}/internal/v1/referrals/{'1' * 8}-1111-4111-8111-{'1' * 12}/contact",
        headers=bearer(tokens.notifier),
    )
    assert missing.status_code == 404
    assert await access_log(intake) == []


async def test_no_email_is_handed_out_without_consent(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a, consent_to_contact=False)
    response = await http.get(
        f"{intake.url}/internal/v1/referrals/{rid}/contact", headers=bearer(tokens.notifier)
    )
    assert response.status_code == 200
    patient = response.json()["patient"]
    assert patient["consent_to_contact"] is False and patient["email"] is None
    assert patient["given_name"] == "Maria"


async def test_an_allow_list_restricts_contact_reads_to_named_clients(
    start_intake: StartIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    async with start_intake(frozenset({"api"}), contact_client_ids=["some-other-notifier"]) as intake:
        rid = await submit(intake, http, tokens.clinic_a)
        response = await http.get(
            f"{intake.url}/internal/v1/referrals/{rid}/contact", headers=bearer(tokens.notifier)
        )
    assert response.status_code == 403
    assert await access_log(intake) == []
