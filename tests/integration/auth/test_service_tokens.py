"""Clients of the token endpoint: a standard OAuth2 library, and ServiceTokenSource built on it."""

from __future__ import annotations

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from shared.auth import Scope, ServiceTokenError, ServiceTokenSource, TokenValidator
from tests.integration.auth.helpers import AUDIENCE, RunningAuth, ServeResource, StartAuth
from tests.support.clock import Clock

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_a_standard_oauth2_client_gets_a_token(
    auth: RunningAuth, http: httpx.AsyncClient, method: str
) -> None:
    secret = await auth.register("notifier", [Scope.CONTACT_READ])
    metadata = (await http.get(f"{auth.url}/.well-known/openid-configuration")).json()
    async with AsyncOAuth2Client("notifier", secret, token_endpoint_auth_method=method) as client:
        token = await client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "contact:read"
    principal = await TokenValidator(auth.oauth(), AUDIENCE, http).validate(token["access_token"])
    assert principal.client_id == "notifier"


async def test_service_token_source_caches_until_shortly_before_expiry(
    start_auth: StartAuth, http: httpx.AsyncClient
) -> None:
    clock = Clock()
    async with start_auth(token_lifetime_s=300) as auth:
        secret = await auth.register("notifier", [Scope.CONTACT_READ], audiences=("site_router", AUDIENCE))
        source = ServiceTokenSource(
            auth.oauth(), "notifier", secret, AUDIENCE, [Scope.CONTACT_READ], refresh_margin_s=30, clock=clock
        )
        try:
            refused = await source.token()
            # A token a callee refused is replaced, once however many requests saw it refused.
            first = await source.token(replacing=refused)
            assert first != refused
            assert await source.token(replacing=refused) == first

            assert await source.token() == first
            clock.advance(260)  # 40 s of its life left: kept
            assert await source.token() == first
            clock.advance(25)  # 15 s left: within the refresh margin
            renewed = await source.token()
            principal = await TokenValidator(auth.oauth(), AUDIENCE, http).validate(renewed)
        finally:
            await source.aclose()
    assert renewed != first
    assert principal.scopes == {"contact:read"}


async def test_service_token_source_authenticates_calls(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource
) -> None:
    secret = await auth.register("intake-reader", [Scope.REFERRALS_READ])
    source = ServiceTokenSource(auth.oauth(), "intake-reader", secret, AUDIENCE, [Scope.REFERRALS_READ])
    try:
        async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
            async with httpx.AsyncClient(auth=source) as caller:
                response = await caller.get(f"{api}/v1/whoami")
    finally:
        await source.aclose()
    assert response.status_code == 200
    assert response.json()["client_id"] == "intake-reader"


async def test_service_token_source_reports_refusals(auth: RunningAuth) -> None:
    await auth.register("notifier", [Scope.CONTACT_READ])
    source = ServiceTokenSource(auth.oauth(), "notifier", "wrong", AUDIENCE, [Scope.CONTACT_READ])
    try:
        with pytest.raises(ServiceTokenError, match="invalid_client"):
            await source.token()
        throttled = ServiceTokenSource(auth.oauth(), "notifier", "wrong", AUDIENCE, [])
        for _ in range(auth.settings.throttle_client_failures):
            with pytest.raises(ServiceTokenError):
                await throttled.token()
        with pytest.raises(ServiceTokenError, match="HTTPStatusError"):
            await throttled.token()  # 429 problem+json is not mistaken for a token
        await throttled.aclose()
    finally:
        await source.aclose()
