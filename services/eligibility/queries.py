"""Eligibility's reads: an assessment for those who may see it, and the criteria in force.

An assessment is another tenant's data to everyone but the referring clinic and the assigned site, so
for them it does not exist (``NotFound``): neither its existence nor its revisions leak.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from services.eligibility import store
from services.eligibility.domain import Ruleset, StudySettings
from services.eligibility.schemas import AssessmentPublic, RulesetPublic
from shared.auth import Principal, Scope
from shared.db import Database
from shared.problems import NotFound

CLINIC_SCOPES = frozenset({Scope.ASSESSMENTS_READ.value, Scope.REFERRALS_READ.value})
SITE_SCOPE = Scope.SITE_REFERRALS.value


@dataclass
class Queries:
    db: Database
    ruleset: Ruleset
    study: StudySettings
    current_ruleset: RulesetPublic = field(init=False)
    """Built once: the rule set and the study settings are fixed for the life of the process."""

    def __post_init__(self) -> None:
        self.current_ruleset = RulesetPublic.of(self.ruleset, self.study)

    async def assessment(
        self, principal: Principal, referral_id: uuid.UUID, revision: int | None
    ) -> AssessmentPublic:
        """The latest assessment, or an older ``revision``, with the latest revision's number."""
        async with self.db.session() as session:
            by_revision = {a.revision: a for a in await store.assessments_of(session, referral_id)}
            latest = by_revision[max(by_revision)] if by_revision else None
            if latest is None or not await _may_read(session, principal, latest):
                raise NotFound("no assessment of this referral")
        if revision is None or revision == latest.revision:
            return AssessmentPublic.of(latest, latest.revision)
        older = by_revision.get(revision)
        if older is None:
            raise NotFound(f"revision {revision} of this referral has not been assessed")
        return AssessmentPublic.of(older, latest.revision)


async def _may_read(session: AsyncSession, principal: Principal, latest: store.AssessmentRow) -> bool:
    if principal.clinic_id == latest.clinic_id and principal.scopes & CLINIC_SCOPES:
        return True
    if principal.site_code is not None and SITE_SCOPE in principal.scopes:
        return principal.site_code == await store.assigned_site(session, latest.referral_id)
    return False
