"""Errors on the FHIR routes as ``OperationOutcome`` (application/fhir+json), never problem+json.

``FhirRoute`` (the ``route_class`` of the FHIR router) turns what the JSON routes report as RFC 9457
problems (``shared.problems`` errors, request validation, Starlette's HTTP errors: 401, 403, 404, 409,
413, 415, 422) into an OperationOutcome with the same status and headers. An issue names the offending
element by FHIRPath (``expression``) or, for an HTTP header, by ``location`` ``http.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from services.intake.fhir.mapping import Issue
from services.intake.fhir.resources import FHIR_JSON
from shared.problems import ProblemError

ISSUE_CODES = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}
"""OperationOutcome.issue.code (the IssueType value set) per HTTP status."""
HEADERS = frozenset({"idempotency-key", "traceparent", "authorization", "content-type"})


def outcome(
    status: int, diagnostics: str, issues: Sequence[Issue] = (), headers: dict[str, str] | None = None
) -> JSONResponse:
    """An OperationOutcome: one issue per offending element, or one for the whole request."""
    code = ISSUE_CODES.get(status, "processing" if status < 500 else "exception")
    listed = [_issue(code, i.reason, i.expression) for i in issues] or [_issue(code, diagnostics, None)]
    body = {"resourceType": "OperationOutcome", "issue": listed}
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def _issue(code: str, diagnostics: str, where: str | None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if where is not None and where.startswith("http."):
        issue["location"] = [where]
    elif where is not None:
        issue["expression"] = [where]
    return issue


def problem_issues(exc: ProblemError, expression: Callable[[str], str]) -> list[Issue]:
    """A problem's field errors as issues; ``expression`` turns a referral field into its FHIR path."""
    issues = []
    for error in exc.errors or []:
        name = error.get("field", "")
        where = f"http.{name}" if name.lower() in HEADERS else expression(name)
        issues.append(Issue(where, error.get("reason", "invalid")))
    return issues


def _validation_issues(exc: RequestValidationError) -> list[Issue]:
    issues = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where = f"http.{loc[1]}" if len(loc) > 1 and loc[0] == "header" else "Bundle"
        issues.append(Issue(where, str(error.get("msg", "invalid"))))
    return issues


def from_problem(exc: ProblemError, expression: Callable[[str], str] = lambda _: "Bundle") -> JSONResponse:
    detail = exc.detail
    if "existing_id" in exc.extra:
        detail += (
            f" (existing referral {exc.extra['existing_id']}, its Task: Task/{exc.extra['existing_id']})"
        )
    return outcome(exc.status, detail, problem_issues(exc, expression), exc.headers)


class FhirRoute(APIRoute):
    """A route whose every error, its dependencies' (the token checks) included, is an OperationOutcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ProblemError as exc:
                return from_problem(exc)
            except RequestValidationError as exc:
                issues = _validation_issues(exc)
                return outcome(422, f"{len(issues)} invalid element(s)", issues)
            except HTTPException as exc:
                return outcome(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

        return route
