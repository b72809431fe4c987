"""Access tokens as every service sees them: the scopes, the resource-server checks, service tokens.

A resource server trusts only what it verified itself: an RFC 9068 JWT signed RS256 by the configured
issuer (any OIDC issuer: our ``services/auth``, Keycloak, Auth0), for this service's audience, within
its lifetime, carrying the scopes the route needs. Routes declare what they need, and read who asks::

    ClinicReader = Annotated[Principal, Depends(require(Scope.REFERRALS_READ))]

    @router.get("/v1/referrals/{referral_id}")
    async def read_referral(referral_id: UUID, principal: ClinicReader) -> ReferralPublic:
        clinic_id = principal.require_clinic()      # 403 unless the token acts for a clinic
        ...                                         # another clinic's referral answers 404

The validator is the service state's ``token_validator`` (``shared.deps``), which each service's bootstrap
builds. Service-to-service calls get their own token from ``ServiceTokenSource``. A client that signs
in with its own key (a clinic, SMART Backend Services) hands ``BackendServicesJWT`` to authlib's client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import RSAKey

from shared.deps import service_state
from shared.observability import metrics
from shared.problems import Forbidden, ProblemError, Unauthorized
from shared.settings import OAuthSettings

with warnings.catch_warnings():
    # authlib prefers the httpx2 package and warns once, at import, when it falls back to the httpx
    # the project pins (same client API). Silenced for this one import, so no other warning is lost.
    warnings.filterwarnings("ignore", "The httpx module is deprecated", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

log = logging.getLogger(__name__)

__all__ = [
    "ALGORITHM",
    "BackendServicesJWT",
    "IssuerUnavailable",
    "Principal",
    "Scope",
    "ServiceTokenSource",
    "TokenValidator",
    "bearer_scheme",
    "require",
]

ALGORITHM = "RS256"
"""The only signature algorithm accepted: never ``none``, never an HMAC keyed with a public key."""


class Scope(StrEnum):
    """Every scope a trialroute token can carry; routes name these, never bare strings."""

    REFERRALS_WRITE = "referrals:write"
    REFERRALS_READ = "referrals:read"
    SITE_REFERRALS = "site:referrals"
    SITES_ADMIN = "sites:admin"
    OPS = "ops"
    CONTACT_READ = "contact:read"
    SITE_CONTACT = "site:contact"
    ASSESSMENTS_READ = "assessments:read"
    WEBHOOKS_MANAGE = "webhooks:manage"

    @property
    def description(self) -> str:
        return SCOPE_DESCRIPTIONS[self]


SCOPE_DESCRIPTIONS: dict[Scope, str] = {
    Scope.REFERRALS_WRITE: "Submit, amend and withdraw referrals for the clinic the token acts for",
    Scope.REFERRALS_READ: "Read the clinic's own referrals and their status timeline",
    Scope.SITE_REFERRALS: "Read the referrals routed to the site the token acts for; accept or decline them",
    Scope.SITES_ADMIN: "Register sites and change their location, capacity and recruiting status",
    Scope.OPS: "Operations: dead letters, replays, delivery logs",
    Scope.CONTACT_READ: "Read a referral's patient contact details (the notifier, to send its emails)",
    Scope.SITE_CONTACT: "Read the patient's name and contact details of a referral the token's site accepted "
    "(a coordinator, through the portal); every read is audited",
    Scope.ASSESSMENTS_READ: "Read eligibility assessments",
    Scope.WEBHOOKS_MANAGE: "Manage the clinic's webhook endpoints; see and replay their deliveries",
}


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for: a client, its scopes, and the clinic or site it acts for."""

    client_id: str
    subject: str
    scopes: frozenset[str]
    clinic_id: str | None = None
    site_code: str | None = None
    site_codes: frozenset[str] = frozenset()
    """Every site the token acts for: a site client's one, or each site a coordinator works for."""
    user: str | None = None
    """A person's account (a coordinator or ops) when the token was issued to one through the portal."""

    def has(self, *scopes: str) -> bool:
        return set(scopes) <= self.scopes

    def require_clinic(self) -> str:
        """The clinic this token acts for; 403 for a token that acts for none (a site, a service)."""
        if self.clinic_id is None:
            raise Forbidden("this token does not act for a clinic")
        return self.clinic_id

    def require_site(self) -> str:
        """The site this token acts for; 403 for a token that acts for none."""
        if self.site_code is None:
            raise Forbidden("this token does not act for a site")
        return self.site_code

    def require_sites(self) -> frozenset[str]:
        """The sites this token acts for (one or more); 403 for a token that acts for none."""
        if not self.site_codes:
            raise Forbidden("this token does not act for a site")
        return self.site_codes


