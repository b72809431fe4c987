"""The router's own store: sites, the referrals it routes, their assignments to sites, the waitlist.

Concurrency rules (several router instances, several partitions, the site API, all on one database):

- a slot is reserved by one conditional UPDATE (``open_count < capacity AND status = 'recruiting'``)
  whose row count says whether it was won: PostgreSQL re-checks the condition after waiting for a
  concurrent writer, SQLite has one writer at a time; neither can overbook;
- a referral is locked by writing its row first (``lock_referral``), which works on both databases;
- whatever frees slots or puts a referral on the waitlist first takes ``waitlist_lock`` (a PostgreSQL
  transaction advisory lock), so a slot freed while another transaction waitlists cannot go unnoticed.

One lock order, which every transaction follows, so that no two can wait for each other in a cycle:

1. its own referral rows, all of them before anything else, in id order (``lock_referrals`` for a
   consumer poll of several referrals; ``lock_referral`` for one);
2. the waitlist lock;
3. site rows.

A transaction that may take more than one site row (it frees a slot, drains the waitlist, changes a
site, or handles several referrals) takes the waitlist lock before its first site row; one without the
waitlist lock takes at most one site row (its reservation), and that is the last lock it waits for.
Other referrals (a drain routing the waitlist) are taken only with SKIP LOCKED, never waited for. A
conditional UPDATE that finds no room holds no lock, so trying candidates one by one takes just one.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, ForeignKey, Index, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.site_router.domain import ACTIVE_ASSIGNMENT_STATES, AssignmentState, ReferralState
from shared.consumer import ProcessedEvent
from shared.events import SiteRef
from shared.outbox import OutboxRecord
from shared.ratelimit import RateHit
from shared.store import BIGINT, bigint_pk, tables, timestamp, utcnow

_WAITLIST_LOCK_KEY = 0x5172_0001
"""PostgreSQL advisory lock id of the waitlist (any constant unique within this database)."""

_ACTIVE_SQL = "state IN ('routed', 'accepted')"


class Site(SQLModel, table=True):
    __tablename__ = "site"
    __table_args__ = (
        CheckConstraint("capacity >= 0", name="ck_site_capacity"),
        CheckConstraint("open_count >= 0", name="ck_site_open_count"),
        CheckConstraint("status IN ('recruiting', 'paused', 'closed')", name="ck_site_status"),
    )

    code: str = Field(primary_key=True, max_length=32)
    name: str
    address: str | None = None
    city: str
    region: str | None = None
    postal_code: str
    country: str = Field(max_length=2)
    latitude: float
    longitude: float
    coordinator_email: str
    phone: str | None = None
    capacity: int = Field(description="referrals the site holds open at once")
    open_count: int = Field(default=0, description="slots reserved by routed or accepted referrals")
    status: str = "recruiting"
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class ReferralRecord(SQLModel, table=True):
    """A referral as the router knows it: the last screening it consumed and where it stands."""

    __tablename__ = "referral"

    referral_id: uuid.UUID = Field(primary_key=True)
    clinic_id: str
    revision: int = Field(default=0, description="0 when only a withdrawal is known")
    state: str
    reason: str | None = None
    screening: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    latitude: float | None = None
    longitude: float | None = None
    lock_version: int = Field(default=0, description="bumped by lock_referral: the write takes the lock")
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class Assignment(SQLModel, table=True):
    """One routing of a referral to a site and what the site made of it."""

    __tablename__ = "assignment"
    __table_args__ = (
        Index(
            "uq_assignment_active",
            "referral_id",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
        Index("ix_assignment_site_state", "site_code", "state"),
    )

    id: int | None = bigint_pk()
    referral_id: uuid.UUID = Field(index=True)
    site_code: str = Field(foreign_key="site.code")
    rank: int
    distance_km: float
    state: str = AssignmentState.ROUTED
    reason: str | None = None
    enrolled: bool | None = None
    routed_at: datetime = timestamp()
    decided_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    opened_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    """When a coordinator of the site first opened it in the portal: "new" until then."""

    accepted_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    step: str | None = Field(default=None, description="the last step recorded after acceptance")
    step_at: datetime | None = timestamp(nullable=True, now_by_default=False)


class ReferralStep(SQLModel, table=True):
    """One step the accepting site recorded on the way to enrolment (``referral.progressed``). The
    subject id is the study's pseudonym; nothing here identifies the patient."""

    __tablename__ = "referral_step"
    __table_args__ = (
        CheckConstraint(
            "step IN ('contacted', 'screening_scheduled', 'consented', 'enrolled', 'screen_failed', "
            "'not_enrolled')",
            name="ck_referral_step_step",
        ),
    )

    id: int | None = bigint_pk()
    assignment_id: int = Field(
        sa_column=Column(BIGINT, ForeignKey("assignment.id"), nullable=False, index=True)
    )
    referral_id: uuid.UUID = Field(index=True)
    site_code: str
    step: str
    screening_date: date | None = None
    subject_id: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=500)
    recorded_by: str | None = Field(default=None, description="the coordinator's user or client id")
    recorded_at: datetime = timestamp()


