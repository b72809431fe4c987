"""The auth service's settings (prefix ``AUTH_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


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

    @property
    def token_url(self) -> str:
        return f"{self.issuer.rstrip('/')}/oauth/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer.rstrip('/')}/.well-known/jwks.json"