class IssuerUnavailable(ProblemError):
    """The issuer's keys cannot be fetched and none are cached: no token can be checked (503, with
    Retry-After like a store outage: a client that retries the same request later gets through)."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class TokenValidator:
    """Checks bearer tokens against the issuer's JWKS: signature, ``typ``, ``iss``, ``aud``, time.

    Keys are cached for ``oauth.jwks_cache_s``. A token whose ``kid`` is unknown triggers one
    re-fetch (a rotation publishes new keys before they sign), but only once per unknown ``kid`` and
    never within ``refetch_interval_s`` of the last fetch, so forged ``kid`` values cannot turn the
    service into an amplifier against the issuer.
    """

    def __init__(
        self,
        oauth: OAuthSettings,
        audience: str,
        http: httpx.AsyncClient,
        *,
        refetch_interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not audience:
            raise ValueError("a resource server needs its audience")
        self.oauth = oauth
        self.audience = audience
        self.http = http
        self.refetch_interval_s = refetch_interval_s
        self.clock = clock
        self._keys: dict[str, RSAKey] = {}
        self._fetched_at: float | None = None
        self._expires_at = 0.0
        self._missed: set[str] = set()
        self._lock = asyncio.Lock()
        typ = oauth.token_typ.strip().lower().removeprefix("application/")
        self._typs = {typ, f"application/{typ}"} if typ else set()

    async def validate(self, token: str) -> Principal:
        """The principal of a valid token; ``Unauthorized`` for any token that fails a check (counted
        by reason in ``trialroute_token_failures_total``)."""
        try:
            return await self._validate(token)
        except _Refused as refused:
            metrics.token_failures.labels(self.audience, refused.reason).inc()
            raise refused.error from refused.__cause__

    async def _validate(self, token: str) -> Principal:
        try:
            header = _unverified_header(token)
        except Unauthorized as exc:
            raise _Refused("malformed", exc) from exc.__cause__
        if header.get("alg") != ALGORITHM:
            raise _Refused("algorithm", Unauthorized(f"the token must be signed {ALGORITHM}"))
        if self._typs and str(header.get("typ", "")).lower() not in self._typs:
            raise _Refused("typ", Unauthorized("the token is not an access token (typ)"))
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Refused("kid", Unauthorized("the token names no signing key (kid)"))
        try:
            key = await self._key(kid)
        except Unauthorized as exc:
            raise _Refused("unknown_key", exc) from exc.__cause__
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], registry=_REGISTRY).claims
            self._claims_registry().validate(claims)
        except ExpiredTokenError as exc:
            raise _Refused("expired", Unauthorized("the token has expired")) from exc
        except MissingClaimError as exc:
            raise _Refused("missing_claim", Unauthorized(f"the token lacks the {exc.claim} claim")) from exc
        except ClaimError as exc:
            refusal = Unauthorized(f"the token's {exc.claim} claim is not acceptable")
            raise _Refused(f"claim_{exc.claim}" if exc.claim in _CLAIMS else "claim", refusal) from exc
        except BadSignatureError as exc:
            raise _Refused("signature", Unauthorized("the token's signature does not verify")) from exc
        except JoseError as exc:
            raise _Refused("invalid", Unauthorized(f"the token is invalid ({exc.error})")) from exc
        try:
            return _principal(claims)
        except Unauthorized as exc:
            raise _Refused("client_id", exc) from exc

    async def check(self) -> None:
        """Readiness: the issuer's keys can be fetched."""
        await self._fetch()

    def _claims_registry(self) -> jwt.JWTClaimsRegistry:
        return jwt.JWTClaimsRegistry(
            now=int(self.clock()),
            leeway=self.oauth.leeway_s,
            iss={"essential": True, "value": self.oauth.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
        )

    async def _key(self, kid: str) -> RSAKey:
        if self.clock() >= self._expires_at:
            await self._refresh(expired=self._expires_at)
        if kid not in self._keys and self._may_refetch_for(kid):
            await self._refresh(unknown_kid=kid)
        if not self._keys:
            raise IssuerUnavailable("the token issuer's keys cannot be fetched")
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("the token is signed with an unknown key")
        return key

    def _may_refetch_for(self, kid: str) -> bool:
        since = self.clock() - (self._fetched_at or 0.0)
        return kid not in self._missed and since >= self.refetch_interval_s

    async def _refresh(self, *, expired: float | None = None, unknown_kid: str | None = None) -> None:
        """Fetch once for all waiting requests: whoever gets the lock next finds the work done."""
        async with self._lock:
            if expired is not None and self._expires_at > expired:
                return
            if unknown_kid is not None and not self._may_refetch_for(unknown_kid):
                return
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                # Keep the keys we have (if any); try again only after the re-fetch interval.
                log.warning("could not fetch the issuer's JWKS", extra={"error": type(exc).__name__})
                self._fetched_at = self.clock()
                self._expires_at = self._fetched_at + self.refetch_interval_s
                return
            self._keys = keys
            self._fetched_at = self.clock()
            self._expires_at = self._fetched_at + self.oauth.jwks_cache_s
            if unknown_kid is None:
                self._missed.clear()
            elif unknown_kid not in keys:
                self._missed.add(unknown_kid)

    async def _fetch(self) -> dict[str, RSAKey]:
        response = await self.http.get(self.oauth.resolved_jwks_url, timeout=5.0)
        response.raise_for_status()
        return signing_keys(response.json())


_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat"})
"""Claims named in a refusal's metric label (a bounded set: a token's own claim names are not)."""


class _Refused(Exception):
    """A token refused, with the reason it is counted under."""

    def __init__(self, reason: str, error: Unauthorized) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _unverified_header(token: str) -> dict[str, Any]:
    """The header, read before any key is chosen: only to pick the key and refuse early."""
    try:
        return dict(jws.extract_compact(token.encode("ascii"), registry=_REGISTRY).headers())
    except (JoseError, ValueError, UnicodeError) as exc:
        raise Unauthorized("the token is not a well-formed JWT") from exc


def signing_keys(jwks: Any) -> dict[str, RSAKey]:
    """The JWKS's RSA signature keys by ``kid``; encryption keys and other key types are skipped."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str, RSAKey] = {}
    for entry in jwks["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not entry.get("kid"):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            keys[str(entry["kid"])] = RSAKey.import_key(entry)
        except (JoseError, ValueError) as exc:
            log.warning("skipping a JWK that does not import", extra={"error": type(exc).__name__})
    return keys


def _principal(claims: dict[str, Any]) -> Principal:
    """RFC 9068 claims; ``azp`` and ``scp`` too, for issuers (Keycloak, Auth0, Okta) that use them."""
    client_id = claims.get("client_id") or claims.get("azp")
    if not isinstance(client_id, str) or not client_id:
        raise Unauthorized("the token names no client (client_id)")
    scope = claims.get("scope", "")
    scopes = scope.split() if isinstance(scope, str) else []
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes += [s for s in scp if isinstance(s, str)]
    subject = claims.get("sub")
    clinic_id, site_code, user = claims.get("clinic_id"), claims.get("site_code"), claims.get("user")
    site_code = site_code if isinstance(site_code, str) and site_code else None
    listed = claims.get("site_codes")
    site_codes = {c for c in listed if isinstance(c, str) and c} if isinstance(listed, list) else set()
    if site_code is not None:
        site_codes.add(site_code)
    elif len(site_codes) == 1:
        site_code = next(iter(site_codes))
    return Principal(
        client_id=client_id,
        subject=subject if isinstance(subject, str) and subject else client_id,
        scopes=frozenset(scopes),
        clinic_id=clinic_id if isinstance(clinic_id, str) and clinic_id else None,
        site_code=site_code,
        site_codes=frozenset(site_codes),
        user=user if isinstance(user, str) and user else None,
    )


bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="oauth2_client_credentials",
    description="An RFC 9068 access token (RS256 JWT) from the issuer's token endpoint, obtained with "
    "the OAuth2 client credentials grant. Scopes: "
    + "; ".join(f"`{s.value}`: {s.description}" for s in Scope),
)


def require(*scopes: Scope | str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that yields the caller's ``Principal``: 401 without a valid token, 403 without
    every one of ``scopes``. The scopes appear in the route's OpenAPI security requirement."""
    needed = [str(s) for s in scopes]

    async def principal(
        request: Request,
        # A default, not Annotated: `needed` is local, and annotations are strings in this module.
        credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme, scopes=needed),
    ) -> Principal:
        validator = service_state(request).token_validator
        if validator is None:
            raise RuntimeError("this service checks no tokens: its state has no token_validator")
        if credentials is None:
            metrics.token_failures.labels(validator.audience, "missing").inc()
            raise Unauthorized("a bearer token is required", error="")
        found = await validator.validate(credentials.credentials)
        missing = [s for s in needed if s not in found.scopes]
        if missing:
            metrics.token_failures.labels(validator.audience, "scope").inc()
            raise Forbidden(
                f"the token lacks the scope {' '.join(missing)}",
                headers={
                    "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'
                },
            )
        return found

    return principal


