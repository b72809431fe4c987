"""Clients that sign in with their own key: RFC 7523 ``private_key_jwt`` as SMART Backend Services
profiles it. Real signed assertions, the clinic's JWK Set served over loopback HTTP, the auth service
on PostgreSQL, and a resource server that accepts the tokens it issues."""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, OctKey, RSAKey

from shared.auth import BackendServicesJWT, Scope, TokenValidator
from tests.integration.auth.helpers import (
    AUDIENCE,
    ClientJwksServer,
    RunningAuth,
    ServeResource,
    StartAuth,
    assertion,
    ec_key,
    rsa_key,
)
from tests.support.servers import serve_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "The httpx module is deprecated", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

pytestmark = pytest.mark.integration

CLINIC_SCOPES = [Scope.REFERRALS_WRITE, Scope.REFERRALS_READ]
GENEROUS = {"throttle_client_failures": 1000, "throttle_address_failures": 1000}
"""Refusal tests fail on purpose many times in a row; the brake on guessing is tested elsewhere."""


@pytest.fixture
async def keyed_auth(start_auth: StartAuth) -> AsyncIterator[RunningAuth]:
    """The auth service re-fetching a JWK Set at once on an unknown kid (no re-fetch interval)."""
    async with start_auth(client_jwks_refetch_s=0, **GENEROUS) as running:
        yield running


@pytest.fixture
async def clinic_jwks() -> AsyncIterator[tuple[ClientJwksServer, str]]:
    """The clinic's JWK Set URL, serving one RSA key to start with."""
    server = ClientJwksServer(rsa_key())
    async with serve_app(server.app()) as url:
        yield server, f"{url}/jwks.json"


def assert_invalid_client(response: httpx.Response, reason: str = "") -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "invalid_client", body
    assert reason in body.get("error_description", ""), body


# A standard client library's own private_key_jwt


