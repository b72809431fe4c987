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
from fastapi.responses import JSONResponse
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from pydantic import SecretStr

from services.auth.config import AuthSettings
from services.auth.keys import KeyRing
from services.auth.registry import create_client, create_key_client
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

    async def register_key_client(
        self,
        client_id: str,
        scopes: list[Scope],
        *,
        jwks_url: str | None = None,
        jwks: dict[str, Any] | None = None,
        clinic_id: str | None = None,
    ) -> None:
        await create_key_client(
            self.db,
            client_id,
            scopes=scopes,
            audiences=(AUDIENCE,),
            clinic_id=clinic_id,
            jwks_url=jwks_url,
            jwks=jwks,
        )

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    async def assertion_response(
        self, http: httpx.AsyncClient, assertion: str, **form: str
    ) -> httpx.Response:
        """A token request authenticated by a client assertion (private_key_jwt) alone."""
        return await http.post(
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
                **form,
            },
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


def forge(key: RSAKey | ECKey | OctKey | None, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token made outside the auth service: signed with ``key`` (``header['alg']``), or unsigned if
    None."""
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


class ClientJwksServer:
    """A clinic's own JWK Set URL: serves the public half of the keys it holds now, counts fetches."""

    def __init__(self, *keys: RSAKey | ECKey) -> None:
        self.keys = list(keys)
        self.fetches = 0

    def publish(self, *keys: RSAKey | ECKey) -> None:
        """Key rotation at the clinic: from now on its URL serves these."""
        self.keys = list(keys)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/jwks.json")
        async def jwks() -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": [key.as_dict(private=False) for key in self.keys]})

        return app


def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, auto_kid=True)


def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", auto_kid=True)


def assertion(
    key: RSAKey | ECKey | OctKey | None,
    client_id: str,
    audience: str,
    *,
    alg: str = "RS384",
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A client assertion as SMART Backend Services describes it, signed with ``key`` (its ``kid`` in
    the header), every part overridable to make it wrong."""
    now = int(time.time())
    payload = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "exp": now + 240,
        "jti": f"{client_id}-{time.time_ns()}",
        **claims,
    }
    head = {"alg": alg, "typ": "JWT", **({"kid": key.kid} if key is not None else {}), **(header or {})}
    # None removes a claim or header parameter
    head = {name: value for name, value in head.items() if value is not None}
    return forge(key, head, {name: value for name, value in payload.items() if value is not None})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
