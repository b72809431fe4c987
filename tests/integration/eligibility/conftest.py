"""Eligibility on the real broker and database: events in, assessments and ``referral.screened`` out."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select

from services.eligibility.bootstrap import build
from services.eligibility.config import EligibilitySettings
from services.eligibility.store import AssessmentRow
from shared.app import Role, ServiceSpec
from shared.db import Database
from shared.events import Envelope
from shared.kafka import all_topics
from shared.outbox import OutboxRecord
from shared.settings import KafkaSettings
from tests.support.builders import CLINIC, clinical, submitted, wrap
from tests.support.kafka import read_topic
from tests.support.stores import migrated


def referral(
    referral_id: uuid.UUID,
    *,
    revision: int = 1,
    clinic_id: str = CLINIC,
    age: int = 58,
    block: dict[str, Any] | None = None,
    trace: str | None = None,
) -> Envelope:
    """A ``referral.submitted`` (revision 1) or ``referral.amended`` envelope, as intake sends it."""
    data = submitted(
        revision=revision,
        clinic_id=clinic_id,
        age_years=age,
        clinical=block if block is not None else clinical(),
    )
    return wrap(data, referral_id, trace=trace)


async def screened(kafka: KafkaSettings, referral_id: uuid.UUID | None = None) -> list[Envelope]:
    """The ``referral.screened`` events now on the topic, of one referral if given."""
    events = [Envelope.from_bytes(r.value or b"") for r in await read_topic(kafka, "referral.screened")]
    return [e for e in events if referral_id is None or e.referral_id == referral_id]


async def dead_letters(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value or b"{}") for r in await read_topic(kafka, f"{topic}.dlq")]


async def stored(db: Database, referral_id: uuid.UUID) -> list[AssessmentRow]:
    async with db.session() as session:
        result = await session.execute(
            select(AssessmentRow).where(AssessmentRow.referral_id == referral_id).order_by(AssessmentRow.id)  # type: ignore[arg-type]
        )
        return list(result.scalars().all())


async def outbox_rows(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(select(func.count()).select_from(OutboxRecord))).scalar_one())


@pytest.fixture
async def kafka(kafka: KafkaSettings) -> AsyncIterator[KafkaSettings]:
    """The shared fixture's topics, deleted after the test: every test makes 108 partitions, and a
    broker that keeps every run's partitions runs out of memory."""
    yield kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([kafka.topic(t) for t in all_topics()])
    finally:
        await admin.close()


@pytest.fixture
def settings(database_url: str, kafka: KafkaSettings) -> EligibilitySettings:
    return EligibilitySettings(
        database_url=database_url, kafka=kafka, consumer_group=f"eligibility-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture
async def service(settings: EligibilitySettings) -> AsyncIterator[ServiceSpec]:
    """The service's own consumer and relay loops, as its bootstrap wires them, running as tasks."""
    roles: frozenset[Role] = frozenset({"consumer", "relay"})
    spec = build(settings, roles)
    for hook in spec.on_start:
        await hook()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stop), name=loop.name) for loop in spec.loops]
    try:
        yield spec
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        for hook in spec.on_stop:
            await hook()


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at eligibility's head revision (``trialroute migrate eligibility``)."""
    return await migrated(await make_database_url(), "eligibility")
