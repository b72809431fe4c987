"""Wiring: settings, rule set, store, consumer, relay and API into one application.

The rule set and the study settings are resolved here, once, so that a version that is not packaged
or a setting the engine refuses stops the process at start-up instead of at the first referral.
Run one process with every role, or scale them apart (``roles``): the API, the consumers (up to one
per partition) and the relay.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

import shared.app
from services.eligibility import SERVICE, api
from services.eligibility.config import EligibilitySettings
from services.eligibility.consumers import EligibilityHandlers
from services.eligibility.deps import EligibilityState
from services.eligibility.migrations import MIGRATIONS
from services.eligibility.queries import Queries
from shared.app import ALL_ROLES, Check, Role, ServiceSpec
from shared.auth import TokenValidator
from shared.db import Database
from shared.kafka import readiness as kafka_readiness
from shared.messaging import event_loops
from shared.migrations import prepare_store
from shared.tls import http_client


def load_settings() -> EligibilitySettings:
    return EligibilitySettings()


def build(settings: EligibilitySettings, roles: frozenset[Role] = ALL_ROLES) -> ServiceSpec:
    ruleset = settings.load_ruleset()
    study = settings.study(ruleset)
    db = Database(settings.database_url)
    http = http_client(settings.tls, timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    loops = event_loops(SERVICE, db, settings, roles, EligibilityHandlers(ruleset, study).registry())
    checks: dict[str, Check] = {"database": db.ping, "kafka": kafka_readiness(settings.kafka)}
    if "api" in roles:
        checks["issuer"] = validator.check  # only the API validates tokens
    return ServiceSpec(
        name=SERVICE,
        title="trialroute eligibility",
        description="Pre-screens referrals against the study's published criteria "
        f"(rule set {ruleset.version}) and answers who may read an assessment.",
        routers=[api.router] if "api" in roles else [],
        loops=loops,
        state=EligibilityState(
            db=db, settings=settings, token_validator=validator, queries=Queries(db, ruleset, study)
        ),
        checks=checks,
        on_start=[partial(prepare_store, db, MIGRATIONS, settings)],
        on_stop=[db.dispose, http.aclose],
        http_clients=[http],
        max_body_bytes=settings.max_body_bytes,
        openapi_tags=[
            {"name": "assessments", "description": "Assessments of referrals, one per revision"},
            {"name": "rulesets", "description": "The criteria referrals are screened against"},
        ],
    )


def create_app(settings: EligibilitySettings | None = None, roles: frozenset[Role] = ALL_ROLES) -> FastAPI:
    """The application; ``uvicorn --factory services.eligibility.bootstrap:create_app`` serves it."""
    app = shared.app.create_app(build(settings or load_settings(), roles))
    api.document_reading_scopes(app)
    return app
