"""How trialroute issues tokens, in authlib's terms: the client model, the client credentials grant
with a requested resource (RFC 8707), client authentication by signed assertion (RFC 7523
``private_key_jwt`` as SMART Backend Services profiles it), the RFC 9068 JWT generator, and the server
that wires them with the store, the key ring and the login throttle."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio.from_thread
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientCredentialsGrant, ClientMixin, InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from services.auth import store
from services.auth.assertions import ClientKeys, SeenAssertions
from services.auth.codes import (
    CODE_GRANT,
    AuthorizationCode,
    CodeStore,
    Person,
    PortalClient,
    S256Challenge,
    person_claims,
)
from services.auth.config import AuthSettings
from services.auth.credentials import verify_secret
from services.auth.domain import (
    AssertionLifetimeRefused,
    AudienceRefused,
    Client,
    check_assertion_expiry,
    choose_audience,
    grant_scopes,
)
from services.auth.keys import KeyRing
from services.auth.oauth_server import FastAPIAuthorizationServer, StarletteOAuth2Request
from services.auth.throttle import LoginThrottle
from shared.auth import ALGORITHM, Scope
from shared.db import Database
from shared.problems import TooManyRequests

log = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
SECRET_METHODS = ("client_secret_basic", "client_secret_post")
KEY_METHOD = "private_key_jwt"
AUTH_METHODS = (KEY_METHOD, *SECRET_METHODS)
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256")
"""SMART Backend Services: RS384 and ES384 (servers must support both); RS256 as well, which many
client libraries sign with by default. Anything else (HS256, ``none``...) is refused."""


class RegisteredClient(ClientMixin):  # type: ignore[misc]  # authlib has no types: Any
    """A client as one token request sees it. An unknown or disabled client is represented too, so
    that it fails exactly like a wrong secret (same answer, same argon2 cost)."""

    def __init__(self, client_id: str, client: Client | None) -> None:
        self.client_id = client_id
        self.client = client if client is not None and client.enabled else None
        self.audience: str | None = None  # chosen by the grant, from the request
        self.public_keys = KeySet([])  # loaded before authlib runs, for a request with an assertion

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(self.client.secret_hash if self.client else None, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """A client with keys signs in with them only; a client with a secret, with it only."""
        if endpoint != "token" or self.client is None:
            return False
        return method == KEY_METHOD if self.client.signs_in_with_key else method in SECRET_METHODS

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
    """RFC 6749 §4.4 with ``private_key_jwt``, ``client_secret_basic`` or ``client_secret_post``, and
    the audience asked for as ``resource`` (RFC 8707) or ``audience`` (the Auth0 spelling)."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*SECRET_METHODS, KEY_METHOD]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client: RegisteredClient = self.request.client
        datalist = self.request.payload.datalist
        requested = [*datalist.get("resource", []), *datalist.get("audience", [])]
        try:
            client.audience = choose_audience(requested, client.client.audiences if client.client else ())
        except AudienceRefused as exc:
            raise InvalidTargetError(str(exc)) from exc


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 7523 client authentication as SMART Backend Services profiles it. authlib checks the
    signature, ``iss`` = ``sub`` = the client, ``aud``, ``exp`` (and ``nbf``) and asks us about the
    ``jti``; this adds what SMART says on top: the algorithms, a ``kid``, ``exp`` at most
    ``AUTH_ASSERTION_MAX_LIFETIME_S`` ahead, and every refusal as a 401 ``invalid_client``.

    Runs in authlib's worker thread: the client's keys were loaded before (``TokenServer.prepare``);
    the ``jti`` is recorded in the store through the event loop (``anyio.from_thread``)."""

    CLIENT_AUTH_METHOD = KEY_METHOD

    def __init__(self, settings: AuthSettings, seen: SeenAssertions) -> None:
        super().__init__(validate_jti=True, leeway=settings.assertion_leeway_s)
        self.settings = settings
        self.seen = seen

    def __call__(self, query_client: Any, request: OAuth2Request) -> RegisteredClient | None:
        try:
            return super().__call__(query_client, request)  # type: ignore[no-any-return]
        except InvalidClientError as error:
            error.status_code = 401  # as for a wrong secret: RFC 6749 §5.2 allows it, clients expect it
            raise

    def get_audiences(self) -> list[str]:
        return [self.settings.token_url]

    def resolve_client_public_key(self, client: RegisteredClient) -> KeySet:
        return client.public_keys

    def process_assertion_claims(self, assertion: str, resolve_key: KeySet) -> dict[str, Any]:
        """authlib's, with the algorithms restricted and a ``kid`` required (the key is chosen by it)."""
        try:
            header = jws.extract_compact(assertion.encode()).headers()
            if not isinstance(header.get("kid"), str):
                raise InvalidClientError(description="the assertion's header must name its key ('kid')")
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except (JoseError, ValueError) as exc:  # ValueError: no key with that kid and alg
            raise InvalidClientError(description=str(exc) or "the assertion is not valid") from exc
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: jwt.Claims) -> None:
        try:
            check_assertion_expiry(
                claims.get("exp"),
                time.time(),
                max_lifetime_s=self.settings.assertion_max_lifetime_s,
                leeway_s=self.settings.assertion_leeway_s,
            )
        except AssertionLifetimeRefused as exc:
            raise InvalidClientError(description=str(exc)) from exc
        super().verify_claims(claims)  # last: it records the jti

    def validate_jti(self, claims: jwt.Claims, jti: Any) -> bool:
        if not isinstance(jti, str):
            return False
        keep_until = float(claims["exp"]) + self.settings.assertion_leeway_s
        return bool(anyio.from_thread.run(self.seen.first_use, claims["sub"], jti, keep_until))


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 9068 tokens (``typ: at+jwt``, RS256, ``kid`` of the key that signs now), with ``nbf`` and
    the tenant the client acts for."""

    def __init__(self, settings: AuthSettings, keyring: KeyRing) -> None:
        super().__init__(issuer=settings.issuer, alg=ALGORITHM, expires_generator=self._lifetime)
        self.lifetime_s = settings.token_lifetime_s
        self.user_lifetime_s = settings.user_token_lifetime_s
        self.keyring = keyring

    def _lifetime(self, client: Any, grant_type: str) -> int:
        """``expires_in`` of the answer: a person's token lives longer than a machine's."""
        return self.user_lifetime_s if grant_type == CODE_GRANT else self.lifetime_s

    def get_jwks(self) -> KeySet:
        return KeySet([self.keyring.signing_key()])  # one key: joserfc puts its kid in the header

    def get_audiences(
        self, client: RegisteredClient | PortalClient, user: Any, scope: str
    ) -> str | list[str]:
        assert client.audience is not None, "the grant chooses the audience"
        return client.audience

    def get_auth_time(self, user: Any) -> int | None:
        return int(user.auth_time.timestamp()) if isinstance(user, Person) else None

    def get_extra_claims(
        self, client: RegisteredClient | PortalClient, grant_type: str, user: Any, scope: str
    ) -> dict[str, Any]:
        now = int(time.time())
        if isinstance(user, Person):  # a person, through a portal: who, and the sites they work for
            return {"iat": now, "nbf": now, "exp": now + self.user_lifetime_s, **person_claims(user)}
        claims: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + self.lifetime_s}
        assert isinstance(client, RegisteredClient)
        if client.client and client.client.clinic_id:
            claims["clinic_id"] = client.client.clinic_id
        if client.client and client.client.site_code:
            claims["site_code"] = client.client.site_code
        return claims


class TokenServer(FastAPIAuthorizationServer):
    """The auth service's authorization server: client credentials for machines, the authorization
    code grant with PKCE (S256) for people through the portals, RFC 9068 tokens, a brake on secret
    guessing."""

    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        keyring: KeyRing,
        throttle: LoginThrottle,
        client_keys: ClientKeys,
    ):
        super().__init__(self._load, scopes_supported=[s.value for s in Scope])
        self.db = db
        self.keyring = keyring
        self.throttle = throttle
        self.client_keys = client_keys
        self.settings = settings
        self.codes = CodeStore(db, settings)
        self.register_grant(ClientCredentials)
        self.register_grant(AuthorizationCode, [S256Challenge()])
        self.register_client_auth_method(KEY_METHOD, PrivateKeyJWT(settings, SeenAssertions(db)))
        self.register_token_generator("default", AccessTokenGenerator(settings, keyring))

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Nothing to store: the JWTs are self-contained and short-lived (no revocation list)."""
        client = request.client
        extra = {"client_id": client.get_client_id(), "audience": client.audience}
        if isinstance(request.user, Person):
            extra["user"] = request.user.user.id
        log.info("token issued", extra=extra)

    async def _load(self, client_id: str) -> RegisteredClient | PortalClient:
        portal = self.settings.web_client(client_id)
        if portal is not None:
            return PortalClient(portal)
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
        loaded = await super().prepare(request)
        header, _ = request.unverified_assertion
        client = loaded.get(request.named_client_id or "")
        if header and isinstance(client, RegisteredClient):
            kid = header.get("kid")
            client.public_keys = await self.client_keys.of(
                client.client, kid if isinstance(kid, str) else None
            )
        return loaded

    async def finish(self, request: StarletteOAuth2Request) -> None:
        if isinstance(request.error, InvalidClientError):
            await self.throttle.record_failure(request.named_client_id, request.client_host)
