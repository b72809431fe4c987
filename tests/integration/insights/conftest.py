"""Insights among real neighbours: the auth service (real signed tokens), Kafka and PostgreSQL, on
loopback. The service runs every role (API over HTTP, the consumer) as its bootstrap wires them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.insights.bootstrap import create_app
from services.insights.config import InsightsSettings
from shared.settings import KafkaSettings
from tests.support.auth import Issuer, http, issuer
from tests.support.servers import serve_app
from tests.support.stores import migrated

__all__ = ["http", "issuer"]  # fixtures


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at insights' head revision (``trialroute migrate insights``)."""
    return await migrated(await make_database_url(), "insights")


@pytest.fixture
def settings(database_url: str, kafka: KafkaSettings, issuer: Issuer) -> InsightsSettings:
    return InsightsSettings(
        environment="test",
        database_url=database_url,
        kafka=kafka,
        oauth=issuer.oauth,
        consumer_group=f"insights-{uuid.uuid4().hex[:8]}",
        default_range_days=3660,
    )


@pytest.fixture
async def insights(settings: InsightsSettings) -> AsyncIterator[str]:
    """The running service's base URL."""
    async with serve_app(create_app(settings)) as url:
        yield url
