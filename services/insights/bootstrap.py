"""Wiring: settings, store, consumer and API into one application.

Insights consumes and publishes nothing, so it has no relay: its roles are the API and the consumer
(group ``trialroute-insights``), which scale apart like the other services'.
"""

from __future__ import annotations

from functools import partial

import httpx
from fastapi import FastAPI

import shared.app
from services.insights import SERVICE, api, consumers
from services.insights.config import InsightsSettings
from services.insights.deps import InsightsState
from services.insights.migrations import MIGRATIONS
from services.insights.queries import Queries
from shared.app import ALL_ROLES, Check, Role, ServiceSpec
from shared.auth import TokenValidator
from shared.db import Database
from shared.kafka import ping as kafka_ping
from shared.messaging import event_loops
from shared.migrations import prepare_store


def load_settings() -> InsightsSettings:
    return InsightsSettings()


def build(settings: InsightsSettings, roles: frozenset[Role] = ALL_ROLES) -> ServiceSpec:
    db = Database(settings.database_url)
    http = httpx.AsyncClient(timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    loops = event_loops(SERVICE, db, settings, roles - {"relay"}, consumers.HANDLERS)
    checks: dict[str, Check] = {"database": db.ping, "kafka": partial(kafka_ping, settings.kafka)}
    if "api" in roles:
        checks["issuer"] = validator.check
    return ServiceSpec(
        name=SERVICE,
        title="trialroute insights",
        description="The recruitment funnel for ops: referrals by step from submission to enrolment, "
        "conversion, exits, the criteria that exclude most, per site and per clinic, over a range of "
        "submission days; JSON and CSV. A read model of the referral events: no patient identity.",
        routers=[api.router] if "api" in roles else [],
        loops=loops,
        state=InsightsState(
            db=db, settings=settings, token_validator=validator, queries=Queries(db, settings)
        ),
        checks=checks,
        on_start=[partial(prepare_store, db, MIGRATIONS, settings)],
        on_stop=[db.dispose, http.aclose],
        max_body_bytes=settings.max_body_bytes,
        openapi_tags=[{"name": "funnel", "description": "The recruitment funnel (scope ops)"}],
    )


def create_app(settings: InsightsSettings | None = None, roles: frozenset[Role] = ALL_ROLES) -> FastAPI:
    """The application; ``uvicorn --factory services.insights.bootstrap:create_app`` serves it."""
    return shared.app.create_app(build(settings or load_settings(), roles))
