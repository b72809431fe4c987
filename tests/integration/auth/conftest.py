"""Fixtures: the auth service running on this test's PostgreSQL database, and resource servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from services.auth.bootstrap import create_app
from shared.db import Database
from tests.integration.auth.helpers import RunningAuth, ServeResource, StartAuth, auth_settings, resource_app
from tests.support.servers import loopback_socket, serve_app, url_of
from tests.support.stores import migrated


@pytest.fixture
def start_auth(database_url: str) -> StartAuth:
    """Start the auth service (settings overridable, its key ring on ``clock``) on this test's database;
    several started in one test are replicas on one store."""

    @asynccontextmanager
    async def start(clock: Callable[[], float] = time.time, **overrides: Any) -> AsyncIterator[RunningAuth]:
        sock = loopback_socket()
        # a replica of another instance shares its issuer (and token URL); by default, its own URL
        issuer = overrides.pop("issuer", None) or url_of(sock)
        settings = auth_settings(database_url, issuer, **overrides)
        db = Database(database_url)
        try:
            async with serve_app(create_app(settings, clock=clock), sock=sock) as url:
                yield RunningAuth(url, settings, db)
        finally:
            await db.dispose()

    return start


@pytest.fixture
async def auth(start_auth: StartAuth) -> AsyncIterator[RunningAuth]:
    async with start_auth() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def serve_resource() -> ServeResource:
    return lambda validator: serve_app(resource_app(validator))


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at auth's head revision (``trialroute migrate auth``)."""
    return await migrated(await make_database_url(), "auth")
