"""Wiring: settings, store, consumer, API and the ops page into one application.

Insights consumes and publishes nothing, so it has no relay: its roles are the API (with the page) and
the consumer (group ``trialroute-insights``), which scale apart like the other services'. The page signs
people in through the issuer (``shared.web``, settings ``WEB_*``); without a ``WEB_CLIENT_ID`` (the
page's client registered at the issuer, ``AUTH_WEB_CLIENTS``) the service runs without it and says so.
"""

from __future__ import annotations

import logging
from functools import partial

import httpx
from fastapi import APIRouter, FastAPI

import shared.app
from services.insights import SERVICE, api, consumers, page
from services.insights.config import InsightsSettings
from services.insights.deps import InsightsState
from services.insights.migrations import MIGRATIONS
from services.insights.queries import Queries
from shared.app import ALL_ROLES, Check, Role, ServiceSpec
from shared.auth import TokenValidator
from shared.db import Database
from shared.kafka import readiness as kafka_readiness
from shared.messaging import event_loops
from shared.migrations import prepare_store
from shared.web import WebSignIn, WebSignInSettings, sign_in_router

log = logging.getLogger(__name__)


def load_settings() -> InsightsSettings:
    return InsightsSettings()


def build(
    settings: InsightsSettings, roles: frozenset[Role] = ALL_ROLES, web: WebSignInSettings | None = None
) -> ServiceSpec:
    db = Database(settings.database_url)
    http = httpx.AsyncClient(timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    loops = event_loops(SERVICE, db, settings, roles - {"relay"}, consumers.HANDLERS)
    checks: dict[str, Check] = {"database": db.ping, "kafka": kafka_readiness(settings.kafka)}
    if "api" in roles:
        checks["issuer"] = validator.check
    return ServiceSpec(
        name=SERVICE,
        title="trialroute insights",
        description="The recruitment funnel for ops: referrals by step from submission to enrolment, "
        "conversion, exits, the criteria that exclude most, per site and per clinic, over a range of "
        "submission days; JSON and CSV. A read model of the referral events: no patient identity.",
        routers=_routers(settings, roles, web or WebSignInSettings()),
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


def _routers(settings: InsightsSettings, roles: frozenset[Role], web: WebSignInSettings) -> list[APIRouter]:
    if "api" not in roles:
        return []
    if not web.client_id:
        log.warning("the ops page /insights/ is off: no WEB_CLIENT_ID (its client at the issuer)")
        return [api.router]
    signin = WebSignIn(settings, web, prefix=page.PREFIX, service_name="insights", home=page.PAGE)
    return [api.router, sign_in_router(signin), page.router]


def create_app(
    settings: InsightsSettings | None = None,
    roles: frozenset[Role] = ALL_ROLES,
    web: WebSignInSettings | None = None,
) -> FastAPI:
    """The application; ``uvicorn --factory services.insights.bootstrap:create_app`` serves it."""
    return shared.app.create_app(build(settings or load_settings(), roles, web))
