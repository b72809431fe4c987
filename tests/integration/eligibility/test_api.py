"""The API over real HTTP, with real tokens from the real auth service; state arrives by Kafka events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.eligibility.bootstrap import create_app
from services.eligibility.config import EligibilitySettings
from shared.auth import Scope
from shared.events import Envelope
from shared.settings import KafkaSettings
from tests.integration.eligibility.conftest import referral
from tests.support import builders
from tests.support.auth import Issuer
from tests.support.builders import CLINIC, clinical, site, wrap
from tests.support.kafka import publish, wait_consumed
from tests.support.servers import serve_app
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AUDIENCE = "eligibility"


@pytest.fixture
def api_settings(database_url: str, kafka: KafkaSettings, issuer: Issuer) -> EligibilitySettings:
    return EligibilitySettings(
        environment="test",
        database_url=database_url,
        kafka=kafka,
        oauth=issuer.oauth,
        consumer_group=f"eligibility-{uuid.uuid4().hex[:8]}",
        screening_window_days=21,
    )


@pytest.fixture
async def api(api_settings: EligibilitySettings) -> AsyncIterator[str]:
    """The whole service (API, consumer, relay) on loopback, trusting the running issuer."""
    async with serve_app(create_app(api_settings)) as url:
        yield url


async def clinic_token(issuer: Issuer, http: httpx.AsyncClient, clinic: str, scope: Scope) -> str:
    return await issuer.token(
        http, f"{clinic}-{scope.name.lower()}", [scope], audience=AUDIENCE, clinic_id=clinic
    )


async def site_token(issuer: Issuer, http: httpx.AsyncClient, code: str) -> str:
    return await issuer.token(
        http, f"site-{code.lower()}", [Scope.SITE_REFERRALS], audience=AUDIENCE, site_code=code
    )


async def read(
    http: httpx.AsyncClient, api: str, rid: uuid.UUID, token: str | None, **params: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await http.get(f"{api}/v1/assessments/{rid}", headers=headers, params=params)


async def until_status(
    http: httpx.AsyncClient, api: str, rid: uuid.UUID, token: str, status: int, **params: Any
) -> httpx.Response:
    """Events are consumed asynchronously: poll until the answer is ``status``, and return it."""
    found: list[httpx.Response] = []

    async def answers() -> bool:
        found[:] = [await read(http, api, rid, token, **params)]
        return found[0].status_code == status

    await eventually(answers, what=f"GET assessment -> {status}")
    return found[0]


def routed(rid: uuid.UUID, code: str, rank: int) -> Envelope:
    return wrap(builders.routed(site=site(code), distance_km=4.2 * rank, rank=rank), rid)


def declined(rid: uuid.UUID, code: str) -> Envelope:
    return wrap(builders.site_decided("declined", site_code=code, reason="full"), rid)


async def test_the_referring_clinic_reads_its_assessment_and_no_other_clinic_does(
    api: str, kafka: KafkaSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid))
    own = await clinic_token(issuer, http, CLINIC, Scope.ASSESSMENTS_READ)

    body = (await until_status(http, api, rid, own, 200)).json()
    assert {k: body[k] for k in ("referral_id", "revision", "latest_revision", "decision", "score")} == {
        "referral_id": str(rid),
        "revision": 1,
        "latest_revision": 1,
        "decision": "eligible",
        "score": 1.0,
    }
    assert (body["ruleset"], body["routable"], body["referral_day"]) == ("ucart123-v1", True, "2026-11-10")
    assert body["assessed_at"].endswith(("Z", "+00:00"))
    assert body["criteria"][0] == {
        "id": "age",
        "kind": "inclusion",
        "verdict": "met",
        "reason": "age 58 on the referral day is within 18 to 65",
    }
    assert len(body["criteria"]) == 12

    via_referrals = await clinic_token(issuer, http, CLINIC, Scope.REFERRALS_READ)
    assert (await read(http, api, rid, via_referrals)).json() == body

    other = await clinic_token(issuer, http, "clinic-b", Scope.ASSESSMENTS_READ)
    theirs, missing = await read(http, api, rid, other), await read(http, api, uuid.uuid4(), own)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.headers["content-type"] == "application/problem+json"
    assert theirs.json()["detail"] == missing.json()["detail"]  # existence does not leak


async def test_the_assigned_site_reads_it_until_it_declines(
    api: str, kafka: KafkaSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid))
    await until_status(http, api, rid, await clinic_token(issuer, http, CLINIC, Scope.ASSESSMENTS_READ), 200)
    nyc, bos = await site_token(issuer, http, "NYC1"), await site_token(issuer, http, "BOS1")
    assert (await read(http, api, rid, nyc)).status_code == 404  # not routed yet

    await publish(kafka, routed(rid, "NYC1", rank=1))
    body = (await until_status(http, api, rid, nyc, 200)).json()
    assert (body["decision"], body["revision"]) == ("eligible", 1)
    assert (await read(http, api, rid, bos)).status_code == 404

    await publish(kafka, declined(rid, "NYC1"))
    await until_status(http, api, rid, nyc, 404)
    await publish(kafka, routed(rid, "BOS1", rank=2))
    await until_status(http, api, rid, bos, 200)
    assert (await read(http, api, rid, nyc)).status_code == 404


async def test_a_late_decline_still_ends_access_and_an_older_routing_never_grants_it(
    api: str, api_settings: EligibilitySettings, kafka: KafkaSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    """Routed and site_decided are different topics: they may be consumed in either order."""
    rid = uuid.uuid4()
    await publish(kafka, referral(rid))
    nyc, bos = await site_token(issuer, http, "NYC1"), await site_token(issuer, http, "BOS1")
    await publish(kafka, declined(rid, "NYC1"))  # the decline overtook its routing
    await publish(kafka, routed(rid, "BOS1", rank=2))
    await until_status(http, api, rid, bos, 200)
    await publish(kafka, routed(rid, "NYC1", rank=1))  # the older routing, arriving last

    await wait_consumed(kafka, api_settings.consumer_group, "referral.routed")
    assert (await read(http, api, rid, nyc)).status_code == 404
    assert (await read(http, api, rid, bos)).status_code == 200


async def test_tokens_are_checked_before_anything_is_looked_up(
    api: str, kafka: KafkaSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid))
    await until_status(http, api, rid, await clinic_token(issuer, http, CLINIC, Scope.ASSESSMENTS_READ), 200)

    anonymous = await read(http, api, rid, None)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert (await read(http, api, rid, "not-a-jwt")).status_code == 401
    for_intake = await issuer.token(
        http, "clinic-a-intake", [Scope.ASSESSMENTS_READ], audience="intake", clinic_id=CLINIC
    )
    assert (await read(http, api, rid, for_intake)).status_code == 401
    writer = await clinic_token(issuer, http, CLINIC, Scope.REFERRALS_WRITE)
    refused = await read(http, api, rid, writer)
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


async def test_older_revisions_on_request(
    api: str, kafka: KafkaSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    rid = uuid.uuid4()
    token = await clinic_token(issuer, http, CLINIC, Scope.ASSESSMENTS_READ)
    await publish(kafka, referral(rid, block=clinical(ecog=3)))
    await until_status(http, api, rid, token, 200)
    await publish(kafka, referral(rid, revision=2))

    async def amended() -> bool:
        return (await read(http, api, rid, token)).json()["revision"] == 2

    await eventually(amended, what="revision 2 assessed")
    latest = (await read(http, api, rid, token)).json()
    older = (await read(http, api, rid, token, revision=1)).json()
    assert (latest["decision"], latest["latest_revision"]) == ("eligible", 2)
    assert (older["revision"], older["decision"], older["latest_revision"]) == (1, "ineligible", 2)
    assert (await read(http, api, rid, token, revision=2)).json() == latest
    assert (await read(http, api, rid, token, revision=3)).status_code == 404
    assert (await read(http, api, rid, token, revision=0)).status_code == 422
    other = await clinic_token(issuer, http, "clinic-b", Scope.ASSESSMENTS_READ)
    assert (await read(http, api, rid, other, revision=1)).status_code == 404


async def test_the_current_rules_are_public(api: str, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{api}/v1/rulesets/current")
    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["study"]) == ("ucart123-v1", "UCART123-AMELI-01")
    assert body["settings"] == {
        "cohort": "dose_escalation",
        "screening_window_days": 21,  # configured, over the rule set's 28
        "route_needs_review": True,
    }
    assert [c["id"] for c in body["criteria"]][:2] == ["age", "rr_aml"] and len(body["criteria"]) == 12
    donor = next(c for c in body["criteria"] if c["id"] == "donor_strategy")
    assert (donor["applies_to_cohorts"], donor["applies_now"]) == (["dose_escalation"], True)
    assert all(c["text"] and c["explanation"] for c in body["criteria"])
    assert "public" in response.headers["cache-control"]


async def test_ready_when_database_kafka_and_issuer_answer(api: str, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{api}/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "kafka": "ok", "issuer": "ok"}
