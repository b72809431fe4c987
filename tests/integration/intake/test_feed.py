"""The clinic's change feed (``GET /v1/changes``) over real HTTP on PostgreSQL: every timeline entry of
its referrals, in order, resumable with the cursor, even while other referrals' entries are being
written; another clinic's never; a cursor it did not give, 422."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.events import Envelope, ReferralStatusChanged
from tests.integration.intake import events
from tests.integration.intake.conftest import IDENTITY, RunningIntake, Tokens, bearer, submit
from tests.support.kafka import publish
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def feed(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, cursor: str | None = None, limit: int = 100
) -> dict[str, Any]:
    params: dict[str, str | int] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
    response = await http.get(f"{intake.url}/v1/changes", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_the_feed_lists_every_change_in_order_and_resumes_from_the_cursor(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    first = await submit(intake, http, tokens.clinic_a, "CLN-1")
    second = await submit(intake, http, tokens.clinic_a, "CLN-2")
    amended = await http.post(
        f"{intake.url}/v1/referrals/{first}/amendments",
        json={"clinical": {"diagnosis": "aml", "ecog": 1}, "reason": "new biopsy"},
        headers=bearer(tokens.clinic_a),
    )
    assert amended.status_code == 202
    withdrawn = await http.post(
        f"{intake.url}/v1/referrals/{second}/withdraw",
        json={"reason": "moved"},
        headers=bearer(tokens.clinic_a),
    )
    assert withdrawn.status_code == 200
    await submit(intake, http, tokens.clinic_b, "CLN-1")

    page = await feed(intake, http, tokens.clinic_a_reader, limit=3)
    rest = await feed(intake, http, tokens.clinic_a_reader, page["next_cursor"], limit=3)
    empty = await feed(intake, http, tokens.clinic_a_reader, rest["next_cursor"])
    third = await submit(intake, http, tokens.clinic_a, "CLN-3")
    later = await feed(intake, http, tokens.clinic_a_reader, empty["next_cursor"])
    theirs = await feed(intake, http, tokens.clinic_b)

    items = page["items"] + rest["items"]
    assert [(i["referral_id"], i["event"], i["status"], i["revision"]) for i in items] == [
        (first, "referral.submitted", "received", 1),
        (second, "referral.submitted", "received", 1),
        (first, "referral.amended", "received", 2),
        (second, "referral.withdrawn", "withdrawn", 1),
    ]
    assert [i["seq"] for i in items] == [1, 2, 3, 4] and len(page["items"]) == 3
    assert items[2]["reason"] == "amended to revision 2: new biopsy" and items[2]["source"] == "intake"
    assert items[3]["entry_status"] == "withdrawn" and items[3]["entry_revision"] is None
    assert all(i["occurred_at"] and i["recorded_at"] for i in items)
    assert empty["items"] == [] and empty["next_cursor"] == rest["next_cursor"]
    assert [(i["referral_id"], i["seq"]) for i in later["items"]] == [(third, 5)]
    assert [i["seq"] for i in theirs["items"]] == [1], "another clinic's feed has only its own referral"
    assert {first, second, third}.isdisjoint(i["referral_id"] for i in theirs["items"])
    text = str(items)
    for value in IDENTITY:
        assert value not in text


async def test_status_events_are_on_the_feed_with_the_status_the_clinic_sees_and_published_for_webhooks(
    consuming: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    rid = await submit(consuming, http, tokens.clinic_a)
    at = datetime.now(UTC)
    items: list[dict[str, Any]] = []

    async def on_feed(count: int) -> bool:
        nonlocal items
        items = (await feed(consuming, http, tokens.clinic_a))["items"]
        return len(items) == count

    # One at a time: events of different topics are recorded in the order they arrive, not occurred.
    await publish(consuming.kafka, events.envelope(rid, events.screened(), at + timedelta(seconds=1)))
    await eventually(lambda: on_feed(2), what="the screening on the feed")
    await publish(consuming.kafka, events.envelope(rid, events.routed(), at + timedelta(seconds=2)))
    await eventually(lambda: on_feed(3), what="the routing on the feed")
    # A stale waitlisting (it occurred before the routing): history, the status stays routed.
    await publish(consuming.kafka, events.envelope(rid, events.waitlisted(), at + timedelta(seconds=1.5)))
    await eventually(lambda: on_feed(4), what="the waitlisting on the feed")
    assert [(i["event"], i["entry_status"], i["status"]) for i in items] == [
        ("referral.submitted", "received", "received"),
        ("referral.screened", "screened", "screened"),
        ("referral.routed", "routed", "routed"),
        ("referral.waitlisted", "waitlisted", "routed"),
    ]
    changes = [Envelope.from_bytes(row.payload.encode()) for row in await consuming.outbox(changes=True)]
    published = [c.payload() for c in changes]
    assert all(isinstance(p, ReferralStatusChanged) for p in published)
    assert [
        (p.seq, p.source_event_type, p.status) for p in published if isinstance(p, ReferralStatusChanged)
    ] == [(i["seq"], i["event"], i["status"]) for i in items]
    assert {str(c.referral_id) for c in changes} == {rid}
    for change in changes:
        for value in IDENTITY:
            assert value not in change.model_dump_json()


async def test_a_reader_following_the_cursor_misses_nothing_while_a_clinic_writes_concurrently(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Twenty referrals submitted at once (transactions committing in any order) while the clinic polls
    with its cursor: every entry is seen, once, in feed order."""
    seen: list[int] = []
    writing = True

    async def read() -> None:
        cursor: str | None = None
        while True:
            last_round = not writing
            page = await feed(intake, http, tokens.clinic_a_reader, cursor, limit=7)
            seen.extend(i["seq"] for i in page["items"])
            cursor = page["next_cursor"]
            if last_round and not page["items"]:
                return
            await asyncio.sleep(0)  # let the writers go on

    reader = asyncio.create_task(read())
    await asyncio.gather(*(submit(intake, http, tokens.clinic_a, f"CLN-{n}") for n in range(20)))
    writing = False
    await reader
    assert seen == list(range(1, 21))


@pytest.mark.parametrize("cursor", ["garbage!", "Y2hhbmdlczotMQ", "eyJhIjogMX0"])
async def test_a_cursor_the_feed_did_not_give_is_a_422(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens, cursor: str
) -> None:
    response = await http.get(
        f"{intake.url}/v1/changes", params={"cursor": cursor}, headers=bearer(tokens.clinic_a_reader)
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


async def test_the_feed_needs_a_clinic_token_with_referrals_read(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    assert (await http.get(f"{intake.url}/v1/changes")).status_code == 401
    assert (await http.get(f"{intake.url}/v1/changes", headers=bearer(tokens.notifier))).status_code == 403
