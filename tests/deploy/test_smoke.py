"""The deployed stack, from outside: what an operator checks after `docker compose up`.

Run by scripts/test-deploy.sh (`make test-deploy`) against the compose stack it started; never by
`make test` (tests/conftest.py leaves this folder out unless TRIALROUTE_DEPLOY_SMOKE=1). Only the
published ports are used, as a clinic and an operator would: HTTPS, trusting the lab CA the `certs` job
made (TRIALROUTE_DEPLOY_CA_FILE; copy it out with `docker compose cp certs:/certs/ca.crt .`). The URLs
default to those docker-compose.yml publishes, so it also runs against a plain `docker compose up`:

    TRIALROUTE_DEPLOY_SMOKE=1 TRIALROUTE_DEPLOY_CLINIC_SECRET=<from `docker compose logs seed-clients`> \\
        TRIALROUTE_DEPLOY_CA_FILE=ca.crt .venv/bin/pytest tests/deploy -m deploy
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
import pytest

from services.devstack.stack import DEMO_CLINIC
from tests.support.builders import sample_referral
from tests.support.waiting import eventually

pytestmark = pytest.mark.deploy

AUTH_URL = os.environ.get("TRIALROUTE_DEPLOY_AUTH_URL", "https://127.0.0.1:8000")
INTAKE_URL = os.environ.get("TRIALROUTE_DEPLOY_INTAKE_URL", "https://127.0.0.1:8001")
SITE_ROUTER_URL = os.environ.get("TRIALROUTE_DEPLOY_SITE_ROUTER_URL", "https://127.0.0.1:8003")
MAIL_URL = os.environ.get("TRIALROUTE_DEPLOY_MAIL_URL", "http://127.0.0.1:8025")  # the catcher's plain UI
CA_FILE = os.environ.get("TRIALROUTE_DEPLOY_CA_FILE", "ca.crt")  # the lab CA of every certificate
# Pipeline steps are seconds apart, but the first referral after start-up waits for consumer groups to
# settle and for the notifier's first token.
WITHIN = float(os.environ.get("TRIALROUTE_DEPLOY_WITHIN_S", "300"))


@pytest.fixture
async def web() -> Any:
    # Generous: on a loaded machine a token request (a password hash check) can take many seconds.
    trust = ssl.create_default_context(cafile=CA_FILE)  # verified, as a clinic would: no verify=False
    async with httpx.AsyncClient(timeout=60, verify=trust) as client:
        yield client


async def clinic_token(web: httpx.AsyncClient) -> str:
    """The demo clinic's token for intake, by its secret (seed-clients prints it)."""
    secret = os.environ["TRIALROUTE_DEPLOY_CLINIC_SECRET"]
    response = await web.post(
        f"{AUTH_URL}/oauth/token",
        data={"grant_type": "client_credentials", "audience": "intake"},
        auth=(DEMO_CLINIC, secret),
    )
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"].lower() == "bearer" and token["access_token"].count(".") == 2
    return str(token["access_token"])


async def mailbox(web: httpx.AsyncClient) -> list[tuple[str, set[str]]]:
    """Every message in the catcher as (subject, recipients): the project's mailbox (/api/messages,
    the local stand-in) or Mailpit (/api/v1/messages, the public image)."""
    response = await web.get(f"{MAIL_URL}/api/messages")
    if response.status_code == 200:
        return [(str(m["subject"]), set(m["envelope_to"])) for m in response.json()]
    response = await web.get(f"{MAIL_URL}/api/v1/messages", params={"limit": 500})
    assert response.status_code == 200, response.text
    return [
        (str(m["Subject"]), {a["Address"] for a in m["To"] + m.get("Cc", []) + m.get("Bcc", [])})
        for m in response.json()["messages"]
    ]


async def test_services_answer_health_and_refuse_without_a_token(web: httpx.AsyncClient) -> None:
    for url in (AUTH_URL, INTAKE_URL, SITE_ROUTER_URL):
        response = await web.get(f"{url}/healthz")
        assert response.status_code == 200, f"{url}: {response.text}"
    response = await web.post(f"{INTAKE_URL}/v1/referrals", json=sample_referral())
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_referral_is_screened_routed_and_both_emails_arrive(web: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {await clinic_token(web)}"}
    body = sample_referral()  # New York, eligible: one of the seeded sites takes it
    response = await web.post(f"{INTAKE_URL}/v1/referrals", json=body, headers=headers)
    assert response.status_code == 202, response.text
    rid = str(response.json()["id"])

    async def notified() -> dict[str, Any] | None:
        view = await web.get(f"{INTAKE_URL}/v1/referrals/{rid}", headers=headers)
        assert view.status_code == 200, view.text
        current = dict(view.json())
        return current if current["status"] == "notified" else None

    current = await eventually(notified, within=WITHIN, interval=1, what=f"{rid} screened, routed, notified")
    assert current["decision"]["decision"] == "eligible"
    assert current["site"] and current["site"]["code"]
    statuses = [item["status"] for item in current["timeline"] if item["status"]]
    assert statuses[:3] == ["received", "screened", "routed"], statuses

    patient, referrer = body["patient"]["email"], body["referrer"]["email"]

    async def three_emails() -> list[tuple[str, set[str]]] | None:
        ours = [m for m in await mailbox(web) if rid in m[0] or m[1] & {patient, referrer}]
        return ours if len(ours) >= 3 else None

    messages = await eventually(
        three_emails, within=WITHIN, interval=1, what="the site's, the patient's and the referrer's emails"
    )
    recipients = [r for _, to in messages for r in to]
    assert patient in recipients and referrer in recipients
    site_mail = [to for _, to in messages if not to & {patient, referrer}]
    assert len(site_mail) == 1 and site_mail[0], f"one email to the site's coordinators: {messages}"
