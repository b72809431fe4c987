"""Intake served over real HTTP, on a fresh PostgreSQL database and its own Kafka topics, trusting a
real auth service that issues the tokens the tests use."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select
from sqlmodel import col

from services.intake.bootstrap import create_app
from services.intake.config import IntakeSettings
from services.intake.store import Referral
from shared.app import ALL_ROLES, Role
from shared.auth import Scope
from shared.db import Database
from shared.events import ReferralStatusChanged
from shared.kafka import all_topics, ensure_topics
from shared.outbox import OutboxRecord
from shared.settings import KafkaSettings
from tests.conftest import Servers, fresh_database
from tests.support.auth import Issuer
from tests.support.builders import referral_body
from tests.support.servers import serve_app
from tests.support.stores import migrated

IDENTITY = ["Maria", "Lopez", "1968-03-14", "maria.lopez@example.com", "+1 212 555 0142", "212 555 0142"]
"""What must never leave intake: the example patient's names, birth date, email and phone."""


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


async def submit(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, reference: str = "CLN-1", **patient: object
) -> str:
    """Submit the example referral under ``reference`` (with ``patient`` fields replaced); its id."""
    body = referral_body(reference, patient=dict(patient))
    response = await http.post(f"{intake.url}/v1/referrals", json=body, headers=bearer(token))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@dataclass
class RunningIntake:
    url: str
    db: Database
    kafka: KafkaSettings
    settings: IntakeSettings

    async def count(self, model: Any = Referral) -> int:
        async with self.db.session() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())

    async def outbox(self, *, changes: bool = False) -> list[OutboxRecord]:
        """The outbox rows in order: the referral events the commands wrote, or (``changes``) only the
        ``referral.status_changed`` that accompanies each new timeline entry."""
        query = select(OutboxRecord).order_by(OutboxRecord.id)  # type: ignore[arg-type]
        is_change = col(OutboxRecord.topic) == ReferralStatusChanged.event_type
        async with self.db.session() as session:
            return list((await session.execute(query.where(is_change if changes else ~is_change))).scalars())


StartIntake = Callable[..., AbstractAsyncContextManager[RunningIntake]]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@asynccontextmanager
async def running_intake(
    database_url: str, kafka: KafkaSettings, auth: Issuer, roles: frozenset[Role], **overrides: Any
) -> AsyncIterator[RunningIntake]:
    settings = IntakeSettings(
        environment="test",
        database_url=database_url,
        kafka=kafka,
        oauth=auth.oauth,
        consumer_group=f"intake-{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    await migrated(database_url, "intake")
    db = Database(database_url)
    try:
        async with serve_app(create_app(settings, roles)) as url:
            yield RunningIntake(url, db, kafka, settings)
    finally:
        await db.dispose()


@pytest.fixture
async def consuming(start_intake: StartIntake) -> AsyncIterator[RunningIntake]:
    """Intake serving its API and consuming the other services' events, on topics of its own."""
    async with start_intake(frozenset({"api", "consumer"})) as running:
        yield running


@pytest.fixture
def start_intake(database_url: str, servers: Servers, session_issuer: Issuer) -> StartIntake:
    """Start intake on this test's database and topics of its own (or ``kafka``'s, to share another
    instance's), playing ``roles`` (default: all).

    Topics are created only for roles that use Kafka: every topic set costs the shared broker memory.
    """

    @asynccontextmanager
    async def start(
        roles: frozenset[Role] = ALL_ROLES, kafka: KafkaSettings | None = None, **overrides: Any
    ) -> AsyncIterator[RunningIntake]:
        kafka = kafka or own_topics(servers)
        uses_kafka = bool(roles & {"consumer", "relay"})
        if uses_kafka:
            await ensure_topics(kafka)
        try:
            async with running_intake(database_url, kafka, session_issuer, roles, **overrides) as running:
                yield running
        finally:
            if uses_kafka:
                await drop_topics(kafka)

    return start


def own_topics(servers: Servers) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=servers.kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.")


async def drop_topics(kafka: KafkaSettings) -> None:
    """Delete a test's topics afterwards: thousands of leftover partitions exhaust the broker's heap."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        await admin.start()
        await admin.delete_topics([kafka.topic(name) for name in all_topics()])
    except Exception as exc:  # best effort: a leftover topic costs memory, not correctness
        logging.getLogger(__name__).warning("could not delete test topics: %r", exc)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def module_intake(servers: Servers, session_issuer: Issuer) -> AsyncIterator[RunningIntake]:
    """An API-only intake shared by a module's tests that must all leave it empty."""
    kafka = KafkaSettings(
        bootstrap_servers=servers.kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}."
    )
    async with (
        fresh_database(servers) as url,
        running_intake(url, kafka, session_issuer, frozenset({"api"})) as running,
    ):
        yield running


@pytest.fixture
async def intake(start_intake: StartIntake) -> AsyncIterator[RunningIntake]:
    """Intake with its API only: nothing is published, so tests can read the outbox as it was written."""
    async with start_intake(frozenset({"api"})) as running:
        yield running


@dataclass
class Tokens:
    """Real tokens from the running auth service, one client per role of the tests."""

    clinic_a: str
    clinic_b: str
    clinic_a_reader: str
    notifier: str


@pytest.fixture(scope="session")
async def tokens(session_issuer: Issuer) -> Tokens:
    """Tokens live an hour: enough for the run, and fetched once."""
    write_read = [Scope.REFERRALS_WRITE, Scope.REFERRALS_READ]
    async with httpx.AsyncClient(timeout=30) as http:
        return Tokens(
            clinic_a=await session_issuer.token(
                http, "clinic-a", write_read, clinic_id="CLINIC-A", audience="intake"
            ),
            clinic_b=await session_issuer.token(
                http, "clinic-b", write_read, clinic_id="CLINIC-B", audience="intake"
            ),
            clinic_a_reader=await session_issuer.token(
                http, "clinic-a-ro", [Scope.REFERRALS_READ], clinic_id="CLINIC-A", audience="intake"
            ),
            notifier=await session_issuer.token(http, "notifier", [Scope.CONTACT_READ], audience="intake"),
        )


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at intake's head revision (``trialroute migrate intake``)."""
    return await migrated(await make_database_url(), "intake")
