"""People sign in to a portal with the authorization code grant (RFC 6749 §4.1) and PKCE (RFC 7636),
in authlib's terms: the portal client (``AUTH_WEB_CLIENTS``), the code model and store, the grant with
PKCE required and S256 only, and the person the token is issued to.

authlib's flow is synchronous and runs in a worker thread (``oauth_server``); the store is reached from
there through the event loop (``anyio.from_thread``), as the client assertions' ``jti`` are. A code is
taken (read and deleted in one transaction) when it is presented: used once, whatever happens next.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.from_thread
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge

from services.auth import store
from services.auth.config import AuthSettings, WebClient
from services.auth.domain import Role, User, grant_scopes
from shared.db import Database

CODE_GRANT = "authorization_code"
PKCE_METHOD = "S256"


class PortalClient(ClientMixin):  # type: ignore[misc]  # authlib has no types: Any
    """A portal's pages: public (PKCE alone proves the code is theirs) or confidential (a secret too)."""

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self.client_id = client.client_id
        self.audience: str | list[str] = (
            client.audiences[0] if len(client.audiences) == 1 else client.audiences
        )

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # the request names it, and it must be one registered, exactly

    def get_allowed_scope(self, scope: str | None) -> str | None:
        return grant_scopes(scope, self.client.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.client.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.client.secret
        return secret is not None and hmac.compare_digest(
            secret.get_secret_value().encode(), client_secret.encode("utf-8", "surrogatepass")
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return False
        if self.client.secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == CODE_GRANT


@dataclass(frozen=True)
class Person:
    """The person a code (and then a token) is issued to, as authlib's token generator wants it."""

    user: User
    auth_time: datetime

    def get_user_id(self) -> str:
        return self.user.id


@dataclass(frozen=True)
class IssuedCode(AuthorizationCodeMixin):  # type: ignore[misc]  # authlib has no types: Any
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    auth_time: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_nonce(self) -> None:
        return None

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


class CodeStore:
    """Codes in the auth store (only their SHA-256), so every replica can redeem any code, once."""

    def __init__(self, db: Database, settings: AuthSettings) -> None:
        self.db = db
        self.settings = settings

    async def save(self, code: str, issued: IssuedCode) -> None:
        async with self.db.session() as session:
            session.add(
                store.AuthorizationCodeRow(
                    code_hash=_code_hash(code),
                    client_id=issued.client_id,
                    user_id=issued.user_id,
                    redirect_uri=issued.redirect_uri,
                    scope=issued.scope,
                    code_challenge=issued.code_challenge,
                    code_challenge_method=issued.code_challenge_method,
                    auth_time=issued.auth_time,
                    expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.code_lifetime_s),
                )
            )

    async def take(self, code: str, client_id: str) -> IssuedCode | None:
        """The code's grant if it exists, is the client's and has not expired; it is gone after this
        (presented once, by anyone: never again)."""
        if not code or len(code) > 200:
            return None
        async with self.db.session() as session:
            row = await store.take_row(session, store.AuthorizationCodeRow, _code_hash(code))
        if row is None or row.client_id != client_id or row.expires_at <= datetime.now(UTC):
            return None
        return IssuedCode(
            client_id=row.client_id,
            user_id=row.user_id,
            redirect_uri=row.redirect_uri,
            scope=row.scope,
            code_challenge=row.code_challenge,
            code_challenge_method=row.code_challenge_method,
            auth_time=row.auth_time,
        )

    async def person(self, user_id: str, auth_time: datetime) -> Person | None:
        """The person, if their account is still enabled."""
        async with self.db.session() as session:
            row = await store.get_user(session, user_id)
        if row is None or row.disabled:
            return None
        return Person(row.to_user(), auth_time)


class S256Challenge(CodeChallenge):  # type: ignore[misc]  # authlib has no types: Any
    """authlib's PKCE with a challenge required in every authorization request, and S256 only (``plain``
    would hand the verifier to whoever sees the redirect)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = [PKCE_METHOD]

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != PKCE_METHOD:
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCode(AuthorizationCodeGrant):  # type: ignore[misc]  # authlib has no types: Any
    """RFC 6749 §4.1 for the portals; ``server.codes`` keeps the codes."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        person: Person = request.user
        client: PortalClient = request.client
        data = request.payload.data
        requested = request.scope.split() if request.scope else list(client.client.scopes)
        issued = IssuedCode(
            client_id=client.client_id,
            user_id=person.user.id,
            redirect_uri=data["redirect_uri"],
            scope=" ".join(person.user.scopes(requested)),
            code_challenge=data["code_challenge"],
            code_challenge_method=data.get("code_challenge_method", PKCE_METHOD),
            auth_time=person.auth_time,
        )
        anyio.from_thread.run(self.server.codes.save, code, issued)

    def query_authorization_code(self, code: str, client: PortalClient) -> IssuedCode | None:
        return anyio.from_thread.run(self.server.codes.take, code, client.client_id)  # type: ignore[no-any-return]

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        """Nothing left to do: the code was taken from the store when it was presented."""

    def authenticate_user(self, authorization_code: IssuedCode) -> Person | None:
        return anyio.from_thread.run(  # type: ignore[no-any-return]
            self.server.codes.person, authorization_code.user_id, authorization_code.auth_time
        )


def person_claims(person: Person) -> dict[str, Any]:
    """The claims a person's token carries besides RFC 9068's: who (``user``, ``name``) and, for a
    coordinator, the sites (``site_codes``)."""
    user = person.user
    claims: dict[str, Any] = {"user": user.id, "name": user.display_name}
    if user.role is Role.COORDINATOR:
        claims["site_codes"] = list(user.site_codes)
    return claims
