"""The insights service's settings (prefix ``INSIGHTS_``), read once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import GatherMs, ServiceSettings


class InsightsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INSIGHTS_", extra="ignore")

    port: int = 8005
    consumer_gather_ms: GatherMs = 500  # a read model may lag half a second
    database_url: str = "sqlite+aiosqlite:///.run/data/insights.db"
    default_range_days: int = Field(
        default=30, ge=1, le=3660, description="the range shown when none is asked for: the last N days"
    )
    max_range_days: int = Field(
        default=3660, ge=1, description="the longest range a request may ask for (a 422 beyond)"
    )
