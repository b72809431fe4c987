"""Intake's composition root: settings in, a FastAPI app with its routes, consumer and relay out."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from fastapi import FastAPI

from services.intake import SERVICE, api, openapi
from services.intake.commands import Commands
from services.intake.config import IntakeSettings
from services.intake.consumers import HANDLERS
from services.intake.deps import IntakeState
from services.intake.fhir import api as fhir_api
from services.intake.idempotency import Idempotency
from services.intake.migrations import MIGRATIONS
from services.intake.queries import Queries
from shared import app as shared_app
from shared.app import ALL_ROLES, Role, ServiceSpec
from shared.auth import TokenValidator
from shared.db import Database
from shared.kafka import readiness as kafka_readiness
from shared.messaging import event_loops
from shared.migrations import prepare_store
from shared.tls import http_client

DESCRIPTION = """\
Partner clinics submit referrals to the UCART123 (AMELI-01) trial here and follow them through
eligibility screening, site routing, notifications and the site's decision.

**Authentication.** OAuth2 client credentials: get an access token (RS256 JWT) from the issuer's token
endpoint for the audience `intake`, send it as `Authorization: Bearer <token>`. A clinic's token carries
the clinic it acts for (`clinic_id`); a clinic sees only its own referrals. Scopes: `referrals:write`
(submit, amend, withdraw), `referrals:read` (read, list), `contact:read` (the notifier only).

**Requests.** Bodies are `application/json` (else 415), at most 64 KiB (else 413). Every error is an RFC
9457 problem (`application/problem+json`); a 422 lists every invalid field with its JSON path and reason.
POSTs take an `Idempotency-Key` header (see each operation): retry them safely with the same key.

**Lifecycle.** `received` -> `screened` (or `not_routed` when ineligible) -> `routed`, `waitlisted` or
`unroutable` -> `notified` -> `accepted` or `declined` (then routed again) -> `closed`; `withdrawn` by the
clinic at any time before `accepted`. An amendment returns the referral to `received` (next revision).
Every change is on the referral's timeline, with its time, the service that caused it and the reason,
and on the clinic's change feed (`GET /v1/changes`, resumable with a cursor); the notifier can deliver
each one to the clinic's webhook endpoints too.
"""
TAGS = [
    {"name": "referrals", "description": "what a clinic does: submit, follow, amend, withdraw"},
    {
        "name": "fhir",
        "description": "the same referrals in HL7 FHIR R4: a Bundle in, a Task out (docs/fhir.md)",
    },
    {"name": "internal", "description": "service-to-service: the notifier reads contact details"},
    {"name": "site", "description": "a site's coordinator: the patient's contact once their site accepted"},
    {"name": "ops", "description": "operations: the audit log of contact reads"},
    {"name": "operations", "description": "health, readiness, metrics"},
]


def load_settings() -> IntakeSettings:
    return IntakeSettings()


def build(settings: IntakeSettings, roles: frozenset[Role] = ALL_ROLES) -> ServiceSpec:
    db = Database(settings.database_url)
    http = http_client(settings.tls, timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    idempotency = Idempotency(
        db, ttl=timedelta(hours=settings.idempotency_ttl_hours), lock_s=settings.idempotency_lock_s
    )
    loops = event_loops(SERVICE, db, settings, roles, HANDLERS)
    return ServiceSpec(
        name=SERVICE,
        title="trialroute intake",
        description=DESCRIPTION,
        routers=[api.router, fhir_api.router] if "api" in roles else [],
        loops=loops,
        checks={"database": db.ping, "kafka": kafka_readiness(settings.kafka), "issuer": validator.check},
        on_start=[partial(prepare_store, db, MIGRATIONS, settings)],
        on_stop=[db.dispose, http.aclose],
        http_clients=[http],
        max_body_bytes=settings.max_body_bytes,
        state=IntakeState(
            db=db,
            settings=settings,
            token_validator=validator,
            commands=Commands(db, settings),
            queries=Queries(db, settings),
            idempotency=idempotency,
        ),
        openapi_tags=TAGS,
    )


def create_app(settings: IntakeSettings | None = None, roles: frozenset[Role] = ALL_ROLES) -> FastAPI:
    app = shared_app.create_app(build(settings or load_settings(), roles))
    openapi.install(app)
    return app
