"""The eligibility service's settings (prefix ``ELIGIBILITY_``), read once at start-up.

The study settings are the sponsor's to change (``docs/trial/criteria.md``): left unset (``None``), each
takes the value the rule-set file publishes, so a deployment overrides only what the sponsor changed.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.eligibility.domain import Cohort, Ruleset, StudySettings
from services.eligibility.rules import load_ruleset
from shared.settings import ServiceSettings


class EligibilitySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ELIGIBILITY_", extra="ignore")

    port: int = 8002
    database_url: str = "sqlite+aiosqlite:///.run/data/eligibility.db"
    ruleset: str | None = Field(
        default=None, description="rule-set version to screen with, e.g. ucart123-v1; default the newest"
    )
    cohort: Cohort | None = Field(
        default=None, description="the enrolling cohort: dose_escalation or dose_expansion"
    )
    screening_window_days: int | None = Field(
        default=None, ge=0, description="organ-function assessments older than this are 'unknown'"
    )
    route_needs_review: bool | None = Field(
        default=None, description="whether needs_review referrals are routed to a site (flagged)"
    )

    def load_ruleset(self) -> Ruleset:
        """The configured rule set; raises ``LookupError`` at start-up for a version not packaged."""
        return load_ruleset(self.ruleset)

    def study(self, ruleset: Ruleset) -> StudySettings:
        """The study settings in force: the rule set's defaults under this deployment's overrides."""
        return ruleset.settings(
            cohort=self.cohort,
            screening_window_days=self.screening_window_days,
            route_needs_review=self.route_needs_review,
        )
