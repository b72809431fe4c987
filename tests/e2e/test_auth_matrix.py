"""Who may call what, for every operation in every service's own OpenAPI document.

The cases come from the documents the running services serve (``/openapi.json``), not from a list kept
here, so a route added later is checked as soon as it is documented. Each operation gets one minimal
valid request, built from its document by schemathesis, and is called with a token that is wrong in
exactly one way: none, expired, for another audience, without the route's scope, or another tenant's.
Only the routes meant to be public are listed by hand (an undeclared one fails the first test).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, Response

from services.auth.bootstrap import create_app as create_auth_app
from services.auth.config import AuthSettings
from services.devstack.stack import SERVICES, Stack
from shared.auth import Scope, bearer_scheme
from shared.problems import PROBLEM_JSON
from shared.settings import OAuthSettings
from tests.support.auth import Issuer
from tests.support.builders import sample_referral
from tests.support.servers import serve_app
from tests.support.system import Client
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

RESOURCE_SERVERS = tuple(SERVICES)
"""Every service checks bearer tokens on some route (auth: its people-accounts API, scope ops)."""
SCHEME = bearer_scheme.scheme_name
CLINIC_SCOPES = frozenset({Scope.REFERRALS_READ, Scope.REFERRALS_WRITE, Scope.ASSESSMENTS_READ})
"""Scopes whose data belongs to the clinic the token acts for."""
SITE_SCOPES = frozenset({Scope.SITE_REFERRALS})
"""Scopes whose data belongs to the site the token acts for."""

PUBLIC = frozenset(
    {(s, "GET", "/healthz") for s in SERVICES}
    | {(s, "GET", "/readyz") for s in SERVICES}
    | {
        ("auth", "POST", "/oauth/token"),
        ("auth", "GET", "/.well-known/jwks.json"),
        ("auth", "GET", "/.well-known/oauth-authorization-server"),
        ("auth", "GET", "/.well-known/openid-configuration"),
        ("auth", "GET", "/.well-known/smart-configuration"),
        ("eligibility", "GET", "/v1/rulesets/current"),
        ("site_router", "GET", "/v1/sites/nearby"),
        ("intake", "GET", "/fhir/r4/metadata"),
    }
)
"""The routes meant to answer without a bearer token; every other documented route must be secured."""
UNDOCUMENTED_PUBLIC = frozenset(
    {(s, "GET", "/metrics") for s in SERVICES} | {("site_router", "GET", "/sites/finder")}
)
"""Public routes left out of the documents (not API for clients), checked the same way."""
TOKEN_ENDPOINT = ("auth", "POST", "/oauth/token")
"""Authenticated by the client's own secret (RFC 6749), never by a bearer token."""

ANY_CLIENT = "matrix-any-tenantless"
"""Every scope, every resource server, no tenant: wrong only in what a check changes."""
CLINIC_B = "matrix-clinic-b"


@dataclass(frozen=True)
class Operation:
    service: str
    method: str
    path: str
    alternatives: tuple[frozenset[str], ...]
    """The OpenAPI security requirements: any one of these scope sets suffices; none means public."""
    api: Any
    """schemathesis's ``APIOperation``, which builds requests from the document."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.service, self.method, self.path)

    @property
    def label(self) -> str:
        return f"{self.service} {self.method} {self.path}"

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset().union(*self.alternatives)

    @property
    def tenants(self) -> set[str]:
        """Whose data the route serves: a clinic's, a site's, or (empty) nobody's in particular."""
        kinds = set()
        if any(alt & CLINIC_SCOPES for alt in self.alternatives):
            kinds.add("clinic")
        if any(alt & SITE_SCOPES for alt in self.alternatives):
            kinds.add("site")
        return kinds


@dataclass
class Expiring:
    tokens: dict[str, str]
    """A token per resource server, otherwise valid, that expires ``expires_at``."""
    expires_at: float


@pytest.fixture(scope="module")
async def operations(system: Stack) -> list[Operation]:
    """Every operation the five services document, read from the running processes."""
    found = []
    async with httpx.AsyncClient(timeout=15) as http:
        for service in SERVICES:
            response = await http.get(f"{system.config.url(service)}/openapi.json")
            response.raise_for_status()
            document = response.json()
            schema = schemathesis.openapi.from_dict(document)
            for result in schema.get_all_operations():
                api = result.ok()
                raw = document["paths"][api.path][api.method.lower()]
                alternatives = tuple(frozenset(req.get(SCHEME, ())) for req in raw.get("security", ()))
                found.append(Operation(service, api.method.upper(), api.path, alternatives, api))
    return found