class WaitlistEntry(SQLModel, table=True):
    """A referral waiting for a free slot; the id orders the queue (first in, first out)."""

    __tablename__ = "waitlist"

    id: int | None = bigint_pk()
    referral_id: uuid.UUID = Field(unique=True)
    queued_at: datetime = timestamp()


TABLES = tables(
    Site, ReferralRecord, Assignment, ReferralStep, WaitlistEntry, OutboxRecord, ProcessedEvent, RateHit
)
"""``RateHit``: the public site finder's requests per address (``shared.ratelimit``)."""

_NO_SYNC = {"synchronize_session": False}


def is_postgres(session: AsyncSession) -> bool:
    bind = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


# --- locks ----------------------------------------------------------------------------------------------


_LOCKED = "site_router.locked_referrals"
"""``session.info`` key: the referrals this transaction has locked (and loaded) already."""


async def lock_referral(session: AsyncSession, referral_id: uuid.UUID) -> ReferralRecord | None:
    """The referral, locked for this transaction by a write (a row lock on PostgreSQL, the write lock on
    SQLite); None if unknown. One this transaction locked before comes from the session, at no cost."""
    locked: set[uuid.UUID] = session.info.setdefault(_LOCKED, set())
    if referral_id in locked:
        return await session.get(ReferralRecord, referral_id)
    bumped = await session.execute(
        update(ReferralRecord)
        .where(col(ReferralRecord.referral_id) == referral_id)
        .values(lock_version=ReferralRecord.lock_version + 1, updated_at=utcnow())
        .execution_options(**_NO_SYNC)
    )
    if bumped.rowcount == 0:  # type: ignore[attr-defined]
        return None
    query = select(ReferralRecord).where(col(ReferralRecord.referral_id) == referral_id)
    found = (await session.execute(query.execution_options(populate_existing=True))).scalars().first()
    locked.add(referral_id)
    return found


async def lock_referrals(session: AsyncSession, referral_ids: Collection[uuid.UUID]) -> None:
    """Lock the known ones of several referrals in id order, in two statements, before any other lock:
    two transactions that each handle several referrals then never hold one the other waits for. The
    use cases' own ``lock_referral`` then finds them locked. (Unknown ones are inserted later, by the
    use case; only a duplicate delivery could insert the same id concurrently.)"""
    if not referral_ids:
        return
    ids = sorted(set(referral_ids))
    in_order = (
        select(col(ReferralRecord.referral_id))
        .where(col(ReferralRecord.referral_id).in_(ids))
        .order_by(col(ReferralRecord.referral_id))
        .with_for_update()
    )
    await session.execute(
        update(ReferralRecord)
        .where(col(ReferralRecord.referral_id).in_(in_order.scalar_subquery()))
        .values(lock_version=ReferralRecord.lock_version + 1, updated_at=utcnow())
        .execution_options(**_NO_SYNC)
    )
    query = select(ReferralRecord).where(col(ReferralRecord.referral_id).in_(ids))
    found = (await session.execute(query.execution_options(populate_existing=True))).scalars().all()
    session.info.setdefault(_LOCKED, set()).update(r.referral_id for r in found)


