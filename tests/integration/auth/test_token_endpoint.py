"""The token endpoint: client credentials in, RFC 9068 access tokens out, RFC 6749 errors otherwise."""

from __future__ import annotations

import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import KeySet

from services.auth.registry import set_enabled
from shared.auth import Scope
from tests.integration.auth.helpers import AUDIENCE, RunningAuth, StartAuth
from tests.support.clock import Clock

pytestmark = pytest.mark.integration

CLINIC_SCOPES = [Scope.REFERRALS_WRITE, Scope.REFERRALS_READ]


async def _jwks(auth: RunningAuth, http: httpx.AsyncClient) -> KeySet:
    return KeySet.import_key_set((await http.get(f"{auth.url}/.well-known/jwks.json")).json())


async def test_client_secret_basic_gets_an_rfc9068_token(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    response = await auth.token_response(http, "clinic-1", secret)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "referrals:write referrals:read"

    token = jwt.decode(body["access_token"], await _jwks(auth, http), algorithms=["RS256"])
    assert token.header["typ"] == "at+jwt"
    assert token.header["alg"] == "RS256"
    assert token.header["kid"]
    claims = token.claims
    assert claims["iss"] == auth.url
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == claims["client_id"] == "clinic-1"
    assert claims["scope"] == "referrals:write referrals:read"
    assert claims["clinic_id"] == "C1"
    assert "site_code" not in claims
    assert claims["jti"]
    assert claims["iat"] == claims["nbf"] == claims["exp"] - 300


async def test_client_secret_post_gets_a_token(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    response = await http.post(
        f"{auth.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "clinic-1", "client_secret": secret},
    )
    assert response.status_code == 200
    assert response.json()["access_token"]


async def test_site_clients_carry_their_site(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("site-1", [Scope.SITE_REFERRALS], audiences=("site_router",), site_code="S1")
    claims = jwt.decode(await auth.token(http, "site-1", secret), await _jwks(auth, http)).claims
    assert claims["site_code"] == "S1"
    assert claims["aud"] == "site_router"
    assert "clinic_id" not in claims


async def test_scope_is_what_was_asked_and_is_allowed(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")

    narrowed = await auth.token_response(http, "clinic-1", secret, scope="referrals:read ops")
    assert narrowed.json()["scope"] == "referrals:read"

    for scope in ("ops", "no-such-scope"):
        refused = await auth.token_response(http, "clinic-1", secret, scope=scope)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_scope"


async def test_audience_is_the_requested_resource_if_allowed(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    secret = await auth.register("notifier", [Scope.CONTACT_READ], audiences=("intake", "site_router"))
    keys = await _jwks(auth, http)

    async def audience(**form: str) -> str:
        return str(jwt.decode(await auth.token(http, "notifier", secret, **form), keys).claims["aud"])

    assert await audience() == "intake"
    assert await audience(resource="site_router") == "site_router"
    assert await audience(audience="site_router") == "site_router"

    refused = await auth.token_response(http, "notifier", secret, resource="eligibility")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_target"


async def test_wrong_unknown_and_disabled_clients_fail_alike(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    other = await auth.register("clinic-2", CLINIC_SCOPES, clinic_id="C2")
    await set_enabled(auth.db, "clinic-2", False)

    answers = [
        await auth.token_response(http, "clinic-1", secret + "x"),
        await auth.token_response(http, "nobody", secret),
        await auth.token_response(http, "clinic-2", other),
    ]
    for response in answers:
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic ")
    assert len({r.text for r in answers}) == 1, "the answer must not tell which case it was"

    by_post = await http.post(
        f"{auth.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "clinic-1", "client_secret": "wrong"},
    )
    assert by_post.json()["error"] == "invalid_client"


async def test_malformed_requests_get_rfc6749_errors(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    wrong_grant = await http.post(
        f"{auth.url}/oauth/token", data={"grant_type": "password"}, auth=("clinic-1", secret)
    )
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"

    as_json = await http.post(
        f"{auth.url}/oauth/token", json={"grant_type": "client_credentials"}, auth=("clinic-1", secret)
    )
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "unsupported_grant_type"


async def test_discovery_documents_point_at_the_keys(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    rfc8414 = (await http.get(f"{auth.url}/.well-known/oauth-authorization-server")).json()
    oidc = (await http.get(f"{auth.url}/.well-known/openid-configuration")).json()
    assert rfc8414 == oidc
    assert rfc8414["issuer"] == auth.url
    assert rfc8414["token_endpoint"] == f"{auth.url}/oauth/token"
    assert rfc8414["grant_types_supported"] == ["client_credentials", "authorization_code"]  # people
    assert set(rfc8414["scopes_supported"]) == {s.value for s in Scope}

    response = await http.get(rfc8414["jwks_uri"])
    assert response.headers["content-type"] == "application/jwk-set+json"
    (key,) = response.json()["keys"]
    assert key["kty"] == "RSA" and key["use"] == "sig" and key["alg"] == "RS256" and key["kid"]
    assert "d" not in key and "p" not in key, "only public parts are published"


def from_address(address: str) -> httpx.AsyncClient:
    """A client whose requests leave from ``address`` (any of 127.0.0.0/8 is this machine)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=10)


async def test_repeated_failures_are_throttled_per_client_and_address(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    bystander = await auth.register("clinic-2", CLINIC_SCOPES, clinic_id="C2")
    async with from_address("127.0.0.2") as guesser:
        for _ in range(auth.settings.throttle_client_failures):
            assert (await auth.token_response(guesser, "clinic-1", "guess")).status_code == 401

        blocked = await auth.token_response(guesser, "clinic-1", secret)  # even the right secret waits
        assert blocked.status_code == 429
        assert blocked.headers["content-type"] == "application/problem+json"
        assert 0 < int(blocked.headers["retry-after"]) <= auth.settings.throttle_window_s
        assert blocked.json()["status"] == 429
        # Below its address's own limit, the guessing address still gets other clients' tokens.
        assert (await auth.token_response(guesser, "clinic-2", bystander)).status_code == 200

    # F1: the client itself, from its own address, is not locked out by someone else's failures.
    assert (await auth.token_response(http, "clinic-1", secret)).status_code == 200


async def test_the_throttle_forgets_after_its_window(start_auth: StartAuth, http: httpx.AsyncClient) -> None:
    clock = Clock()
    async with start_auth(clock=clock) as auth:
        secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
        for _ in range(auth.settings.throttle_client_failures):
            assert (await auth.token_response(http, "clinic-1", "guess")).status_code == 401
        assert (await auth.token_response(http, "clinic-1", secret)).status_code == 429
        clock.advance(auth.settings.throttle_window_s + 1)
        assert (await auth.token_response(http, "clinic-1", secret)).status_code == 200


async def test_every_instance_shares_the_throttle(start_auth: StartAuth, http: httpx.AsyncClient) -> None:
    """The failures are counted in the auth store: a second instance does not give a second budget."""
    async with start_auth() as first, start_auth() as second:
        secret = await first.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
        for instance in [first, second] * first.settings.throttle_client_failures:
            if (await instance.token_response(http, "clinic-1", "guess")).status_code == 429:
                break
        for instance in (first, second):
            assert (await instance.token_response(http, "clinic-1", secret)).status_code == 429


async def test_a_forged_forwarded_for_escapes_no_throttle(
    start_auth: StartAuth, http: httpx.AsyncClient
) -> None:
    """F2: with no trusted proxy configured, X-Forwarded-For is not the address the throttle counts."""
    async with start_auth(throttle_address_failures=3) as auth:
        secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
        for n in range(3):
            response = await http.post(
                f"{auth.url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(f"guess-{n}", "guess"),
                headers={"X-Forwarded-For": f"203.0.113.{n}"},
            )
            assert response.status_code == 401
        assert (await auth.token_response(http, "clinic-1", secret)).status_code == 429
        # Nor can a forged header put someone else's address on the list.
        async with from_address("127.0.0.3") as other:
            assert (await auth.token_response(other, "clinic-1", secret)).status_code == 200


async def test_repeated_failures_are_throttled_per_address(
    start_auth: StartAuth, http: httpx.AsyncClient
) -> None:
    async with start_auth(throttle_address_failures=3) as auth:
        secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
        for guess in ("a1", "a2", "a3"):
            assert (await auth.token_response(http, guess, "guess")).status_code == 401
        assert (await auth.token_response(http, "clinic-1", secret)).status_code == 429


async def test_unsigned_header_is_what_authlib_clients_expect(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    """The header is readable without the key (clients and gateways route on kid and typ)."""
    secret = await auth.register("clinic-1", CLINIC_SCOPES, clinic_id="C1")
    header = jws.extract_compact((await auth.token(http, "clinic-1", secret)).encode()).headers()
    assert set(header) == {"typ", "alg", "kid"}
