"""HTTP API: assessments for the clinic that referred and the site that was assigned, and the
criteria in plain words for anyone preparing a referral.

An assessment is another tenant's data to everyone but those two, so for them it does not exist
(404): neither its existence nor its revisions leak.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Response

from services.eligibility.deps import EligibilityStateDep
from services.eligibility.queries import CLINIC_SCOPES, SITE_SCOPE
from services.eligibility.schemas import AssessmentPublic, RulesetPublic
from shared.auth import Principal, bearer_scheme, require
from shared.problems import Forbidden

router = APIRouter(prefix="/v1")


async def _reader(principal: Annotated[Principal, Depends(require())]) -> Principal:
    """A valid token with at least one reading scope; the referral itself decides the rest."""
    if not principal.scopes & (CLINIC_SCOPES | {SITE_SCOPE}):
        needed = " ".join(sorted(CLINIC_SCOPES | {SITE_SCOPE}))
        raise Forbidden(
            f"the token needs one of the scopes {needed}",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
        )
    return principal


Reader = Annotated[Principal, Depends(_reader)]


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
    eligibility: EligibilityStateDep,
    # le: the revision column is an integer, so a larger one would fail in the store (a 500), not 404.
    revision: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="an older revision; default the latest")
    ] = None,
) -> AssessmentPublic:
    """The latest assessment, for the referring clinic (`assessments:read` or `referrals:read`) or the
    site the referral is routed to (`site:referrals`); 404 for anyone else."""
    return await eligibility.queries.assessment(principal, referral_id, revision)


@router.get("/rulesets/current", tags=["rulesets"], summary="The criteria in force, in plain words")
async def current_ruleset(eligibility: EligibilityStateDep, response: Response) -> RulesetPublic:
    """Public: what a referral is screened against, so a clinic can gather the data before referring."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return eligibility.queries.current_ruleset


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