async def try_lock_waitlisted(session: AsyncSession, referral_id: uuid.UUID) -> ReferralRecord | None:
    """A waitlisted referral locked without waiting (SKIP LOCKED): another transaction may own it."""
    query = select(ReferralRecord).where(
        col(ReferralRecord.referral_id) == referral_id, col(ReferralRecord.state) == ReferralState.WAITLISTED
    )
    result = await session.execute(
        query.with_for_update(skip_locked=True).execution_options(populate_existing=True)
    )
    return result.scalars().first()


async def waitlist_lock(session: AsyncSession) -> None:
    """Serialise waitlist decisions across instances; SQLite's single writer already does."""
    if is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WAITLIST_LOCK_KEY})


async def insert_referral(session: AsyncSession, record: ReferralRecord) -> ReferralRecord:
    """Insert and flush at once: the new row is locked by this transaction from then on."""
    session.add(record)
    await session.flush()
    session.info.setdefault(_LOCKED, set()).add(record.referral_id)
    return record


# --- slots ----------------------------------------------------------------------------------------------


async def reserve_slot(session: AsyncSession, code: str) -> SiteRef | None:
    """Take one of the site's slots if it is recruiting and has one free; the database decides. The
    site as ``referral.routed`` names it comes back with the slot (no second read of the site)."""
    result = await session.execute(
        update(Site)
        .where(
            col(Site.code) == code,
            col(Site.open_count) < col(Site.capacity),
            col(Site.status) == "recruiting",
        )
        .values(open_count=Site.open_count + 1, updated_at=utcnow())
        .returning(
            col(Site.code), col(Site.name), col(Site.city), col(Site.coordinator_email), col(Site.phone)
        )
        .execution_options(**_NO_SYNC)
    )
    row = result.first()
    if row is None:
        return None
    return SiteRef(
        code=row.code, name=row.name, city=row.city, coordinator_email=row.coordinator_email, phone=row.phone
    )


async def free_slot(session: AsyncSession, code: str) -> None:
    await session.execute(
        update(Site)
        .where(col(Site.code) == code, col(Site.open_count) > 0)
        .values(open_count=Site.open_count - 1, updated_at=utcnow())
        .execution_options(**_NO_SYNC)
    )


async def codes_with_room(session: AsyncSession, codes: Collection[str]) -> set[str]:
    result = await session.execute(
        select(col(Site.code)).where(
            col(Site.code).in_(list(codes)),
            col(Site.status) == "recruiting",
            col(Site.open_count) < col(Site.capacity),
        )
    )
    return set(result.scalars().all())


async def sites_with_room(session: AsyncSession, within: Collection[str] | None = None) -> Sequence[Site]:
    query = select(Site).where(col(Site.status) == "recruiting", col(Site.open_count) < col(Site.capacity))
    if within is not None:
        query = query.where(col(Site.code).in_(list(within)))
    return (await session.execute(query.execution_options(populate_existing=True))).scalars().all()


async def all_site_codes(session: AsyncSession) -> set[str]:
    return set((await session.execute(select(col(Site.code)))).scalars().all())


async def get_site(session: AsyncSession, code: str, *, lock: bool = False) -> Site | None:
    query = select(Site).where(col(Site.code) == code).execution_options(populate_existing=True)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalars().first()


async def list_sites(session: AsyncSession) -> Sequence[Site]:
    return (await session.execute(select(Site).order_by(col(Site.code)))).scalars().all()


# --- assignments ----------------------------------------------------------------------------------------


async def assignments_of(session: AsyncSession, referral_id: uuid.UUID) -> Sequence[Assignment]:
    query = select(Assignment).where(col(Assignment.referral_id) == referral_id).order_by(col(Assignment.id))
    return (await session.execute(query)).scalars().all()


def active(assignments: Sequence[Assignment]) -> Assignment | None:
    return next((a for a in assignments if a.state in ACTIVE_ASSIGNMENT_STATES), None)


def declined_codes(assignments: Sequence[Assignment]) -> set[str]:
    return {a.site_code for a in assignments if a.state == AssignmentState.DECLINED}


