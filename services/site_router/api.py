"""HTTP routes for site coordinators (their own site's queue and decisions) and the public site finder.

Routes parse, call one use case in one transaction (or one query) and shape the answer; the rules live
in ``commands.py``, the reads in ``queries.py``. A coordinator's site comes from the token
(``site_code``), never from the request, and a referral the site never had answers 404, as if it did not
exist.
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
    QuestionReceipt,
    QuestionRequest,
    QueueItem,
    SiteQueue,
)
from shared.auth import Principal, Scope, require
from shared.problems import TooManyRequests
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


@router.get("/v1/site/referrals", tags=["site"], summary="The referrals routed to the caller's site")
async def site_referrals(
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
    status: Annotated[
        list[AssignmentState] | None, Query(description="default: routed and accepted (the open queue)")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    # PostgreSQL's OFFSET is a bigint: a larger one would fail in the store (a 500), not be a 422.
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> SiteQueue:
    """Oldest first: referral id, patient age, postal area, distance, screening, referrer, status."""
    site_code = principal.require_site()
    return await site_router.queries.site_queue(
        site_code, status or list(ACTIVE_ASSIGNMENT_STATES), limit, offset
    )


@router.post("/v1/site/referrals/{referral_id}/accept", tags=["site"], summary="Accept a referral")
async def accept_referral(
    referral_id: uuid.UUID, principal: SiteCoordinator, site_router: SiteRouterStateDep
) -> QueueItem:
    """The site takes the referral on; it keeps its slot until closed. Publishes referral.site_decided."""
    site_code = principal.require_site()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.accept(session, site_code, referral_id)
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
    site_code = principal.require_site()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.decline(session, site_code, referral_id, body.reason)
    )
    return queue_item(assignment, referral)


@router.post("/v1/site/referrals/{referral_id}/close", tags=["site"], summary="Close a referral")
async def close_referral(
    referral_id: uuid.UUID,
    body: CloseRequest,
    principal: SiteCoordinator,
    site_router: SiteRouterStateDep,
) -> QueueItem:
    """Ends the site's work on the referral (enrolled or not) and frees its slot for the waitlist."""
    site_code = principal.require_site()
    referral, assignment = await site_router.db.run(
        lambda session: site_router.commands.close(
            session, site_code, referral_id, body.enrolled, body.reason
        )
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
    site_code = principal.require_site()
    question_id = await site_router.db.run(
        lambda session: site_router.commands.ask(session, site_code, referral_id, body.criteria, body.text)
    )
    return QuestionReceipt(
        question_id=question_id,
        referral_id=referral_id,
        site_code=site_code,
        criteria=list(dict.fromkeys(body.criteria)),
        text=body.text,
    )
