"""Intake's tables and queries. Patient identity and contact live here and nowhere else.

The clinic reference is unique among a clinic's open referrals through a partial unique index (on
PostgreSQL and SQLite alike), so two concurrent submissions of one case cannot both succeed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    BindParameter,
    Column,
    ForeignKey,
    Index,
    Text,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.intake.domain import OPEN_EXCLUDED, Fact, Status, project
from shared.consumer import ProcessedEvent
from shared.events import InformationRequestData
from shared.outbox import OutboxRecord
from shared.store import BIGINT, bigint_pk, table_of, tables, timestamp, utcnow

_OPEN = "status NOT IN ({})".format(", ".join(f"'{s}'" for s in OPEN_EXCLUDED))


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class Referral(SQLModel, table=True):
    __tablename__ = "referrals"
    __table_args__ = (
        Index(
            "uq_referrals_open_reference",
            "clinic_id",
            "clinic_reference",
            unique=True,
            postgresql_where=text(_OPEN),
            sqlite_where=text(_OPEN),
        ),
        Index("ix_referrals_clinic_updated", "clinic_id", "updated_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    clinic_id: str
    client_id: str = Field(description="the OAuth client that submitted it")
    clinic_reference: str
    study: str
    revision: int = 1
    status: str = Status.RECEIVED.value
    status_at: datetime | None = timestamp(nullable=True)
    referral_day: date = Field(description="UTC day the current revision was received")
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    # Identity and contact: never in an event, a log line or a clinic-facing list.
    given_name: str
    family_name: str
    date_of_birth: date
    sex: str | None = None
    email: str | None = None
    phone: str | None = None
    preferred_language: str = "en"
    postal_code: str
    country: str
    consent_to_contact: bool
    referrer_name: str
    referrer_email: str
    referrer_phone: str | None = None
    clinical: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    decision: dict[str, Any] | None = _json()
    site: dict[str, Any] | None = _json()


class TimelineEntry(SQLModel, table=True):
    """One state change or notice, stamped with when it occurred and which service said so.

    ``seq`` is the entry's position in its clinic's change feed (``GET /v1/changes``), numbered by
    ``add_entries`` in the transaction that records it; with it the entry keeps the referral's
    status and revision as they stood once it was recorded (what the clinic saw then)."""

    __tablename__ = "timeline"
    __table_args__ = (
        Index("ix_timeline_referral", "referral_id", "occurred_at"),
        Index("uq_timeline_clinic_seq", "clinic_id", "seq", unique=True),
    )

    id: int | None = bigint_pk()
    referral_id: uuid.UUID = Field(sa_column=Column(ForeignKey("referrals.id"), nullable=False))
    event_id: uuid.UUID = Field(unique=True)
    event_type: str
    status: str | None = None
    revision: int | None = None
    occurred_at: datetime = timestamp()
    recorded_at: datetime = timestamp()
    source: str
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    clinic_id: str | None = None
    seq: int | None = Field(default=None, sa_column=Column(BIGINT, nullable=True))
    referral_status: str | None = None
    referral_revision: int | None = None


@dataclass(slots=True, kw_only=True)
class NewReferral:
    """A referral being submitted, before its row exists: every column of ``Referral``, with the same
    defaults, as plain attributes, written by one cached INSERT (``record``). SQLModel's constructor sets
    each field through the ORM's instrumentation, which cost more than the statement that writes them."""

    id: uuid.UUID = field(default_factory=uuid.uuid4)
    clinic_id: str
    client_id: str
    clinic_reference: str
    study: str
    revision: int = 1
    status: str = Status.RECEIVED.value
    status_at: datetime | None = None
    referral_day: date
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    given_name: str
    family_name: str
    date_of_birth: date
    sex: str | None = None
    email: str | None = None
    phone: str | None = None
    preferred_language: str = "en"
    postal_code: str
    country: str
    consent_to_contact: bool
    referrer_name: str
    referrer_email: str
    referrer_phone: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] | None = None
    site: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _REFERRAL_COLUMNS}


