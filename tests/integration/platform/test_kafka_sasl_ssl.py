"""Kafka over SASL_SSL with SCRAM-SHA-512: a broker started by deploy/local/kafka.sh with a SASL_SSL
listener, a certificate made here and one SCRAM user. Events go through the outbox relay and come back
through the consumer loop with the settings every service reads; a wrong password, a broker certificate
from another CA and a client in the clear are refused."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from shared.consumer import ConsumerLoop, ProcessedEvent
from shared.db import Database
from shared.events import Envelope, ReferralWithdrawn
from shared.handlers import Handlers
from shared.kafka import delete_topics, ensure_topics, ping
from shared.outbox import OutboxRecord, OutboxRelay, add_event, backlog
from shared.settings import KafkaSettings
from shared.store import tables
from tests.support import builders
from tests.support.kafka import read_topic, wait_consumed
from tests.support.tls import Pki, local_kafka, tls_kafka_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

USER, PASSWORD = "trialroute-test", "scram-test-password"


class TlsHandledEvent(SQLModel, table=True):
    """One row per handling by the test's handler."""

    __tablename__ = "test_tls_handled_events"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str


TABLES = tables(OutboxRecord, ProcessedEvent, TlsHandledEvent)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("kafka-pki"), "127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[str]:
    with local_kafka(pki, tls_kafka_port(), USER, PASSWORD) as bootstrap:
        yield bootstrap


def secured(broker: str, pki: Pki, **changes: object) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=broker,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        security_protocol="SASL_SSL",
        username=USER,
        password=SecretStr(PASSWORD),
        ca_file=str(pki.ca_file),
    )
    return settings.model_copy(update=changes)


@pytest.fixture
async def kafka_tls(broker: str, pki: Pki) -> AsyncIterator[KafkaSettings]:
    settings = secured(broker, pki)
    await ensure_topics(settings, ["referral.withdrawn", "referral.withdrawn.dlq"])  # the admin client
    yield settings
    await delete_topics(settings)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_tables(TABLES)
    yield database
    await database.dispose()


async def record(session: AsyncSession, envelope: Envelope, _data: ReferralWithdrawn) -> None:
    session.add(TlsHandledEvent(event_id=str(envelope.id)))


async def handled(db: Database) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(TlsHandledEvent))).scalar_one()


async def test_events_go_through_the_relay_and_the_consumer_loop(
    db: Database, kafka_tls: KafkaSettings
) -> None:
    events = [builders.wrap(builders.withdrawn(reason="tls"), producer="test") for _ in range(20)]
    async with db.session() as session:
        for envelope in events:
            add_event(session, envelope)
    relay = OutboxRelay(db, kafka_tls, service="test")
    while await relay.publish_batch():
        pass
    await relay.producer.drop()
    assert await backlog(db) == 0
    on_topic = {
        Envelope.from_bytes(r.value or b"").id for r in await read_topic(kafka_tls, "referral.withdrawn")
    }
    assert on_topic == {e.id for e in events}

    loop = ConsumerLoop(
        db, kafka_tls, service="test", group_id="tls-g1", handlers=Handlers().on(ReferralWithdrawn, record)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await eventually(lambda: _at_least(db, len(events)), what="every event handled", within=60)
        await wait_consumed(kafka_tls, "tls-g1", "referral.withdrawn")
    finally:
        stop.set()
        await task
    assert await handled(db) == len(events)


async def _at_least(db: Database, count: int) -> bool:
    return await handled(db) >= count


async def test_a_wrong_password_is_refused(broker: str, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    await ping(secured(broker, pki))  # the right one is accepted
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(Exception, match="bootstrap"):
        await ping(secured(broker, pki, password=SecretStr("not-the-password")))
    assert "SaslAuthenticationFailed" in caplog.text
    assert "invalid credentials" in caplog.text


async def test_a_broker_certificate_from_another_ca_is_refused(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    settings = KafkaSettings(
        bootstrap_servers=broker,
        security_protocol="SASL_SSL",
        username=USER,
        password=SecretStr(PASSWORD),
        ca_file=str(other),
    )
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(Exception, match="bootstrap"):
        await ping(settings)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_a_client_in_the_clear_is_refused(broker: str) -> None:
    with pytest.raises(Exception, match="bootstrap"):
        await ping(KafkaSettings(bootstrap_servers=broker))
