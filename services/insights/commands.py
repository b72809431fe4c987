"""Insights' one use case: fold a transaction's events into the fact rows.

Order-free by construction, so that a late or repeated event cannot corrupt the read model: the topics
are consumed independently (a referral's ``referral.screened`` can arrive before its
``referral.submitted``), and the consumer loop records event ids, so a redelivery is skipped before it
gets here. Each column takes the earliest time of a step (``domain.earliest``), the latest of a state
(``domain.latest``), or the values of the highest (revision, occurred_at) screening and (revision, rank)
routing; a decline is counted once per site. Whatever the order, the rows end the same.

Locks: the referral rows are created (if missing) and locked in referral-id order before anything is
read or written, and every other row is written only under its referral's lock: one lock order for
every writer (consumers of different partitions and topics), so no deadlock and no lost update.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from services.insights.domain import earliest, latest
from services.insights.store import CriterionFact, ReferralFact, SiteFact
from shared.events import (
    OUTCOME_STEPS,
    Envelope,
    EventData,
    ReferralAmended,
    ReferralProgressed,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralSubmitted,
    ReferralUnroutable,
    ReferralWaitlisted,
    ReferralWithdrawn,
)
from shared.handlers import PoisonMessage
from shared.store import table_of, utcnow

FOLDED: tuple[type[EventData], ...] = (
    ReferralSubmitted,
    ReferralAmended,
    ReferralWithdrawn,
    ReferralScreened,
    ReferralRouted,
    ReferralWaitlisted,
    ReferralUnroutable,
    ReferralSiteDecided,
    ReferralProgressed,
)
"""The events the funnel is made of."""

_EPOCH = datetime.min.replace(tzinfo=UTC)


def clinic_of(envelope: Envelope, data: EventData) -> str:
    clinic_id = getattr(data, "clinic_id", None)
    if not isinstance(clinic_id, str):  # every folded event names its clinic; a registry bug otherwise
        raise PoisonMessage(f"{envelope.type} names no clinic")
    return clinic_id


async def record(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
    """Fold ``items`` (a transaction's new events, in order) into the fact rows."""
    if not items:
        return
    clinics = {envelope.referral_id: clinic_of(envelope, data) for envelope, data in items}
    ids = sorted(clinics)
    facts = await _lock_facts(session, ids, clinics)
    sites = _Sites(session, await _site_facts(session, ids))
    criteria: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for envelope, data in items:
        fact = facts[envelope.referral_id]
        _fold(fact, sites, criteria, envelope, data)
        fact.updated_at = utcnow()
    for referral_id in sorted(criteria):
        await session.execute(delete(CriterionFact).where(col(CriterionFact.referral_id) == referral_id))
        rows = [
            {"referral_id": referral_id, "criterion_id": c, "verdict": v} for c, v in criteria[referral_id]
        ]
        if rows:
            await session.execute(insert(CriterionFact), rows)


async def _lock_facts(
    session: AsyncSession, ids: list[uuid.UUID], clinics: dict[uuid.UUID, str]
) -> dict[uuid.UUID, ReferralFact]:
    """The referrals' rows, made if missing and locked, in id order (SQLite: its one writer)."""
    table = table_of(ReferralFact)
    now = utcnow()
    values = [{"referral_id": i, "clinic_id": clinics[i], "updated_at": now} for i in ids]
    dialect = session.get_bind().dialect.name
    statement = (
        postgresql.insert(table).on_conflict_do_nothing(index_elements=[table.c.referral_id])
        if dialect == "postgresql"
        else sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.referral_id])
    )
    await session.execute(statement, values)
    query = (
        select(ReferralFact)
        .where(col(ReferralFact.referral_id).in_(ids))
        .order_by(col(ReferralFact.referral_id))
        .with_for_update()
    )
    return {fact.referral_id: fact for fact in (await session.execute(query)).scalars()}


async def _site_facts(session: AsyncSession, ids: list[uuid.UUID]) -> dict[tuple[uuid.UUID, str], SiteFact]:
    query = select(SiteFact).where(col(SiteFact.referral_id).in_(ids))
    return {(row.referral_id, row.site_code): row for row in (await session.execute(query)).scalars()}


class _Sites(dict[tuple[uuid.UUID, str], SiteFact]):
    """The (referral, site) rows of a transaction's referrals; a new one joins the session."""

    def __init__(self, session: AsyncSession, rows: dict[tuple[uuid.UUID, str], SiteFact]) -> None:
        super().__init__(rows)
        self.session = session

    def of(self, referral_id: uuid.UUID, site_code: str) -> SiteFact:
        row = self.get((referral_id, site_code))
        if row is None:
            row = self[(referral_id, site_code)] = SiteFact(referral_id=referral_id, site_code=site_code)
            self.session.add(row)
        return row


def _fold(
    fact: ReferralFact,
    sites: _Sites,
    criteria: dict[uuid.UUID, list[tuple[str, str]]],
    envelope: Envelope,
    data: EventData,
) -> None:
    at = envelope.occurred_at.astimezone(UTC)
    rid = envelope.referral_id
    if isinstance(data, ReferralSubmitted):
        fact.submitted_at = earliest(fact.submitted_at, at)
        fact.submitted_on = fact.submitted_at.date()
    elif isinstance(data, ReferralWithdrawn):
        fact.withdrawn_at = earliest(fact.withdrawn_at, at)
    elif isinstance(data, ReferralScreened):
        fact.screened_at = earliest(fact.screened_at, at)
        if (data.revision, at) > (fact.screened_revision, fact.screening_occurred_at or _EPOCH):
            fact.screened_revision, fact.screening_occurred_at = data.revision, at
            fact.decision, fact.routable = data.decision, data.routable
            criteria[rid] = [(c.id, c.verdict) for c in data.criteria]
    elif isinstance(data, ReferralRouted):
        fact.routed_at = earliest(fact.routed_at, at)
        fact.routed_last_at = latest(fact.routed_last_at, at)
        site = sites.of(rid, data.site.code)
        site.routed_at = earliest(site.routed_at, at)
        if (data.revision, data.rank) >= (site.revision, site.rank):
            site.revision, site.rank, site.distance_km = data.revision, data.rank, data.distance_km
        if (data.revision, data.rank) > (fact.site_revision, fact.site_rank):
            fact.site_code, fact.site_revision, fact.site_rank = data.site.code, data.revision, data.rank
    elif isinstance(data, ReferralWaitlisted):
        fact.waitlisted_at = earliest(fact.waitlisted_at, at)
    elif isinstance(data, ReferralUnroutable):
        fact.unroutable_at = latest(fact.unroutable_at, at)
    elif isinstance(data, ReferralSiteDecided):
        site = sites.of(rid, data.site_code)
        if data.decision == "accepted":
            site.accepted_at = earliest(site.accepted_at, at)
            fact.accepted_at = earliest(fact.accepted_at, at)
        elif data.decision == "declined":
            if site.declined_at is None:
                fact.declined_sites += 1
            site.declined_at = earliest(site.declined_at, at)
        else:
            site.closed_at = earliest(site.closed_at, at)
            fact.closed_at = earliest(fact.closed_at, at)
            if data.enrolled:
                fact.enrolled_at = earliest(fact.enrolled_at, at)
    elif isinstance(data, ReferralProgressed):
        column = f"{data.step}_at"
        setattr(fact, column, earliest(getattr(fact, column), at))
        if data.step in OUTCOME_STEPS:
            site = sites.of(rid, data.site_code)
            site.freed_at = earliest(site.freed_at, at)
    # ReferralAmended: the row (and its clinic) is all it adds; the screening of the revision follows.
