"""The funnel of the running system: referrals submitted by a clinic, screened, routed and accepted by
the real services, counted by insights (its own process, store and consumer group) and read by ops."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.devstack.stack import Stack
from tests.e2e.test_pipeline import site_action, submit, until_status
from tests.support.builders import sample_referral
from tests.support.system import Client
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def funnel(web: httpx.AsyncClient, system: Stack, ops: Client, what: str = "") -> dict[str, Any]:
    response = await web.get(
        f"{system.config.url('insights')}/v1/funnel{what}", headers=await ops.headers(web, "insights")
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def steps(body: dict[str, Any]) -> dict[str, int]:
    counted = {s["step"]: s["count"] for s in body["path"]}
    counted |= {f"exit:{e['step']}": e["count"] for e in body["exits"]}
    return counted | {f"criterion:{c['id']}": c["fails"] for c in body["criteria"]}


async def test_the_pipeline_s_events_become_the_funnel(
    system: Stack,
    web: httpx.AsyncClient,
    clinic: Client,
    ops: Client,
    coordinators: dict[str, Client],
) -> None:
    before = steps(await funnel(web, system, ops))
    accepted = await submit(web, system, clinic, sample_referral())
    site = (await until_status(web, system, clinic, accepted, "routed", "notified"))["site"]
    await site_action(web, system, coordinators[site["code"]], accepted, "accept", {})
    ineligible = await submit(web, system, clinic, sample_referral(ecog=3))
    await until_status(web, system, clinic, ineligible, "not_routed")
    await until_status(web, system, clinic, accepted, "accepted")

    def grew(now: dict[str, int], step: str, by: int) -> bool:
        return now.get(step, 0) - before.get(step, 0) == by

    async def counted() -> dict[str, int] | None:
        now = steps(await funnel(web, system, ops))
        done = grew(now, "submitted", 2) and grew(now, "accepted", 1) and grew(now, "exit:ineligible", 1)
        return now if done else None

    now = await eventually(counted, within=60, what="insights to count both referrals")
    assert grew(now, "screened", 2) and grew(now, "routed", 1)
    assert grew(now, "criterion:ecog", 1)
    sites = (
        await web.get(
            f"{system.config.url('insights')}/v1/funnel/sites", headers=await ops.headers(web, "insights")
        )
    ).json()
    mine = next(s for s in sites["sites"] if s["site_code"] == site["code"])
    assert mine["accepted"] >= 1 and mine["capacity_in_use"] >= 1
    refused = await web.get(
        f"{system.config.url('insights')}/v1/funnel", headers=await clinic.headers(web, "intake")
    )
    assert refused.status_code == 401  # a token for another audience
