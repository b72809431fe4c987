"""The delivery log over real HTTP with real tokens: ops only, addresses masked."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.notifier.domain import message_id
from shared.auth import Scope
from tests.integration.notifier.conftest import (
    PATIENT,
    Issuer,
    Stack,
    bearer,
    routed,
)

pytestmark = pytest.mark.integration


async def test_ops_read_a_referrals_delivery_log_and_nobody_else_does(
    issuer: Issuer,
    http: httpx.AsyncClient,
    stack: Stack,
) -> None:
    ops = await issuer.token(http, "ops-console", [Scope.OPS], audience="notifier")
    clinic = await issuer.token(http, "clinic-0001", [Scope.REFERRALS_READ], audience="notifier")
    for_intake = await issuer.token(http, "ops-intake", [Scope.OPS], audience="intake")

    referral_id, other_id = uuid.uuid4(), uuid.uuid4()
    stack.intake.add(referral_id, language="es")
    stack.intake.add(other_id, consent=False)
    event = routed(referral_id)
    async with stack.run() as url:
        await stack.publish(event)
        await stack.publish(routed(other_id))
        await stack.settled(6)

        log_url = f"{url}/v1/notifications"
        params = {"referral_id": str(referral_id)}
        anonymous = await http.get(log_url, params=params)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        assert (await http.get(log_url, params=params, headers=bearer(clinic))).status_code == 403
        assert (await http.get(log_url, params=params, headers=bearer(for_intake))).status_code == 401

        response = await http.get(log_url, params=params, headers=bearer(ops))
        assert response.status_code == 200, response.text
        skipped = await http.get(log_url, params={"state": "skipped"}, headers=bearer(ops))

    assert PATIENT["email"] not in response.text and PATIENT["given_name"] not in response.text
    log = {n["recipient_role"]: n for n in response.json()["notifications"]}
    assert set(log) == {"site", "patient", "referrer"}
    patient = log["patient"]
    assert patient["referral_id"] == str(referral_id)
    assert patient["source_event_id"] == str(event.id)
    assert patient["template"] == "patient_routed" and patient["language"] == "es"
    assert patient["state"] == "sent" and patient["attempts"] == 1 and patient["last_error"] is None
    assert patient["recipient"] == "m***@example.com"
    assert patient["message_id"] == message_id(event.id, "patient")
    assert patient["sent_at"] and patient["created_at"] and patient["updated_at"]
    assert log["site"]["template"] == "site_new_referral"

    (only,) = skipped.json()["notifications"]
    assert only["referral_id"] == str(other_id) and "consent" in only["skip_reason"]
    assert only["recipient"] is None


async def test_every_malformed_list_parameter_is_a_named_422(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    """F3 for the notifier's list: each bad query parameter is a 422 problem naming it."""
    ops = await issuer.token(http, "ops-console", [Scope.OPS], audience="notifier")
    cases = (
        [("referral_id", value) for value in ("", "not-a-uuid", "\x00", "1")]
        + [("state", value) for value in ("", "lost", "\x00", "SENT")]
        + [("limit", value) for value in ("0", "1001", "-1", "abc", "1.5", "9" * 40, "")]
    )
    async with stack.run() as url:
        for name, value in cases:
            response = await http.get(f"{url}/v1/notifications", params={name: value}, headers=bearer(ops))
            assert response.status_code == 422, (name, value, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["errors"][0]["field"].startswith(name), (name, value)
