"""Eligibility's use cases: screen a revision of a referral, remember where it is routed and who declined.

Each runs in the caller's transaction (the consumer loop's, which also records the event id); a screening
writes its assessment and its ``referral.screened`` outbox row in that one transaction.

Revisions: every revision is assessed and stored once. A revision higher than any stored one is the
referral's current state and is published. A lower one arriving late (``referral.submitted`` and
``referral.amended`` are different topics, so a consumer catching up may see revision 2 before 1) is
stored for the record but not published: publishing it would make downstream services route a
superseded version.

A snapshot that can never be screened (an unreadable clinical block, a revision whose content changed)
raises ``PoisonMessage``: retrying cannot help, the record goes to the dead letters.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.eligibility import SERVICE, store
from services.eligibility.domain import Assessment, Ruleset, StudySettings, assess, input_hash
from shared.events import (
    CriterionVerdict,
    Envelope,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralSnapshot,
)
from shared.handlers import PoisonMessage
from shared.outbox import add_event
from shared.referral import ClinicalData, ScreeningInput

log = logging.getLogger(__name__)


def screening_input(data: ReferralSnapshot) -> ScreeningInput:
    """What the engine decides from; an unreadable clinical block can never be screened (poison)."""
    try:
        clinical = ClinicalData.model_validate(data.clinical)
    except ValidationError as exc:
        fields = "; ".join(
            f"clinical.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise PoisonMessage(f"unreadable clinical block: {fields}") from exc
    return ScreeningInput(age_years=data.age_years, clinical=clinical, referral_day=data.referral_day)


def screened_event(data: ReferralSnapshot, assessment: Assessment) -> ReferralScreened:
    """The assessment, with what routing and notifying need passed through from the snapshot."""
    return ReferralScreened(
        clinic_id=data.clinic_id,
        revision=data.revision,
        ruleset=assessment.ruleset_version,
        decision=assessment.decision,
        score=assessment.score,
        routable=assessment.routable,
        criteria=[CriterionVerdict(id=c.id, verdict=c.verdict, reason=c.reason) for c in assessment.criteria],
        age_years=data.age_years,
        postal_code=data.postal_code,
        country=data.country,
        consent_to_contact=data.consent_to_contact,
        referrer=data.referrer,
    )


@dataclass
class Commands:
    """The use cases, bound to the rule set and study settings the process started with."""

    ruleset: Ruleset
    study: StudySettings

    async def screen(
        self,
        session: AsyncSession,
        referral_id: uuid.UUID,
        data: ReferralSnapshot,
        *,
        source_event_id: uuid.UUID,
        trace: str | None,
    ) -> None:
        """Screen one revision; the same revision with the same input again changes nothing."""
        inp = screening_input(data)
        digest = input_hash(inp)
        assessments = await store.assessments_of(session, referral_id)
        existing = next((a for a in assessments if a.revision == data.revision), None)
        if existing is not None:
            if existing.input_hash == digest:
                log.info("revision already assessed", extra={"revision": data.revision})
                return
            # The producer broke the contract (a revision's content never changes): ops must look.
            raise PoisonMessage(
                f"revision {data.revision} was already assessed from a different input "
                f"(event {existing.source_event_id})"
            )
        current = all(data.revision > a.revision for a in assessments)  # the newest revision so far
        assessment = assess(inp, self.ruleset, self.study)
        await store.add_assessment(
            session,
            referral_id=referral_id,
            revision=data.revision,
            clinic_id=data.clinic_id,
            referral_day=data.referral_day,
            ruleset=assessment.ruleset_version,
            decision=assessment.decision,
            score=assessment.score,
            routable=assessment.routable,
            criteria=[c._asdict() for c in assessment.criteria],
            input_hash=digest,
            published=current,
            source_event_id=source_event_id,
        )
        if current:
            add_event(
                session,
                Envelope.wrap(
                    screened_event(data, assessment), producer=SERVICE, referral_id=referral_id, trace=trace
                ),
            )
        log.info(
            "referral screened" if current else "late revision stored, not published",
            extra={"revision": data.revision, "decision": assessment.decision},
        )

    async def routed(self, session: AsyncSession, referral_id: uuid.UUID, data: ReferralRouted) -> None:
        """Remember the site, so that its coordinator may read the assessment."""
        await store.record_routing(session, referral_id, data.site.code, data.revision, data.rank)

    async def site_decided(
        self, session: AsyncSession, referral_id: uuid.UUID, data: ReferralSiteDecided
    ) -> None:
        """A site that declined loses access; one that accepted or closed keeps it."""
        if data.decision == "declined":
            await store.record_decline(session, referral_id, data.site_code)