@pytest.fixture(scope="module", autouse=True)
async def expiring(system: Stack, registry: Issuer, operations: list[Operation]) -> Expiring:
    """Tokens living 1 s from a second auth app on the system's own store, keys and issuer name.

    Minted before the other checks, so that the resource servers' clock leeway (30 s) has run out by
    the last test. Each is first shown to pass validation while fresh, so the 401 later is the expiry.
    """
    await _register_any(registry)
    env = system.service_env("auth")
    settings = AuthSettings(
        database_url=env["AUTH_DATABASE_URL"],
        issuer=env["AUTH_ISSUER"],
        key_encryption_secret=env["AUTH_KEY_ENCRYPTION_SECRET"],
        token_lifetime_s=1,
        environment="test",
    )
    async with serve_app(create_auth_app(settings)) as url, httpx.AsyncClient(timeout=15) as http:
        tokens = {
            s: await registry.fetch_token(http, ANY_CLIENT, s, issuer_url=url) for s in RESOURCE_SERVERS
        }
    for service, token in tokens.items():
        op = next(op for op in operations if op.service == service and op.alternatives)
        case = await asyncio.to_thread(minimal_case, op)
        fresh = await call(case, system.config.url(service), token)
        assert fresh.status_code != 401, f"{op.label}: a fresh token is refused: {fresh.text}"
    return Expiring(tokens, max(_claims(t)["exp"] for t in tokens.values()))


@pytest.fixture(scope="module")
async def referral(system: Stack, clinic: Client) -> AsyncIterator[tuple[str, str]]:
    """A referral of the demo clinic, routed and notified: its id and its site's code."""
    async with httpx.AsyncClient(timeout=15) as http:
        base = f"{system.config.url('intake')}/v1/referrals"
        response = await http.post(base, json=sample_referral(), headers=await clinic.headers(http, "intake"))
        assert response.status_code == 202, response.text
        rid = str(response.json()["id"])

        async def notified() -> dict[str, Any] | None:
            current = await http.get(f"{base}/{rid}", headers=await clinic.headers(http, "intake"))
            body = current.json()
            return body if body["status"] == "notified" else None

        routed = await eventually(notified, within=60, what="the matrix's referral to be notified")
        yield rid, routed["site"]["code"]
        await http.post(f"{base}/{rid}/withdraw", json={}, headers=await clinic.headers(http, "intake"))


async def test_every_operation_is_secured_or_a_listed_public_route(operations: list[Operation]) -> None:
    problems = []
    documented = {op.key for op in operations}
    for op in operations:
        if not op.alternatives and op.key not in PUBLIC:
            problems.append(f"{op.label}: declares no security requirement and is not a public route")
        if any(not alt for alt in op.alternatives):
            problems.append(f"{op.label}: declares a security requirement without a scope")
    problems += [f"{' '.join(key)}: listed as public but not documented" for key in PUBLIC - documented]
    assert not problems, "\n".join(problems)
    print(f"\n{len(operations)} operations, public: {sorted(' '.join(k) for k in PUBLIC)}")


async def test_public_routes_answer_without_a_token(
    system: Stack, operations: list[Operation], registry: Issuer
) -> None:
    problems = []
    public = [op for op in operations if op.key in PUBLIC and op.key != TOKEN_ENDPOINT]
    cases = await asyncio.to_thread(lambda: [minimal_case(op) for op in public])
    for op, case in zip(public, cases, strict=True):
        response = await call(case, system.config.url(op.service), None)
        if response.status_code in (401, 403) or response.status_code >= 500:
            problems.append(f"{op.label}: {response.status_code} without a token")
    async with httpx.AsyncClient(timeout=15) as http:
        for service, method, path in sorted(UNDOCUMENTED_PUBLIC):
            response = await http.request(method, f"{system.config.url(service)}{path}")
            if response.status_code != 200:
                problems.append(f"{service} {method} {path}: {response.status_code} without a token")
        # The token endpoint authenticates the client's secret (RFC 6749), not a bearer token.
        await _register_any(registry)
        assert await registry.fetch_token(http, ANY_CLIENT, "intake")
    assert not problems, "\n".join(problems)


