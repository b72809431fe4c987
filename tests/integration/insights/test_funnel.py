"""The funnel over real Kafka and PostgreSQL: events published by their producers' topics, counts read
back over HTTP with real tokens; CSV; the ops scope; bad dates."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.insights.config import InsightsSettings
from shared.auth import Scope
from shared.events import CriterionVerdict, Envelope, EventData
from tests.support import builders
from tests.support.auth import Issuer
from tests.support.kafka import publish, wait_consumed
from tests.support.waiting import eventually

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
A = builders.site("SITE-A")
FUNNEL_TOPICS = (
    "referral.submitted",
    "referral.screened",
    "referral.routed",
    "referral.site_decided",
    "referral.progressed",
)


def story(rid: uuid.UUID, *steps: tuple[float, EventData]) -> list[Envelope]:
    return [builders.wrap(data, rid, at=T0 + timedelta(hours=h)) for h, data in steps]


def enrolled(rid: uuid.UUID, clinic: str) -> list[Envelope]:
    return story(
        rid,
        (0, builders.submitted(clinic_id=clinic)),
        (0.1, builders.screened(clinic_id=clinic)),
        (0.2, builders.routed(clinic_id=clinic, site=A)),
        (2.2, builders.site_decided("accepted", clinic_id=clinic, site_code=A.code)),
        (30, builders.progressed("consented", clinic_id=clinic, site_code=A.code)),
        (50, builders.progressed("enrolled", clinic_id=clinic, site_code=A.code)),
    )


def ineligible(rid: uuid.UUID, clinic: str) -> list[Envelope]:
    fails = [CriterionVerdict(id="age", verdict="not_met", reason="age 70")]
    return story(
        rid,
        (0, builders.submitted(clinic_id=clinic)),
        (0.1, builders.screened(clinic_id=clinic, routable=False, criteria=fails)),
    )


async def ops_token(issuer: Issuer, http: httpx.AsyncClient) -> dict[str, str]:
    token = await issuer.token(http, "ops", [Scope.OPS], audience="insights")
    return {"Authorization": f"Bearer {token}"}


async def test_published_events_show_in_the_funnel_per_site_and_per_clinic(
    insights: str, settings: InsightsSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    events = enrolled(uuid.uuid4(), "clinic-a") + ineligible(uuid.uuid4(), "clinic-b")
    for event in reversed(events):  # the last step first: order must not matter
        await publish(settings.kafka, event)
    await publish(settings.kafka, events[0])  # and a redelivery changes nothing
    headers = await ops_token(issuer, http)

    async def counted() -> dict[str, Any] | None:
        response = await http.get(f"{insights}/v1/funnel", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if {s["step"]: s["count"] for s in body["path"]}["enrolled"] == 1 else None

    funnel = await eventually(counted, what="the enrolment to be counted")
    assert funnel is not None
    await wait_consumed(settings.kafka, settings.consumer_group, *FUNNEL_TOPICS)
    funnel = await counted()
    assert funnel is not None
    path = {s["step"]: (s["count"], s["conversion"]) for s in funnel["path"]}
    assert path["submitted"] == (2, None)
    assert path["routed"] == (1, 0.5)
    assert path["contacted"] == (1, 1.0)  # consented implies contacted
    assert {e["step"]: e["count"] for e in funnel["exits"]}["ineligible"] == 1
    assert funnel["criteria"] == [{"id": "age", "title": "Age 18 to 65 years.", "fails": 1}]
    assert funnel["in_progress"] == 0
    assert "from" in funnel and "to" in funnel

    sites = (await http.get(f"{insights}/v1/funnel/sites", headers=headers)).json()
    [site] = sites["sites"]
    assert (site["site_code"], site["routed"], site["accepted"], site["enrolled"]) == ("SITE-A", 1, 1, 1)
    assert site["first_decision_p50_hours"] == 2.0
    assert site["acceptance_rate"] == 1.0
    assert site["capacity_in_use"] == 0
    clinics = (await http.get(f"{insights}/v1/funnel/clinics", headers=headers)).json()["clinics"]
    assert sorted((c["clinic_id"], c["submitted"], c["enrolled"], c["ineligible"]) for c in clinics) == [
        ("clinic-a", 1, 1, 0),
        ("clinic-b", 1, 0, 1),
    ]

    today = datetime.now(UTC).date()
    later = await http.get(
        f"{insights}/v1/funnel", params={"from": str(today + timedelta(days=1))}, headers=headers
    )
    # `to` defaults to today, so a `from` after it is refused (below); a range before T0 counts nothing
    assert later.status_code == 422
    before = await http.get(
        f"{insights}/v1/funnel", params={"from": "2020-01-01", "to": "2020-01-31"}, headers=headers
    )
    assert before.json()["submitted"] == 0


async def test_csv_exports_are_downloads_with_a_header(
    insights: str, settings: InsightsSettings, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    for event in enrolled(uuid.uuid4(), "clinic-a"):
        await publish(settings.kafka, event)
    headers = await ops_token(issuer, http)
    await wait_consumed(settings.kafka, settings.consumer_group, *FUNNEL_TOPICS)
    day = T0.date()
    params = {"from": str(day), "to": str(day + timedelta(days=1))}
    response = await http.get(f"{insights}/v1/funnel.csv", params=params, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="funnel-{day}-to-{day + timedelta(days=1)}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    enrolled_row = next(r for r in rows if r["section"] == "path" and r["name"] == "enrolled")
    assert (enrolled_row["count"], enrolled_row["conversion"]) == ("1", "1.0")
    sites = list(
        csv.DictReader(
            io.StringIO(
                (await http.get(f"{insights}/v1/funnel/sites.csv", params=params, headers=headers)).text
            )
        )
    )
    assert [(r["site_code"], r["accepted"]) for r in sites] == [("SITE-A", "1")]
    clinics = await http.get(f"{insights}/v1/funnel/clinics.csv", params=params, headers=headers)
    assert clinics.text.splitlines()[0].startswith("clinic_id,submitted,")
    assert "clinic-a,1," in clinics.text


async def test_only_ops_read_the_funnel(insights: str, issuer: Issuer, http: httpx.AsyncClient) -> None:
    for path in ("/v1/funnel", "/v1/funnel/sites", "/v1/funnel/clinics.csv"):
        anonymous = await http.get(f"{insights}{path}")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
    clinic = await issuer.token(
        http, "clinic-x", [Scope.REFERRALS_READ], audience="insights", clinic_id="clinic-x"
    )
    refused = await http.get(f"{insights}/v1/funnel", headers={"Authorization": f"Bearer {clinic}"})
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    other_audience = await issuer.token(http, "ops-intake", [Scope.OPS], audience="intake")
    wrong = await http.get(f"{insights}/v1/funnel", headers={"Authorization": f"Bearer {other_audience}"})
    assert wrong.status_code == 401


async def test_bad_dates_are_problems_naming_the_parameter(
    insights: str, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    headers = await ops_token(issuer, http)
    cases = [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-11-30", "to": "2026-11-01"}, "from"),
        ({"from": "1990-01-01", "to": "2026-01-01"}, "to"),  # longer than the longest range
    ]
    for params, field in cases:
        response = await http.get(f"{insights}/v1/funnel.csv", params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert [e["field"] for e in body["errors"]] == [field], body
        assert body["errors"][0]["reason"]
