"""The auth service's settings (prefix ``AUTH_``), read once at start-up."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class WebClient(BaseModel):
    """A portal's pages that sign people in (authorization code grant with PKCE S256): registered in
    settings, not in the store, because each is part of a deployment (its URL is)."""

    client_id: str
    redirect_uris: list[str] = Field(min_length=1, description="compared exactly")
    audiences: list[str] = Field(min_length=1, description="the services its users' tokens are for")
    scopes: list[str] = Field(description="the most its users' tokens carry (each gets its role's share)")
    secret: SecretStr | None = Field(
        default=None, description="a confidential client's secret; none: a public client (PKCE only)"
    )

    @field_validator("redirect_uris")
    @classmethod
    def _absolute(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"{uri!r}: an absolute http(s) URL without a fragment")
        return uris


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    port: int = 8000
    database_url: str = "sqlite+aiosqlite:///.run/data/auth.db"
    issuer: str = Field(
        default="http://127.0.0.1:8000",
        description="the 'iss' of every token and the base of the metadata URLs; resource servers set "
        "OAUTH_ISSUER to the same value",
    )
    token_lifetime_s: int = Field(default=300, ge=1, le=3600, description="access token 'exp' - 'iat'")
    key_publish_delay_s: int = Field(
        default=60, ge=0, description="a new signing key is in the JWKS this long before it signs"
    )
    key_retire_leeway_s: int = Field(
        default=60, ge=0, description="an old key stays published this long after its last token expired"
    )
    key_cache_s: float = Field(default=5.0, ge=0, description="how long a process trusts its key ring")
    key_size: int = Field(default=2048, ge=2048)
    key_encryption_secret: SecretStr = Field(
        default=SecretStr("development-only-key-encryption-secret"),
        description="encrypts the signing keys' private PEM at rest (PKCS#8); changing it orphans them",
    )
    assertion_max_lifetime_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="a client assertion's 'exp' at most this far ahead (SMART: 5 min)",
    )
    assertion_leeway_s: int = Field(
        default=30, ge=0, le=300, description="clock skew allowed on a client assertion's 'exp' and 'nbf'"
    )
    client_jwks_cache_s: float = Field(
        default=300.0, ge=0, description="how long a client's fetched JWK Set is trusted"
    )
    client_jwks_refetch_s: float = Field(
        default=10.0,
        ge=0,
        description="an unknown 'kid' re-fetches a client's JWK Set at most this often (spares its server)",
    )
    client_jwks_timeout_s: float = Field(default=5.0, gt=0, description="fetching a client's JWK Set")
    throttle_window_s: float = Field(default=60.0, gt=0, description="sliding window for failed logins")
    throttle_client_failures: int = Field(
        default=5, ge=1, description="per client id from one address, in the window"
    )
    throttle_address_failures: int = Field(default=20, ge=1, description="per address, any client ids")

    web_clients: list[WebClient] = Field(
        default_factory=list,
        description="the portals whose pages sign people in (JSON list: client_id, redirect_uris, "
        "audiences, scopes, optional secret)",
    )
    user_token_lifetime_s: int = Field(
        default=900, ge=60, le=3600, description="a person's access token 'exp' - 'iat'"
    )
    session_idle_s: int = Field(
        default=1800, ge=10, description="a sign-in session ends after this long without use"
    )
    code_lifetime_s: int = Field(default=60, ge=5, le=600, description="an authorization code's life")
    password_link_lifetime_s: int = Field(
        default=72 * 3600, ge=60, description="how long a set-password link works (once)"
    )
    totp_required: bool | None = Field(
        default=None,
        description="coordinators and ops must enrol a TOTP second factor; default: on in production",
    )
    signin_account_failures: int = Field(
        default=5, ge=1, description="failed sign-ins per account from one address, in the window"
    )
    signin_address_failures: int = Field(
        default=20, ge=1, description="failed sign-ins from one address, any accounts, in the window"
    )

    @property
    def requires_totp(self) -> bool:
        return self.totp_required if self.totp_required is not None else self.environment == "production"

    @property
    def public_base(self) -> str:
        """Where browsers reach the auth service (its pages, the authorization endpoint)."""
        return (self.public_url or self.issuer).rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        return self.public_base.startswith("https://")

    @property
    def authorization_url(self) -> str:
        return f"{self.public_base}/oauth/authorize"

    def web_client(self, client_id: str) -> WebClient | None:
        return next((c for c in self.web_clients if c.client_id == client_id), None)

    @property
    def token_url(self) -> str:
        return f"{self.issuer.rstrip('/')}/oauth/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer.rstrip('/')}/.well-known/jwks.json"
