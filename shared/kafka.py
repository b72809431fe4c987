"""Kafka clients built the same way everywhere: idempotent producers and manually committed consumers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context
from tenacity import AsyncRetrying, RetryError, retry_if_result, stop_after_delay, wait_fixed

from shared.events import TOPICS, dead_letter_topic
from shared.readiness import CachedCheck
from shared.retry import quietly
from shared.settings import KafkaSettings


def connection(kafka: KafkaSettings) -> dict[str, Any]:
    """How every client (producer, consumer, admin; ours and the tools') reaches the broker: its
    address, and for ``SASL_SSL`` the TLS context that checks the broker's certificate and name against
    ``KAFKA_CA_FILE`` and the SCRAM credentials. Built here only, so no client connects in the clear by
    forgetting an option."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.uses_tls:
        options["ssl_context"] = create_ssl_context(cafile=kafka.ca_file)
    if kafka.uses_sasl:
        # Checked here, not in the settings: auth shares the broker settings but never connects.
        if not (kafka.username and kafka.password.get_secret_value()):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={kafka.security_protocol} needs a username and a password"
            )
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.username,
            sasl_plain_password=kafka.password.get_secret_value(),
        )
    return options


def new_admin(kafka: KafkaSettings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client (topics, metadata), connected as ``connection`` says."""
    return AIOKafkaAdminClient(**connection(kafka), **options)


async def new_producer(kafka: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    """An idempotent producer (``acks=all``): a retried send never duplicates within a session."""
    producer = AIOKafkaProducer(
        **connection(kafka),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        request_timeout_ms=int(kafka.send_timeout_s * 1000),
    )
    try:
        async with asyncio.timeout(kafka.send_timeout_s * 3):
            await producer.start()
    except BaseException:
        # Unstopped, a producer that failed to start (the broker down) leaks its client and tasks:
        # a relay retrying through an outage left one per attempt ("Unclosed AIOKafkaProducer").
        with contextlib.suppress(Exception):
            async with asyncio.timeout(kafka.send_timeout_s):
                await producer.stop()
        raise
    return producer


class Producer:
    """One producer's lifecycle, for a loop that publishes: started on first use, and dropped after a
    failure (a timed-out send leaves it in an unknown state) so that the next use starts a new one."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str) -> None:
        self.kafka = kafka
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def get(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await new_producer(self.kafka, client_id=self.client_id)
        return self._producer

    async def drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await quietly(producer.stop(), timeout_s=self.kafka.send_timeout_s)

    async def __aenter__(self) -> AIOKafkaProducer:
        return await self.get()

    async def __aexit__(self, *_exc: object) -> None:
        await self.drop()


GATHER_MIN_BYTES = 1 << 20
"""What a gathering consumer asks the broker to wait for: more than a low rate brings in
``gather_ms``, so the wait is what ends each fetch; a burst ends it sooner."""


def new_consumer(
    kafka: KafkaSettings, *, group_id: str, topics: Iterable[str], gather_ms: int = 0
) -> AIOKafkaConsumer:
    """A group member that never commits on its own: offsets move only after the handling commit.
    With ``gather_ms`` the broker holds each fetch until that long has passed or a MiB is there."""
    gathering = {"fetch_min_bytes": GATHER_MIN_BYTES, "fetch_max_wait_ms": gather_ms} if gather_ms else {}
    return AIOKafkaConsumer(
        *(kafka.topic(t) for t in topics),
        **connection(kafka),
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=200,
        **gathering,
    )


def all_topics() -> list[str]:
    return [*TOPICS, *(dead_letter_topic(t) for t in TOPICS)]


async def ensure_topics(kafka: KafkaSettings, names: Iterable[str] | None = None) -> None:
    """Create missing topics (by default every event topic and its dead-letter topic) as configured,
    with as many replicas as the cluster's ``default.replication.factor`` (1 on a single broker, 3 on
    a cluster: a topic with fewer than ``min.insync.replicas`` would refuse every ``acks=all`` write)."""
    wanted = {kafka.topic(n) for n in (names if names is not None else all_topics())}
    admin = new_admin(kafka)
    await admin.start()
    try:
        missing = wanted - set(await admin.list_topics())
        if missing:
            replicas = await default_replication_factor(admin)
            await admin.create_topics(
                [
                    NewTopic(name=n, num_partitions=kafka.partitions, replication_factor=replicas)
                    for n in missing
                ]
            )
            await _until_led(admin, sorted(missing))
    finally:
        await admin.close()


async def default_replication_factor(admin: AIOKafkaAdminClient) -> int:
    """The cluster's ``default.replication.factor``, read from a broker: the CreateTopics versions
    aiokafka speaks (up to 3) cannot ask for the broker's default (-1, from version 4)."""
    broker = (await admin.describe_cluster())["brokers"][0]["node_id"]
    name = "default.replication.factor"
    resource = ConfigResource(ConfigResourceType.BROKER, str(broker), configs={name: None})
    (response,) = await admin.describe_configs([resource])
    entries = response.to_object()["resources"][0]["config_entries"]
    return next(int(e["config_value"]) for e in entries if e["config_names"] == name)


async def delete_topics(kafka: KafkaSettings) -> None:
    """Delete every topic under the settings' prefix (test isolation; refuses an empty prefix)."""
    if not kafka.topic_prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = new_admin(kafka)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(kafka.topic_prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30) -> None:
    """New partitions answer NotLeader until the controller elects their leader: wait for that."""

    async def led() -> bool:
        topics = await admin.describe_topics(names)
        return all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in topics
        )

    waiting = AsyncRetrying(
        retry=retry_if_result(lambda done: not done), stop=stop_after_delay(timeout_s), wait=wait_fixed(0.1)
    )
    try:
        await waiting(led)
    except RetryError as exc:
        raise TimeoutError(f"topics without a leader after {timeout_s}s: {names}") from exc


async def ping(kafka: KafkaSettings, timeout_s: float = 3.0) -> None:
    """Raise unless the broker answers a metadata request in time (used by readiness checks)."""
    admin = new_admin(kafka, request_timeout_ms=3000)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
        async with asyncio.timeout(timeout_s):
            await admin.list_topics()
    finally:
        await admin.close()


def readiness(kafka: KafkaSettings, *, interval_s: float = 3.0) -> CachedCheck:
    """The ``kafka`` readiness check: ``ping`` at most every ``interval_s``, a failure reported once two
    pings in a row failed (``shared.readiness``), so probes cost the broker one metadata request per
    interval per process, however often ``/readyz`` is asked."""
    return CachedCheck(partial(ping, kafka, timeout_s=2.5), interval_s=interval_s)
