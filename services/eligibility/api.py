"""HTTP API: assessments for the clinic that referred and the site that was assigned, and the
criteria in plain words for anyone preparing a referral.

An assessment is another tenant's data to everyone but those two, so for them it does not exist
(404): neither its existence nor its revisions leak.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from services.eligibility import store
from services.eligibility.domain import COHORTS, Cohort, Decision, Kind, Ruleset, StudySettings, Verdict
from shared.auth import Principal, Scope, bearer_scheme, require
from shared.db import Database
from shared.problems import Forbidden, NotFound

router = APIRouter(prefix="/v1")

CLINIC_SCOPES = frozenset({Scope.ASSESSMENTS_READ.value, Scope.REFERRALS_READ.value})
SITE_SCOPE = Scope.SITE_REFERRALS.value
NOTE = "A pre-screen on the study's published main criteria: other criteria may apply; the site confirms."


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.session() as session:
        yield session


async def _reader(principal: Annotated[Principal, Depends(require())]) -> Principal:
    """A valid token with at least one reading scope; the referral itself decides the rest."""
    if not principal.scopes & (CLINIC_SCOPES | {SITE_SCOPE}):
        needed = " ".join(sorted(CLINIC_SCOPES | {SITE_SCOPE}))
        raise Forbidden(
            f"the token needs one of the scopes {needed}",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
        )
    return principal


SessionDep = Annotated[AsyncSession, Depends(_session)]
Reader = Annotated[Principal, Depends(_reader)]


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
            assessed_at=store.as_utc(row.assessed_at),
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


async def _may_read(session: AsyncSession, principal: Principal, latest: store.AssessmentRow) -> bool:
    if principal.clinic_id == latest.clinic_id and principal.scopes & CLINIC_SCOPES:
        return True
    if principal.site_code is not None and SITE_SCOPE in principal.scopes:
        return principal.site_code == await store.assigned_site(session, latest.referral_id)
    return False


@router.get(
    "/assessments/{referral_id}",
    tags=["assessments"],
    summary="A referral's eligibility assessment",
    responses={
        401: {"description": "no valid token"},
        403: {"description": "no reading scope"},
        404: {"description": "no such referral, revision, or not yours to read"},
    },
)
async def read_assessment(
    referral_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    # le: the revision column is an integer, so a larger one would fail in the store (a 500), not 404.
    revision: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="an older revision; default the latest")
    ] = None,
) -> AssessmentPublic:
    """The latest assessment, for the referring clinic (`assessments:read` or `referrals:read`) or the
    site the referral is routed to (`site:referrals`); 404 for anyone else."""
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


@router.get("/rulesets/current", tags=["rulesets"], summary="The criteria in force, in plain words")
async def current_ruleset(request: Request, response: Response) -> RulesetPublic:
    """Public: what a referral is screened against, so a clinic can gather the data before referring."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return RulesetPublic.of(request.app.state.ruleset, request.app.state.study)


def document_reading_scopes(app: FastAPI) -> None:
    """Declare the assessment route's scopes in OpenAPI as alternatives (any one of them reads it).

    FastAPI can only declare scopes that are all required, so the generated document said "any valid
    token" for this route, while a token without a reading scope gets 403.
    """
    generate = app.openapi
    path = router.prefix + "/assessments/{referral_id}"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema["paths"][path]["get"]["security"] = [
                {bearer_scheme.scheme_name: [scope]} for scope in sorted(CLINIC_SCOPES | {SITE_SCOPE})
            ]
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