async def test_without_a_token_every_secured_operation_is_401_with_a_challenge(
    system: Stack, operations: list[Operation]
) -> None:
    await expect_everywhere(system, operations, lambda op: None, 401)


async def test_a_token_for_another_audience_is_401(
    system: Stack, operations: list[Operation], registry: Issuer
) -> None:
    await _register_any(registry)
    async with httpx.AsyncClient(timeout=15) as http:
        elsewhere = {
            s: await registry.fetch_token(http, ANY_CLIENT, RESOURCE_SERVERS[(i + 1) % len(RESOURCE_SERVERS)])
            for i, s in enumerate(RESOURCE_SERVERS)
        }
    await expect_everywhere(system, operations, lambda op: elsewhere[op.service], 401)


async def test_a_token_without_the_operations_scope_is_403(
    system: Stack, operations: list[Operation], registry: Issuer
) -> None:
    """The token has every scope but those the operation accepts, for the right audience."""
    tokens: dict[tuple[str, frozenset[str]], str] = {}
    async with httpx.AsyncClient(timeout=15) as http:
        for op in operations:
            others = frozenset(s.value for s in Scope) - op.scopes
            if op.alternatives and (op.service, others) not in tokens:
                client_id = f"matrix-without-{'-'.join(sorted(op.scopes)).replace(':', '.')}"
                await registry.register(client_id, sorted(others), audiences=RESOURCE_SERVERS)
                tokens[op.service, others] = await registry.fetch_token(http, client_id, op.service)
    await expect_everywhere(
        system,
        operations,
        lambda op: tokens[op.service, frozenset(s.value for s in Scope) - op.scopes],
        403,
    )


async def test_another_tenants_referral_is_not_found(
    system: Stack,
    operations: list[Operation],
    registry: Issuer,
    referral: tuple[str, str],
    clinic: Client,
    coordinators: dict[str, Client],
) -> None:
    """A clinic's referral read or changed by another clinic, a site's by another site's coordinator:
    404, as if it did not exist (GETs are checked to answer the owner, so the 404 is not for all).
    Listings are checked not to show it."""
    rid, site = referral
    stranger_site = next(code for code in sorted(coordinators) if code != site)
    await registry.register(
        CLINIC_B, sorted(CLINIC_SCOPES), audiences=["intake", "eligibility"], clinic_id=CLINIC_B
    )
    problems, checked, untenanted = [], [], []
    async with httpx.AsyncClient(timeout=15) as http:

        async def token(kind: str, who: str, service: str) -> str:
            if kind == "clinic" and who == "stranger":
                return await registry.fetch_token(http, CLINIC_B, service)
            owner = clinic if kind == "clinic" else coordinators[site]
            client = coordinators[stranger_site] if who == "stranger" else owner
            return client_token(await client.headers(http, service))

        for op in operations:
            if not op.alternatives:
                continue
            if not op.tenants:
                untenanted.append(op.label)
                continue
            by_id = "{referral_id}" in op.path
            if not by_id and (op.method != "GET" or "{" in op.path):
                continue
            case = await asyncio.to_thread(minimal_case, op, {"referral_id": rid} if by_id else None)
            base = system.config.url(op.service)
            for kind in sorted(op.tenants):
                checked.append(f"{op.label} ({kind})")
                response = await call(case, base, await token(kind, "stranger", op.service))
                if by_id and response.status_code != 404:
                    problems.append(f"{op.label}: another {kind}'s token got {response.status_code}")
                elif by_id and _media_type(response) != _error_media_type(op.path):
                    problems.append(f"{op.label}: the 404 is {_media_type(response)}")
                elif not by_id and (response.status_code != 200 or rid in response.text):
                    problems.append(
                        f"{op.label}: another {kind}'s listing: {response.status_code}, or shows it"
                    )
                if by_id and op.method == "GET":
                    owner = await token(kind, "owner", op.service)
                    if not await answers_200(case, base, owner):
                        problems.append(f"{op.label}: the owning {kind} is not answered 200 either")
    assert checked, "no operation is about a tenant's referral"
    assert not problems, "\n".join(problems)
    print(f"\ntenant-checked: {checked}\nnot tenant-scoped (service tokens): {untenanted}")


