"""Information requests over the real topics and HTTP on PostgreSQL: a needs_review screening that
lacks facts, or a site's question, asks the clinic for them (timeline, change feed, FHIR Task); an
amendment that supplies them closes the request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.intake import events
from tests.integration.intake.conftest import IDENTITY, RunningIntake, Tokens, bearer, submit
from tests.support import builders
from tests.support.kafka import publish
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def view(intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str) -> dict[str, Any]:
    response = await http.get(f"{intake.url}/v1/referrals/{rid}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str, event: str, n: int = 1
) -> dict[str, Any]:
    """The referral once its timeline holds ``n`` entries of ``event``."""
    seen: dict[str, Any] = {}

    async def arrived() -> bool:
        seen.update(await view(intake, http, token, rid))
        return sum(e["event"] == event for e in seen["timeline"]) >= n

    await eventually(arrived, what=f"{n} {event} on the timeline")
    return seen


async def task(intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str) -> dict[str, Any]:
    response = await http.get(f"{intake.url}/fhir/r4/Task/{rid}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def amend(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, rid: str, **clinical: Any
) -> None:
    body = {"clinical": {**builders.clinical(), **clinical}, "reason": "facts asked for"}
    response = await http.post(
        f"{intake.url}/v1/referrals/{rid}/amendments", json=body, headers=bearer(token)
    )
    assert response.status_code == 202, response.text


async def test_missing_facts_are_asked_for_by_name_and_an_amendment_that_supplies_them_answers(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    await amend(intake, http, token, rid, ecog=None)  # revision 2: ECOG not known
    t = datetime.now(UTC) + timedelta(seconds=1)
    screening = builders.needs_review("ecog", clinic_id=events.CLINIC, revision=2, routable=False)
    await publish(intake.kafka, events.envelope(rid, screening, t))

    seen = await until(intake, http, token, rid, "referral.info_request_opened")
    [request] = seen["information_requests"]
    assert (request["origin"], request["state"], request["revision"]) == ("screening", "open", 2)
    asked = {"json_path": "clinical.ecog", "fhir": "Observation[LOINC 89247-1].valueInteger"}
    assert request["items"] == [{"criterion": "ecog", "reason": "ecog not given", "fields": [asked]}]
    entry = seen["timeline"][-1]
    assert entry["source"] == "intake" and entry["status"] is None
    assert entry["information_request"]["id"] == request["id"]

    feed = (await http.get(f"{intake.url}/v1/changes", headers=bearer(token))).json()["items"]
    opened = [c for c in feed if c["event"] == "referral.info_request_opened"]
    assert [c["information_request"]["items"][0]["fields"] for c in opened] == [[asked]]
    assert opened[0]["status"] == "not_routed"

    held = await task(intake, http, token, rid)
    assert held["businessStatus"]["coding"][0]["code"] == "information-requested"
    assert held["status"] == "on-hold"
    assert [(i["type"]["coding"][0]["code"], i["type"]["text"], i["valueString"]) for i in held["input"]] == [
        ("ecog", "clinical.ecog", "Observation[LOINC 89247-1].valueInteger")
    ]
    changes = [row.payload for row in await intake.outbox(changes=True)]
    assert any("info_request_opened" in payload and "clinical.ecog" in payload for payload in changes)
    for payload in changes:
        assert not any(value in payload for value in IDENTITY)

    await amend(intake, http, token, rid, ecog=1)  # revision 3
    assert (await view(intake, http, token, rid))["information_requests"][0]["state"] == "open", (
        "a screening's request waits for the screening of the amendment"
    )
    await publish(intake.kafka, events.envelope(rid, events.screened(revision=3), t + timedelta(minutes=1)))
    seen = await until(intake, http, token, rid, "referral.info_request_closed")
    [request] = seen["information_requests"]
    assert (request["state"], request["outcome"], request["closed_by_revision"]) == ("closed", "answered", 3)
    answered = await task(intake, http, token, rid)
    assert answered["businessStatus"]["coding"][0]["code"] == "screened" and "input" not in answered
    feed = (await http.get(f"{intake.url}/v1/changes", headers=bearer(token))).json()["items"]
    assert feed[-1]["event"] == "referral.info_request_closed"
    assert feed[-1]["information_request"]["outcome"] == "answered"


async def test_a_sites_question_is_asked_of_the_clinic_and_its_next_amendment_answers_it(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    t = datetime.now(UTC) + timedelta(seconds=1)
    await publish(intake.kafka, events.envelope(rid, events.screened(), t))
    await publish(intake.kafka, events.envelope(rid, events.routed(), t + timedelta(minutes=1)))
    question = builders.info_requested(clinic_id=events.CLINIC, site_code=events.SITE.code)
    await publish(intake.kafka, events.envelope(rid, question, t + timedelta(minutes=2)))

    seen = await until(intake, http, token, rid, "referral.info_request_opened")
    [request] = seen["information_requests"]
    assert (request["origin"], request["site_code"], request["text"]) == (
        "site",
        events.SITE.code,
        "please send this week's renal panel",
    )
    assert [i["criterion"] for i in request["items"]] == ["organ_function"]
    inputs = (await task(intake, http, token, rid))["input"]
    assert inputs[-1]["valueString"] == "please send this week's renal panel"
    assert "clinical.organ_function.assessed_on" in [i["type"]["text"] for i in inputs]
    other = await http.get(f"{intake.url}/fhir/r4/Task/{rid}", headers=bearer(tokens.clinic_b))
    assert other.status_code == 404

    await amend(intake, http, token, rid, organ_function={**builders.clinical()["organ_function"]})
    [request] = (await view(intake, http, token, rid))["information_requests"]
    assert (request["state"], request["outcome"], request["closed_by_revision"]) == ("closed", "answered", 2)
