"""Idempotency-Key: a retry returns the first response; a different body or an overlap is refused."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from services.intake.domain import request_fingerprint
from services.intake.schemas import ReferralCreate
from services.intake.store import IdempotencyKey, Referral, utcnow
from tests.integration.intake.conftest import RunningIntake, Tokens, bearer
from tests.support.builders import referral_body

pytestmark = pytest.mark.integration


def keyed(token: str, key: str) -> dict[str, str]:
    return bearer(token, **{"Idempotency-Key": key})


async def test_a_retry_with_the_same_key_and_body_returns_the_first_response(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    first = await http.post(url, json=referral_body(), headers=keyed(tokens.clinic_a, "k-1"))
    reordered = dict(reversed(list(referral_body().items())))  # same content, other key order
    again = await http.post(url, json=reordered, headers=keyed(tokens.clinic_a, "k-1"))
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await intake.count() == 1 and len(await intake.outbox()) == 1

    async with intake.db.session() as session:
        row = (await session.execute(select(IdempotencyKey))).scalar_one()
    assert row.client_id == "clinic-a" and row.state == "done"
    assert row.expires_at - row.created_at >= timedelta(hours=24)


async def test_the_same_key_with_another_body_is_a_422(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    await http.post(url, json=referral_body("CLN-1"), headers=keyed(tokens.clinic_a, "k-2"))
    other = await http.post(url, json=referral_body("CLN-2"), headers=keyed(tokens.clinic_a, "k-2"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["errors"] == [
        {"field": "Idempotency-Key", "reason": "reused with a different request"}
    ]
    assert await intake.count() == 1


async def test_concurrent_retries_create_one_referral(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    responses = await asyncio.gather(
        *(http.post(url, json=referral_body(), headers=keyed(tokens.clinic_a, "k-3")) for _ in range(10))
    )
    assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted and len({r.json()["id"] for r in accepted}) == 1
    for refused in (r for r in responses if r.status_code == 409):
        assert "in progress" in refused.json()["detail"] and refused.headers["retry-after"]
    assert await intake.count() == 1 and len(await intake.outbox()) == 1
    settled = await http.post(url, json=referral_body(), headers=keyed(tokens.clinic_a, "k-3"))
    assert settled.status_code == 202 and settled.json() == accepted[0].json()


async def test_keys_belong_to_their_client(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    a = await http.post(url, json=referral_body(), headers=keyed(tokens.clinic_a, "shared-key"))
    b = await http.post(url, json=referral_body(), headers=keyed(tokens.clinic_b, "shared-key"))
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]
    assert await intake.count() == 2


async def test_a_failed_request_frees_its_key(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    await http.post(url, json=referral_body("CLN-1"), headers=bearer(tokens.clinic_a))
    duplicate = await http.post(url, json=referral_body("CLN-1"), headers=keyed(tokens.clinic_a, "k-4"))
    assert duplicate.status_code == 409
    async with intake.db.session() as session:
        assert (await session.execute(select(IdempotencyKey))).first() is None
    fixed = await http.post(url, json=referral_body("CLN-1"), headers=keyed(tokens.clinic_a, "k-4"))
    assert fixed.status_code == 409  # still a duplicate: nothing was remembered for the key
    assert await intake.count() == 1


async def test_expired_keys_are_forgotten_and_abandoned_ones_taken_over(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/v1/referrals"
    await http.post(url, json=referral_body("CLN-1"), headers=keyed(tokens.clinic_a, "old"))
    past = utcnow() - timedelta(seconds=1)
    async with intake.db.session() as session:
        await session.execute(update(IdempotencyKey).values(expires_at=past))
    reused = await http.post(url, json=referral_body("CLN-2"), headers=keyed(tokens.clinic_a, "old"))
    assert reused.status_code == 202, reused.text  # a new request, not a 422 for another body

    body = referral_body("CLN-3")
    fingerprint = request_fingerprint(
        "POST", "/v1/referrals", ReferralCreate.model_validate(body).model_dump(mode="json")
    )
    async with intake.db.session() as session:  # requests in flight: one alive, one that died
        for key, locked_until in (("alive", utcnow() + timedelta(minutes=5)), ("dead", past)):
            session.add(
                IdempotencyKey(
                    client_id="clinic-a",
                    key=key,
                    fingerprint=fingerprint,
                    lock_token="another-request",
                    locked_until=locked_until,
                    expires_at=utcnow() + timedelta(days=1),
                )
            )
    alive = await http.post(url, json=body, headers=keyed(tokens.clinic_a, "alive"))
    assert alive.status_code == 409 and "in progress" in alive.json()["detail"]
    dead = await http.post(url, json=body, headers=keyed(tokens.clinic_a, "dead"))
    assert dead.status_code == 202, dead.text
    assert await intake.count() == 3


async def test_amendments_are_idempotent_too(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    created = await http.post(
        f"{intake.url}/v1/referrals", json=referral_body(), headers=bearer(tokens.clinic_a)
    )
    url = f"{intake.url}/v1/referrals/{created.json()['id']}/amendments"
    body = {"clinical": {"diagnosis": "aml", "ecog": 2}}
    first = await http.post(url, json=body, headers=keyed(tokens.clinic_a, "amend-1"))
    again = await http.post(url, json=body, headers=keyed(tokens.clinic_a, "amend-1"))
    assert first.status_code == again.status_code == 202
    assert first.json()["revision"] == again.json()["revision"] == 2
    async with intake.db.session() as session:
        assert (await session.execute(select(Referral.revision))).scalar_one() == 2
    assert [r.topic for r in await intake.outbox()] == ["referral.submitted", "referral.amended"]
