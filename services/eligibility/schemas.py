"""What eligibility's API answers: assessments, and the criteria in plain words."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from services.eligibility import store
from services.eligibility.domain import COHORTS, Cohort, Decision, Kind, Ruleset, StudySettings, Verdict

NOTE = "A pre-screen on the study's published main criteria: other criteria may apply; the site confirms."


class CriterionPublic(BaseModel):
    id: str
    kind: Kind
    verdict: Verdict
    reason: str = Field(description="names the data the verdict was decided from")


class AssessmentPublic(BaseModel):
    referral_id: uuid.UUID
    revision: int = Field(description="the referral revision this assessment is of")
    latest_revision: int = Field(description="the newest revision assessed; equal to revision if current")
    decision: Decision
    score: float = Field(ge=0, le=1, description="share of applicable criteria satisfied; for sorting")
    routable: bool
    ruleset: str = Field(description="the rule-set version that decided", examples=["ucart123-v1"])
    referral_day: date
    assessed_at: datetime
    criteria: list[CriterionPublic]

    @classmethod
    def of(cls, row: store.AssessmentRow, latest_revision: int) -> AssessmentPublic:
        return cls(
            referral_id=row.referral_id,
            revision=row.revision,
            latest_revision=latest_revision,
            decision=row.decision,  # type: ignore[arg-type]
            score=row.score,
            routable=row.routable,
            ruleset=row.ruleset,
            referral_day=row.referral_day,
            assessed_at=row.assessed_at,
            criteria=[CriterionPublic.model_validate(c) for c in row.criteria],
        )


class StudySettingsPublic(BaseModel):
    cohort: Cohort = Field(description="the cohort the study enrolls now")
    screening_window_days: int = Field(description="how recent the organ-function assessment must be")
    route_needs_review: bool = Field(description="whether referrals needing review go to a site, flagged")


class CriterionRule(BaseModel):
    id: str = Field(description="the id every assessment reports this criterion under")
    kind: Kind
    text: str = Field(description="the criterion as the sponsor published it")
    explanation: str = Field(description="the same in plain words")
    parameters: dict[str, Any] = Field(description="the thresholds the rule set applies")
    applies_to_cohorts: list[Cohort]
    applies_now: bool = Field(description="whether it applies to the cohort enrolling now")


class RulesetPublic(BaseModel):
    version: str
    study: str
    title: str
    source: str
    note: str
    settings: StudySettingsPublic
    criteria: list[CriterionRule]

    @classmethod
    def of(cls, ruleset: Ruleset, study: StudySettings) -> RulesetPublic:
        def rule(c: Any) -> CriterionRule:
            cohorts = list(c.applies_to_cohorts or COHORTS)
            return CriterionRule(
                id=c.id,
                kind=c.kind,
                text=c.text,
                explanation=c.explanation,
                parameters=dict(c.parameters),
                applies_to_cohorts=cohorts,
                applies_now=study.cohort in cohorts,
            )

        return cls(
            version=ruleset.version,
            study=ruleset.study,
            title=ruleset.title,
            source=ruleset.source,
            note=NOTE,
            settings=StudySettingsPublic(
                cohort=study.cohort,
                screening_window_days=study.screening_window_days,
                route_needs_review=study.route_needs_review,
            ),
            criteria=[rule(c) for c in ruleset.criteria],
        )