async def site_queue(
    session: AsyncSession, site_codes: Collection[str], states: Collection[str], limit: int, offset: int
) -> Sequence[tuple[Assignment, ReferralRecord]]:
    query = (
        select(Assignment, ReferralRecord)
        .join(ReferralRecord, col(ReferralRecord.referral_id) == col(Assignment.referral_id))
        .where(col(Assignment.site_code).in_(list(site_codes)), col(Assignment.state).in_(list(states)))
        .order_by(col(Assignment.routed_at), col(Assignment.id))
        .limit(limit)
        .offset(offset)
    )
    return [(a, r) for a, r in (await session.execute(query)).all()]


async def sites_queue(
    session: AsyncSession, site_codes: Collection[str], closed_limit: int
) -> Sequence[tuple[Assignment, ReferralRecord]]:
    """The portal's queue of several sites: every open assignment (they hold slots, so capacity bounds
    them) and the ``closed_limit`` most recently routed others; oldest first."""
    joined = select(Assignment, ReferralRecord).join(
        ReferralRecord, col(ReferralRecord.referral_id) == col(Assignment.referral_id)
    )
    mine = col(Assignment.site_code).in_(list(site_codes))
    is_open = col(Assignment.state).in_(list(ACTIVE_ASSIGNMENT_STATES))
    open_rows = (await session.execute(joined.where(mine, is_open))).all()
    closed_rows = (
        await session.execute(
            joined.where(mine, ~is_open)
            .order_by(col(Assignment.routed_at).desc(), col(Assignment.id).desc())
            .limit(closed_limit)
        )
    ).all()
    rows = [(a, r) for a, r in [*open_rows, *closed_rows]]
    return sorted(rows, key=lambda row: (row[0].routed_at, row[0].id or 0))


async def mark_opened(session: AsyncSession, site_code: str, referral_id: uuid.UUID) -> None:
    """Note the first time the site opened its routed referral (a conditional write, no lock waited for
    beyond the one row)."""
    await session.execute(
        update(Assignment)
        .where(
            col(Assignment.referral_id) == referral_id,
            col(Assignment.site_code) == site_code,
            col(Assignment.state) == AssignmentState.ROUTED,
            col(Assignment.opened_at).is_(None),
        )
        .values(opened_at=utcnow())
        .execution_options(**_NO_SYNC)
    )


async def steps_of(session: AsyncSession, assignment_ids: Collection[int]) -> dict[int, list[ReferralStep]]:
    """The steps recorded on these assignments, oldest first, by assignment id."""
    found: dict[int, list[ReferralStep]] = {i: [] for i in assignment_ids}
    if not assignment_ids:
        return found
    query = (
        select(ReferralStep)
        .where(col(ReferralStep.assignment_id).in_(list(assignment_ids)))
        .order_by(col(ReferralStep.id))
    )
    for row in (await session.execute(query)).scalars().all():
        found[row.assignment_id].append(row)
    return found


# --- waitlist -------------------------------------------------------------------------------------------


async def enqueue(session: AsyncSession, referral_id: uuid.UUID) -> None:
    """Join the waitlist at its end, unless already on it (a referral keeps its place)."""
    exists = await session.execute(
        select(col(WaitlistEntry.id)).where(col(WaitlistEntry.referral_id) == referral_id)
    )
    if exists.first() is None:
        session.add(WaitlistEntry(referral_id=referral_id))
        await session.flush()


async def dequeue(session: AsyncSession, referral_id: uuid.UUID) -> None:
    await session.execute(
        delete(WaitlistEntry)
        .where(col(WaitlistEntry.referral_id) == referral_id)
        .execution_options(**_NO_SYNC)
    )


async def waitlist(session: AsyncSession, limit: int, after_id: int = 0) -> Sequence[tuple[int, uuid.UUID]]:
    """Waiting referrals, oldest first, from after `after_id` (a page of the FIFO queue)."""
    query = (
        select(col(WaitlistEntry.id), col(WaitlistEntry.referral_id))
        .where(col(WaitlistEntry.id) > after_id)
        .order_by(col(WaitlistEntry.id))
        .limit(limit)
    )
    return [(int(i or 0), r) for i, r in (await session.execute(query)).all()]
