"""Intake's queries: a clinic's view of its referrals, and the notifier's (logged) view of contacts."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.intake import store
from services.intake.config import IntakeSettings
from services.intake.domain import (
    ACCEPTED_OR_LATER,
    Status,
    accepting_site,
    decode_change_cursor,
    decode_cursor,
    encode_change_cursor,
    encode_cursor,
    sent_emails,
)
from services.intake.schemas import (
    ChangeItem,
    ChangePage,
    ContactList,
    ContactPublic,
    ContactRead,
    ContactReadPage,
    DecisionPublic,
    InformationRequestPublic,
    NotificationPublic,
    PatientContact,
    ReferralPage,
    ReferralPublic,
    ReferralSummary,
    ReferrerContact,
    SitePatientContact,
    SitePublic,
    TimelineItem,
)
from services.intake.store import ContactAccess, InformationRequest, Referral, TimelineEntry
from shared.auth import Principal
from shared.db import Database
from shared.observability import referral_context
from shared.problems import Forbidden, NotFound, Unprocessable

log = logging.getLogger(__name__)


@dataclass
class Queries:
    db: Database
    settings: IntakeSettings

    async def referral(self, principal: Principal, referral_id: uuid.UUID) -> ReferralPublic:
        """The clinic's own referral; another clinic's answers 404 (existence does not leak)."""
        clinic_id = principal.require_clinic()
        async with self.db.session() as session:
            found = await store.referral_with_timeline(session, referral_id, clinic_id)
            if found is None:
                raise NotFound("no such referral for this clinic")
            # The same transaction: on PostgreSQL's default isolation a second statement may see a
            # newer commit, so a request can be a step ahead of the timeline, never behind it.
            requests = (await store.information_requests(session, [referral_id]))[referral_id]
        return _public(*found, requests)

    async def page(
        self,
        principal: Principal,
        *,
        statuses: Sequence[Status],
        updated_since: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> ReferralPage:
        """One page of the clinic's referrals, least recently updated first."""
        clinic_id = principal.require_clinic()
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor)
            except ValueError:
                raise Unprocessable(
                    "1 invalid field(s)", errors=[{"field": "cursor", "reason": "not a cursor of this list"}]
                ) from None
        async with self.db.session() as session:
            rows = await store.list_referrals(
                session,
                clinic_id,
                statuses=[s.value for s in statuses],
                updated_since=updated_since,
                after=after,
                limit=limit + 1,
            )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].updated_at, rows[-1].id) if more else None
        return ReferralPage(items=[_summary(r) for r in rows], next_cursor=next_cursor)

    async def changes(self, principal: Principal, *, cursor: str | None, limit: int) -> ChangePage:
        """The clinic's change feed after ``cursor`` (from the start without one), in feed order: each
        referral's entries in the order recorded. The cursor of the last item (or the same one when
        there is none) comes back as ``next_cursor``."""
        clinic_id = principal.require_clinic()
        after = 0
        if cursor:
            try:
                after = decode_change_cursor(cursor)
            except ValueError:
                raise Unprocessable(
                    "1 invalid field(s)",
                    errors=[{"field": "cursor", "reason": "not a cursor of the change feed"}],
                ) from None
        async with self.db.session() as session:
            rows = await store.changes(session, clinic_id, after=after, limit=limit)
        items = [_change(row) for row in rows]
        return ChangePage(items=items, next_cursor=encode_change_cursor(items[-1].seq if items else after))

    async def contacts(self, principal: Principal, referral_ids: Sequence[uuid.UUID]) -> ContactList:
        """Contact details for the notifier, for a dispatch batch's referrals at once; each read and its
        reader are logged in the same transaction."""
        if principal.clinic_id is not None or principal.site_code is not None:
            raise Forbidden("contact details are for the notifier service, not for a clinic or site token")
        allowed = self.settings.contact_client_ids
        if allowed and principal.client_id not in allowed:
            raise Forbidden("this client may not read contact details")
        async with self.db.session() as session:
            found = await store.contacts(
                session, referral_ids, client_id=principal.client_id, subject=principal.subject
            )
        for contact in found:
            with referral_context(contact.id):
                log.info("contact details read", extra={"client_id": principal.client_id})
        return ContactList(items=[_contact(contact) for contact in found])

    async def site_contact(self, principal: Principal, referral_id: uuid.UUID) -> SitePatientContact:
        """The patient's identity and contact for the coordinator of the site that accepted the referral
        (its timeline's last acceptance, not let go since), once accepted or later. Anything else (before
        acceptance, another site, declined, withdrawn, unknown) is a 404: existence does not leak. The
        read is recorded in ``contact_access_log`` in the same transaction: no answer without its record."""
        codes = principal.require_sites()
        async with self.db.session() as session:
            referral = await store.get_referral(session, referral_id)
            entries = await store.timeline(session, referral_id) if referral is not None else []
            site = accepting_site((e.event_type, e.details) for e in entries)
            if (
                referral is None
                or site is None
                or site not in codes
                or Status(referral.status) not in ACCEPTED_OR_LATER
            ):
                raise NotFound("no such referral for this site")
            session.add(
                ContactAccess(
                    referral_id=referral.id,
                    client_id=principal.client_id,
                    subject=principal.subject,
                    user=principal.user,
                    site_code=site,
                )
            )
        with referral_context(referral.id):
            log.info(
                "contact details read by the site", extra={"client_id": principal.client_id, "site": site}
            )
        consent = referral.consent_to_contact
        return SitePatientContact(
            referral_id=referral.id,
            status=Status(referral.status),
            site_code=site,
            given_name=referral.given_name,
            family_name=referral.family_name,
            date_of_birth=referral.date_of_birth,
            sex=referral.sex,
            phone=referral.phone if consent else None,
            email=referral.email if consent else None,
            postal_code=referral.postal_code,
            country=referral.country,
            preferred_language=referral.preferred_language,
            consent_to_contact=consent,
            referrer=ReferrerContact(name=referral.referrer_name, email=referral.referrer_email),
        )

    async def contact_reads(
        self,
        *,
        referral_id: uuid.UUID | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> ContactReadPage:
        """One page of the contact-read audit log (ops), oldest first."""
        after = 0
        if cursor:
            try:
                after = decode_read_cursor(cursor)
            except ValueError:
                raise Unprocessable(
                    "1 invalid field(s)", errors=[{"field": "cursor", "reason": "not a cursor of this list"}]
                ) from None
        async with self.db.session() as session:
            rows = await store.contact_reads(
                session, referral_id=referral_id, since=since, until=until, after_id=after, limit=limit + 1
            )
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            ContactRead(
                id=r.id or 0,
                referral_id=r.referral_id,
                accessed_at=r.accessed_at,
                client_id=r.client_id,
                subject=r.subject,
                user=r.user,
                site_code=r.site_code,
            )
            for r in rows
        ]
        return ContactReadPage(items=items, next_cursor=encode_read_cursor(items[-1].id) if more else None)


