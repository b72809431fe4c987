"""Intake's HTTP routes: parse, call one command or query, answer. Errors are problem+json.

The Idempotency-Key is applied here, around a command: the command's work and the stored response
commit in one transaction (``_idempotent``), and the response's status and Location are set here too.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.commands import Transaction, Work
from services.intake.deps import IntakeStateDep
from services.intake.domain import Status, request_fingerprint
from services.intake.idempotency import REPLAYED_HEADER, Idempotency, Outcome
from services.intake.openapi import REFERRAL_EXAMPLE, problems
from services.intake.schemas import (
    EXAMPLE_ID,
    AmendmentCreate,
    ChangePage,
    ContactList,
    ContactReadPage,
    ReferralCreate,
    ReferralPage,
    ReferralPublic,
    ReferralReceipt,
    SitePatientContact,
    WithdrawalCreate,
)
from shared.auth import Principal, Scope, require
from shared.observability import referral_context
from shared.store import UtcInstant

log = logging.getLogger(__name__)

router = APIRouter()

IDEMPOTENCY_RULES = (
    "**Idempotency-Key** (optional, recommended; 1-255 printable ASCII characters, e.g. a UUID). "
    "Keys are scoped to your OAuth client and remembered for at least 24 hours. "
    "Retrying with the same key and the same body returns the first response (same status and body, "
    "plus `Idempotent-Replayed: true`) and does nothing again. The same key with a different body "
    "is refused with 422. A retry while the first request is still being processed gets 409 with "
    "`Retry-After`: retry later with the same key. Only successful responses are remembered: after an "
    "error (4xx) the key is free again."
)

Writer = Annotated[Principal, Depends(require(Scope.REFERRALS_WRITE))]
Reader = Annotated[Principal, Depends(require(Scope.REFERRALS_READ))]
ContactReader = Annotated[Principal, Depends(require(Scope.CONTACT_READ))]
SiteContactReader = Annotated[Principal, Depends(require(Scope.SITE_CONTACT))]
Ops = Annotated[Principal, Depends(require(Scope.OPS))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="makes a retry safe; see the rules in the operation's description",
        examples=["5f0c8c64-2d4b-4d0e-8d1e-7a0a4e2f9b10"],
    ),
]
TraceParent = Annotated[
    str | None, Header(alias="traceparent", description="W3C trace context, carried into the events")
]
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$")


def valid_trace(value: str | None) -> str | None:
    """A malformed trace header is dropped, never a reason to refuse a referral."""
    return value if value and len(value) <= 512 and _TRACEPARENT.match(value) else None


ReferralId = Annotated[uuid.UUID, Path(description="the id intake gave the referral", examples=[EXAMPLE_ID])]


def _idempotent(
    idempotency: Idempotency,
    principal: Principal,
    key: str | None,
    path: str,
    body: BaseModel,
    status_code: int,
) -> Transaction[Outcome]:
    """A command's transaction under the Idempotency-Key of a POST to ``path``: the response it answers
    (the receipt, ``status_code`` and the referral's Location) is stored with the work, or an earlier
    one's is given back."""
    fingerprint = request_fingerprint("POST", path, body.model_dump(mode="json"))

    async def transaction(work: Work) -> Outcome:
        async def operation(session: AsyncSession) -> Outcome:
            receipt = await work(session)
            location = {"Location": f"/v1/referrals/{receipt.id}"}
            return Outcome(status_code, receipt.model_dump(mode="json"), location)

        return await idempotency.run(principal.client_id, key, fingerprint, operation)

    return transaction


def respond(outcome: Outcome) -> JSONResponse:
    headers = dict(outcome.headers)
    if outcome.replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


def _receipt(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": ReferralReceipt,
            "description": description,
            "headers": {
                "Location": {"description": "the referral's URL", "schema": {"type": "string"}},
                REPLAYED_HEADER: {
                    "description": "`true` when this is the stored response of an earlier request",
                    "schema": {"type": "string"},
                },
            },
        }
    }


