"""Eligibility's handlers: screening each revision once, late revisions, poison, site access."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest

from services.eligibility import store
from services.eligibility.config import EligibilitySettings
from services.eligibility.consumers import EligibilityHandlers
from shared.events import (
    Envelope,
    ReferralAmended,
    ReferralScreened,
    ReferralSubmitted,
    Referrer,
)
from tests.support.handlers import HandlerHarness, handler_harness
from tests.unit.eligibility.test_referral import EXAMPLE

DAY = date(2026, 11, 10)


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    settings = EligibilitySettings()
    ruleset = settings.load_ruleset()
    handlers = EligibilityHandlers(ruleset, settings.study(ruleset)).registry()
    async with handler_harness(handlers, store.TABLES) as harness:
        yield harness


def submitted(referral_id: uuid.UUID, revision: int = 1, **clinical: Any) -> Envelope:
    model = ReferralSubmitted if revision == 1 else ReferralAmended
    data = model(
        clinic_id="clinic-a",
        revision=revision,
        referral_day=DAY,
        age_years=58,
        postal_code="10021",
        country="US",
        consent_to_contact=True,
        referrer=Referrer(name="Dr. Ana Smith", email="asmith@clinic.example.org"),
        clinical={**copy.deepcopy(EXAMPLE["clinical"]), **clinical},
    )
    return Envelope.wrap(data, producer="intake", referral_id=referral_id)


async def test_a_submission_is_screened_once_however_often_it_arrives(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    event = submitted(rid)
    await harness.deliver(event, event)
    await harness.deliver(event)
    [screened] = await harness.published("referral.screened")
    data = screened.payload()
    assert isinstance(data, ReferralScreened)
    assert (screened.referral_id, data.revision, data.clinic_id) == (rid, 1, "clinic-a")
    assert harness.position("referral.submitted") == 3
    assert harness.dead_letters.letters == []


async def test_a_late_revision_is_stored_but_not_published(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(submitted(rid, revision=2))
    await harness.deliver(submitted(rid, revision=1))
    published = [e.payload() for e in await harness.published("referral.screened")]
    assert [p.revision for p in published if isinstance(p, ReferralScreened)] == [2]
    async with harness.db.session() as session:
        assert sorted(a.revision for a in await store.assessments_of(session, rid)) == [1, 2]


async def test_an_unreadable_clinical_block_is_dead_lettered_and_the_partition_moves_on(
    harness: HandlerHarness,
) -> None:
    bad, good = submitted(uuid.uuid4(), ecog="seven"), submitted(uuid.uuid4())
    await harness.deliver(bad, good)
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("PoisonMessage: unreadable clinical block: clinical.ecog")
    assert letter.value() == bad.to_bytes()
    assert [e.referral_id for e in await harness.published()] == [good.referral_id]
    assert harness.position("referral.submitted") == 2


async def test_an_unreadable_record_is_dead_lettered(harness: HandlerHarness) -> None:
    await harness.deliver(("referral.submitted", b"{not json"))
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("JSONDecodeError")
    assert harness.position("referral.submitted") == 1