_READS = "reads:"


def encode_read_cursor(last_id: int) -> str:
    """An opaque position in the contact-read log: after entry ``last_id``."""
    return base64.urlsafe_b64encode(f"{_READS}{last_id}".encode()).decode().rstrip("=")


def decode_read_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a cursor of this list") from exc
    number = raw.removeprefix(_READS)
    if not raw.startswith(_READS) or not number.isascii() or not number.isdigit() or len(number) > 18:
        raise ValueError("not a cursor of this list")
    return int(number)


def _contact(contact: store.Contact) -> ContactPublic:
    consent = contact.consent_to_contact
    return ContactPublic(
        referral_id=contact.id,
        status=Status(contact.status),
        patient=PatientContact(
            given_name=contact.given_name,
            family_name=contact.family_name,
            email=contact.email if consent else None,
            preferred_language=contact.preferred_language,
            consent_to_contact=consent,
        ),
        referrer=ReferrerContact(name=contact.referrer_name, email=contact.referrer_email),
    )


def _change(entry: TimelineEntry) -> ChangeItem:
    assert entry.seq is not None and entry.referral_status is not None and entry.referral_revision is not None
    return ChangeItem(
        seq=entry.seq,
        referral_id=entry.referral_id,
        event_id=entry.event_id,
        event=entry.event_type,
        status=Status(entry.referral_status),
        entry_status=Status(entry.status) if entry.status else None,
        revision=entry.referral_revision,
        entry_revision=entry.revision,
        source=entry.source,
        reason=entry.reason,
        occurred_at=entry.occurred_at,
        recorded_at=entry.recorded_at,
        information_request=entry.details.get("information_request"),
    )


def _summary(referral: Referral) -> ReferralSummary:
    return ReferralSummary(
        id=referral.id,
        clinic_reference=referral.clinic_reference,
        status=Status(referral.status),
        status_at=referral.status_at,
        revision=referral.revision,
        created_at=referral.created_at,
        updated_at=referral.updated_at,
    )


def _public(
    referral: Referral, entries: Sequence[TimelineEntry], requests: Sequence[InformationRequest]
) -> ReferralPublic:
    notifications = [
        NotificationPublic(at=e.occurred_at, **sent)
        for e in entries
        if e.event_type == "referral.notified"
        for sent in sent_emails(e.details)
    ]
    return ReferralPublic(
        **_summary(referral).model_dump(),
        study=referral.study,
        referral_day=referral.referral_day,
        clinical=referral.clinical,
        decision=DecisionPublic.model_validate(referral.decision) if referral.decision else None,
        site=SitePublic.model_validate(referral.site) if referral.site else None,
        timeline=[
            TimelineItem(
                at=e.occurred_at,
                event=e.event_type,
                status=Status(e.status) if e.status else None,
                revision=e.revision,
                source=e.source,
                reason=e.reason,
                information_request=e.details.get("information_request"),
            )
            for e in entries
        ],
        notifications=notifications,
        information_requests=[
            InformationRequestPublic.model_validate(r.view(), from_attributes=True) for r in requests
        ],
    )