@pytest.mark.parametrize(
    ("alg", "make_key", "registered_as"),
    [
        ("RS384", rsa_key, "jwks_url"),
        ("ES384", ec_key, "jwks_url"),
        ("RS256", rsa_key, "jwks"),
        ("ES384", ec_key, "jwks"),
    ],
)
async def test_authlib_client_gets_a_token_that_a_resource_server_accepts(
    keyed_auth: RunningAuth,
    http: httpx.AsyncClient,
    serve_resource: ServeResource,
    alg: str,
    make_key: Any,
    registered_as: str,
) -> None:
    key: RSAKey | ECKey = make_key()
    jwks_server = ClientJwksServer(key)
    async with serve_app(jwks_server.app()) as jwks_base:
        if registered_as == "jwks_url":
            await keyed_auth.register_key_client(
                "clinic-1", CLINIC_SCOPES, jwks_url=f"{jwks_base}/jwks.json", clinic_id="C1"
            )
        else:
            jwks = {"keys": [key.as_dict(private=False)]}
            await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks=jwks, clinic_id="C1")

        method = BackendServicesJWT(keyed_auth.token_url, kid=str(key.kid), alg=alg)
        async with AsyncOAuth2Client("clinic-1", key, token_endpoint_auth_method=method) as client:
            token = await client.fetch_token(
                keyed_auth.token_url, grant_type="client_credentials", audience=AUDIENCE
            )

    assert token["token_type"] == "Bearer"
    assert token["scope"] == "referrals:write referrals:read"
    assert jwks_server.fetches == (1 if registered_as == "jwks_url" else 0)
    async with serve_resource(TokenValidator(keyed_auth.oauth(), AUDIENCE, http)) as api:
        response = await http.get(
            f"{api}/v1/whoami", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["client_id"] == "clinic-1"
    assert response.json()["clinic_id"] == "C1"


async def test_authlib_defaults_sign_for_an_hour_which_is_refused(
    keyed_auth: RunningAuth, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    """authlib's PrivateKeyJWT, untouched, makes assertions that expire in an hour: SMART allows 5
    minutes. (``BackendServicesJWT`` is the same class with SMART's lifetime.)"""
    server, url = clinic_jwks
    (key,) = server.keys
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
    method = PrivateKeyJWT(keyed_auth.token_url, headers={"kid": key.kid}, alg="RS384")
    async with AsyncOAuth2Client("clinic-1", key, token_endpoint_auth_method=method) as client:
        with pytest.raises(OAuthError) as refused:
            await client.fetch_token(keyed_auth.token_url, grant_type="client_credentials")
    assert refused.value.error == "invalid_client"
    assert "at most 300 seconds ahead" in str(refused.value.description)


# Discovery


async def test_metadata_and_smart_configuration_advertise_private_key_jwt(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    smart = (await http.get(f"{auth.url}/.well-known/smart-configuration")).json()
    rfc8414 = (await http.get(f"{auth.url}/.well-known/oauth-authorization-server")).json()
    for document in (smart, rfc8414):
        assert document["token_endpoint"] == auth.token_url
        assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
        assert document["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384", "RS256"]
        assert document["grant_types_supported"][0] == "client_credentials"
        assert "referrals:write" in document["scopes_supported"]
    assert smart["capabilities"] == ["client-confidential-asymmetric"]
    assert smart["grant_types_supported"] == ["client_credentials"]  # backend services: no people


# Refusals: each one an RFC 6749 invalid_client, 401


async def test_refusals(
    keyed_auth: RunningAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    server, url = clinic_jwks
    (key,) = server.keys
    other_key = rsa_key()
    other_jwks = {"keys": [other_key.as_dict(private=False)]}
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
    await keyed_auth.register_key_client("clinic-2", CLINIC_SCOPES, jwks=other_jwks)
    aud = keyed_auth.token_url
    now = int(time.time())

    async def refused(assertion_jwt: str, reason: str = "") -> None:
        assert_invalid_client(await keyed_auth.assertion_response(http, assertion_jwt), reason)

    # the right assertion works: every refusal below differs from it in one thing
    assert (await keyed_auth.assertion_response(http, assertion(key, "clinic-1", aud))).status_code == 200

    await refused(assertion(key, "clinic-1", f"{keyed_auth.url}/"), "aud")  # the issuer, not the endpoint
    await refused(assertion(key, "clinic-1", "https://other.example/oauth/token"), "aud")
    await refused(assertion(key, "clinic-1", aud, exp=now - 120), "expired")
    await refused(assertion(key, "clinic-1", aud, exp=now + 600), "at most 300 seconds ahead")
    await refused(assertion(key, "clinic-1", aud, exp="soon"))
    await refused(assertion(key, "clinic-1", aud, iss="clinic-2"), "Issuer and Subject")
    await refused(assertion(key, "clinic-1", aud, jti=None), "Missing JWT ID")
    # signed by clinic-2's key, claiming to be clinic-1 (its kid, or clinic-1's kid)
    await refused(assertion(other_key, "clinic-1", aud))
    await refused(assertion(other_key, "clinic-1", aud, header={"kid": key.kid}))
    # clinic-1's key, claiming to be clinic-2
    await refused(assertion(key, "clinic-2", aud))
    # algorithms: RS512 with the right key, HS256 (a shared secret, under clinic-1's kid), none
    await refused(assertion(key, "clinic-1", aud, alg="RS512"), "not allowed")
    hmac_key = OctKey.generate_key(256)
    await refused(assertion(hmac_key, "clinic-1", aud, alg="HS256", header={"kid": key.kid}), "not allowed")
    await refused(assertion(None, "clinic-1", aud, alg="none", header={"kid": key.kid}))
    # no kid
    unnamed = assertion(key, "clinic-1", aud, header={"kid": None})
    await refused(unnamed, "kid")
    # nobody by that name; garbage
    await refused(assertion(key, "clinic-9", aud))
    await refused("not-a-jwt")


async def test_a_jti_is_accepted_once_by_every_instance(
    start_auth: StartAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    """Two replicas on one store (one issuer): what one accepted, the other refuses as a replay."""
    server, url = clinic_jwks
    (key,) = server.keys
    async with start_auth(**GENEROUS) as first:
        async with start_auth(issuer=first.url, **GENEROUS) as second:
            await first.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
            once = assertion(key, "clinic-1", first.token_url)
            assert (await first.assertion_response(http, once)).status_code == 200
            assert_invalid_client(await first.assertion_response(http, once), "JWT ID is used before")
            replayed = await http.post(
                f"{second.url}/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": once,
                },
            )
            assert_invalid_client(replayed, "JWT ID is used before")
            fresh = assertion(key, "clinic-1", first.token_url)
            assert (await second.assertion_response(http, fresh)).status_code == 200


async def test_a_key_client_has_no_secret_and_a_secret_client_no_key(
    keyed_auth: RunningAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    server, url = clinic_jwks
    (key,) = server.keys
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
    assert_invalid_client(await keyed_auth.token_response(http, "clinic-1", ""))
    assert_invalid_client(await keyed_auth.token_response(http, "clinic-1", "guess"))

    secret = await keyed_auth.register("clinic-s", CLINIC_SCOPES)
    assert_invalid_client(
        await keyed_auth.assertion_response(http, assertion(key, "clinic-s", keyed_auth.token_url))
    )
    assert (await keyed_auth.token_response(http, "clinic-s", secret)).status_code == 200


# The JWK Set URL: cached, re-fetched on an unknown kid


async def test_key_rotation_at_the_clinic_is_picked_up_by_one_refetch(
    keyed_auth: RunningAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    server, url = clinic_jwks
    (old,) = server.keys
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
    aud = keyed_auth.token_url

    for _ in range(3):
        assert (await keyed_auth.assertion_response(http, assertion(old, "clinic-1", aud))).status_code == 200
    assert server.fetches == 1  # cached

    new = ec_key()
    server.publish(new)  # the clinic rotates: only the new key is published now
    response = await keyed_auth.assertion_response(http, assertion(new, "clinic-1", aud, alg="ES384"))
    assert response.status_code == 200, response.text
    assert server.fetches == 2  # the unknown kid made it fetch once

    new_again = assertion(new, "clinic-1", aud, alg="ES384")
    assert (await keyed_auth.assertion_response(http, new_again)).status_code == 200
    assert server.fetches == 2
    # the retired key is no longer in the set the server holds
    assert_invalid_client(await keyed_auth.assertion_response(http, assertion(old, "clinic-1", aud)))


async def test_an_unknown_kid_stays_unknown_after_the_refetch(
    keyed_auth: RunningAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    server, url = clinic_jwks
    (key,) = server.keys
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
    aud = keyed_auth.token_url
    assert (await keyed_auth.assertion_response(http, assertion(key, "clinic-1", aud))).status_code == 200

    stranger = rsa_key()  # not published by the clinic
    assert_invalid_client(await keyed_auth.assertion_response(http, assertion(stranger, "clinic-1", aud)))
    assert server.fetches == 2  # looked again before refusing


async def test_unknown_kids_refetch_at_most_once_per_interval(
    start_auth: StartAuth, http: httpx.AsyncClient, clinic_jwks: tuple[ClientJwksServer, str]
) -> None:
    """An attacker naming made-up kids cannot make us hammer the clinic's server."""
    server, url = clinic_jwks
    (key,) = server.keys
    async with start_auth(client_jwks_refetch_s=3600, **GENEROUS) as running:
        await running.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)
        aud = running.token_url
        assert (await running.assertion_response(http, assertion(key, "clinic-1", aud))).status_code == 200
        for _ in range(3):
            made_up = assertion(rsa_key(), "clinic-1", aud)
            assert_invalid_client(await running.assertion_response(http, made_up))
        assert server.fetches == 1


async def test_an_unreachable_jwks_url_refuses_without_failing(
    keyed_auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    key = rsa_key()
    gone = ClientJwksServer(key)
    async with serve_app(gone.app()) as base:
        url = f"{base}/jwks.json"
    await keyed_auth.register_key_client("clinic-1", CLINIC_SCOPES, jwks_url=url)  # nothing listens now
    assert_invalid_client(
        await keyed_auth.assertion_response(http, assertion(key, "clinic-1", keyed_auth.token_url))
    )
