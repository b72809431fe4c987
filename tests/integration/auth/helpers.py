"""What the auth tests work with: a handle on the running auth service, a tiny resource server that
trusts it, and forged tokens for attacks.

Both servers are served over real HTTP by uvicorn, in-process. Tokens are real: issued by the auth
service, or (for attacks) forged with its real signing key, another key, or none.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydantic import SecretStr

from services.auth.config import AuthSettings
from services.auth.keys import KeyRing
from services.auth.registry import create_client
from shared.app import ServiceSpec
from shared.app import create_app as create_service_app
from shared.auth import Principal, Scope, TokenValidator, require
from shared.db import Database
from shared.problems import NotFound
from shared.settings import OAuthSettings
from tests.support.servers import checking_tokens

KEK = "test-key-encryption-secret"
AUDIENCE = "intake"


@dataclass
class RunningAuth:
    """The auth service under test: its URL, its settings, and its store."""

    url: str
    settings: AuthSettings
    db: Database

    def oauth(self, **overrides: Any) -> OAuthSettings:
        """What a resource server would be configured with: only the issuer URL."""
        return OAuthSettings(issuer=self.url, **overrides)

    async def register(
        self,
        client_id: str,
        scopes: list[Scope],
        audiences: tuple[str, ...] = (AUDIENCE,),
        clinic_id: str | None = None,
        site_code: str | None = None,
    ) -> str:
        return await create_client(
            self.db, client_id, scopes=scopes, audiences=audiences, clinic_id=clinic_id, site_code=site_code
        )

    async def token_response(
        self, http: httpx.AsyncClient, client_id: str, secret: str, **form: str
    ) -> httpx.Response:
        return await http.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials", **form},
            auth=(client_id, secret),
        )

    async def token(self, http: httpx.AsyncClient, client_id: str, secret: str, **form: str) -> str:
        response = await self.token_response(http, client_id, secret, **form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def signing_key(self) -> RSAKey:
        """The auth service's own private key, read from its store: for forging tokens in attacks."""
        ring = KeyRing(self.db, self.settings)
        await ring.refresh()
        return ring.signing_key()


def auth_settings(database_url: str, issuer: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "issuer": issuer,
        "key_encryption_secret": SecretStr(KEK),
        "key_publish_delay_s": 0,
        "key_cache_s": 0,
        **overrides,
    }
    return AuthSettings(**values)


ReferralReader = Annotated[Principal, Depends(require(Scope.REFERRALS_READ))]
SiteCoordinator = Annotated[Principal, Depends(require(Scope.SITE_REFERRALS))]


def resource_app(validator: TokenValidator) -> FastAPI:
    """A resource server as every service builds one: shared.app, shared.auth, routes with scopes."""
    router = APIRouter()
    records = {"R1": "C1", "R2": "C2"}  # referral -> the clinic that owns it

    @router.get("/v1/whoami")
    async def whoami(principal: ReferralReader) -> dict[str, Any]:
        return {
            "client_id": principal.client_id,
            "subject": principal.subject,
            "scopes": sorted(principal.scopes),
            "clinic_id": principal.clinic_id,
            "site_code": principal.site_code,
        }

    @router.post("/v1/referrals", dependencies=[Depends(require(Scope.REFERRALS_WRITE))])
    async def submit() -> dict[str, str]:
        return {"status": "received"}

    @router.get("/v1/referrals/{referral_id}")
    async def read_referral(referral_id: str, principal: ReferralReader) -> dict[str, str]:
        clinic_id = principal.require_clinic()
        if records.get(referral_id) != clinic_id:
            raise NotFound(f"no referral {referral_id}")  # another clinic's: existence does not leak
        return {"id": referral_id, "clinic_id": clinic_id}

    @router.get("/v1/site/queue")
    async def site_queue(principal: SiteCoordinator) -> dict[str, str]:
        return {"site_code": principal.require_site()}

    spec = ServiceSpec(
        name="resource-test",
        title="resource",
        description="a resource server for the auth tests",
        routers=[router],
        state=checking_tokens(validator),
    )
    return create_service_app(spec)


StartAuth = Callable[..., AbstractAsyncContextManager[RunningAuth]]
ServeResource = Callable[[TokenValidator], AbstractAsyncContextManager[str]]


def forge(key: RSAKey | None, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token made outside the auth service: signed with ``key`` (RS256), or unsigned if None."""
    if key is not None:
        return jwt.encode(header, claims, key, algorithms=[header["alg"]])
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), ""])


def claims_for(auth: RunningAuth, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": auth.url,
        "aud": AUDIENCE,
        "sub": "clinic-1",
        "client_id": "clinic-1",
        "scope": "referrals:read",
        "jti": f"j{now}",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "clinic_id": "C1",
        **overrides,
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
