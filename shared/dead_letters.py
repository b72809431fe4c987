"""Ops' view of dead letters: list them and replay them onto the topic they came from.

Replaying is safe because consumers are idempotent: a group that already handled the event skips it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from shared.events import DEAD_LETTER_SUFFIX
from shared.kafka import new_producer
from shared.settings import KafkaSettings


async def list_dead_letters(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    """Every dead letter of ``topic`` (unprefixed name, e.g. ``referral.submitted``), oldest first."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    name = kafka.topic(topic + DEAD_LETTER_SUFFIX)
    partitions = await _partitions(kafka, name)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        letters: list[dict[str, Any]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = json.loads(record.value or b"{}")
                    letter["dlq_partition"], letter["dlq_offset"] = record.partition, record.offset
                    letters.append(letter)
        return sorted(letters, key=lambda x: x.get("failed_at", ""))
    finally:
        await consumer.stop()


async def _partitions(kafka: KafkaSettings, name: str) -> list[int]:
    """The topic's partition ids, from the broker's full topic list.

    Not ``consumer.partitions_for_topic``: a consumer without a subscription knows no topic's
    metadata, so it answered None, and the consumer stopped at once raised CancelledError (aiokafka's
    group-less coordinator cancels a task that never ran): listing always failed. Not a metadata
    request naming the topic either: with auto-creation on, that would create a missing topic.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        topics = await admin.describe_topics()
    finally:
        await admin.close()
    found = next((t for t in topics if t["topic"] == name and t["error_code"] == 0), None)
    return sorted(p["partition"] for p in found["partitions"]) if found else []


async def replay(kafka: KafkaSettings, letters: list[dict[str, Any]]) -> int:
    """Publish each letter's original record again, with its original key, to its original topic.

    Letters whose value was cut (``value_truncated``) are skipped: replaying a fragment would only
    dead-letter it again. Returns how many records were published."""
    whole = [letter for letter in letters if not letter.get("value_truncated")]
    producer = await new_producer(kafka, client_id="dead-letter-replay")
    try:
        for letter in whole:
            key = letter["key"].encode() if letter.get("key") else None
            await producer.send_and_wait(
                letter["topic"], value=base64.b64decode(letter["value_b64"]), key=key
            )
    finally:
        await producer.stop()
    return len(whole)
