"""Status events on the real topics: the timeline keeps them in order of occurrence, whatever the
order of arrival, and the status is the latest that applies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.intake import events
from tests.integration.intake.conftest import RunningIntake, StartIntake, Tokens, bearer, submit
from tests.support.kafka import publish, read_topic, wait_consumed
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def view(intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str) -> dict[str, Any]:
    response = await http.get(f"{intake.url}/v1/referrals/{rid}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until_entries(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str, n: int
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def enough() -> bool:
        seen.update(await view(intake, http, token, rid))
        return len(seen["timeline"]) >= n

    await eventually(enough, what=f"{n} timeline entries")
    return seen


async def test_events_arriving_out_of_order_are_kept_in_order_of_occurrence(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    t = datetime.now(UTC) + timedelta(seconds=1)

    await publish(intake.kafka, events.envelope(rid, events.routed(), t + timedelta(minutes=2)))
    early = await until_entries(intake, http, token, rid, 2)
    assert early["status"] == "routed"

    await publish(intake.kafka, events.envelope(rid, events.screened(), t + timedelta(minutes=1)))
    later = await until_entries(intake, http, token, rid, 3)
    assert [e["status"] for e in later["timeline"]] == ["received", "screened", "routed"]
    assert [e["source"] for e in later["timeline"]] == ["intake", "eligibility", "site_router"]
    assert later["status"] == "routed"
    assert later["status_at"].startswith((t + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M"))
    assert later["decision"]["decision"] == "eligible" and later["decision"]["revision"] == 1
    assert [c["id"] for c in later["decision"]["criteria"]] == ["rr_aml", "cd123_positive"]
    assert later["site"] == {
        "code": "US-NY-01", "name": "Memorial Hospital", "city": "New York", "distance_km": 3.2, "rank": 1,
    }  # fmt: skip

    stale = events.envelope(rid, events.waitlisted(), t + timedelta(minutes=1, seconds=30))
    await publish(intake.kafka, stale)
    after_stale = await until_entries(intake, http, token, rid, 4)
    assert [e["status"] for e in after_stale["timeline"]] == ["received", "screened", "waitlisted", "routed"]
    assert after_stale["status"] == "routed", "a stale event overwrote a newer status"

    notice = events.envelope(rid, events.notified(), t + timedelta(minutes=3))
    for _ in range(2):  # redelivered: recorded once
        await publish(intake.kafka, notice)
    declined = events.envelope(
        rid, events.site_decided("declined", "no capacity after all"), t + timedelta(minutes=4)
    )
    await publish(intake.kafka, declined)
    await until_entries(intake, http, token, rid, 6)
    second_site = events.SITE.model_copy(update={"code": "US-NY-02", "name": "Mount Sinai"})
    await publish(
        intake.kafka, events.envelope(rid, events.routed(site=second_site, rank=2), t + timedelta(minutes=5))
    )
    final = await until_entries(intake, http, token, rid, 7)
    assert [e["status"] for e in final["timeline"]] == [
        "received", "screened", "waitlisted", "routed", "notified", "declined", "routed",
    ]  # fmt: skip
    assert final["timeline"][5]["reason"] == "no capacity after all"
    assert final["status"] == "routed" and final["site"]["code"] == "US-NY-02" and final["site"]["rank"] == 2
    assert [(n["recipient_role"], n["message_id"]) for n in final["notifications"]] == [
        ("site", notice.data["message_id"])
    ]


async def test_events_about_an_older_revision_do_not_change_the_status(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    amended = await http.post(
        f"{intake.url}/v1/referrals/{rid}/amendments",
        json={"clinical": {"diagnosis": "aml", "ecog": 2}, "reason": "new ECOG"},
        headers=bearer(token),
    )
    assert amended.status_code == 202 and amended.json()["revision"] == 2
    t = datetime.now(UTC) + timedelta(seconds=1)

    await publish(intake.kafka, events.envelope(rid, events.screened(revision=1), t))
    late = await until_entries(intake, http, token, rid, 3)
    assert late["status"] == "received" and late["revision"] == 2 and late["decision"] is None
    assert [(e["status"], e["revision"]) for e in late["timeline"]] == [
        ("received", 1), ("received", 2), ("screened", 1),
    ]  # fmt: skip

    ineligible = events.screened(revision=2, routable=False)
    await publish(intake.kafka, events.envelope(rid, ineligible, t + timedelta(seconds=1)))
    current = await until_entries(intake, http, token, rid, 4)
    assert current["status"] == "not_routed" and current["decision"]["revision"] == 2, json.dumps(
        current["timeline"]
    )
    assert current["clinical"] == {"diagnosis": "aml", "ecog": 2}


async def test_an_event_for_an_unknown_referral_is_dead_lettered_and_the_rest_go_on(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    stranger = events.envelope("7d7d7d7d-0000-4000-8000-000000000000", events.unroutable(), datetime.now(UTC))
    await publish(intake.kafka, stranger)
    await publish(intake.kafka, events.envelope(rid, events.unroutable(), datetime.now(UTC)))
    current = await until_entries(intake, http, token, rid, 2)
    assert current["status"] == "unroutable"
    assert current["timeline"][-1]["reason"] == "unknown postal code 99999 in US"

    async def dead_lettered() -> bool:
        return len(await read_topic(intake.kafka, "referral.unroutable.dlq")) == 1

    await eventually(dead_lettered, what="the stranger's event in the dead-letter topic")
    (letter,) = await read_topic(intake.kafka, "referral.unroutable.dlq")
    assert "no referral" in json.loads(letter.value)["error"]


async def test_a_burst_of_events_for_several_referrals_is_folded_once_per_referral(
    start_intake: StartIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Events waiting when the consumer starts are handled many to a transaction (one handler call):
    each referral's timeline and status must come out as if they had come one by one."""
    token = tokens.clinic_a
    async with start_intake(frozenset({"api", "relay"})) as api:
        rids = [await submit(api, http, token, f"CLN-BURST-{i}") for i in range(3)]
        t = datetime.now(UTC) + timedelta(seconds=1)
        burst = []
        for rid in rids:
            burst += [
                events.envelope(rid, events.screened(), t + timedelta(minutes=1)),
                events.envelope(rid, events.routed(), t + timedelta(minutes=2)),
                events.envelope(rid, events.notified("site"), t + timedelta(minutes=3)),
                events.envelope(rid, events.notified("patient", "patient_routed"), t + timedelta(minutes=3)),
            ]
        for envelope in [*reversed(burst), burst[0]]:  # newest first, and one redelivered
            await publish(api.kafka, envelope)
        async with start_intake(frozenset({"consumer"}), kafka=api.kafka) as consumer:
            for rid in rids:
                await until_entries(api, http, token, rid, 5)
            # Every copy handled, the redelivered one too: had it been recorded again, it is now.
            topics = ("referral.screened", "referral.routed", "referral.notified")
            await wait_consumed(api.kafka, consumer.settings.consumer_group, *topics)
            views = [await view(api, http, token, rid) for rid in rids]

    for seen in views:
        statuses = [e["status"] for e in seen["timeline"]]
        assert statuses == ["received", "screened", "routed", "notified", "notified"]
        assert seen["status"] == "notified"
        assert seen["site"]["code"] == "US-NY-01" and seen["decision"]["decision"] == "eligible"
        assert sorted(n["recipient_role"] for n in seen["notifications"]) == ["patient", "site"]
