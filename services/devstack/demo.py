"""``trialroute demo``: a clinic's day against the running system, watched live.

It does what a partner clinic's integration does: obtain a token (signing in with its own key, SMART
Backend Services ``private_key_jwt``, through authlib's OAuth2 client), submit referrals, follow them.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from joserfc.jwk import ECKey

from services.devstack.stack import DEMO_CLINIC, DEMO_CLINIC_KEY_FILE
from shared.auth import BackendServicesJWT
from shared.referral import EXAMPLE_REFERRAL

with warnings.catch_warnings():
    # authlib prefers the httpx2 package and warns at import when it falls back to httpx (same API).
    warnings.filterwarnings("ignore", "The httpx module is deprecated", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

SETTLED = {
    "notified",
    "not_routed",
    "unroutable",
    "waitlisted",
    "accepted",
    "declined",
    "closed",
    "withdrawn",
}


@dataclass(frozen=True)
class Sample:
    label: str
    postal_code: str
    country: str
    changes: dict[str, Any]


SAMPLES = [
    Sample("eligible, New York", "10021", "US", {}),
    Sample("eligible, Boston, Spanish", "02134", "US", {"patient.preferred_language": "es"}),
    Sample("eligible, Houston, no consent", "77005", "US", {"patient.consent_to_contact": False}),
    Sample("ineligible: ECOG 3", "33606", "US", {"clinical.ecog": 3}),
    Sample(
        "needs review: CD123 by IHC",
        "M5V 2T6",
        "CA",
        {"clinical.cd123": {"positive": True, "method": "immunohistochemistry"}},
    ),
    Sample("no site can take it", "00000", "US", {}),
]


def referral(sample: Sample, today: date) -> dict[str, Any]:
    """The example referral of the trial's contract, with this sample's changes and fresh dates."""
    body = copy.deepcopy(EXAMPLE_REFERRAL)
    body["clinic_reference"] = f"DEMO-{uuid.uuid4().hex[:8].upper()}"
    body["patient"].update(
        given_name="Demo",
        family_name="Patient",
        email="demo.patient@example.com",
        postal_code=sample.postal_code,
        country=sample.country,
    )
    del body["patient"]["phone"]
    body["clinical"]["organ_function"]["assessed_on"] = (today - timedelta(days=5)).isoformat()
    for path, value in sample.changes.items():
        section, key = path.split(".")
        body[section][key] = value
    return body


def clinic_token(auth_url: str, credentials: Path) -> str:
    """An access token for intake, as the demo clinic: with its key, kept next to ``credentials`` by
    ``trialroute run``; with its secret from ``credentials`` if it has none (an older run dir)."""
    token_url = f"{auth_url}/oauth/token"
    key_file = credentials.parent / DEMO_CLINIC_KEY_FILE
    if key_file.exists():
        key = ECKey.import_key(json.loads(key_file.read_text()))
        method = BackendServicesJWT(token_url, kid=str(key.kid), alg="ES384")
        with OAuth2Client(DEMO_CLINIC, key, token_endpoint_auth_method=method, timeout=10) as oauth:
            token = oauth.fetch_token(token_url, grant_type="client_credentials", audience="intake")
        return str(token["access_token"])
    secret = json.loads(credentials.read_text())[DEMO_CLINIC]
    with httpx.Client(timeout=10) as http:
        response = http.post(
            token_url,
            data={"grant_type": "client_credentials", "audience": "intake"},
            auth=(DEMO_CLINIC, secret),
        )
        return str(response.raise_for_status().json()["access_token"])


def run_demo(
    intake_url: str,
    auth_url: str,
    credentials: Path,
    timeout_s: float = 90,
    portal_url: str = "http://127.0.0.1:8003/portal/",
) -> int:
    token = clinic_token(auth_url, credentials)
    with httpx.Client(timeout=10) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        ids: dict[str, str] = {}
        for sample in SAMPLES:
            response = http.post(
                f"{intake_url}/v1/referrals",
                json=referral(sample, date.today()),
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            response.raise_for_status()
            ids[sample.label] = response.json()["id"]
            print(f"submitted  {sample.label:32} {ids[sample.label]}")
        views = _follow(http, intake_url, ids, timeout_s)
    print()
    print(table(views))
    print(portal_hint(views, portal_url))
    return 0 if all(v.get("status") in SETTLED for v in views.values()) else 1


def _follow(
    http: httpx.Client, intake_url: str, ids: dict[str, str], timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Poll each referral, printing every change of status, until all settle and their emails are in."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    views: dict[str, dict[str, Any]] = {}
    while time.monotonic() - started < timeout_s:
        for label, rid in ids.items():
            view = http.get(f"{intake_url}/v1/referrals/{rid}").raise_for_status().json()
            views[label] = view
            if view["status"] != seen.get(label):
                elapsed = time.monotonic() - started
                print(f"[{elapsed:5.1f}s] {label:32} {seen.get(label, '—')} → {view['status']}")
                seen[label] = view["status"]
        if all(_settled(v) for v in views.values()):
            break
        time.sleep(0.5)
    return views


def _settled(view: dict[str, Any]) -> bool:
    if view["status"] not in SETTLED:
        return False
    return view["status"] != "notified" or len(view.get("notifications", [])) >= 2


def portal_hint(views: dict[str, dict[str, Any]], portal_url: str) -> str:
    """Nobody decides the demo's referrals: the routed ones wait in their sites' portal queues."""
    waiting = sorted(
        {v["site"]["code"] for v in views.values() if v.get("site") and v["status"] == "notified"}
    )
    if not waiting:
        return ""
    who = ", ".join(f"coordinator.{code.lower()}@demo.trialroute.example" for code in waiting)
    return f"\nThey wait in the sites' queues: sign in at {portal_url} as {who} to accept or decline them."


def table(views: dict[str, dict[str, Any]]) -> str:
    header = f"{'referral':32} {'status':12} {'decision':13} {'site':24} {'km':>7} {'emails':>6}"
    lines = [header, "-" * len(header)]
    for label, view in views.items():
        decision = (view.get("decision") or {}).get("decision", "—")
        site = view.get("site") or {}
        km = f"{site['distance_km']:.0f}" if site else "—"
        name = (site.get("name") or "—")[:24]
        emails = len(view.get("notifications", []))
        lines.append(f"{label:32} {view['status']:12} {decision:13} {name:24} {km:>7} {emails:>6}")
    return "\n".join(lines)
