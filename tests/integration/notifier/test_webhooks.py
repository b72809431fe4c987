"""Webhooks end to end: a clinic registers an endpoint over the API with a real token, a
``referral.status_changed`` arrives on Kafka, and a real HTTP receiver on loopback gets it signed,
verified with the ``standardwebhooks`` library's own ``Webhook.verify``. Retries, dead letters,
replays and the clinic boundary, on real PostgreSQL and Kafka.

Receivers are loopback HTTP, so these notifiers run with plain http and private addresses allowed (the
settings ops would never set in production); the refusals themselves are unit-tested
(tests/unit/notifier/test_webhook_addresses.py) and checked at registration below.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook

from shared.auth import Scope
from shared.dead_letters import DeadLetter
from shared.events import Envelope
from tests.integration.notifier.conftest import CLINIC, CONSUMER_GROUP, PATIENT, Issuer, Stack, bearer
from tests.support import builders
from tests.support.auth import CLINIC_SCOPES
from tests.support.kafka import read_topic, wait_consumed
from tests.support.metrics import Counts
from tests.support.servers import serve_app
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OPEN = {"webhook_allow_http": True, "webhook_allow_private_addresses": True}
"""Loopback HTTP receivers: what tests need, and production never allows."""
FAST = {**OPEN, "webhook_retry_base_s": 0.1, "webhook_retry_max_s": 0.3}


@dataclass
class Receiver:
    """A clinic's endpoint: answers ``statuses`` in turn (then the last one forever), keeps requests."""

    url: str = ""
    statuses: list[int] = field(default_factory=lambda: [204])
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def received(self, count: int) -> bool:
        return len(self.requests) >= count

    def verified(self, secret: str) -> list[Any]:
        """Every request's body, each checked with the Standard Webhooks library."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]


@asynccontextmanager
async def receiving(statuses: list[int] | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses=statuses or [204])
    app = FastAPI()

    @app.post("/hooks/trialroute")
    async def hook(request: Request) -> Response:
        receiver.requests.append((dict(request.headers), await request.body()))
        index = min(len(receiver.requests), len(receiver.statuses)) - 1
        return Response(status_code=receiver.statuses[index])

    async with serve_app(app) as url:
        receiver.url = f"{url}/hooks/trialroute"
        yield receiver


async def clinic_token(issuer: Issuer, http: httpx.AsyncClient, clinic_id: str = CLINIC) -> str:
    return await issuer.token(
        http, f"{clinic_id}-hooks", CLINIC_SCOPES, audience="notifier", clinic_id=clinic_id
    )


async def register(
    http: httpx.AsyncClient, url: str, token: str, endpoint_url: str, event_types: list[str] | None = None
) -> dict[str, Any]:
    response = await http.post(
        f"{url}/v1/webhooks/endpoints",
        json={"url": endpoint_url, "event_types": event_types or []},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def deliveries(http: httpx.AsyncClient, url: str, token: str, **params: str) -> list[dict[str, Any]]:
    response = await http.get(f"{url}/v1/webhooks/deliveries", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    return list(response.json()["deliveries"])


async def settled_delivery(
    http: httpx.AsyncClient, url: str, token: str, state: str, within: float = 60
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal found
        found = await deliveries(http, url, token)
        return len(found) == 1 and found[0]["state"] == state

    await eventually(check, within=within, what=f"one delivery {state}")
    return found[0]


def change(event_type: str = "referral.routed", clinic_id: str = CLINIC, **changes: Any) -> Envelope:
    return builders.wrap(builders.status_changed(event_type, clinic_id=clinic_id, **changes))


async def test_a_change_is_delivered_signed_to_the_endpoints_that_want_it(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    token = await clinic_token(issuer, http)
    async with receiving() as receiver, receiving() as decisions_only, stack.run(**OPEN) as url:
        endpoint = await register(http, url, token, receiver.url)
        assert endpoint["secret"].startswith("whsec_") and len(base64.b64decode(endpoint["secret"][6:])) == 32
        await register(http, url, token, decisions_only.url, ["referral.site_decided"])

        event = change("referral.routed", seq=3, reason="Memorial Hospital, New York: 3.2 km (choice 1)")
        await stack.publish(event)
        delivered = await settled_delivery(http, url, token, "delivered")

        (body,) = receiver.verified(endpoint["secret"])
        headers = receiver.requests[0][0]
        listed = (await http.get(f"{url}/v1/webhooks/endpoints", headers=bearer(token))).json()["endpoints"]
        await stack.publish(change("referral.site_decided", seq=4))
        await eventually(lambda: decisions_only.received(1), what="the decision's delivery")

    assert body["type"] == "referral.routed"
    assert body["data"]["referral_id"] == str(event.referral_id) and body["data"]["seq"] == 3
    assert body["data"]["status"] == "routed" and body["data"]["reason"].startswith("Memorial Hospital")
    assert headers["webhook-id"] == f"msg_{uuid.UUID(delivered['id']).hex}"
    for secret in (PATIENT["given_name"], PATIENT["family_name"], PATIENT["email"], PATIENT["date_of_birth"]):
        assert secret not in receiver.requests[0][1].decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(base64.b64encode(b"x" * 32).decode()).verify(receiver.requests[0][1], headers)
    assert delivered["attempts"] == 1 and delivered["last_status_code"] == 204
    assert delivered["delivered_at"] and delivered["last_error"] is None
    assert delivered["endpoint_id"] == endpoint["id"] and delivered["event_type"] == "referral.routed"
    assert len(receiver.requests) == 2, "the endpoint that wants every type had the decision too"
    assert [e["url"] for e in listed] == [receiver.url, decisions_only.url]
    assert all("secret" not in e for e in listed), "a secret is shown once, at creation"


async def test_a_failing_endpoint_is_retried_with_backoff_until_it_answers(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    token = await clinic_token(issuer, http)
    webhooks = Counts("trialroute_webhooks_total", service="notifier")
    async with receiving([500, 503, 200]) as receiver, stack.run(**FAST) as url:
        endpoint = await register(http, url, token, receiver.url)
        await stack.publish(change())
        delivered = await settled_delivery(http, url, token, "delivered")
    assert delivered["attempts"] == 3 and delivered["last_status_code"] == 200
    assert webhooks.moved(outcome="retried") == 2 and webhooks.moved(outcome="sent") == 1
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1, "every attempt carries the same webhook-id"
    assert len(receiver.verified(endpoint["secret"])) == 3


async def test_an_endpoint_that_keeps_failing_is_dead_lettered_and_replayed_once_it_works(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    token = await clinic_token(issuer, http)
    webhooks = Counts("trialroute_webhooks_total", service="notifier", outcome="failed")
    dead = Counts("trialroute_dead_letters_total", service="notifier", topic="referral.status_changed")
    async with receiving([500]) as receiver, stack.run(**FAST, webhook_retry_window_s=1.0) as url:
        endpoint = await register(http, url, token, receiver.url)
        event = change()
        await stack.publish(event)
        failed = await settled_delivery(http, url, token, "failed")
        assert failed["attempts"] >= 2 and failed["last_status_code"] == 500
        assert failed["last_error"] == "the endpoint answered 500" and failed["delivered_at"] is None
        await eventually(lambda: stack.topic_has("referral.status_changed.dlq", 1), what="the dead letter")
        (record,) = await read_topic(stack.kafka, "referral.status_changed.dlq")
        assert webhooks.moved() == 1 and dead.moved() == 1
        letter = DeadLetter.model_validate_json(record.value or b"")
        attempts_before = len(receiver.requests)

        receiver.statuses = [200]
        replay = await http.post(f"{url}/v1/webhooks/deliveries/{failed['id']}/replay", headers=bearer(token))
        assert replay.status_code == 202, replay.text
        delivered = await settled_delivery(http, url, token, "delivered")

    assert letter.webhook is not None and letter.webhook.id == failed["id"]
    assert letter.webhook.endpoint_id == endpoint["id"] and letter.webhook.last_status_code == 500
    assert Envelope.from_bytes(letter.value()).id == event.id and letter.key == str(event.referral_id)
    assert delivered["attempts"] == 1 and delivered["last_status_code"] == 200
    assert len(receiver.requests) == attempts_before + 1
    assert {h["webhook-id"] for h, _ in receiver.requests} == {f"msg_{uuid.UUID(failed['id']).hex}"}


async def test_a_clinic_sees_and_changes_only_its_own_endpoints_and_deliveries(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    mine, theirs = await clinic_token(issuer, http), await clinic_token(issuer, http, "clinic-0002")
    async with receiving() as receiver, stack.run(**OPEN) as url:
        endpoint = await register(http, url, mine, receiver.url)
        await stack.publish(change())
        delivered = await settled_delivery(http, url, mine, "delivered")

        listed = await http.get(f"{url}/v1/webhooks/endpoints", headers=bearer(theirs))
        assert listed.status_code == 200 and listed.json()["endpoints"] == []
        assert await deliveries(http, url, theirs) == []
        foreign_delete = await http.delete(
            f"{url}/v1/webhooks/endpoints/{endpoint['id']}", headers=bearer(theirs)
        )
        foreign_replay = await http.post(
            f"{url}/v1/webhooks/deliveries/{delivered['id']}/replay", headers=bearer(theirs)
        )
        await stack.publish(change(clinic_id="clinic-0002"))  # no endpoint of that clinic: nothing sent
        await wait_consumed(stack.kafka, CONSUMER_GROUP, "referral.status_changed")

        deleted = await http.delete(f"{url}/v1/webhooks/endpoints/{endpoint['id']}", headers=bearer(mine))
        after = await http.get(f"{url}/v1/webhooks/endpoints", headers=bearer(mine))
        replay_after_delete = await http.post(
            f"{url}/v1/webhooks/deliveries/{delivered['id']}/replay", headers=bearer(mine)
        )

    assert foreign_delete.status_code == 404 and foreign_replay.status_code == 404
    assert foreign_delete.headers["content-type"].startswith("application/problem+json")
    assert len(receiver.requests) == 1
    assert deleted.status_code == 204 and after.json()["endpoints"] == []
    assert replay_after_delete.status_code == 409


async def test_registration_refuses_bad_urls_and_callers(
    issuer: Issuer, http: httpx.AsyncClient, stack: Stack
) -> None:
    token = await clinic_token(issuer, http)
    no_scope = await issuer.token(
        http, "clinic-ro", [Scope.REFERRALS_READ], audience="notifier", clinic_id=CLINIC
    )
    ops = await issuer.token(http, "ops-hooks", [Scope.OPS, Scope.WEBHOOKS_MANAGE], audience="notifier")
    async with stack.run(webhook_allow_http=True) as url:
        endpoints = f"{url}/v1/webhooks/endpoints"

        async def post(body: dict[str, Any], token: str | None = token) -> httpx.Response:
            return await http.post(endpoints, json=body, headers=bearer(token) if token else {})

        private = await post({"url": "http://10.1.2.3/hook"})
        loopback = await post({"url": "http://127.0.0.1:8080/hook"})
        metadata = await post({"url": "http://169.254.169.254/latest/meta-data"})
        unknown_type = await post({"url": "https://ehr.example.org/hook", "event_types": ["referral.lost"]})
        anonymous = await post({"url": "https://ehr.example.org/hook"}, None)
        forbidden = await post({"url": "https://ehr.example.org/hook"}, no_scope)
        not_a_clinic = await post({"url": "https://ehr.example.org/hook"}, ops)
        accepted = await post({"url": "https://ehr.example.org/hook"})
    async with stack.run() as url:
        plain_http = await http.post(
            f"{url}/v1/webhooks/endpoints", json={"url": "http://ehr.example.org/hook"}, headers=bearer(token)
        )

    for refused, why in [
        (private, "private"),
        (loopback, "loopback"),
        (metadata, "link-local"),
        (plain_http, "https"),
    ]:
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        (error,) = refused.json()["errors"]
        assert error["field"] == "url" and why in error["reason"]
    assert unknown_type.status_code == 422
    assert anonymous.status_code == 401 and forbidden.status_code == 403 and not_a_clinic.status_code == 403
    assert accepted.status_code == 201, accepted.text
