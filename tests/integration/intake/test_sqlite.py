"""The embedded default store (a SQLite file) keeps the same guarantees as PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.kafka import ensure_topics
from tests.conftest import Servers
from tests.integration.intake import events
from tests.integration.intake.conftest import (
    Tokens,
    bearer,
    drop_topics,
    own_topics,
    running_intake,
)
from tests.support.auth import Issuer
from tests.support.builders import referral_body
from tests.support.kafka import publish
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_the_sqlite_store_works_end_to_end(
    tmp_path: Path, servers: Servers, session_issuer: Issuer, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    kafka = own_topics(servers)
    await ensure_topics(kafka)
    url = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    try:
        async with running_intake(url, kafka, session_issuer, frozenset({"api", "consumer"})) as intake:
            base, auth_a = f"{intake.url}/v1/referrals", bearer(tokens.clinic_a)
            keyed = bearer(tokens.clinic_a, **{"Idempotency-Key": "sqlite-1"})
            first, again, duplicate = [
                await http.post(base, json=referral_body("CLN-S"), headers=headers)
                for headers in (keyed, keyed, auth_a)
            ]
            assert first.status_code == again.status_code == 202 and again.json() == first.json()
            assert duplicate.status_code == 409 and duplicate.json()["existing_id"] == first.json()["id"]
            racing = await asyncio.gather(
                *(http.post(base, json=referral_body("CLN-R"), headers=auth_a) for _ in range(5))
            )
            assert sorted(r.status_code for r in racing) == [202, 409, 409, 409, 409]

            rid = first.json()["id"]
            t = datetime.now(UTC) + timedelta(seconds=1)
            await publish(intake.kafka, events.envelope(rid, events.routed(), t + timedelta(minutes=1)))
            await publish(intake.kafka, events.envelope(rid, events.screened(), t))

            async def routed() -> bool:
                body = (await http.get(f"{base}/{rid}", headers=auth_a)).json()
                return len(body["timeline"]) == 3 and body["status"] == "routed"

            await eventually(routed, what="the status events on the SQLite timeline")
            body = (await http.get(f"{base}/{rid}", headers=auth_a)).json()
            assert [e["status"] for e in body["timeline"]] == ["received", "screened", "routed"]

            assert (await http.post(f"{base}/{rid}/withdraw", headers=auth_a)).status_code == 200
            assert (await http.post(base, json=referral_body("CLN-S"), headers=auth_a)).status_code == 202
            page = (await http.get(base, params={"limit": 2}, headers=auth_a)).json()
            rest = (await http.get(base, params={"cursor": page["next_cursor"]}, headers=auth_a)).json()
            assert len(page["items"]) + len(rest["items"]) == 3 and rest["next_cursor"] is None
            assert await intake.count() == 3
    finally:
        await drop_topics(kafka)
