"""The patient's contact for the site that accepted the referral, over real HTTP with real tokens: only
that site, only once accepted, 404 otherwise; every read audited, and the audit log for ops only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.intake.commands import record_status_events
from shared.auth import Scope
from shared.events import EventData
from tests.integration.intake import events
from tests.integration.intake.conftest import RunningIntake, Tokens, bearer, submit
from tests.support.auth import Issuer

pytestmark = pytest.mark.integration


async def on_timeline(intake: RunningIntake, rid: str, *items: EventData) -> None:
    """Record status events as the consumer loop does (one transaction), a second apart."""
    start = datetime.now(UTC)
    envelopes = [
        (events.envelope(rid, data, start + timedelta(seconds=i)), data) for i, data in enumerate(items)
    ]
    async with intake.db.session() as session:
        await record_status_events(session, envelopes)


async def site_token(issuer: Issuer, http: httpx.AsyncClient, code: str, *scopes: Scope) -> str:
    return await issuer.token(
        http,
        f"coordinator-{code.lower()}-{len(scopes)}",
        scopes or [Scope.SITE_CONTACT],
        audience="intake",
        site_code=code,
    )


async def test_the_accepting_site_reads_the_contact_and_each_read_is_audited(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens, session_issuer: Issuer
) -> None:
    rid = await submit(intake, http, tokens.clinic_a, phone="+1 212 555 0199")
    own = bearer(await site_token(session_issuer, http, events.SITE.code))
    other = bearer(await site_token(session_issuer, http, "OTHER-SITE"))
    url = f"{intake.url}/v1/site/referrals/{rid}/contact"

    await on_timeline(intake, rid, events.screened(), events.routed())
    before = await http.get(url, headers=own)
    assert before.status_code == 404 and before.headers["content-type"] == "application/problem+json"

    await on_timeline(intake, rid, events.site_decided("accepted"))
    for _ in range(2):
        read = await http.get(url, headers=own)
        assert read.status_code == 200, read.text
        assert read.headers["cache-control"] == "no-store"
    body = read.json()
    assert (body["given_name"], body["family_name"], body["phone"]) == ("Maria", "Lopez", "+1 212 555 0199")
    assert body["email"] == "maria.lopez@example.com" and body["date_of_birth"]
    assert (body["site_code"], body["status"], body["consent_to_contact"]) == (
        events.SITE.code,
        "accepted",
        True,
    )
    assert (body["postal_code"], body["country"]) == ("10021", "US")
    assert body["referrer"]["email"] == "asmith@clinic.example.org"

    assert (await http.get(url, headers=other)).status_code == 404  # another site: as if unknown
    unknown = await http.get(f"{intake.url}/v1/site/referrals/{uuid.uuid4()}/contact", headers=own)
    assert (
        unknown.status_code == 404
        and unknown.json()["detail"] == (await http.get(url, headers=other)).json()["detail"]
    )

    await on_timeline(intake, rid, events.progressed("contacted"), events.progressed("enrolled"))
    later = await http.get(url, headers=own)
    assert (
        later.status_code == 200 and later.json()["status"] == "enrolled"
    )  # after the outcome, still theirs

    ops = bearer(await session_issuer.token(http, "ops-console", [Scope.OPS], audience="intake"))
    audit = await http.get(f"{intake.url}/v1/audit/contact-reads", params={"referral_id": rid}, headers=ops)
    assert audit.status_code == 200, audit.text
    reads = audit.json()["items"]
    assert [(r["client_id"], r["site_code"]) for r in reads] == [("coordinator-us-ny-01-0", "US-NY-01")] * 3
    assert all(r["referral_id"] == rid and r["subject"] == "coordinator-us-ny-01-0" for r in reads)
    assert audit.json()["next_cursor"] is None


async def test_no_identity_before_acceptance_after_a_decline_or_without_the_scope(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens, session_issuer: Issuer
) -> None:
    declined = await submit(intake, http, tokens.clinic_a, reference="CLN-D")
    own = bearer(await site_token(session_issuer, http, events.SITE.code))
    await on_timeline(
        intake, declined, events.screened(), events.routed(), events.site_decided("declined", "no bed")
    )
    assert (
        await http.get(f"{intake.url}/v1/site/referrals/{declined}/contact", headers=own)
    ).status_code == 404

    accepted = await submit(intake, http, tokens.clinic_a, reference="CLN-A")
    await on_timeline(intake, accepted, events.screened(), events.routed(), events.site_decided("accepted"))
    url = f"{intake.url}/v1/site/referrals/{accepted}/contact"
    assert (await http.get(url)).status_code == 401
    for token in (tokens.clinic_a, tokens.notifier):  # a clinic, the notifier: not the scope
        assert (await http.get(url, headers=bearer(token))).status_code == 403
    no_site = await session_issuer.token(http, "scope-no-site", [Scope.SITE_CONTACT], audience="intake")
    assert (await http.get(url, headers=bearer(no_site))).status_code == 403  # acts for no site

    audit_url = f"{intake.url}/v1/audit/contact-reads"
    assert (await http.get(audit_url, headers=own)).status_code == 403  # the log is for ops
    ops = bearer(await session_issuer.token(http, "ops-console", [Scope.OPS], audience="intake"))
    assert (await http.get(audit_url, headers=ops)).json()["items"] == []  # refused reads leave no record
    bad = await http.get(audit_url, params={"cursor": "nope"}, headers=ops)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


async def test_ops_page_and_filter_the_audit_log(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens, session_issuer: Issuer
) -> None:
    first = await submit(intake, http, tokens.clinic_a, reference="CLN-1")
    second = await submit(intake, http, tokens.clinic_a, reference="CLN-2")
    own = bearer(await site_token(session_issuer, http, events.SITE.code))
    for rid in (first, second):
        await on_timeline(intake, rid, events.screened(), events.routed(), events.site_decided("accepted"))
    for rid in (first, second, first):
        assert (
            await http.get(f"{intake.url}/v1/site/referrals/{rid}/contact", headers=own)
        ).status_code == 200
    ops = bearer(await session_issuer.token(http, "ops-console", [Scope.OPS], audience="intake"))
    url = f"{intake.url}/v1/audit/contact-reads"

    page = (await http.get(url, params={"limit": 2}, headers=ops)).json()
    assert [r["referral_id"] for r in page["items"]] == [first, second] and page["next_cursor"]
    rest = (await http.get(url, params={"limit": 2, "cursor": page["next_cursor"]}, headers=ops)).json()
    assert [r["referral_id"] for r in rest["items"]] == [first] and rest["next_cursor"] is None
    only_first = (await http.get(url, params={"referral_id": first}, headers=ops)).json()["items"]
    assert len(only_first) == 2
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await http.get(url, params={"since": future}, headers=ops)).json()["items"] == []
    assert len((await http.get(url, params={"until": future}, headers=ops)).json()["items"]) == 3
    naive = await http.get(url, params={"since": "2026-12-07T10:00:00"}, headers=ops)
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "since"
