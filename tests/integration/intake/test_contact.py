"""The notifier's contact API: scope contact:read, a service token, several referrals per read, and a
log of every referral read."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select

from services.intake.store import ContactAccess
from tests.integration.intake.conftest import RunningIntake, StartIntake, Tokens, bearer, submit

pytestmark = pytest.mark.integration


def contacts_url(intake: RunningIntake, *referral_ids: str) -> str:
    return f"{intake.url}/internal/v1/contacts?" + "&".join(f"referral_id={r}" for r in referral_ids)


async def access_log(intake: RunningIntake) -> list[ContactAccess]:
    async with intake.db.session() as session:
        return list((await session.execute(select(ContactAccess).order_by(ContactAccess.id))).scalars())  # type: ignore[arg-type]


async def test_the_notifier_reads_contact_details_and_each_read_is_logged(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    for _ in range(2):
        response = await http.get(contacts_url(intake, rid), headers=bearer(tokens.notifier))
        assert response.status_code == 200, response.text
        # F4: patient contact is never kept by a cache or browser, nor sniffed as another type.
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert response.json() == {
        "items": [
            {
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
        ]
    }
    log = await access_log(intake)
    assert [(str(x.referral_id), x.client_id) for x in log] == [(rid, "notifier")] * 2
    assert log[0].accessed_at <= log[1].accessed_at


async def test_one_read_serves_several_referrals_and_leaves_unknown_ones_out(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    first = await submit(intake, http, tokens.clinic_a)
    second = await submit(intake, http, tokens.clinic_a, "CLN-2", given_name="Rosa")
    unknown = str(uuid.uuid4())
    url = contacts_url(intake, first, unknown, second, first)  # an id twice is read and logged once
    response = await http.get(url, headers=bearer(tokens.notifier))
    assert response.status_code == 200, response.text
    names = {item["referral_id"]: item["patient"]["given_name"] for item in response.json()["items"]}
    assert names == {first: "Maria", second: "Rosa"}
    assert sorted(str(x.referral_id) for x in await access_log(intake)) == sorted([first, second])


async def test_a_read_names_one_to_a_hundred_referrals(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    too_many = [str(uuid.uuid4()) for _ in range(101)]
    none = f"{intake.url}/internal/v1/contacts"
    for url in (none, contacts_url(intake, *too_many), contacts_url(intake, "not-a-uuid")):
        response = await http.get(url, headers=bearer(tokens.notifier))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"].startswith("referral_id")


async def test_without_the_scope_or_with_a_clinic_token_contact_details_are_refused(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a)
    url = contacts_url(intake, rid)
    assert (await http.get(url)).status_code == 401
    for token in (tokens.clinic_a, tokens.clinic_a_reader):
        response = await http.get(url, headers=bearer(token))
        assert response.status_code == 403
        assert "contact:read" in response.json()["detail"]
    assert await access_log(intake) == []


async def test_no_email_is_handed_out_without_consent(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a, consent_to_contact=False)
    response = await http.get(contacts_url(intake, rid), headers=bearer(tokens.notifier))
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["patient"]["consent_to_contact"] is False and item["patient"]["email"] is None
    assert item["patient"]["given_name"] == "Maria"


async def test_an_allow_list_restricts_contact_reads_to_named_clients(
    start_intake: StartIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    async with start_intake(frozenset({"api"}), contact_client_ids=["some-other-notifier"]) as intake:
        rid = await submit(intake, http, tokens.clinic_a)
        response = await http.get(contacts_url(intake, rid), headers=bearer(tokens.notifier))
    assert response.status_code == 403
    assert await access_log(intake) == []
