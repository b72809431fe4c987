"""The notifier's settings (prefix ``NOTIFIER_``), read once at start-up and passed down."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.auth import Scope
from shared.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    port: int = 8004
    database_url: str = "sqlite+aiosqlite:///.run/data/notifier.db"

    # The notifier's own OAuth client, to read contact details from intake.
    client_id: str = "notifier"
    client_secret: SecretStr = SecretStr("development-only-notifier-secret")
    contact_scopes: list[str] = Field(
        default=[Scope.CONTACT_READ.value],
        description="scopes asked for in the notifier's token; empty asks for all the client may have",
    )
    intake_url: str = "http://127.0.0.1:8001"
    intake_audience: str = "intake"
    contact_timeout_s: float = Field(default=5.0, gt=0)

    # What the emails say and link to.
    portal_url: str = Field(
        default="http://127.0.0.1:8003/portal",
        description="the site portal's public address (served by site_router): the site email links to "
        "the referral's page, <portal_url>/referrals/<referral_id> (an id, never patient identity)",
    )
    study_name: str = "UCART123 (AMELI-01)"

    # SMTP.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = Field(default=False, description="upgrade with STARTTLS; required if true")
    smtp_use_tls: bool = Field(default=False, description="implicit TLS (port 465 style)")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    smtp_connections: int = Field(default=4, ge=1, description="SMTP connections kept open and reused")
    smtp_idle_s: float = Field(
        default=5.0, gt=0, description="an SMTP connection idle longer than this is closed, not reused"
    )
    mail_from: str = "UCART123 study referrals <no-reply@trialroute.example>"
    message_id_domain: str = "trialroute.notifier"

    # Delivery.
    max_attempts: int = Field(default=8, ge=1, description="then the notification is failed")
    retry_base_s: float = Field(default=30.0, gt=0, description="first retry delay; doubles per attempt")
    retry_max_s: float = Field(default=3600.0, gt=0)
    lease_s: float = Field(default=120.0, gt=0, description="how long a claimed notification is ours")
    dispatch_interval_s: float = Field(default=1.0, gt=0, description="poll period when idle")
    dispatch_batch: int = Field(default=20, ge=1)
    dispatch_gather_s: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="after a commit wakes the dispatcher, wait this long for more due emails before a pass "
        "(one contact read and one recording for several referrals; 0: dispatch at once)",
    )

    # Webhooks (clinics' endpoints; services/notifier/webhooks.py).
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="one delivery's HTTP timeout")
    webhook_retry_base_s: float = Field(default=10.0, gt=0, description="first retry; doubles per attempt")
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="longest wait between attempts")
    webhook_retry_window_s: float = Field(
        default=86400.0,
        gt=0,
        description="a delivery still failing this long after it was due is dead-lettered",
    )
    webhook_lease_s: float = Field(default=60.0, gt=0, description="how long a claimed delivery is ours")
    webhook_batch: int = Field(default=20, ge=1)
    webhook_max_endpoints: int = Field(default=20, ge=1, description="endpoints per clinic")
    webhook_allow_http: bool = Field(
        default=False,
        description="accept plain http:// endpoint URLs (tests, local stacks; never production)",
    )
    webhook_allow_private_addresses: bool = Field(
        default=False,
        description="deliver to loopback, link-local and private addresses (tests, local stacks only)",
    )

    @model_validator(mode="after")
    def _webhook_lease_outlasts_a_delivery(self) -> NotifierSettings:
        if self.webhook_lease_s < 2 * self.webhook_timeout_s:
            raise ValueError("webhook_lease_s must be at least twice webhook_timeout_s")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_delivery(self) -> NotifierSettings:
        """A lease that expires mid-send lets another instance send the same email a second time."""
        if self.lease_s < 2 * (self.smtp_timeout_s + self.contact_timeout_s):
            raise ValueError("lease_s must be at least twice smtp_timeout_s + contact_timeout_s")
        return self

    @property
    def delivery_timeout_s(self) -> float:
        """The most one delivery may take: well inside the lease."""
        return self.lease_s / 2
