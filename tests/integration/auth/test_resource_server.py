"""A resource server built with shared.app and shared.auth, trusting the running auth service."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import pytest
from joserfc.jwk import RSAKey

from shared.auth import Scope, TokenValidator
from shared.problems import Unauthorized
from shared.settings import OAuthSettings
from tests.integration.auth.helpers import (
    AUDIENCE,
    RunningAuth,
    ServeResource,
    b64url,
    claims_for,
    forge,
    resource_app,
)
from tests.support.metrics import Counts
from tests.support.servers import loopback_socket, url_of

pytestmark = pytest.mark.integration

READER = [Scope.REFERRALS_READ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: httpx.Response, reason: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert reason in response.json()["detail"]


async def test_a_valid_token_reaches_the_route(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("clinic-1", READER, clinic_id="C1")
    token = await auth.token(http, "clinic-1", secret)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        response = await http.get(f"{api}/v1/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "client_id": "clinic-1",
        "subject": "clinic-1",
        "scopes": ["referrals:read"],
        "clinic_id": "C1",
        "site_code": None,
    }


async def test_no_token_is_a_401_challenge(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    failures = Counts("trialroute_token_failures_total", service=AUDIENCE)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        missing = await http.get(f"{api}/v1/whoami")
        garbage = await http.get(f"{api}/v1/whoami", headers=bearer("not-a-jwt"))
    assert failures.moved(reason="missing") == 1 and failures.moved(reason="malformed") == 1
    assert_unauthorized(missing, "required")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_unauthorized(garbage, "well-formed")
    assert 'error="invalid_token"' in garbage.headers["www-authenticate"]


async def test_a_missing_scope_is_a_403(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("clinic-1", READER, clinic_id="C1")
    token = await auth.token(http, "clinic-1", secret)
    failures = Counts("trialroute_token_failures_total", service=AUDIENCE)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        response = await http.post(f"{api}/v1/referrals", headers=bearer(token))
    assert response.status_code == 403
    assert failures.moved(reason="scope") == 1
    assert response.headers["content-type"] == "application/problem+json"
    assert "referrals:write" in response.json()["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_tenants_see_only_their_own(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("clinic-1", [Scope.REFERRALS_READ, Scope.SITE_REFERRALS], clinic_id="C1")
    token = await auth.token(http, "clinic-1", secret)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        own = await http.get(f"{api}/v1/referrals/R1", headers=bearer(token))
        others = await http.get(f"{api}/v1/referrals/R2", headers=bearer(token))
        not_a_site = await http.get(f"{api}/v1/site/queue", headers=bearer(token))
    assert own.status_code == 200
    assert others.status_code == 404
    assert not_a_site.status_code == 403
    assert "site" in not_a_site.json()["detail"]


async def test_a_token_for_another_audience_is_refused(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("clinic-1", READER, audiences=("intake", "eligibility"), clinic_id="C1")
    token = await auth.token(http, "clinic-1", secret, resource="eligibility")
    failures = Counts("trialroute_token_failures_total", service=AUDIENCE)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        assert_unauthorized(await http.get(f"{api}/v1/whoami", headers=bearer(token)), "aud")
    assert failures.moved(reason="claim_aud") == 1


async def test_an_expired_token_is_refused(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    secret = await auth.register("clinic-1", READER, clinic_id="C1")
    token = await auth.token(http, "clinic-1", secret)
    oauth = auth.oauth()
    lifetime = auth.settings.token_lifetime_s
    just_valid = TokenValidator(
        oauth, AUDIENCE, http, clock=lambda: time.time() + lifetime + oauth.leeway_s - 5
    )
    expired = TokenValidator(oauth, AUDIENCE, http, clock=lambda: time.time() + lifetime + oauth.leeway_s + 1)
    failures = Counts("trialroute_token_failures_total", service=AUDIENCE)
    assert (await just_valid.validate(token)).client_id == "clinic-1"
    with pytest.raises(Unauthorized, match="expired"):
        await expired.validate(token)
    assert failures.moved(reason="expired") == 1 and failures.moved() == 1


async def test_a_token_not_yet_valid_is_refused(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    key = await auth.signing_key()
    later = int(time.time()) + 600
    token = forge(key, {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims_for(auth, nbf=later))
    with pytest.raises(Unauthorized, match="nbf"):
        await TokenValidator(auth.oauth(), AUDIENCE, http).validate(token)


async def test_a_tampered_token_is_refused(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("clinic-1", READER, clinic_id="C1")
    header, _, signature = (await auth.token(http, "clinic-1", secret)).split(".")
    forged_claims = b64url(json.dumps(claims_for(auth, scope="referrals:read referrals:write ops")).encode())
    tampered = f"{header}.{forged_claims}.{signature}"
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        assert_unauthorized(await http.get(f"{api}/v1/whoami", headers=bearer(tampered)), "signature")


async def test_unsigned_and_hmac_tokens_are_refused(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    key = await auth.signing_key()
    claims = claims_for(auth)
    unsigned = forge(None, {"alg": "none", "typ": "at+jwt", "kid": key.kid}, claims)

    # The classic confusion attack: HS256 keyed with the (public) RSA key a verifier would use.
    # joserfc refuses to build it, so it is built by hand here, as an attacker would.
    signing_input = ".".join(
        [
            b64url(b'{"alg":"HS256","typ":"at+jwt","kid":"%s"}' % str(key.kid).encode()),
            b64url(json.dumps(claims).encode()),
        ]
    )
    public_pem = key.as_pem(private=False)
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{b64url(mac)}"

    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        assert_unauthorized(await http.get(f"{api}/v1/whoami", headers=bearer(unsigned)), "RS256")
        assert_unauthorized(await http.get(f"{api}/v1/whoami", headers=bearer(confused)), "RS256")


async def test_typ_must_say_access_token_unless_configured_off(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    key = await auth.signing_key()
    plain_jwt = forge(key, {"alg": "RS256", "typ": "JWT", "kid": key.kid}, claims_for(auth))
    media_type = forge(key, {"alg": "RS256", "typ": "application/AT+JWT", "kid": key.kid}, claims_for(auth))

    strict = TokenValidator(auth.oauth(), AUDIENCE, http)
    with pytest.raises(Unauthorized, match="typ"):
        await strict.validate(plain_jwt)
    assert (await strict.validate(media_type)).clinic_id == "C1"

    lenient = TokenValidator(auth.oauth(token_typ=""), AUDIENCE, http)
    assert (await lenient.validate(plain_jwt)).client_id == "clinic-1"


async def test_issuer_must_match_exactly(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    key = await auth.signing_key()
    token = forge(
        key, {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims_for(auth, iss=auth.url + "/")
    )
    with pytest.raises(Unauthorized, match="iss"):
        await TokenValidator(auth.oauth(), AUDIENCE, http).validate(token)


async def test_other_issuers_claim_names_are_understood(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    """Keycloak and Auth0 name the client ``azp``; Okta lists scopes in ``scp``."""
    key = await auth.signing_key()
    claims = claims_for(auth, aud=["account", AUDIENCE], azp="svc", sub="svc@clients", scp=["ops"])
    del claims["client_id"], claims["clinic_id"]
    principal = await TokenValidator(auth.oauth(), AUDIENCE, http).validate(
        forge(key, {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims)
    )
    assert principal.client_id == "svc"
    assert principal.subject == "svc@clients"
    assert principal.scopes == {"referrals:read", "ops"}
    assert principal.clinic_id is None


async def test_unknown_kid_refetches_the_jwks_once(auth: RunningAuth) -> None:
    fetches: list[str] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/jwks.json"):
            fetches.append(str(request.url))

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        secret = await auth.register("clinic-1", READER, clinic_id="C1")
        validator = TokenValidator(auth.oauth(), AUDIENCE, http, refetch_interval_s=0)
        await validator.validate(await auth.token(http, "clinic-1", secret))
        await validator.validate(await auth.token(http, "clinic-1", secret))
        assert len(fetches) == 1, "the JWKS is cached"

        stranger = RSAKey.generate_key(2048, auto_kid=True)
        forged = forge(stranger, {"alg": "RS256", "typ": "at+jwt", "kid": stranger.kid}, claims_for(auth))
        for _ in range(3):
            with pytest.raises(Unauthorized, match="unknown key"):
                await validator.validate(forged)
        assert len(fetches) == 2, "one re-fetch per unknown kid, however often it is presented"


async def test_refetches_are_spaced_out(auth: RunningAuth) -> None:
    fetches = 0

    async def count(request: httpx.Request) -> None:
        nonlocal fetches
        fetches += request.url.path.endswith("/jwks.json")

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        validator = TokenValidator(auth.oauth(), AUDIENCE, http, refetch_interval_s=60)
        await validator.check()
        await validator.validate(await auth.token(http, "clinic-1", await auth.register("clinic-1", READER)))
        for _ in range(5):
            stranger = RSAKey.generate_key(2048, auto_kid=True)
            forged = forge(stranger, {"alg": "RS256", "typ": "at+jwt", "kid": stranger.kid}, claims_for(auth))
            with pytest.raises(Unauthorized):
                await validator.validate(forged)
    assert fetches == 2, "a fresh cache is not re-fetched for forged kids (check() and the first validate)"


async def test_an_unreachable_issuer_is_a_503(http: httpx.AsyncClient, serve_resource: ServeResource) -> None:
    sock = loopback_socket()  # bound, never listening: connections are refused
    try:
        validator = TokenValidator(OAuthSettings(issuer=url_of(sock)), AUDIENCE, http)
        key = RSAKey.generate_key(2048, auto_kid=True)
        token = forge(key, {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, {"iss": url_of(sock)})
        async with serve_resource(validator) as api:
            response = await http.get(f"{api}/v1/whoami", headers=bearer(token))
    finally:
        sock.close()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_openapi_shows_each_routes_scopes(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    schema = resource_app(TokenValidator(auth.oauth(), AUDIENCE, http)).openapi()
    scheme = schema["components"]["securitySchemes"]["oauth2_client_credentials"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert schema["paths"]["/v1/referrals"]["post"]["security"] == [
        {"oauth2_client_credentials": ["referrals:write"]}
    ]
    assert schema["paths"]["/v1/site/queue"]["get"]["security"] == [
        {"oauth2_client_credentials": ["site:referrals"]}
    ]
