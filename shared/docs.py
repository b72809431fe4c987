"""Every service's API documentation, served by the service itself: it works where the clinic is.

FastAPI's default ``/docs`` loads Swagger UI from a public CDN and starts it with an inline script, so on a
hospital network without internet, or under a strict Content-Security-Policy, it is a blank page. Here
Swagger UI's own files come from the ``swagger-ui-bundle-v2`` package (Swagger UI 5, which reads the
OpenAPI 3.1 FastAPI writes) and the page and the script that starts Swagger UI are files of ours
(``shared/static/``), so the page loads nothing from another origin and runs under ``default-src 'self'``.
ReDoc is off: it too would come from a CDN, and one page is enough.

The OpenAPI document gets what a clinic's integration engineer needs beyond the routes: how to sign in
(token endpoint, audience, scopes, client authentication), the error shape with an example, and
``application/problem+json`` on every error response (FastAPI's default 422 shape is not what we send).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from swagger_ui_bundle import swagger_ui_path

from shared.problems import PROBLEM_JSON
from shared.settings import ServiceSettings

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/static"
OWN_STATIC = Path(__file__).with_name("static")

_FILES: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (Path(str(swagger_ui_path)), "text/javascript; charset=utf-8"),
    "swagger-ui.css": (Path(str(swagger_ui_path)), "text/css; charset=utf-8"),
    "favicon-32x32.png": (Path(str(swagger_ui_path)), "image/png"),
    "docs-init.js": (OWN_STATIC, "text/javascript; charset=utf-8"),
}
"""What ``/docs/static/<name>`` serves: a fixed list, so no path from a request reaches the file system."""

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The docs' own policy: ``default-src 'self'``, plus the SVG icons Swagger UI's stylesheet inlines."""

_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate by ETag: a deployment never mixes old and new files
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _asset(body: bytes, media_type: str) -> _Asset:
    return _Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


@cache
def _file(name: str) -> _Asset:
    """Read once per process; the files change only with a deployment."""
    directory, media_type = _FILES[name]
    return _asset((directory / name).read_bytes(), media_type)


