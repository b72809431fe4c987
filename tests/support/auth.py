"""A real auth service for any test, and real tokens from its token endpoint over HTTP.

    async def test_x(issuer: Issuer, http: httpx.AsyncClient) -> None:
        token = await issuer.token(http, "clinic-a", [Scope.REFERRALS_READ], audience="intake",
                                   clinic_id="clinic-a")

Services under test trust it through ``issuer.oauth`` (only the issuer URL, as in production).
``attached_issuer`` does the same for an auth service running elsewhere (a system's own process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr

from services.auth.bootstrap import create_app
from services.auth.config import AuthSettings
from services.auth.registry import create_client
from shared.auth import Scope
from shared.db import Database
from shared.settings import OAuthSettings
from tests.conftest import Servers, fresh_database
from tests.support.servers import loopback_socket, serve_app, url_of
from tests.support.stores import migrated

CLINIC_SCOPES: tuple[Scope, ...] = (
    Scope.REFERRALS_WRITE,
    Scope.REFERRALS_READ,
    Scope.ASSESSMENTS_READ,
    Scope.WEBHOOKS_MANAGE,
)
"""What a partner clinic's client holds, as the demo clinic does (services/devstack/stack.py)."""


@dataclass
class Issuer:
    """The running auth service: its URL, its store, and the secrets of the clients tests registered."""

    url: str
    db: Database
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def oauth(self) -> OAuthSettings:
        return OAuthSettings(issuer=self.url)

    async def register(
        self,
        client_id: str,
        scopes: Sequence[Scope | str],
        *,
        audiences: Sequence[str],
        clinic_id: str | None = None,
        site_code: str | None = None,
    ) -> str:
        """Register a client once; return its secret."""
        if client_id not in self.secrets:
            self.secrets[client_id] = await create_client(
                self.db,
                client_id,
                scopes=scopes,
                audiences=audiences,
                clinic_id=clinic_id,
                site_code=site_code,
            )
        return self.secrets[client_id]

    async def token(
        self,
        http: httpx.AsyncClient,
        client_id: str,
        scopes: Sequence[Scope | str],
        *,
        audience: str,
        clinic_id: str | None = None,
        site_code: str | None = None,
    ) -> str:
        """Register the client (first time only) and get a token for ``audience`` from the endpoint."""
        await self.register(client_id, scopes, audiences=[audience], clinic_id=clinic_id, site_code=site_code)
        return await self.fetch_token(http, client_id, audience)

    async def fetch_token(
        self, http: httpx.AsyncClient, client_id: str, audience: str, *, issuer_url: str | None = None
    ) -> str:
        """A token for a client registered before, from this issuer's token endpoint, or from that of
        ``issuer_url`` (another auth process on the same store)."""
        response = await http.post(
            f"{issuer_url or self.url}/oauth/token",
            data={"grant_type": "client_credentials", "audience": audience},
            auth=(client_id, self.secrets[client_id]),
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@asynccontextmanager
async def attached_issuer(url: str, database_url: str) -> AsyncIterator[Issuer]:
    """An auth service already running at ``url`` on ``database_url``: clients are registered in its
    store, tokens come from its endpoint."""
    db = Database(database_url)
    try:
        yield Issuer(url, db)
    finally:
        await db.dispose()


@asynccontextmanager
async def running_issuer(database_url: str, *, token_lifetime_s: int = 3600) -> AsyncIterator[Issuer]:
    sock = loopback_socket()
    settings = AuthSettings(
        environment="test",
        database_url=database_url,
        issuer=url_of(sock),
        key_encryption_secret=SecretStr("tests-key-encryption-secret"),
        key_publish_delay_s=0,
        token_lifetime_s=token_lifetime_s,
    )
    await migrated(database_url, "auth")
    async with (
        attached_issuer(settings.issuer, database_url) as issuer,
        serve_app(create_app(settings), sock=sock),
    ):
        yield issuer


@pytest.fixture
async def issuer(make_database_url: Callable[[], Awaitable[str]]) -> AsyncIterator[Issuer]:
    """The auth service on a database of its own, for tests of the services that trust it."""
    async with running_issuer(await make_database_url()) as running:
        yield running


@pytest.fixture(scope="session")
async def session_issuer(servers: Servers) -> AsyncIterator[Issuer]:
    """One auth service for the whole run, for suites that would otherwise start one per test and
    check every client's argon2-hashed secret again (slow by design). Clients stay registered for the
    run: a client id must mean the same scopes in every test that uses it."""
    async with fresh_database(servers) as url, running_issuer(url) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