@router.post(
    "/v1/referrals",
    tags=["referrals"],
    status_code=202,
    response_model=None,
    summary="Submit a referral",
    description="Scope `referrals:write` (clinic token; the clinic is the token's `clinic_id`). "
    "The referral is stored and screened asynchronously: follow it at `Location`. An open referral "
    "(not withdrawn or closed) with the same `clinic_reference` from the same clinic is refused with "
    "409 naming its id (`existing_id`). `study` may be left out (this deployment's study is used); "
    "another study is a 422. The body is at most 64 KiB of `application/json`.\n\n" + IDEMPOTENCY_RULES,
    responses={**_receipt(202, "accepted for screening"), **problems(401, 403, 409, 413, 415, 422)},
)
async def submit_referral(
    payload: Annotated[ReferralCreate, Body(openapi_examples=REFERRAL_EXAMPLE)],
    principal: Writer,
    intake: IntakeStateDep,
    key: IdempotencyKey = None,
    trace: TraceParent = None,
) -> JSONResponse:
    transaction = _idempotent(intake.idempotency, principal, key, "/v1/referrals", payload, 202)
    trace = valid_trace(trace)
    outcome = await intake.commands.submit(principal, payload, transaction, trace)
    with referral_context(outcome.body["id"], trace):
        log.info("referral received", extra={"replayed": outcome.replayed})
    return respond(outcome)


