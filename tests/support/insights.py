"""The ops page's neighbourhood, for its tests: the auth service (with the page's web client and people
to sign in as) and insights (API role, which serves the page) on PostgreSQL, both over loopback; the
funnel's data folded into insights' store by its own command, from events as their producers send them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from pydantic import SecretStr

from services.auth.bootstrap import create_app as create_auth_app
from services.auth.config import AuthSettings, WebClient
from services.devstack.stack import INSIGHTS_WEB_CLIENT, insights_web_client
from services.insights import commands
from services.insights.bootstrap import create_app as create_insights_app
from services.insights.config import InsightsSettings
from shared.db import Database
from shared.events import CriterionVerdict, Envelope, EventData
from shared.settings import OAuthSettings
from shared.web import WebSignInSettings
from tests.support import builders
from tests.support.people import PASSWORD, Person, make_person, submit_signin
from tests.support.servers import loopback_socket, serve_app, url_of
from tests.support.stores import migrated


@dataclass
class OpsSite:
    auth_url: str
    insights_url: str
    auth_db: Database
    insights_db: Database

    @property
    def page(self) -> str:
        return f"{self.insights_url}/insights/"

    async def person(self, email: str, *, role: str = "ops", name: str = "Olga Ops") -> Person:
        return await make_person(self.auth_db, email, role=role, name=name)

    async def sign_in(
        self, browser: httpx.AsyncClient, person: Person, path: str = "/insights/"
    ) -> httpx.Response:
        """Open ``path`` signed out, sign in at the issuer, and come back to it (the answer)."""
        page = await browser.get(f"{self.insights_url}{path}", follow_redirects=True)
        return await submit_signin(browser, self.auth_url, page, person.email, person.password)

    async def fold(self, events: Sequence[Envelope]) -> None:
        """Events into the funnel's store, as the consumer folds them."""
        async with self.insights_db.session() as session:
            await commands.record(session, [(e, e.payload()) for e in events])


@asynccontextmanager
async def ops_site(make_database_url: Callable[[], Awaitable[str]]) -> AsyncIterator[OpsSite]:
    auth_sock, insights_sock = loopback_socket(), loopback_socket()
    auth_url, insights_url = url_of(auth_sock), url_of(insights_sock)
    auth_db_url = await migrated(await make_database_url(), "auth")
    insights_db_url = await migrated(await make_database_url(), "insights")
    auth_settings = AuthSettings(
        environment="test",
        database_url=auth_db_url,
        issuer=auth_url,
        key_encryption_secret=SecretStr("tests-key-encryption-secret"),
        key_publish_delay_s=0,
        web_clients=[WebClient.model_validate(insights_web_client(insights_url))],
    )
    settings = InsightsSettings(
        environment="test",
        database_url=insights_db_url,
        public_url=insights_url,
        oauth=OAuthSettings(issuer=auth_url),
        default_range_days=3660,
    )
    web = WebSignInSettings(client_id=INSIGHTS_WEB_CLIENT, session_secret=SecretStr(uuid.uuid4().hex))
    auth_db, insights_db = Database(auth_db_url), Database(insights_db_url)
    try:
        async with (
            serve_app(create_auth_app(auth_settings), sock=auth_sock),
            serve_app(create_insights_app(settings, frozenset({"api"}), web), sock=insights_sock),
        ):
            yield OpsSite(auth_url, insights_url, auth_db, insights_db)
    finally:
        await auth_db.dispose()
        await insights_db.dispose()


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def sample_funnel() -> list[Envelope]:
    """A month's worth in miniature: enrolled, screen failed, declined everywhere, ineligible (two
    criteria), withdrawn, in progress; two clinics, three sites."""
    a, b, c = builders.site("WCM"), builders.site("DFCI"), builders.site("MCC")
    age = CriterionVerdict(id="age", verdict="not_met", reason="age 70")
    ecog = CriterionVerdict(id="ecog", verdict="not_met", reason="ecog 3")
    stories: list[list[tuple[float, EventData]]] = [
        [
            (0, builders.submitted()),
            (0.1, builders.screened()),
            (0.2, builders.routed(site=a)),
            (4.2, builders.site_decided("accepted", site_code=a.code)),
            (24, builders.progressed("contacted", site_code=a.code)),
            (48, builders.progressed("consented", site_code=a.code)),
            (72, builders.progressed("enrolled", site_code=a.code)),
        ],
        [
            (1, builders.submitted(clinic_id="clinic-b")),
            (1.1, builders.screened(clinic_id="clinic-b")),
            (1.2, builders.routed(clinic_id="clinic-b", site=b)),
            (9.2, builders.site_decided("accepted", clinic_id="clinic-b", site_code=b.code)),
            (30, builders.progressed("screen_failed", clinic_id="clinic-b", site_code=b.code)),
        ],
        [
            (2, builders.submitted()),
            (2.1, builders.screened()),
            (2.2, builders.routed(site=a)),
            (3.2, builders.site_decided("declined", site_code=a.code)),
            (3.3, builders.routed(site=c, rank=2)),
            (20, builders.site_decided("declined", site_code=c.code)),
            (20.1, builders.unroutable(reason="every site declined")),
        ],
        [(3, builders.submitted()), (3.1, builders.screened(routable=False, criteria=[age, ecog]))],
        [
            (4, builders.submitted(clinic_id="clinic-b")),
            (4.1, builders.screened(routable=False, clinic_id="clinic-b", criteria=[age])),
        ],
        [(5, builders.submitted()), (5.1, builders.screened()), (6, builders.withdrawn())],
        [(6, builders.submitted()), (6.1, builders.screened()), (6.2, builders.routed(site=c))],
    ]
    return [
        builders.wrap(data, rid, at=T0 + timedelta(hours=h))
        for rid, story in ((uuid.uuid4(), s) for s in stories)
        for h, data in story
    ]


__all__ = ["PASSWORD", "OpsSite", "ops_site", "sample_funnel"]
