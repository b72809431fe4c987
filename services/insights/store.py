"""The insights store: one fact row per referral, one per (referral, site), one per (referral,
criterion) of its current screening. Ids, clinic ids, site codes, decisions, verdicts and times only:
never patient identity, never the referrer's contact (the events carry it; nothing here keeps it).

Every column is written so that the order events arrive in does not matter (``commands``): a step's
time is the earliest occurrence seen, a state's the latest, the screening and site held are those of
the highest revision (then rank). A redelivery changes nothing, and neither does a late event.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlmodel import Field, SQLModel

from shared.consumer import ProcessedEvent
from shared.store import tables, timestamp


class ReferralFact(SQLModel, table=True):
    """Where one referral has been: the funnel counts these rows (``queries``)."""

    __tablename__ = "referral_fact"

    referral_id: uuid.UUID = Field(primary_key=True)
    clinic_id: str = Field(index=True)
    submitted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    submitted_on: date | None = Field(
        default=None, index=True, description="the UTC day of submitted_at: the range filters on it"
    )
    screened_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    screened_revision: int = Field(default=0, description="the revision of the screening held")
    screening_occurred_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    decision: str | None = None
    routable: bool | None = None
    routed_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    routed_last_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    site_code: str | None = Field(default=None, description="the site of the newest routing")
    site_revision: int = 0
    site_rank: int = 0
    declined_sites: int = Field(default=0, description="how many sites declined it")
    waitlisted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    unroutable_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    withdrawn_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    accepted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    contacted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    screening_scheduled_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    consented_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    enrolled_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    screen_failed_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    not_enrolled_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    closed_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    updated_at: datetime = timestamp()


class SiteFact(SQLModel, table=True):
    """One referral at one site: when it was routed there, when and how the site decided, and whether
    the slot it held is free again. Time to first decision and acceptance rate come from these."""

    __tablename__ = "site_fact"

    referral_id: uuid.UUID = Field(primary_key=True)
    site_code: str = Field(primary_key=True, index=True)
    routed_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    revision: int = 0
    rank: int = 0
    distance_km: float | None = None
    accepted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    declined_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    closed_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    freed_at: datetime | None = timestamp(
        nullable=True, now_by_default=False
    )  # an outcome step (enrolled, screen_failed, not_enrolled) ended the referral here


class CriterionFact(SQLModel, table=True):
    """A criterion's verdict in the referral's current screening (replaced by a newer revision's)."""

    __tablename__ = "criterion_fact"

    referral_id: uuid.UUID = Field(primary_key=True)
    criterion_id: str = Field(primary_key=True)
    verdict: str


TABLES = tables(ReferralFact, SiteFact, CriterionFact, ProcessedEvent)
"""No outbox: insights publishes nothing."""
