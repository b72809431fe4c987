"""Putting events on topics, reading topics, and waiting until a consumer group has handled them, on the
real broker.

    await publish(kafka, envelope, times=3)                     # keyed by referral id, as producers do
    await wait_consumed(kafka, settings.consumer_group, "referral.routed")
    assert ...                                                  # nothing more can happen now

``wait_consumed`` is the marker every "nothing more happened" check waits on: a group's committed offset
moves past a record only after the transaction that handled it committed, so once the group has
committed the end of every partition, every record published before was handled (or dropped as a
duplicate), and whatever handling them was going to do has been done.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.events import Envelope
from shared.kafka import connection
from shared.settings import KafkaSettings
from tests.support.waiting import eventually


async def read_topic(kafka: KafkaSettings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now on ``topic`` (prefixed by the settings), read without a consumer group."""
    consumer = AIOKafkaConsumer(**connection(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        name = kafka.topic(topic)
        partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def produce(kafka: KafkaSettings, topic: str, value: bytes, key: bytes | None = None) -> None:
    """One raw record (say, a malformed one) onto ``topic`` (prefixed by the settings)."""
    producer = AIOKafkaProducer(**connection(kafka))
    await producer.start()
    try:
        await producer.send_and_wait(kafka.topic(topic), value=value, key=key)
    finally:
        await producer.stop()


async def publish(kafka: KafkaSettings, envelope: Envelope, times: int = 1) -> None:
    """``envelope`` onto its own topic, keyed by its referral id as every producer does; ``times`` > 1
    for a redelivery's copies."""
    for _ in range(times):
        await produce(kafka, envelope.type, envelope.to_bytes(), str(envelope.referral_id).encode())


async def on_topic(kafka: KafkaSettings, topic: str) -> list[Envelope]:
    """The envelopes now on ``topic``, partition by partition."""
    return [Envelope.from_bytes(r.value or b"") for r in await read_topic(kafka, topic)]


async def topic_has(kafka: KafkaSettings, topic: str, count: int) -> bool:
    """At least ``count`` records on ``topic`` (this test's prefix)."""
    return len(await read_topic(kafka, topic)) >= count


async def consumed(kafka: KafkaSettings, group: str, *topics: str) -> bool:
    """Whether ``group`` has committed every record now on ``topics``: proof it handled them all."""
    consumer = AIOKafkaConsumer(**connection(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(name, p)
            for name in (kafka.topic(t) for t in topics)
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        ends = await consumer.end_offsets(tps)
        return all([(await consumer.committed(tp) or 0) >= ends[tp] for tp in tps])
    finally:
        await consumer.stop()


async def wait_consumed(kafka: KafkaSettings, group: str, *topics: str, within: float = 30) -> None:
    """Wait until ``group`` has handled every record now on ``topics`` (see the module's docstring):
    the marker to wait on before asserting that nothing more happened."""

    async def check() -> bool:
        return await consumed(kafka, group, *topics)

    await eventually(check, within=within, what=f"{group} to handle everything on {', '.join(topics)}")