class ServiceTokenError(Exception):
    """The issuer refused or failed to give this service a token."""


class ServiceTokenSource(httpx.Auth):
    """A client-credentials token for calling another service, cached until shortly before it expires.

    Use it as ``httpx.AsyncClient(auth=source)``: every request carries a current token, and a 401
    (say, the token was issued by a key the callee does not know yet) gets one retry with a new token.
    The token request is made by authlib's standard OAuth2 client, so any OIDC issuer serves it.
    """

    def __init__(
        self,
        oauth: OAuthSettings,
        client_id: str,
        client_secret: str,
        audience: str,
        scopes: Iterable[Scope | str],
        *,
        refresh_margin_s: int = 30,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.audience = audience
        self.refresh_margin_s = refresh_margin_s
        self.clock = clock
        self._client = AsyncOAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_basic",  # noqa: S106 (a method name)
            scope=" ".join(str(s) for s in scopes) or None,
            token_endpoint=oauth.resolved_token_url,
            timeout=timeout_s,
            verify=verify,  # the issuer's certificate: shared.tls.client_context
        )
        self._client.register_compliance_hook("access_token_response", _raise_unless_oauth_answer)
        self._lock = asyncio.Lock()

    async def token(self, *, renew: bool = False, replacing: str | None = None) -> str:
        """The current access token, fetched when there is none, it is about to expire, ``renew``
        is set, or it is ``replacing`` (a token a callee refused: concurrent refusals renew it once)."""
        async with self._lock:
            current = self._client.token
            refused = current is not None and replacing is not None and current["access_token"] == replacing
            # No `expires_in` from the issuer: keep the token until a callee answers 401.
            if renew or refused or current is None or self._expiring(current):
                try:
                    # `audience` is what Auth0 expects and services/auth accepts (it also takes RFC 8707
                    # `resource`); Keycloak ignores it and sets `aud` through client scope mappers.
                    await self._client.fetch_token(grant_type="client_credentials", audience=self.audience)
                except httpx.HTTPError as exc:
                    raise ServiceTokenError(f"the token endpoint failed: {type(exc).__name__}") from exc
                except OAuthError as exc:
                    raise ServiceTokenError(f"the issuer refused a token: {exc}") from exc
            token = self._client.token
            if not token or not token.get("access_token"):
                raise ServiceTokenError("the token endpoint returned no access token")
            return str(token["access_token"])

    def _expiring(self, token: Mapping[str, Any]) -> bool:
        """Within the refresh margin of its ``expires_at`` (authlib's ``is_expired``, on ``clock``)."""
        expires_at = token.get("expires_at")
        return isinstance(expires_at, int) and expires_at - self.refresh_margin_s < self.clock()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self.token(replacing=token)}"
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        raise RuntimeError("ServiceTokenSource works with httpx.AsyncClient only")

    async def aclose(self) -> None:
        await self._client.aclose()