@dataclass(slots=True, kw_only=True)
class NewEntry:
    """A timeline entry being recorded: ``TimelineEntry``'s columns but the id (taken at insert), as plain
    attributes. A transaction's new entries are written together, once numbered, by one cached INSERT
    (``add_entries``), not as ORM objects."""

    referral_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str | None = None
    revision: int | None = None
    occurred_at: datetime
    recorded_at: datetime = field(default_factory=utcnow)
    source: str
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    clinic_id: str | None = None
    seq: int | None = None
    referral_status: str | None = None
    referral_revision: int | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ENTRY_COLUMNS}


AnyReferral = Referral | NewReferral
"""A stored referral (read, possibly locked) or one being submitted."""

_REFERRAL_COLUMNS = tuple(table_of(Referral).c.keys())
_ENTRY_COLUMNS = tuple(name for name in table_of(TimelineEntry).c.keys() if name != "id")
_INSERT_REFERRAL = insert(table_of(Referral))
_INSERT_ENTRY = insert(table_of(TimelineEntry))
"""Built once: executed with every column's value, each compiles once and is taken from the cache."""


class ClinicFeed(SQLModel, table=True):
    """The last position handed out in a clinic's change feed. Its row is locked (by the upsert that
    moves it) until the transaction that took the positions commits, so a clinic's positions commit in
    the order they were taken: a reader that has seen position n can never later find a smaller one."""

    __tablename__ = "clinic_feed"

    clinic_id: str = Field(primary_key=True)
    last_seq: int = Field(default=0, sa_column=Column(BIGINT, nullable=False))


