"""Composition root of the site router: settings in, a FastAPI application (or its parts) out."""

from __future__ import annotations

import asyncio
from functools import partial

from fastapi import FastAPI

import shared.app
from services.site_router import SERVICE, admin, api, consumers, finder_page
from services.site_router.commands import Commands
from services.site_router.config import SiteRouterSettings
from services.site_router.deps import SiteRouterState
from services.site_router.directory import SiteDirectory
from services.site_router.geo import Geocoder
from services.site_router.migrations import MIGRATIONS
from services.site_router.portal import PORTAL, pages
from services.site_router.portal.contact import PatientContacts
from services.site_router.queries import Queries
from shared.app import ALL_ROLES, Loop, Role, ServiceSpec
from shared.auth import TokenValidator
from shared.db import Database
from shared.kafka import readiness as kafka_readiness
from shared.messaging import event_loops
from shared.migrations import prepare_store
from shared.ratelimit import SlidingWindow, prune_loop
from shared.tls import http_client
from shared.web import WebSignIn, WebSignInSettings, sign_in_router


def load_settings() -> SiteRouterSettings:
    return SiteRouterSettings()


def build(
    settings: SiteRouterSettings,
    roles: frozenset[Role] = ALL_ROLES,
    *,
    geocoder: Geocoder | None = None,
    web: WebSignInSettings | None = None,
) -> ServiceSpec:
    """Wire the service; pass ``geocoder`` to share one already-warm instance (tests, several apps).
    The coordinators' portal is served when its sign-in client is configured (``web``, default the
    ``WEB_`` environment: ``WEB_CLIENT_ID``); without one, ``/portal`` does not exist."""
    db = Database(settings.database_url)
    http = http_client(settings.tls, timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    geocoder = geocoder or Geocoder(index_dir=settings.geonames_index_dir)
    directory = SiteDirectory()
    commands = Commands(geocoder, directory)
    finder_limit = SlidingWindow(db, "finder", settings.finder_rate_per_minute, 60.0)
    loops = [
        Loop("site-index", partial(directory.keep_fresh, db, settings.index_refresh_s)),
        prune_loop([finder_limit]),
        *event_loops(SERVICE, db, settings, roles, consumers.handlers(commands)),
    ]

    web = web or WebSignInSettings()
    portal_routers = []
    if web.client_id and "api" in roles:
        sign_in = WebSignIn(settings, web, prefix=PORTAL, service_name="Site portal", home=f"{PORTAL}/")
        portal_routers = [sign_in_router(sign_in), pages.router]

    async def warm_geocoder() -> None:
        """Build the compact postal-code tables before traffic (a child process, once per data snapshot),
        so that a country's first lookup only reads its file; load only the countries configured to be:
        the others load on first use, and a country never used costs no memory."""
        await asyncio.to_thread(geocoder.prepare)
        if settings.warm_countries:
            await asyncio.to_thread(geocoder.warm, settings.warm_countries)

    return ServiceSpec(
        name=SERVICE,
        title="trialroute site router",
        description="Routes screened referrals to the nearest recruiting site with a free slot; site "
        "coordinators' queues and decisions; site administration; the public site finder.",
        # The finder's API route comes before the admin's /v1/sites/{code}, which would shadow it.
        routers=[api.router, admin.router, finder_page.router, *portal_routers] if "api" in roles else [],
        loops=loops,
        state=SiteRouterState(
            db=db,
            settings=settings,
            token_validator=validator,
            commands=commands,
            directory=directory,
            finder_limit=finder_limit,
            queries=Queries(db, settings, commands, directory),
            contacts=PatientContacts(http, settings.intake_url),
        ),
        checks={"database": db.ping, "kafka": kafka_readiness(settings.kafka), "issuer": validator.check},
        on_start=[
            partial(prepare_store, db, MIGRATIONS, settings),
            partial(directory.reload, db),
            warm_geocoder,
        ],
        on_stop=[db.dispose, http.aclose],
        http_clients=[http],
        max_body_bytes=settings.max_body_bytes,
        openapi_tags=[
            {"name": "public", "description": "No token: where the trial recruits"},
            {"name": "site", "description": "Site coordinators (scope site:referrals), their own site only"},
            {"name": "sites", "description": "Trial staff (scope sites:admin)"},
        ],
    )


def create_app(
    settings: SiteRouterSettings | None = None,
    roles: frozenset[Role] = ALL_ROLES,
    *,
    geocoder: Geocoder | None = None,
    web: WebSignInSettings | None = None,
) -> FastAPI:
    return shared.app.create_app(build(settings or load_settings(), roles, geocoder=geocoder, web=web))