def _respond(request: Request, asset: _Asset) -> Response:
    headers = {**_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def mount_docs(app: FastAPI, *, service: str, settings: ServiceSettings) -> None:
    """Serve ``/docs`` and its files from this process, and describe signing in and errors in the
    OpenAPI document. The app must be made with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    page = _asset(
        Template((OWN_STATIC / "docs.html").read_text())
        .substitute(title=escape(app.title), assets=ASSETS_PATH, openapi_url=escape(openapi_url))
        .encode(),
        "text/html; charset=utf-8",
    )

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs_page(request: Request) -> Response:
        return _respond(request, page)

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str, request: Request) -> Response:
        if name not in _FILES:
            return Response(status_code=404, headers={"X-Content-Type-Options": "nosniff"})
        return _respond(request, _file(name))

    generate: Callable[[], dict[str, Any]] = app.openapi
    token_url = settings.oauth.resolved_token_url
    audience = settings.audience or service

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            scopes = _route_scopes(app)
            app.openapi_schema = describe(generate(), token_url=token_url, audience=audience, scopes=scopes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- the OpenAPI document -------------------------------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details: every error of every trialroute API has this shape.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "always about:blank: the status says what went wrong"},
        "title": {"type": "string", "description": "the status's name, e.g. Unprocessable content"},
        "status": {"type": "integer", "description": "the HTTP status code"},
        "detail": {"type": "string", "description": "what went wrong with this request, in words"},
        "instance": {"type": "string", "description": "the request's path"},
        "errors": {
            "type": "array",
            "description": "422: every invalid field, each with its JSON path and the reason",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

_STATUS_EXAMPLES: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("Bad request", "the request is malformed", {}),
    401: ("Unauthorized", "a bearer token is required", {}),
    403: ("Forbidden", "the token lacks the scope this operation needs", {}),
    404: ("Not found", "no such resource", {}),
    409: ("Conflict", "the resource's state forbids this change", {}),
    413: ("Payload too large", "the body exceeds 65536 bytes", {}),
    415: ("Unsupported media type", "send application/json, not text/plain", {}),
    422: (
        "Unprocessable content",
        "1 invalid field(s)",
        {"errors": [{"field": "reason", "reason": "Field required"}]},
    ),
    429: ("Too many requests", "too many requests from this client; retry after the delay", {}),
    503: ("Service unavailable", "a dependency is not reachable; retry later", {}),
}


def problem_example(status: int, instance: str = "/v1/...") -> dict[str, Any]:
    title, detail, extra = _STATUS_EXAMPLES.get(status, ("Error", "the request failed", {}))
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance}
    return {**body, **copy.deepcopy(extra)}


def sign_in_section(token_url: str, audience: str, scopes: list[str]) -> str:
    wanted = " ".join(scopes) or "SCOPE"
    listed = ", ".join(f"`{s}`" for s in scopes) or "none"
    return f"""

## Signing in

The operations marked with a lock take an OAuth 2.0 access token (an RS256 JWT, RFC 9068) in the header
`Authorization: Bearer <access_token>`. Get one from the token endpoint with the **client credentials**
grant (trial staff register your client and tell you its id and the scopes it may have):

- token endpoint: `{token_url}` (its metadata: the issuer's `/.well-known/oauth-authorization-server`)
- audience: `{audience}` (send it as `resource` or `audience`)
- scopes this API checks: {listed} (each operation's 403 names the one it needs)

```
curl -u "$CLIENT_ID:$CLIENT_SECRET" {token_url} \\
  -d grant_type=client_credentials -d audience={audience} -d "scope={wanted}"
```

A client registered with a key signs in without a shared secret (SMART Backend Services,
`private_key_jwt`, RFC 7523) where the issuer's metadata lists it in
`token_endpoint_auth_methods_supported`: instead of the secret, send
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`, a JWT
signed with your key (RS384 or ES384) whose `iss` and `sub` are your client id, `aud` the token endpoint's
URL, `exp` at most 5 minutes ahead and `jti` never used before. Tokens last minutes: ask for a new one
when `expires_in` runs out, or on a 401. On this page, **Authorize** takes the `access_token`."""


def errors_section() -> str:
    example = json.dumps(problem_example(422, "/v1/referrals"), indent=2)
    return f"""

## Errors

Every error is an RFC 9457 problem, `application/problem+json`: `401` without a valid token, `403`
without the scope (or for what the token may not see), `404` for what does not exist or is another
clinic's, `409` for a change the state forbids, `413`/`415` for a body too large or not JSON, `422` for
invalid input, listing every invalid field with its JSON path and the reason, `429` with `Retry-After`,
`503` when a dependency is down (retry later). Nothing is half-stored when a request fails.

```json
{example}
```"""


def _route_scopes(app: FastAPI) -> dict[tuple[str, str], list[str]]:
    """The scopes each operation's ``shared.auth.require`` checks, by (path, method). A bearer scheme's
    security requirement cannot list scopes in OpenAPI, so they are read from the routes' dependencies."""
    found: dict[tuple[str, str], list[str]] = {}
    routes: list[Any] = list(app.routes)
    while routes:
        route = routes.pop()
        if not isinstance(route, APIRoute):
            # An included router (FastAPI >= 0.16x keeps it whole); its routes carry their full paths.
            routes += getattr(getattr(route, "original_router", None), "routes", [])
            continue
        scopes: list[str] = []
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            scopes += [s for s in getattr(dependant, "own_oauth_scopes", None) or [] if s not in scopes]
            pending += dependant.dependencies
        for method in route.methods or ():
            found[(route.path_format, method.lower())] = scopes
    return found


def describe(
    schema: dict[str, Any],
    *,
    token_url: str,
    audience: str,
    scopes: dict[tuple[str, str], list[str]] | None = None,
) -> dict[str, Any]:
    """Add the sign-in steps and the error shape to the document, and a problem+json body (with an
    example) to every error response that has none or FastAPI's default validation error."""
    checked: set[str] = set()
    secured = False
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            needed = (scopes or {}).get((path, method), [])
            checked.update(needed)
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                secured = True
                responses.setdefault("401", {"description": "no valid bearer token"})
                lacking = f"the token lacks the scope {' '.join(needed)}" if needed else "not allowed"
                responses.setdefault("403", {"description": f"{lacking}, or acts for no one allowed here"})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400 and _default_content(response):
                    response["content"] = {
                        PROBLEM_JSON: {
                            "schema": {"$ref": "#/components/schemas/Problem"},
                            "example": problem_example(int(code), path),
                        }
                    }
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", PROBLEM_SCHEMA)
    if "#/components/schemas/HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)  # replaced everywhere: not a shape anyone gets
        components.pop("ValidationError", None)
    description = schema.get("info", {}).get("description", "")
    if secured:
        description += sign_in_section(token_url, audience, sorted(checked))
    schema.setdefault("info", {})["description"] = description + errors_section()
    return schema


def _default_content(response: dict[str, Any]) -> bool:
    """No body documented, or FastAPI's generated validation error (which is not what we send)."""
    content = response.get("content")
    if not content:
        return True
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    return len(content) == 1 and ref.endswith("/HTTPValidationError")