async def test_an_expired_token_is_401(
    system: Stack, operations: list[Operation], expiring: Expiring
) -> None:
    """Last in the module: waits out the token's life and the resource servers' leeway."""
    leeway = max(
        int(system.service_env(s).get("OAUTH_LEEWAY_S", OAuthSettings.model_fields["leeway_s"].default))
        for s in RESOURCE_SERVERS
    )
    # The services are separate processes on the real clock: waiting out the token's life is the test.
    await asyncio.sleep(max(0.0, expiring.expires_at + leeway + 1 - time.time()))
    await expect_everywhere(system, operations, lambda op: expiring.tokens[op.service], 401)


async def expect_everywhere(
    system: Stack,
    operations: list[Operation],
    token_for: Callable[[Operation], str | None],
    status: int,
) -> None:
    """Call every secured operation with its token; report every answer that is not ``status`` as
    problem+json with the RFC 6750 challenge (a 401 names the scheme, a 403 ``insufficient_scope``)."""
    secured = [op for op in operations if op.alternatives]
    cases = await asyncio.to_thread(lambda: [minimal_case(op) for op in secured])
    problems = []
    for op, case in zip(secured, cases, strict=True):
        response = await call(case, system.config.url(op.service), token_for(op))
        got = response.status_code
        if got != status:
            problems.append(f"{op.label}: {got}, not {status}: {response.text[:200]}")
        elif _media_type(response) != _error_media_type(op.path):
            problems.append(
                f"{op.label}: {status} as {_media_type(response)}, not {_error_media_type(op.path)}"
            )
        elif not _header(response, "www-authenticate").startswith("Bearer"):
            problems.append(f"{op.label}: {status} without a WWW-Authenticate: Bearer challenge")
        elif status == 403 and "insufficient_scope" not in _header(response, "www-authenticate"):
            problems.append(f"{op.label}: 403 without error=insufficient_scope in its challenge")
    assert secured and not problems, f"{len(problems)} of {len(secured)} operations:\n" + "\n".join(problems)


def minimal_case(op: Operation, path_parameters: dict[str, Any] | None = None) -> Case:
    """The simplest request the document allows (the first example Hypothesis generates), untokened."""
    drawn: list[Case] = []
    wanted = {k: v for k, v in (path_parameters or {}).items() if "{" + k + "}" in op.path} or None

    @settings(
        max_examples=1,
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.api.as_strategy(path_parameters=wanted))
    def draw(case: Case) -> None:
        drawn.append(case)

    draw()
    case = drawn[0]
    case.headers.pop("Authorization", None)  # generated as an empty bearer token
    if "{referral_id}" in op.path and not wanted:
        case.path_parameters["referral_id"] = str(uuid.uuid4())
    return case


async def answers_200(case: Case, base_url: str, token: str, within: float = 20) -> bool:
    """Whether the call answers 200 within ``within`` s (a site reads an assessment only once
    eligibility has consumed the routing)."""

    async def ok() -> bool:
        return (await call(case, base_url, token)).status_code == 200

    try:
        await eventually(ok, within=within, interval=0.25, what="200")
    except AssertionError:
        return False
    return True


async def call(case: Case, base_url: str, token: str | None) -> Response:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return await asyncio.to_thread(case.call, base_url=base_url, headers=headers)


async def _register_any(registry: Issuer) -> None:
    await registry.register(ANY_CLIENT, [s.value for s in Scope], audiences=RESOURCE_SERVERS)


def _claims(token: str) -> dict[str, Any]:
    """The payload, unverified: only to learn when the token expires."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def client_token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _header(response: Response, name: str) -> str:
    values = response.headers.get(name) or [""]
    return str(values[0])


def _error_media_type(path: str) -> str:
    """Errors are RFC 9457 problems, except on the FHIR routes: OperationOutcomes there."""
    return "application/fhir+json" if path.startswith("/fhir/") else PROBLEM_JSON


def _media_type(response: Response) -> str:
    return _header(response, "content-type").split(";")[0].strip()
