"""Reading referrals: each clinic sees its own only; lists page with an opaque cursor and filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.intake.conftest import IDENTITY, RunningIntake, Tokens, bearer, submit

pytestmark = pytest.mark.integration


async def test_a_clinic_reads_its_referral_without_identity_fields(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a, "CLN-1")
    response = await http.get(f"{intake.url}/v1/referrals/{rid}", headers=bearer(tokens.clinic_a_reader))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == rid and body["clinic_reference"] == "CLN-1" and body["status"] == "received"
    assert body["study"] == "UCART123-AMELI-01" and body["revision"] == 1
    assert body["decision"] is None and body["site"] is None and body["notifications"] == []
    (entry,) = body["timeline"]
    assert (
        entry["status"] == "received"
        and entry["source"] == "intake"
        and entry["event"] == "referral.submitted"
    )
    for value in IDENTITY:
        assert value not in response.text


async def test_another_clinics_referral_is_not_found(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(intake, http, tokens.clinic_a, "CLN-1")
    url = f"{intake.url}/v1/referrals/{rid}"
    for response in (
        await http.get(url, headers=bearer(tokens.clinic_b)),
        await http.post(f"{url}/amendments", json={"clinical": {}}, headers=bearer(tokens.clinic_b)),
        await http.post(f"{url}/withdraw", headers=bearer(tokens.clinic_b)),
        await http.get(
            f"{intake.url}/v1/referrals/{'0' * 8}-0000-4000-8000-{'0' * 12}", headers=bearer(tokens.clinic_a)
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
    mine = await http.get(url, headers=bearer(tokens.clinic_a))
    assert mine.status_code == 200 and mine.json()["status"] == "received" and mine.json()["revision"] == 1


async def test_a_token_that_acts_for_no_clinic_is_refused(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    response = await http.get(f"{intake.url}/v1/referrals", headers=bearer(tokens.notifier))
    assert response.status_code == 403  # lacks referrals:read


async def test_the_list_shows_own_referrals_in_pages(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    mine = [await submit(intake, http, tokens.clinic_a, f"CLN-{i}") for i in range(5)]
    theirs = await submit(intake, http, tokens.clinic_b, "CLN-B")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await http.get(
            f"{intake.url}/v1/referrals", params=params, headers=bearer(tokens.clinic_a)
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == mine and theirs not in seen and pages == 3

    bad = await http.get(
        f"{intake.url}/v1/referrals", params={"cursor": "garbage"}, headers=bearer(tokens.clinic_a)
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    too_many = await http.get(
        f"{intake.url}/v1/referrals", params={"limit": 1000}, headers=bearer(tokens.clinic_a)
    )
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "limit"


async def test_the_list_filters_by_status_and_update_time(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    first = await submit(intake, http, tokens.clinic_a, "CLN-1")
    second = await submit(intake, http, tokens.clinic_a, "CLN-2")
    await http.post(f"{intake.url}/v1/referrals/{first}/withdraw", headers=bearer(tokens.clinic_a))
    url, auth = f"{intake.url}/v1/referrals", bearer(tokens.clinic_a)

    async def ids(**params: str) -> list[str]:
        response = await http.get(url, params=params, headers=auth)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(status="withdrawn") == [first]
    assert await ids(status="received") == [second]
    assert sorted(await ids()) == sorted([first, second])
    assert await ids() == [second, first]  # least recently updated first: the withdrawal came last
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert await ids(updated_since=future) == []
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert await ids(updated_since=past) == [second, first]
    naive = await http.get(url, params={"updated_since": "2026-01-01T00:00:00"}, headers=auth)
    assert naive.status_code == 422
    unknown = await http.get(url, params={"status": "lost"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"].startswith("status")
