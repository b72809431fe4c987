"""Referrals in, assessments and ``referral.screened`` out: on the real broker and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from services.eligibility.config import EligibilitySettings
from services.eligibility.rules import load_ruleset
from shared.app import ServiceSpec
from shared.events import ReferralScreened
from shared.settings import KafkaSettings
from tests.integration.eligibility.conftest import (
    dead_letters,
    outbox_rows,
    referral,
    screened,
    stored,
)
from tests.support.builders import CLINIC, clinical
from tests.support.kafka import produce, publish, read_topic, wait_consumed
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_submitted_referral_is_screened_and_published(
    service: ServiceSpec, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid, trace=TRACE))

    await eventually(lambda: _screened_count(kafka, rid, 1), what="referral.screened")
    (event,) = await screened(kafka, rid)
    data = event.payload()
    assert isinstance(data, ReferralScreened)
    assert (event.producer, event.trace) == ("eligibility", TRACE)
    assert (data.decision, data.score, data.routable, data.revision) == ("eligible", 1.0, True, 1)
    assert data.ruleset == "ucart123-v1" == load_ruleset().version
    assert [c.id for c in data.criteria] == [c.id for c in load_ruleset().criteria]
    assert {c.verdict for c in data.criteria} == {"met", "absent"}
    assert all(c.reason for c in data.criteria)
    assert (data.clinic_id, data.age_years, data.postal_code, data.country) == (CLINIC, 58, "10021", "US")
    assert data.consent_to_contact is True and data.referrer.email == "asmith@clinic.example.org"
    records = await read_topic(kafka, "referral.screened")
    assert [r.key for r in records] == [str(rid).encode()]

    (row,) = await stored(service.state.db, rid)
    assert (row.revision, row.decision, row.ruleset, row.published) == (1, "eligible", "ucart123-v1", True)
    assert len(row.input_hash) == 64 and len(row.criteria) == 12


async def test_an_ineligible_referral_is_published_not_routable(
    service: ServiceSpec, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid, age=70, block=clinical(ecog=None)))
    await eventually(lambda: _screened_count(kafka, rid, 1), what="referral.screened")
    data = (await screened(kafka, rid))[0].payload()
    assert isinstance(data, ReferralScreened)
    assert (data.decision, data.routable) == ("ineligible", False)
    verdicts = {c.id: (c.verdict, c.reason) for c in data.criteria}
    assert verdicts["age"] == ("not_met", "age 70 on the referral day is outside 18 to 65")
    assert verdicts["ecog"] == ("unknown", "ecog not given")


async def test_an_amendment_is_screened_again_under_its_revision(
    service: ServiceSpec, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    await publish(kafka, referral(rid, block=clinical(ecog=3)))
    await eventually(lambda: _screened_count(kafka, rid, 1), what="revision 1 screened")
    await publish(kafka, referral(rid, revision=2, block=clinical(ecog=1)))
    await eventually(lambda: _screened_count(kafka, rid, 2), what="revision 2 screened")

    events = [e.payload() for e in await screened(kafka, rid)]
    assert [(e.revision, e.decision) for e in events] == [(1, "ineligible"), (2, "eligible")]  # type: ignore[attr-defined]
    rows = await stored(service.state.db, rid)
    assert [(r.revision, r.decision, r.published) for r in rows] == [
        (1, "ineligible", True),
        (2, "eligible", True),
    ]
    assert rows[0].input_hash != rows[1].input_hash


async def test_a_lower_revision_arriving_late_is_stored_but_not_published(
    service: ServiceSpec, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    db = service.state.db
    await publish(kafka, referral(rid, revision=2))
    await eventually(lambda: _screened_count(kafka, rid, 1), what="revision 2 screened")
    await publish(kafka, referral(rid, revision=1, block=clinical(ecog=3)))

    async def both_stored() -> bool:
        return len(await stored(db, rid)) == 2

    await eventually(both_stored, what="the late revision 1 stored")
    rows = await stored(db, rid)
    assert [(r.revision, r.decision, r.published) for r in rows] == [
        (2, "eligible", True),
        (1, "ineligible", False),
    ]
    assert await outbox_rows(db) == 1
    assert [e.payload().revision for e in await screened(kafka, rid)] == [2]  # type: ignore[attr-defined]


async def test_a_redelivered_event_is_handled_once(
    service: ServiceSpec, settings: EligibilitySettings, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    envelope = referral(rid)
    for _ in range(3):
        await publish(kafka, envelope)

    await wait_consumed(kafka, settings.consumer_group, "referral.submitted")
    await eventually(lambda: _screened_count(kafka, rid, 1), what="referral.screened")
    assert [r.source_event_id for r in await stored(service.state.db, rid)] == [envelope.id]
    assert await outbox_rows(service.state.db) == 1
    assert len(await screened(kafka, rid)) == 1


async def test_the_same_revision_under_a_new_event_id_is_not_assessed_twice(
    service: ServiceSpec, settings: EligibilitySettings, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    first = referral(rid)
    reordered = dict(reversed(list(clinical().items())))  # same facts, other key order: same input hash
    again = referral(rid, block=reordered)
    assert again.id != first.id
    await publish(kafka, first)
    await publish(kafka, again)

    await wait_consumed(kafka, settings.consumer_group, "referral.submitted")
    assert [r.source_event_id for r in await stored(service.state.db, rid)] == [first.id]
    assert await outbox_rows(service.state.db) == 1
    assert await dead_letters(kafka, "referral.submitted") == []


async def test_the_same_revision_with_other_content_is_dead_lettered(
    service: ServiceSpec, settings: EligibilitySettings, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    first = referral(rid)
    conflicting = referral(rid, block=clinical(ecog=4))
    await publish(kafka, first)
    await publish(kafka, conflicting)

    await wait_consumed(kafka, settings.consumer_group, "referral.submitted")
    (letter,) = await dead_letters(kafka, "referral.submitted")
    assert "already assessed from a different input" in letter["error"]
    assert base64.b64decode(letter["value_b64"]) == conflicting.to_bytes()
    rows = await stored(service.state.db, rid)
    assert [(r.source_event_id, r.decision) for r in rows] == [(first.id, "eligible")]


async def test_poison_is_dead_lettered_and_the_partition_moves_on(
    service: ServiceSpec, kafka: KafkaSettings
) -> None:
    rid = uuid.uuid4()
    key = str(rid).encode()
    malformed = b'{"type": "referral.submitted", "data": '
    wrong_type = referral(rid, block=clinical(ecog="high"))
    await produce(kafka, "referral.submitted", malformed, key)
    await produce(kafka, "referral.submitted", wrong_type.to_bytes(), key)
    good = referral(rid)
    await publish(kafka, good)

    await eventually(lambda: _screened_count(kafka, rid, 1), what="the good event after the poison")
    letters = await dead_letters(kafka, "referral.submitted")
    assert [base64.b64decode(x["value_b64"]) for x in letters] == [malformed, wrong_type.to_bytes()]
    assert "JSONDecodeError" in letters[0]["error"]
    assert letters[1]["error"].startswith("PoisonMessage: unreadable clinical block: clinical.ecog")
    assert all(x["key"] == str(rid) and x["consumer"].startswith("eligibility-") for x in letters)
    (row,) = await stored(service.state.db, rid)
    assert row.source_event_id == good.id
    assert json.loads((await read_topic(kafka, "referral.screened"))[0].value or b"")["referral_id"] == str(
        rid
    )


async def _screened_count(kafka: KafkaSettings, rid: uuid.UUID, n: int) -> bool:
    return len(await screened(kafka, rid)) >= n
