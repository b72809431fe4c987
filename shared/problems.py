"""RFC 9457 problem details: the one shape every error of every service takes.

    ProblemError                      any error a route reports on purpose
     ├── Unauthorized (401)           no token, or one that fails validation; carries WWW-Authenticate
     ├── Forbidden (403)              a valid token without the scope the route needs
     ├── NotFound (404)               absent, or another tenant's (existence does not leak)
     ├── Conflict (409)               state forbids it, or a duplicate
     └── Unprocessable (422)          a well-formed request the rules refuse

Request validation errors become 422 with one entry per invalid field (its JSON path and the reason);
a store that is down becomes a 503 with Retry-After; anything else unexpected becomes a 500 problem
without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.retry import is_transient

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.extra = extra

    def response(self, request: Request) -> Response | None:
        """An answer of its own instead of problem+json (a page's redirect to sign-in, an HTML error
        page: ``shared.web``); ``None``: problem+json."""
        return None


class Unauthorized(ProblemError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, error: str = "invalid_token") -> None:
        challenge = f'Bearer error="{error}", error_description="{detail}"' if error else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ProblemError):
    status = 403
    title = "Forbidden"


class NotFound(ProblemError):
    status = 404
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(ProblemError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(ProblemError):
    status = 415
    title = "Unsupported media type"


class Unprocessable(ProblemError):
    status = 422
    title = "Unprocessable content"


class TooManyRequests(ProblemError):
    status = 429
    title = "Too many requests"


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field": "patient.date_of_birth", "reason": ...}``, request part dropped."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in {"body", "query", "path", "header"}:
            loc = loc[1:]
        out.append({"field": ".".join(loc) or "(body)", "reason": err.get("msg", "invalid")})
    return out


def unexpected_problem(exc: BaseException, path: str) -> JSONResponse:
    """The answer to an exception no route meant: 503 for a store that is down, else a logged 500."""
    if is_transient(exc):  # a store restarting or unreachable: the client should retry
        log.warning("store unavailable", extra={"path": path, "error": type(exc).__name__})
        return problem_response(
            503,
            "Service unavailable",
            "a store is unavailable; retry later",
            instance=path,
            headers={"Retry-After": "5"},
        )
    log.error("unhandled error", extra={"path": path}, exc_info=exc)
    return problem_response(500, "Internal server error", "the error was logged", instance=path)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        own = exc.response(request)
        if own is not None:
            return own
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            instance=request.url.path,
            errors=exc.errors,
            headers=exc.headers,
            **exc.extra,
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors(exc.errors())
        return problem_response(
            422,
            "Unprocessable content",
            f"{len(errors)} invalid field(s)",
            instance=request.url.path,
            errors=errors,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            _reason(exc.status_code),
            str(exc.detail),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_problem(exc, request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
