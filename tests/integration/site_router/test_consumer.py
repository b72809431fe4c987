"""The whole service on the real broker: referral.screened in, referral.routed (and friends) out."""

from __future__ import annotations

import uuid

import pytest

from shared.events import Envelope
from shared.settings import KafkaSettings
from tests.integration.site_router.conftest import CommandKit, ServeRouter, screening
from tests.support.builders import withdrawn, wrap
from tests.support.kafka import on_topic, publish, read_topic, topic_has
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_screened_event_becomes_routed_event_on_the_topic(
    serve_router: ServeRouter, kit: CommandKit, kafka: KafkaSettings
) -> None:
    await kit.add_sites({"WCM": 1})
    routed_id, unknown_id, waiting_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    group = f"test-{uuid.uuid4().hex[:8]}"
    async with serve_router(roles=frozenset({"consumer", "relay"}), kafka=kafka, consumer_group=group):
        first = wrap(screening(), routed_id, trace=trace)
        await publish(kafka, first)
        await publish(kafka, first)  # redelivered: handled once
        await eventually(lambda: topic_has(kafka, "referral.routed", 1), what="referral.routed on the topic")
        [routed] = await on_topic(kafka, "referral.routed")
        assert routed.referral_id == routed_id and routed.producer == "site_router"
        assert routed.trace == trace  # the trace carries on
        assert routed.data["site"]["code"] == "WCM" and routed.data["rank"] == 1
        assert routed.data["criteria_to_confirm"] == ["ecog"]

        unknown = screening(postal_code="00000")
        await publish(kafka, wrap(unknown, unknown_id))
        await publish(kafka, wrap(screening(), waiting_id))
        await eventually(lambda: topic_has(kafka, "referral.unroutable", 1), what="referral.unroutable")
        await eventually(lambda: topic_has(kafka, "referral.waitlisted", 1), what="referral.waitlisted")
        [unroutable] = await on_topic(kafka, "referral.unroutable")
        assert unroutable.referral_id == unknown_id
        assert unroutable.data["reason"] == "unknown postal code '00000' for US"
        [waitlisted] = await on_topic(kafka, "referral.waitlisted")
        assert waitlisted.referral_id == waiting_id

        await publish(kafka, wrap(withdrawn(clinic_id="C1", reason="patient moved"), routed_id))
        await eventually(lambda: topic_has(kafka, "referral.routed", 2), what="the freed slot to be taken")
        records = await read_topic(
            kafka, "referral.routed"
        )  # keyed by referral id, read partition by partition
        sites = {r.key: Envelope.from_bytes(r.value or b"").data["site"]["code"] for r in records}
        assert sites == {str(routed_id).encode(): "WCM", str(waiting_id).encode(): "WCM"}
        assert await kit.open_counts() == {"WCM": 1}
