"""HTTP routes for site coordinators (their sites' queue, decisions and steps to enrolment) and the public
site finder.

Routes parse, call one use case in one transaction (or one query) and shape the answer; the rules live
in ``commands.py``, the reads in ``queries.py``. A coordinator's sites come from the token (``site_code``
of a site client, ``site_codes`` of a person working for several), never from the request, and a
referral none of them ever had answers 404, as if it did not exist.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from services.site_router.deps import SiteRouterStateDep
from services.site_router.domain import ACTIVE_ASSIGNMENT_STATES, AssignmentState
from services.site_router.queries import queue_item
from services.site_router.schemas import (
    CloseRequest,
    DeclineRequest,
    NearbySites,
    ProgressRequest,
    QuestionReceipt,
    QuestionRequest,
    QueueItem,
    SiteCode,
    SiteQueue,
    SiteReferral,
)
from shared.auth import Principal, Scope, require
from shared.problems import Forbidden, TooManyRequests
from shared.ratelimit import address_key

router = APIRouter()


async def _rate_limited(request: Request, site_router: SiteRouterStateDep) -> None:
    """429 with Retry-After once the client's address has used up its requests (in any 60 s, counted by
    every instance together). The address is the TCP peer's unless it is a trusted proxy."""
    wait_s = await site_router.finder_limit.take(address_key(request.client.host if request.client else None))
    if wait_s:
        raise TooManyRequests(
            "too many site finder requests from this address", headers={"Retry-After": str(wait_s)}
        )


SiteCoordinator = Annotated[Principal, Depends(require(Scope.SITE_REFERRALS))]


# --- public site finder ---------------------------------------------------------------------------------


@router.get(
    "/v1/sites/nearby",
    tags=["public"],
    summary="Recruiting sites nearest a postal code (no token; rate-limited per client address)",
    dependencies=[Depends(_rate_limited)],
    responses={422: {"description": "unknown postal code or unsupported country"}, 429: {}},
)
async def nearby_sites(
    site_router: SiteRouterStateDep,
    postal_code: Annotated[str, Query(min_length=1, max_length=16)],
    country: Annotated[str, Query(pattern=r"^[A-Za-z]{2}$")],
    limit: Annotated[int, Query(ge=1, description="at most the configured maximum")] = 5,
) -> NearbySites:
    """Where the trial recruits near the patient, with each study centre's contact."""
    return await site_router.queries.nearby(postal_code, country, limit)


# --- site coordinators ----------------------------------------------------------------------------------


@router.get("/v1/site/referrals", tags=["site"], summary="The referrals routed to the caller's sites")
async def site_referrals(
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
    status: Annotated[
        list[AssignmentState] | None, Query(description="default: routed and accepted (the open queue)")
    ] = None,
    site: Annotated[
        SiteCode | None, Query(description="only this one of the caller's sites (default: all of them)")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    # PostgreSQL's OFFSET is a bigint: a larger one would fail in the store (a 500), not be a 422.
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> SiteQueue:
    """Oldest first: referral id, site, patient age, postal area, distance, screening, referrer, status
    and the steps recorded after acceptance. A coordinator of several sites sees all of theirs."""
    codes = principal.require_sites()
    if site is not None:
        if site not in codes:
            raise Forbidden(f"this token does not act for site {site}")
        codes = frozenset({site})
    return await site_router.queries.site_queue(
        codes, status or list(ACTIVE_ASSIGNMENT_STATES), limit, offset
    )


@router.get(
    "/v1/site/referrals/{referral_id}",
    tags=["site"],
    summary="One referral's page: assignment, pre-screen, referrer, clinic, timeline",
    responses={404: {"description": "not a referral of the caller's sites"}},
)
async def site_referral(
    referral_id: uuid.UUID, principal: SiteCoordinator, site_router: SiteRouterStateDep
) -> SiteReferral:
    """The referral at the caller's site(s): status and step, each criterion with its verdict and
    reason, the referrer and clinic, the decisions and steps in order, and the steps that may come next.
    No patient identity: intake answers that to the accepting site (its contact endpoint)."""
    return await site_router.queries.referral_for_site(principal.require_sites(), referral_id)


@router.post("/v1/site/referrals/{referral_id}/accept", tags=["site"], summary="Accept a referral")
async def accept_referral(
    referral_id: uuid.UUID, principal: SiteCoordinator, site_router: SiteRouterStateDep
) -> QueueItem:
    """The site takes the referral on; it keeps its slot until an outcome is recorded (``progress``).
    Publishes referral.site_decided."""
    codes = principal.require_sites()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.accept(session, codes, referral_id)
    )
    return queue_item(assignment, referral)


@router.post("/v1/site/referrals/{referral_id}/decline", tags=["site"], summary="Decline a referral")
async def decline_referral(
    referral_id: uuid.UUID,
    body: DeclineRequest,
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
) -> QueueItem:
    """Frees the slot; the referral goes to the next nearest site that has not declined it."""
    codes = principal.require_sites()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.decline(session, codes, referral_id, body.reason)
    )
    return queue_item(assignment, referral)