class BackendServicesJWT(PrivateKeyJWT):  # type: ignore[misc]  # authlib has no types: Any
    """authlib's ``private_key_jwt`` client authentication (RFC 7523) as SMART Backend Services wants
    it: each assertion names its key (``kid``) and expires within five minutes (authlib's own live an
    hour, which SMART servers, ours included, refuse). The client's ``client_secret`` is its private
    key (a joserfc ``RSAKey`` or ``ECKey``)::

        auth_method = BackendServicesJWT(token_url, kid=key.kid)
        AsyncOAuth2Client("clinic-1", key, token_endpoint_auth_method=auth_method)
    """

    def __init__(
        self, token_endpoint: str | None = None, *, kid: str, alg: str = "RS384", lifetime_s: int = 300
    ) -> None:
        super().__init__(token_endpoint, headers={"kid": kid}, alg=alg)
        self.lifetime_s = lifetime_s

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(  # type: ignore[no-any-return]
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            header=dict(self.headers),
            expires_in=self.lifetime_s,
        )


def _raise_unless_oauth_answer(response: httpx.Response) -> httpx.Response:
    """A token endpoint answers 200 or an RFC 6749 error (400/401); anything else is a failure."""
    if response.status_code not in (200, 400, 401):
        response.raise_for_status()
    return response
