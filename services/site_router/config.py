"""The site router's settings: environment variables prefixed ``SITE_ROUTER_``, read once at start-up.

Whether a needs-review referral is routed is not configured here: the eligibility service decides it from
the study settings and says so in the screened event's ``routable`` flag.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SiteRouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SITE_ROUTER_", extra="ignore")

    port: int = 8003
    database_url: str = "sqlite+aiosqlite:///.run/data/site_router.db"
    runtime_dir: Path = Field(
        default=Path(".run/site_router"),
        description="runtime files of this service; pgeocode's postal-code index is kept under it",
    )
    warm_countries: list[str] = Field(
        default_factory=list,
        description="countries whose postal-code tables load at start-up; empty (the default): none, each "
        "country's loads on its first lookup",
    )
    index_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="how often the in-memory site index re-reads the sites (other instances change them)",
    )
    finder_rate_per_minute: int = Field(
        default=60, ge=1, description="public site finder requests per client address and minute"
    )
    finder_max_limit: int = Field(default=20, ge=1, description="most sites one finder request returns")
    queue_limit_max: int = Field(default=500, ge=1, description="most referrals one queue page returns")
    intake_url: str = Field(
        default="http://127.0.0.1:8001",
        description="intake's base URL: the portal reads an accepted referral's patient contact there",
    )
    ctgov_default_capacity: int = Field(
        default=3,
        ge=0,
        le=10_000,
        description="capacity of a site first created from a ClinicalTrials.gov record (it has none)",
    )

    @property
    def geonames_index_dir(self) -> Path:
        return self.runtime_dir / "geonames-index"