class IdempotencyKey(SQLModel, table=True):
    """A client's Idempotency-Key: in flight (locked) or done (with the response to replay)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_expires", "expires_at"),)

    client_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    fingerprint: str
    state: str = "in_flight"
    lock_token: str | None = None
    locked_until: datetime = timestamp()
    status_code: int | None = None
    response: dict[str, Any] | None = _json()
    created_at: datetime = timestamp()
    expires_at: datetime = timestamp()


class ContactAccess(SQLModel, table=True):
    """Every read of a patient's contact details: who (client, token subject, the person's account),
    when, which referral, and for which site (a coordinator's read; null for the notifier's)."""

    __tablename__ = "contact_access_log"
    __table_args__ = (Index("ix_contact_access_log_accessed", "accessed_at", "id"),)

    id: int | None = bigint_pk()
    referral_id: uuid.UUID = Field(index=True)
    client_id: str
    subject: str | None = None
    user: str | None = Field(default=None, description="the person's account, for a token issued to one")
    site_code: str | None = Field(default=None, description="the accepting site a coordinator read it for")
    accessed_at: datetime = timestamp()


class InformationRequest(SQLModel, table=True):
    """What the referring clinic is asked to send: derived from a ``needs_review`` screening that lacks
    facts, or a site's question. Open until an amendment answers it (docs/design.md), or superseded by a
    newer screening's request, or cancelled when the referral can no longer be amended."""

    __tablename__ = "information_request"
    __table_args__ = (Index("ix_information_request_referral", "referral_id", "opened_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    referral_id: uuid.UUID = Field(sa_column=Column(ForeignKey("referrals.id"), nullable=False))
    clinic_id: str
    origin: str = Field(description="screening or site")
    state: str = "open"
    revision: int = Field(description="the revision it asks about")
    site_code: str | None = None
    source_event_id: uuid.UUID = Field(unique=True, description="the screening or the site's question")
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    outcome: str | None = None
    closed_by_revision: int | None = None
    opened_at: datetime = timestamp()
    closed_at: datetime | None = timestamp(nullable=True, now_by_default=False)

    def view(self) -> InformationRequestData:
        """The request as events, the timeline and the clinic's views carry it."""
        return InformationRequestData.model_validate(
            {
                "id": self.id,
                "origin": self.origin,
                "state": self.state,
                "revision": self.revision,
                "site_code": self.site_code,
                "items": self.items,
                "text": self.text,
                "outcome": self.outcome,
                "closed_by_revision": self.closed_by_revision,
            }
        )


TABLES = tables(
    Referral,
    TimelineEntry,
    ClinicFeed,
    InformationRequest,
    IdempotencyKey,
    ContactAccess,
    OutboxRecord,
    ProcessedEvent,
)


async def get_referral(
    session: AsyncSession, referral_id: uuid.UUID, *, clinic_id: str | None = None, lock: bool = False
) -> Referral | None:
    """The referral, or ``None`` when absent or another clinic's; ``lock`` serialises its writers."""
    query = select(Referral).where(col(Referral.id) == referral_id)
    if clinic_id is not None:
        query = query.where(col(Referral.clinic_id) == clinic_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalars().first()


async def referral_with_timeline(
    session: AsyncSession, referral_id: uuid.UUID, clinic_id: str
) -> tuple[Referral, list[TimelineEntry]] | None:
    """The referral and its timeline read in one statement, hence from one snapshot: a status event
    committed between two reads could otherwise show a timeline newer than the status."""
    query = (
        select(Referral, TimelineEntry)
        .outerjoin(TimelineEntry, col(TimelineEntry.referral_id) == col(Referral.id))
        .where(col(Referral.id) == referral_id, col(Referral.clinic_id) == clinic_id)
        .order_by(col(TimelineEntry.occurred_at), col(TimelineEntry.id))
    )
    rows = (await session.execute(query)).all()
    if not rows:
        return None
    return rows[0][0], [entry for _, entry in rows if entry is not None]


async def open_referral_id(session: AsyncSession, clinic_id: str, reference: str) -> uuid.UUID | None:
    query = select(col(Referral.id)).where(
        col(Referral.clinic_id) == clinic_id,
        col(Referral.clinic_reference) == reference,
        col(Referral.status).not_in(OPEN_EXCLUDED),
    )
    return (await session.execute(query)).scalars().first()


async def timeline(session: AsyncSession, referral_id: uuid.UUID) -> Sequence[TimelineEntry]:
    """The referral's entries in order of occurrence (ties: order of recording)."""
    query = (
        select(TimelineEntry)
        .where(col(TimelineEntry.referral_id) == referral_id)
        .order_by(col(TimelineEntry.occurred_at), col(TimelineEntry.id))
    )
    return (await session.execute(query)).scalars().all()


_IDS: BindParameter[uuid.UUID] = bindparam("ids", expanding=True)
_REFERRALS = select(Referral).where(col(Referral.id).in_(_IDS)).order_by(col(Referral.id))
_LOCK_REFERRALS = _REFERRALS.with_for_update()
_TIMELINES = (
    select(
        col(TimelineEntry.referral_id),
        col(TimelineEntry.event_id),
        col(TimelineEntry.event_type),
        col(TimelineEntry.occurred_at),
        col(TimelineEntry.status),
        col(TimelineEntry.revision),
        col(TimelineEntry.details),
    )
    .where(col(TimelineEntry.referral_id).in_(_IDS))
    .order_by(col(TimelineEntry.occurred_at), col(TimelineEntry.id))
)
"""Built once (a list of ids is one expanding parameter): building a statement per call cost more
than running it."""


async def get_referrals(
    session: AsyncSession, ids: Sequence[uuid.UUID], *, lock: bool = False
) -> dict[uuid.UUID, Referral]:
    """Those of the referrals ``ids`` that exist; ``lock`` takes them in id order (one order for every
    writer: no deadlock)."""
    result = await session.execute(_LOCK_REFERRALS if lock else _REFERRALS, {"ids": list(ids)})
    return {referral.id: referral for referral in result.scalars()}


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """What folding and de-duplicating need of a stored timeline entry (``timelines``): read as plain
    columns, which costs a fraction of loading ORM objects."""

    event_id: uuid.UUID
    event_type: str
    occurred_at: datetime
    status: str | None
    revision: int | None
    details: dict[str, Any]


class Entry(Protocol):
    """A timeline entry as ``fold`` reads it: stored (an ORM row or a ``StoredEntry``) or new."""

    @property
    def event_id(self) -> uuid.UUID: ...
    @property
    def event_type(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def status(self) -> str | None: ...
    @property
    def revision(self) -> int | None: ...
    @property
    def details(self) -> dict[str, Any]: ...


async def timelines(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Entry]]:
    """Each referral's entries in order of occurrence, ties in order of recording (lists the caller
    extends with the entries it records)."""
    found: dict[uuid.UUID, list[Entry]] = {referral_id: [] for referral_id in ids}
    for referral_id, *values in await session.execute(_TIMELINES, {"ids": list(ids)}):
        found[referral_id].append(StoredEntry(*values))
    return found


async def record(session: AsyncSession, referral: AnyReferral, entry: NewEntry) -> None:
    """Re-derive the referral's status, decision and site from all its entries and the new ``entry``
    (written by ``add_entries`` once numbered). A new referral has no other entry: folding this one alone
    writes its row once, with its final state, and reads nothing back."""
    if isinstance(referral, NewReferral):
        fold(referral, [entry])
        await session.execute(_INSERT_REFERRAL, referral.row())
        return
    fold(referral, [*await timeline(session, referral.id), entry])


def fold(referral: AnyReferral, entries: Sequence[Entry]) -> None:
    """Set the referral's status, decision and site from its whole timeline: the stored entries in the
    order ``timeline`` reads them, then the new ones in the order they were added (which is also the
    order their ids will take), so nothing needs writing first."""
    facts = [
        Fact(
            event_type=e.event_type,
            occurred_at=e.occurred_at,
            seq=seq,
            status=Status(e.status) if e.status else None,
            revision=e.revision,
            details=e.details,
        )
        for seq, e in enumerate(entries)
    ]
    view = project(facts, referral.revision)
    # Only what changed is set: each assignment to an ORM row goes through its instrumentation.
    if referral.status != view.status.value:
        referral.status = view.status.value
    if referral.status_at != view.status_at:
        referral.status_at = view.status_at
    if referral.decision != view.decision:
        referral.decision = view.decision
    if referral.site != view.site:
        referral.site = view.site
    referral.updated_at = utcnow()


async def list_referrals(
    session: AsyncSession,
    clinic_id: str,
    *,
    statuses: Sequence[str] = (),
    updated_since: datetime | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
) -> Sequence[Referral]:
    """A page of the clinic's referrals, least recently updated first (keyset pagination)."""
    query = select(Referral).where(col(Referral.clinic_id) == clinic_id)
    if statuses:
        query = query.where(col(Referral.status).in_(statuses))
    if updated_since is not None:
        query = query.where(col(Referral.updated_at) >= updated_since)
    if after is not None:
        at, rid = after
        query = query.where(
            or_(col(Referral.updated_at) > at, and_(col(Referral.updated_at) == at, col(Referral.id) > rid))
        )
    query = query.order_by(col(Referral.updated_at), col(Referral.id)).limit(limit)
    return (await session.execute(query)).scalars().all()


@functools.cache
def _feed_upsert(dialect: str) -> Any:
    """Move a clinic's feed by ``:count`` positions and return the last: built once per dialect."""
    table = table_of(ClinicFeed)
    values: dict[str, Any] = {"clinic_id": bindparam("clinic_id"), "last_seq": bindparam("count")}
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(values)
    moved = {"last_seq": table.c.last_seq + statement.excluded.last_seq}
    upsert = statement.on_conflict_do_update(index_elements=[table.c.clinic_id], set_=moved)
    return upsert.returning(table.c.last_seq)


async def add_entries(session: AsyncSession, changes: Sequence[tuple[AnyReferral, NewEntry]]) -> None:
    """Give new timeline entries their places in their clinics' change feeds, in the order given, stamp
    each with its referral's status and revision as they now stand (call after folding), and write them
    all, in that order, with one INSERT.

    Positions come from the clinic's ``ClinicFeed`` row, moved by one upsert per clinic (clinics in
    sorted order, after the referral locks every writer takes first: one lock order, no deadlock). The
    upsert keeps the row locked until commit, so a clinic's writers take and commit positions one after
    another (SQLite: its single writer does that): positions appear in the order they were handed out.
    A cursor over them never skips an entry that commits late, which one over the timeline's id could
    (ids are taken at insert and committed in any order)."""
    if not changes:
        return
    by_clinic: dict[str, list[tuple[AnyReferral, NewEntry]]] = {}
    for referral, entry in changes:
        by_clinic.setdefault(referral.clinic_id, []).append((referral, entry))
    upsert = _feed_upsert(session.get_bind().dialect.name)
    for clinic_id in sorted(by_clinic):
        entries = by_clinic[clinic_id]
        result = await session.execute(upsert, {"clinic_id": clinic_id, "count": len(entries)})
        last = int(result.scalar_one())
        for offset, (referral, entry) in enumerate(entries):
            entry.clinic_id = clinic_id
            entry.seq = last - len(entries) + 1 + offset
            entry.referral_status = referral.status
            entry.referral_revision = referral.revision
    await session.execute(_INSERT_ENTRY, [entry.row() for _, entry in changes])


async def changes(
    session: AsyncSession, clinic_id: str, *, after: int, limit: int
) -> Sequence[TimelineEntry]:
    """The clinic's change feed after position ``after``, in order."""
    query = (
        select(TimelineEntry)
        .where(col(TimelineEntry.clinic_id) == clinic_id, col(TimelineEntry.seq) > after)
        .order_by(col(TimelineEntry.seq))
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def information_requests(
    session: AsyncSession, referral_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[InformationRequest]]:
    """Each referral's information requests, oldest first."""
    query = (
        select(InformationRequest)
        .where(col(InformationRequest.referral_id).in_(referral_ids))
        .order_by(col(InformationRequest.opened_at), col(InformationRequest.id))
    )
    found: dict[uuid.UUID, list[InformationRequest]] = {referral_id: [] for referral_id in referral_ids}
    for request in (await session.execute(query)).scalars():
        found[request.referral_id].append(request)
    return found


@dataclass(frozen=True, slots=True)
class Contact:
    """What the notifier is given of a referral (``contacts``): its patient's and referrer's contact."""

    id: uuid.UUID
    status: str
    given_name: str
    family_name: str
    email: str | None
    preferred_language: str
    consent_to_contact: bool
    referrer_name: str
    referrer_email: str


_CONTACTS = (
    select(*(table_of(Referral).c[name] for name in Contact.__dataclass_fields__))
    .where(col(Referral.id).in_(_IDS))
    .order_by(col(Referral.id))
)
_INSERT_CONTACT_READ = insert(table_of(ContactAccess))


async def contacts(
    session: AsyncSession, referral_ids: Sequence[uuid.UUID], *, client_id: str, subject: str | None
) -> list[Contact]:
    """The contacts of those of the referrals that exist, in id order, each read logged (who read it:
    ``client_id``, ``subject``) in the same transaction. Plain columns and one INSERT for the log: no
    ORM object, and neither the clinical block nor the decision is read."""
    found = [Contact(*row) for row in await session.execute(_CONTACTS, {"ids": list(referral_ids)})]
    if found:
        now = utcnow()
        reads = [
            {
                "referral_id": contact.id,
                "client_id": client_id,
                "subject": subject,
                "user": None,
                "site_code": None,
                "accessed_at": now,
            }
            for contact in found
        ]
        await session.execute(_INSERT_CONTACT_READ, reads)
    return found


async def contact_reads(
    session: AsyncSession,
    *,
    referral_id: uuid.UUID | None,
    since: datetime | None,
    until: datetime | None,
    after_id: int,
    limit: int,
) -> Sequence[ContactAccess]:
    """The audit log of contact reads, oldest first (by id: the order they were recorded), after
    ``after_id``; filtered by referral and by ``since <= accessed_at < until``."""
    query = select(ContactAccess).where(col(ContactAccess.id) > after_id)
    if referral_id is not None:
        query = query.where(col(ContactAccess.referral_id) == referral_id)
    if since is not None:
        query = query.where(col(ContactAccess.accessed_at) >= since)
    if until is not None:
        query = query.where(col(ContactAccess.accessed_at) < until)
    return (await session.execute(query.order_by(col(ContactAccess.id)).limit(limit))).scalars().all()
