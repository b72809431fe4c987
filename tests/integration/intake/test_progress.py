"""The accepting site's steps on the real topics: each one on the clinic's timeline, in its change feed
and its FHIR Task, and the outcome final."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.intake import events
from tests.integration.intake.conftest import RunningIntake, Tokens, bearer, submit
from tests.integration.intake.test_timeline import until_entries
from tests.support.kafka import publish

pytestmark = pytest.mark.integration


async def test_the_clinic_sees_every_step_to_enrolment(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake, token = consuming, tokens.clinic_a
    rid = await submit(intake, http, token)
    t = datetime.now(UTC) + timedelta(seconds=1)
    story = [
        events.screened(),
        events.routed(),
        events.site_decided("accepted"),
        events.progressed("contacted"),
        events.progressed("screening_scheduled"),
        events.progressed("consented"),
    ]
    for i, data in enumerate(story):
        await publish(intake.kafka, events.envelope(rid, data, t + timedelta(minutes=i)))
    seen = await until_entries(intake, http, token, rid, 7)
    assert seen["status"] == "consented"
    assert [e["status"] for e in seen["timeline"]][-3:] == ["contacted", "screening_scheduled", "consented"]
    assert seen["timeline"][-2]["reason"] == f"screening scheduled for 2026-12-14 at site {events.SITE.code}"
    assert (
        seen["timeline"][-1]["event"] == "referral.progressed"
        and seen["timeline"][-1]["source"] == "site_router"
    )
    task = (await http.get(f"{intake.url}/fhir/r4/Task/{rid}", headers=bearer(token))).json()
    assert (task["status"], task["businessStatus"]["text"]) == ("in-progress", "consented")

    refused = await http.post(
        f"{intake.url}/v1/referrals/{rid}/withdraw", json={"reason": "x"}, headers=bearer(token)
    )
    assert refused.status_code == 409 and refused.json()["current_status"] == "consented"

    await publish(intake.kafka, events.envelope(rid, events.progressed("enrolled"), t + timedelta(minutes=9)))
    done = await until_entries(intake, http, token, rid, 8)
    assert done["status"] == "enrolled"
    assert (
        done["timeline"][-1]["reason"] == f"enrolled at site {events.SITE.code} (study subject UCART123-0042)"
    )
    task = (await http.get(f"{intake.url}/fhir/r4/Task/{rid}", headers=bearer(token))).json()
    assert (task["status"], task["businessStatus"]["text"]) == ("completed", "enrolled")

    feed = (await http.get(f"{intake.url}/v1/changes", headers=bearer(token))).json()["items"]
    steps = [c for c in feed if c["event"] == "referral.progressed"]
    assert [c["entry_status"] for c in steps] == ["contacted", "screening_scheduled", "consented", "enrolled"]
    assert steps[-1]["status"] == "enrolled"  # (entries recorded in one poll carry the status after it)
    again = await submit(intake, http, token)  # an outcome frees the clinic reference, as a close does
    assert again != rid
