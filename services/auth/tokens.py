"""How trialroute issues tokens, in authlib's terms: the client model, the client credentials grant
with a requested resource (RFC 8707), the RFC 9068 JWT generator, and the server that wires them
with the store, the key ring and the login throttle."""

from __future__ import annotations

import logging
import time
from typing import Any

from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientCredentialsGrant, ClientMixin, InvalidClientError
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet

from services.auth import store
from services.auth.config import AuthSettings
from services.auth.credentials import verify_secret
from services.auth.domain import AudienceRefused, Client, choose_audience, grant_scopes
from services.auth.keys import KeyRing
from services.auth.oauth_server import FastAPIAuthorizationServer, StarletteOAuth2Request
from services.auth.throttle import LoginThrottle
from shared.auth import ALGORITHM, Scope
from shared.db import Database
from shared.problems import TooManyRequests

log = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class RegisteredClient(ClientMixin):  # type: ignore[misc]  # authlib has no types: Any
    """A client as one token request sees it. An unknown or disabled client is represented too, so
    that it fails exactly like a wrong secret (same answer, same argon2 cost)."""

    def __init__(self, client_id: str, client: Client | None) -> None:
        self.client_id = client_id
        self.client = client if client is not None and client.enabled else None
        self.audience: str | None = None  # chosen by the grant, from the request

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(self.client.secret_hash if self.client else None, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE

    def get_allowed_scope(self, scope: str | None) -> str | None:
        return grant_scopes(scope, self.client.scopes) if self.client else None

    def get_default_redirect_uri(self) -> None:
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 8707 §2: the requested resource is invalid, unknown or not allowed for this client."""

    error = "invalid_target"
    status_code = 400


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 6749 §4.4 with ``client_secret_basic`` or ``client_secret_post``, and the audience asked
    for as ``resource`` (RFC 8707) or ``audience`` (the Auth0 spelling)."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client: RegisteredClient = self.request.client
        datalist = self.request.payload.datalist
        requested = [*datalist.get("resource", []), *datalist.get("audience", [])]
        try:
            client.audience = choose_audience(requested, client.client.audiences if client.client else ())
        except AudienceRefused as exc:
            raise InvalidTargetError(str(exc)) from exc


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 9068 tokens (``typ: at+jwt``, RS256, ``kid`` of the key that signs now), with ``nbf`` and
    the tenant the client acts for."""

    def __init__(self, settings: AuthSettings, keyring: KeyRing) -> None:
        super().__init__(issuer=settings.issuer, alg=ALGORITHM, expires_generator=settings.token_lifetime_s)
        self.lifetime_s = settings.token_lifetime_s
        self.keyring = keyring

    def get_jwks(self) -> KeySet:
        return KeySet([self.keyring.signing_key()])  # one key: joserfc puts its kid in the header

    def get_audiences(self, client: RegisteredClient, user: Any, scope: str) -> str:
        assert client.audience is not None, "the grant chooses the audience"
        return client.audience

    def get_extra_claims(
        self, client: RegisteredClient, grant_type: str, user: Any, scope: str
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + self.lifetime_s}
        if client.client and client.client.clinic_id:
            claims["clinic_id"] = client.client.clinic_id
        if client.client and client.client.site_code:
            claims["site_code"] = client.client.site_code
        return claims


class TokenServer(FastAPIAuthorizationServer):
    """The auth service's authorization server: client credentials only, RFC 9068 tokens, a brake
    on secret guessing."""

    def __init__(self, db: Database, settings: AuthSettings, keyring: KeyRing, throttle: LoginThrottle):
        super().__init__(self._load, scopes_supported=[s.value for s in Scope])
        self.db = db
        self.keyring = keyring
        self.throttle = throttle
        self.register_grant(ClientCredentials)
        self.register_token_generator("default", AccessTokenGenerator(settings, keyring))

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Nothing to store: the JWTs are self-contained and short-lived (no revocation list)."""
        client = request.client
        log.info("token issued", extra={"client_id": client.get_client_id(), "audience": client.audience})

    async def _load(self, client_id: str) -> RegisteredClient:
        async with self.db.session() as session:
            row = await store.get_client(session, client_id)
        return RegisteredClient(client_id, row.to_client() if row else None)

    async def prepare(self, request: StarletteOAuth2Request) -> dict[str, ClientMixin | None]:
        wait = await self.throttle.retry_after(request.named_client_id, request.client_host)
        if wait is not None:
            raise TooManyRequests(
                "too many failed client authentications; try again later", headers={"Retry-After": str(wait)}
            )
        await self.keyring.refresh_if_stale()
        return await super().prepare(request)

    async def finish(self, request: StarletteOAuth2Request) -> None:
        if isinstance(request.error, InvalidClientError):
            await self.throttle.record_failure(request.named_client_id, request.client_host)