@router.get(
    "/v1/referrals",
    tags=["referrals"],
    summary="List the clinic's referrals",
    description="Scope `referrals:read`. Least recently updated first, so that a client that "
    "remembers the last `updated_at` it saw and asks again with `updated_since` misses no change. "
    "Pages are cut by an opaque `cursor` (from `next_cursor`).",
    responses=problems(401, 403, 422),
)
async def list_referrals(
    principal: Reader,
    intake: IntakeStateDep,
    status: Annotated[list[Status] | None, Query(description="only these statuses (repeatable)")] = None,
    updated_since: Annotated[
        UtcInstant | None,
        Query(
            description="only referrals changed at or after this time (with a zone)",
            examples=["2026-11-10T00:00:00Z"],
        ),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
) -> ReferralPage:
    return await intake.queries.page(
        principal, statuses=status or [], updated_since=updated_since, cursor=cursor, limit=limit
    )


@router.get(
    "/v1/changes",
    tags=["referrals"],
    summary="The clinic's change feed: every timeline entry of its referrals, in order",
    description="Scope `referrals:read`. Every entry recorded on the timelines of the clinic's referrals "
    "(its own submissions, amendments and withdrawals, and every status event), each with the referral's "
    "status and revision once it was recorded, oldest first. Start without `cursor`; then pass the "
    "`next_cursor` of the previous answer (it comes back also when there is nothing new). A clinic that "
    "stores `next_cursor` after handling the items misses nothing, even while entries of other "
    "referrals are being recorded: each referral's entries come in the order recorded, at least once "
    "(drop a copy by `seq`). A cursor this feed did not give is a 422.",
    responses=problems(401, 403, 422),
)
async def list_changes(
    principal: Reader,
    intake: IntakeStateDep,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous answer")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="most items in one answer")] = 100,
) -> ChangePage:
    return await intake.queries.changes(principal, cursor=cursor, limit=limit)


@router.get(
    "/v1/referrals/{referral_id}",
    tags=["referrals"],
    summary="Read a referral: status, timeline, decision, site, notifications",
    description="Scope `referrals:read`; the clinic's own referrals only (another clinic's id is a 404).",
    responses=problems(401, 403, 404, 422),
)
async def read_referral(referral_id: ReferralId, principal: Reader, intake: IntakeStateDep) -> ReferralPublic:
    return await intake.queries.referral(principal, referral_id)


@router.post(
    "/v1/referrals/{referral_id}/amendments",
    tags=["referrals"],
    status_code=202,
    response_model=None,
    summary="Amend a referral's clinical block",
    description="Scope `referrals:write`. Replaces the clinical block as a whole, increments `revision` "
    "and screens the referral again (decision and site are reset). Refused with 409 once the site "
    "accepted, or after withdrawal or closure (`current_status` says which).\n\n" + IDEMPOTENCY_RULES,
    responses={**_receipt(202, "amended; screening again"), **problems(401, 403, 404, 409, 413, 415, 422)},
)
async def amend_referral(
    referral_id: ReferralId,
    body: AmendmentCreate,
    principal: Writer,
    intake: IntakeStateDep,
    key: IdempotencyKey = None,
    trace: TraceParent = None,
) -> JSONResponse:
    path = f"/v1/referrals/{referral_id}/amendments"
    transaction = _idempotent(intake.idempotency, principal, key, path, body, 202)
    return respond(await intake.commands.amend(principal, referral_id, body, transaction, valid_trace(trace)))


@router.post(
    "/v1/referrals/{referral_id}/withdraw",
    tags=["referrals"],
    status_code=200,
    response_model=None,
    summary="Withdraw a referral",
    description="Scope `referrals:write`. Takes effect at once; a site holding it frees the slot. The "
    "body (a reason) is optional. Refused with 409 once the site accepted, or when already withdrawn "
    "or closed. The clinic_reference is free again afterwards.\n\n" + IDEMPOTENCY_RULES,
    responses={**_receipt(200, "withdrawn"), **problems(401, 403, 404, 409, 413, 415, 422)},
)
async def withdraw_referral(
    referral_id: ReferralId,
    principal: Writer,
    intake: IntakeStateDep,
    body: Annotated[WithdrawalCreate | None, Body()] = None,
    key: IdempotencyKey = None,
    trace: TraceParent = None,
) -> JSONResponse:
    withdrawal = body or WithdrawalCreate()
    path = f"/v1/referrals/{referral_id}/withdraw"
    transaction = _idempotent(intake.idempotency, principal, key, path, withdrawal, 200)
    return respond(
        await intake.commands.withdraw(principal, referral_id, withdrawal, transaction, valid_trace(trace))
    )


MAX_CONTACTS = 100
"""Referrals per contact read: a dispatch batch's worth, and a URL of a few kilobytes at most."""


@router.get(
    "/internal/v1/contacts",
    tags=["internal"],
    summary="Patient and referrer contact details of some referrals (notifier only)",
    description="Scope `contact:read`, a service token (not a clinic's or a site's). One call for the "
    f"referrals of a dispatch batch (`referral_id` repeated, at most {MAX_CONTACTS}); an unknown id is "
    "left out of `items`. Every read is recorded (client, time, referral). The patient's email is null "
    "unless they consented to contact.",
    responses=problems(401, 403, 422),
)
async def read_contacts(
    referral_id: Annotated[
        list[uuid.UUID],
        Query(min_length=1, max_length=MAX_CONTACTS, description="a referral's id (repeatable)"),
    ],
    principal: ContactReader,
    intake: IntakeStateDep,
) -> ContactList:
    return await intake.queries.contacts(principal, list(dict.fromkeys(referral_id)))


@router.get(
    "/v1/site/referrals/{referral_id}/contact",
    tags=["site"],
    summary="The patient's name and contact, for the site that accepted the referral (audited)",
    description="Scope `site:contact`, a coordinator's token (`site_code` / `site_codes`). Answers only "
    "when the referral's accepting site (the last `referral.site_decided` accepted on its timeline, not "
    "let go since) is one of the token's sites and the referral is accepted or later (a step, its "
    "outcome, or closed); before acceptance, for another site, after a decline or a withdrawal, or for an "
    "unknown id: 404, alike. Phone and email are null unless the patient consented to contact. Every "
    "read is recorded (client, subject, user, site, time, referral) in the transaction that reads it; ops "
    "list them at `GET /v1/audit/contact-reads`. `Cache-Control: no-store`.",
    responses=problems(401, 403, 404, 422),
)
async def read_site_contact(
    referral_id: ReferralId, principal: SiteContactReader, intake: IntakeStateDep
) -> SitePatientContact:
    return await intake.queries.site_contact(principal, referral_id)


@router.get(
    "/v1/audit/contact-reads",
    tags=["ops"],
    summary="Who read which patient's contact details, when, for which site",
    description="Scope `ops`. The audit log of contact reads (sites' coordinators and the notifier), oldest "
    "first; filter by `referral_id` and by `since` (inclusive) / `until` (exclusive). Pages: pass "
    "`next_cursor` as `cursor` (null on the last page).",
    responses=problems(401, 403, 422),
)
async def list_contact_reads(
    principal: Ops,
    intake: IntakeStateDep,
    referral_id: Annotated[uuid.UUID | None, Query(description="one referral's reads only")] = None,
    since: Annotated[UtcInstant | None, Query(description="reads at or after (ISO 8601 with zone)")] = None,
    until: Annotated[UtcInstant | None, Query(description="reads before (ISO 8601 with zone)")] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="most items in one answer")] = 100,
) -> ContactReadPage:
    return await intake.queries.contact_reads(
        referral_id=referral_id, since=since, until=until, cursor=cursor, limit=limit
    )