@router.post(
    "/v1/site/referrals/{referral_id}/progress",
    tags=["site"],
    summary="Record a step after acceptance, through to the outcome",
    responses={
        404: {"description": "not a referral of the caller's sites"},
        409: {"description": "not accepted here, out of order, or the outcome is already recorded"},
        422: {"description": "a field the step needs is missing, or one of another step is given"},
    },
)
async def progress_referral(
    referral_id: uuid.UUID,
    body: ProgressRequest,
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
) -> QueueItem:
    """After the site accepted: contacted, screening_scheduled (screening_date; again to reschedule),
    consented, then the outcome: enrolled (subject_id, the study's id), or screen_failed / not_enrolled
    (reason) from any step. The slot is held until the outcome, which frees it for the waitlist.
    Publishes referral.progressed (the clinic's timeline; the referrer is emailed at the outcome).
    Recording the current step again with the same fields is a no-op retry."""
    codes = principal.require_sites()
    referral, assignment, steps = await site_router.db.run(
        lambda session: site_router.commands.progress(
            session,
            codes,
            referral_id,
            body.step,
            screening_date=body.screening_date,
            subject_id=body.subject_id,
            reason=body.reason,
            recorded_by=principal.user or principal.client_id,
        )
    )
    return queue_item(assignment, referral, steps)


@router.post(
    "/v1/site/referrals/{referral_id}/close",
    tags=["site"],
    summary="Close a referral (legacy: record the outcome with progress)",
)
async def close_referral(
    referral_id: uuid.UUID,
    body: CloseRequest,
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
) -> QueueItem:
    """Kept for clients written before ``progress``: ends the site's work on the referral (enrolled or
    not) and frees its slot for the waitlist, publishing referral.site_decided ``closed`` with no step
    (the clinic sees ``closed``). Record the outcome with ``progress`` instead (enrolled with the
    subject id, or screen_failed / not_enrolled with the reason). 409 once an outcome was recorded."""
    codes = principal.require_sites()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.close(session, codes, referral_id, body.enrolled, body.reason)
    )
    return queue_item(assignment, referral)


@router.post(
    "/v1/site/referrals/{referral_id}/questions",
    tags=["site"],
    status_code=202,
    summary="Ask the referring clinic for facts",
    responses={404: {"description": "not a referral of this site"}, 409: {"description": "not routed here"}},
)
async def ask_clinic(
    referral_id: uuid.UUID,
    body: QuestionRequest,
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
) -> QuestionReceipt:
    """The criteria to settle (ids of docs/trial/criteria.md) and/or a question in words (clinical
    facts only, never patient identity), for a referral routed to the caller's site and not yet
    accepted. Publishes referral.info_requested; intake opens an information request to the clinic
    (its timeline, change feed, webhooks, FHIR Task and an email to the referrer), answered by the
    clinic's next amendment."""
    codes = principal.require_sites()
    question_id, site_code = await site_router.db.run(
        lambda session: site_router.commands.ask(session, codes, referral_id, body.criteria, body.text)
    )
    return QuestionReceipt(
        question_id=question_id,
        referral_id=referral_id,
        site_code=site_code,
        criteria=list(dict.fromkeys(body.criteria)),
        text=body.text,
    )
