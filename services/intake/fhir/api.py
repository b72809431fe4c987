"""Intake's FHIR R4 routes: a referral Bundle in, a Task per referral, the CapabilityStatement.

Same scopes, tenancy (the clinic is the token's), commands, queries and Idempotency-Key as the JSON
routes (``services.intake.api``); every error is an OperationOutcome (``outcome.FhirRoute``).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.api import IDEMPOTENCY_RULES, IdempotencyKey, Reader, TraceParent, Writer, valid_trace
from services.intake.commands import Transaction, Work
from services.intake.deps import IntakeStateDep
from services.intake.domain import request_fingerprint
from services.intake.fhir.mapping import Unmappable, map_bundle
from services.intake.fhir.outcome import FhirRoute, from_problem, outcome
from services.intake.fhir.resources import FHIR_JSON, capability_statement, task
from services.intake.idempotency import REPLAYED_HEADER, Idempotency, Outcome
from services.intake.schemas import EXAMPLE_ID, ReferralCreate
from shared.auth import Principal
from shared.observability import referral_context
from shared.problems import NotFound, ProblemError, Unprocessable, UnsupportedMediaType

log = logging.getLogger(__name__)

BASE = "/fhir/r4"
MEDIA_TYPES = frozenset({FHIR_JSON, "application/json"})
"""FHIR's JSON media type; plain JSON too, as the FHIR specification asks servers to accept."""

router = APIRouter(prefix=BASE, tags=["fhir"], route_class=FhirRoute)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    schema = {"type": "object", "description": "a FHIR R4 OperationOutcome"}
    return {
        code: {"description": "an OperationOutcome", "content": {FHIR_JSON: {"schema": schema}}}
        for code in codes
    }


def _fhir(
    body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers=headers, media_type=FHIR_JSON)


def _idempotent(
    idempotency: Idempotency, principal: Principal, key: str | None, referral: ReferralCreate
) -> Transaction[Outcome]:
    """The submit command's transaction under the Idempotency-Key, answering the referral's Task (201,
    its Location). The fingerprint is the referral the Bundle maps to: the same referral re-sent is a
    replay, whatever the Bundle's ids or order."""
    fingerprint = request_fingerprint("POST", f"{BASE}/Bundle", referral.model_dump(mode="json"))

    async def transaction(work: Work) -> Outcome:
        async def operation(session: AsyncSession) -> Outcome:
            receipt = await work(session)
            body = task(str(receipt.id), receipt.clinic_reference, receipt.status)
            return Outcome(201, body, {"Location": f"{BASE}/Task/{receipt.id}"})

        return await idempotency.run(principal.client_id, key, fingerprint, operation)

    return transaction


@router.post(
    "/Bundle",
    status_code=201,
    response_model=None,
    summary="Submit a referral as a FHIR R4 Bundle",
    description="Scope `referrals:write` (clinic token; the clinic is the token's `clinic_id`). A Bundle "
    "of type `collection` holding the referral's ServiceRequest, Patient, Consent, PractitionerRole "
    "(+ Practitioner), Condition and Observations, as `application/fhir+json`; the mapping to the JSON "
    "referral is the table of docs/fhir.md. Answers 201 with the referral's Task and its `Location` "
    "(`/fhir/r4/Task/{id}`, the same id as `/v1/referrals/{id}`). What cannot be mapped is a 422 "
    "OperationOutcome naming each element by FHIRPath (`issue.expression`). Screening, duplicates (409) "
    "and limits (64 KiB) are the JSON API's.\n\n" + IDEMPOTENCY_RULES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FHIR_JSON: {"schema": {"type": "object", "description": "a FHIR R4 Bundle"}}},
        }
    },
    responses={
        201: {"description": "the referral's Task", "content": {FHIR_JSON: {"schema": {"type": "object"}}}},
        **_errors(401, 403, 409, 413, 415, 422),
    },
)
async def submit_bundle(
    request: Request,
    principal: Writer,
    intake: IntakeStateDep,
    key: IdempotencyKey = None,
    trace: TraceParent = None,
) -> JSONResponse:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(f"send {FHIR_JSON}, not {media_type or 'no media type'}")
    try:
        raw = json.loads(await request.body())
    except ValueError:
        raise Unprocessable("the body is not JSON") from None
    try:
        mapped = map_bundle(raw)
    except Unmappable as exc:
        return outcome(422, f"{len(exc.issues)} element(s) cannot be mapped to a referral", exc.issues)
    trace = valid_trace(trace)
    transaction = _idempotent(intake.idempotency, principal, key, mapped.referral)
    try:
        answer = await intake.commands.submit(principal, mapped.referral, transaction, trace)
    except ProblemError as exc:  # e.g. another study: said at the element the study came from
        return from_problem(exc, mapped.expression)
    with referral_context(answer.body["id"], trace):
        log.info("referral received", extra={"replayed": answer.replayed, "format": "fhir"})
    headers = dict(answer.headers)
    if answer.replayed:
        headers[REPLAYED_HEADER] = "true"
    return _fhir(answer.body, answer.status_code, headers)


@router.get(
    "/Task/{referral_id}",
    response_model=None,
    summary="Read a referral's Task",
    description="Scope `referrals:read`; the clinic's own referrals only (another clinic's is a 404). "
    "`status` and `businessStatus` (intake's state, code system "
    "`https://trialroute.example.org/fhir/CodeSystem/referral-status`) follow the referral; while an "
    "information request is open, `businessStatus` is `information-requested` and `input` lists each "
    "field asked for (criterion, JSON path, FHIR element; docs/fhir.md).",
    responses={
        200: {"description": "the Task", "content": {FHIR_JSON: {"schema": {"type": "object"}}}},
        **_errors(401, 403, 404, 422),
    },
)
async def read_task(
    referral_id: Annotated[str, Path(description="the referral's id", examples=[EXAMPLE_ID])],
    principal: Reader,
    intake: IntakeStateDep,
) -> JSONResponse:
    try:
        rid = uuid.UUID(referral_id)
    except ValueError:
        raise NotFound("no such Task for this clinic") from None
    view = await intake.queries.referral(principal, rid)
    reason = next((item.reason for item in reversed(view.timeline) if item.status is view.status), None)
    body = task(
        str(view.id),
        view.clinic_reference,
        view.status,
        decision=view.decision.decision if view.decision else None,
        reason=reason,
        authored=view.created_at,
        modified=view.updated_at,
        requests=view.information_requests,
    )
    return _fhir(body)


@router.get(
    "/metadata",
    response_model=None,
    summary="The CapabilityStatement (no token needed)",
    responses={200: {"description": "what this FHIR endpoint does", "content": {FHIR_JSON: {}}}},
)
async def metadata(request: Request) -> JSONResponse:
    return _fhir(capability_statement(str(request.base_url).rstrip("/") + BASE))


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unknown(rest: str) -> JSONResponse:
    """Any other interaction: a 404 OperationOutcome, not the service's problem+json."""
    raise NotFound(f"this endpoint does not support {rest.split('/')[0] or 'that'}")
