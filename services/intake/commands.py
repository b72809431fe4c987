"""Intake's use cases: the clinic's commands (submit, amend, withdraw) and the status timeline.

``Commands``: each writes its state and its event in one transaction. Routes parse and call one of these.
A command checks what it can before touching the store, then hands its work to the caller's
``Transaction``, which runs it once in one transaction (the API's runs it under the request's
Idempotency-Key, and may give back an earlier run's answer instead). A command returns the referral's
receipt and raises ``shared.problems`` errors; statuses, paths and headers are the API's. The event
carries what may leave intake (see docs/referral.md): never the patient's names, birth date, email or
phone.

``record_status_events``: the other services' status events on the referrals' timelines, in the consumer
loop's transaction. Events of one referral come from several topics, so they may arrive in any order and
concurrently: the referral row is locked, each entry is stored with the time it occurred, and the status
is re-derived from the whole timeline (``domain.project``), never copied from the last event that
happened to arrive.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import SERVICE, store
from services.intake.config import IntakeSettings
from services.intake.domain import (
    REQUESTS_END,
    Status,
    age_in_years,
    asked_facts,
    change_refusal,
    describe,
    missing_facts,
    still_lacking,
)
from services.intake.schemas import AmendmentCreate, ReferralCreate, ReferralReceipt, WithdrawalCreate
from services.intake.store import AnyReferral, InformationRequest, NewEntry, NewReferral, Referral
from shared.auth import Principal
from shared.db import Database
from shared.events import (
    Envelope,
    EventData,
    InformationRequestData,
    ReferralAmended,
    ReferralInfoRequestClosed,
    ReferralInfoRequested,
    ReferralInfoRequestOpened,
    ReferralScreened,
    ReferralStatusChanged,
    ReferralSubmitted,
    ReferralWithdrawn,
    Referrer,
)
from shared.handlers import PoisonMessage
from shared.observability import referral_context
from shared.outbox import add_event
from shared.problems import Conflict, NotFound, Unprocessable
from shared.store import utcnow

log = logging.getLogger(__name__)

Work = Callable[[AsyncSession], Awaitable[ReferralReceipt]]
"""A command's writes, given the transaction's session; the receipt of the referral it wrote."""

Answer = TypeVar("Answer")
Transaction = Callable[[Work], Awaitable[Answer]]
"""Runs a command's ``Work`` once in one transaction and gives back what it made of the receipt."""


@dataclass
class Commands:
    db: Database
    settings: IntakeSettings

    async def submit(
        self,
        principal: Principal,
        payload: ReferralCreate,
        transaction: Transaction[Answer],
        trace: str | None = None,
    ) -> Answer:
        """Store a new referral and queue ``referral.submitted``."""
        clinic_id = principal.require_clinic()
        study_id = self.settings.study_id
        study = payload.study or study_id
        if study != study_id:
            raise Unprocessable(
                "1 invalid field(s)",
                errors=[{"field": "study", "reason": f"unknown study; this service serves {study_id}"}],
            )
        day = utcnow().date()
        if payload.patient.date_of_birth > day:  # the model checks the server's local day; this, UTC's
            raise Unprocessable(
                "1 invalid field(s)",
                errors=[{"field": "patient.date_of_birth", "reason": f"must not be after {day}"}],
            )

        async def create(session: AsyncSession) -> ReferralReceipt:
            referral = _new_referral(payload, principal.client_id, clinic_id, study)
            snapshot = ReferralSubmitted(**_snapshot(referral))
            await self._emit(session, referral, snapshot, Status.RECEIVED, "submitted", trace)
            return _receipt(referral)

        try:
            return await transaction(create)
        except IntegrityError:
            async with self.db.session() as session:
                existing = await store.open_referral_id(session, clinic_id, payload.clinic_reference)
            if existing is None:
                raise
            raise Conflict(
                "an open referral with this clinic_reference exists; amend or withdraw it instead",
                existing_id=str(existing),
            ) from None

    async def amend(
        self,
        principal: Principal,
        referral_id: uuid.UUID,
        body: AmendmentCreate,
        transaction: Transaction[Answer],
        trace: str | None = None,
    ) -> Answer:
        """Replace the clinical block, bump the revision and queue ``referral.amended``."""
        clinic_id = principal.require_clinic()

        async def change(session: AsyncSession) -> ReferralReceipt:
            referral = await _changeable(session, referral_id, clinic_id, "amended")
            referral.revision += 1
            referral.clinical = body.clinical.model_dump(mode="json", exclude_unset=True)
            referral.referral_day = utcnow().date()  # screening windows count from the new version
            reason = f"amended to revision {referral.revision}" + (f": {body.reason}" if body.reason else "")
            snapshot = ReferralAmended(**_snapshot(referral))
            await self._emit(session, referral, snapshot, Status.RECEIVED, reason, trace)
            # A site's question is answered by the clinic's next amendment; a screening's request waits
            # for the screening of this revision (``record_status_events``).
            await _close_requests(session, referral, "answered", trace, origin="site")
            return _receipt(referral)

        return await transaction(change)

    async def withdraw(
        self,
        principal: Principal,
        referral_id: uuid.UUID,
        body: WithdrawalCreate,
        transaction: Transaction[Answer],
        trace: str | None = None,
    ) -> Answer:
        """Withdraw the referral at once and queue ``referral.withdrawn`` (sites free the slot)."""
        clinic_id = principal.require_clinic()

        async def change(session: AsyncSession) -> ReferralReceipt:
            referral = await _changeable(session, referral_id, clinic_id, "withdrawn")
            event = ReferralWithdrawn(clinic_id=clinic_id, reason=body.reason)
            await self._emit(session, referral, event, Status.WITHDRAWN, body.reason or "withdrawn", trace)
            await _close_requests(session, referral, "cancelled", trace)
            return _receipt(referral)

        return await transaction(change)

    async def _emit(
        self,
        session: AsyncSession,
        referral: AnyReferral,
        data: EventData,
        status: Status,
        reason: str,
        trace: str | None,
    ) -> None:
        """Queue the event and put the same fact, under the same id and time, on the timeline."""
        envelope = Envelope.wrap(data, producer=SERVICE, referral_id=referral.id, trace=trace)
        add_event(session, envelope)
        entry = NewEntry(
            referral_id=referral.id,
            event_id=envelope.id,
            event_type=envelope.type,
            status=status.value,
            revision=None if status is Status.WITHDRAWN else referral.revision,
            occurred_at=envelope.occurred_at,
            source=SERVICE,
            reason=reason,
        )
        await store.record(session, referral, entry)
        await _publish_changes(session, [(referral, entry, trace)])


async def _publish_changes(
    session: AsyncSession, changes: list[tuple[AnyReferral, NewEntry, str | None]]
) -> None:
    """Number the new timeline entries in their clinics' change feeds, write them, and queue, for each,
    the ``referral.status_changed`` the notifier delivers by webhook (after folding: it carries the
    status the clinic now sees). Ids, statuses, reasons and times: no patient identity."""
    await store.add_entries(session, [(referral, entry) for referral, entry, _ in changes])
    for referral, entry, trace in changes:
        assert entry.seq is not None and entry.referral_status is not None
        data = ReferralStatusChanged(
            clinic_id=referral.clinic_id,
            seq=entry.seq,
            status=entry.referral_status,
            entry_status=entry.status,
            revision=referral.revision,
            entry_revision=entry.revision,
            reason=entry.reason,
            occurred_at=entry.occurred_at,
            recorded_at=entry.recorded_at,
            source_event_id=entry.event_id,
            source_event_type=entry.event_type,
            information_request=entry.details.get("information_request"),
        )
        add_event(session, Envelope.wrap(data, producer=SERVICE, referral_id=referral.id, trace=trace))


async def record_status_events(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
    """Record status events of other services on their referrals' timelines: the referrals are locked
    and their timelines read once for all of them, and each touched referral is folded once. Their
    information requests are read only for referrals whose events may open or close one."""
    ids = sorted({envelope.referral_id for envelope, _ in items})
    referrals = await store.get_referrals(session, ids, lock=True)
    entries = await store.timelines(session, list(referrals))
    known = {entry.event_id for timeline in entries.values() for entry in timeline}
    touched: set[uuid.UUID] = set()
    added: list[tuple[AnyReferral, NewEntry, str | None]] = []
    follow: list[tuple[Referral, Envelope, EventData]] = []
    for envelope, data in items:
        referral = referrals.get(envelope.referral_id)
        if referral is None:
            # Intake commits a referral before its first event leaves: an unknown id is not ours.
            raise PoisonMessage(f"no referral {envelope.referral_id} in intake")
        clinic_id = getattr(data, "clinic_id", None)
        if clinic_id is not None and clinic_id != referral.clinic_id:
            raise PoisonMessage("the event names another clinic than the referral's")
        if envelope.id in known:
            continue  # already on the timeline (e.g. replayed under another consumer group)
        known.add(envelope.id)
        follow.append((referral, envelope, data))
        if isinstance(data, ReferralInfoRequested):
            continue  # on the timeline as the request it opens
        entry = _entry(envelope, data)
        entries[referral.id].append(entry)
        added.append((referral, entry, envelope.trace))
        touched.add(referral.id)
        with referral_context(envelope.referral_id, envelope.trace):
            log.info("status event recorded", extra={"event_type": envelope.type})
    for referral_id in touched:
        store.fold(referrals[referral_id], entries[referral_id])
    asking = sorted({referral.id for referral, _, data in follow if _may_change_requests(referral, data)})
    requests = await store.information_requests(session, asking) if asking else {}
    for referral, envelope, data in follow:
        found = requests.setdefault(referral.id, [])
        if isinstance(data, ReferralInfoRequested) and any(r.source_event_id == envelope.id for r in found):
            continue  # its request was opened already (e.g. replayed under another consumer group)
        made = _follow_requests(session, referral, found, envelope, data)
        entries[referral.id].extend(entry for entry, _ in made)
        added.extend((referral, entry, trace) for entry, trace in made)
    if added:
        await _publish_changes(session, added)


def _may_change_requests(referral: Referral, data: EventData) -> bool:
    """Whether ``_follow_requests`` may need the referral's stored requests for this event (after
    folding): a site's question (a replay must not open it twice), a screening of the current revision
    after an amendment (it closes the older revisions' requests), or any event once the referral can no
    longer be amended (it cancels the open ones). Otherwise an event can at most open a new request."""
    if isinstance(data, ReferralInfoRequested):
        return True
    if isinstance(data, ReferralScreened) and data.revision == referral.revision and referral.revision > 1:
        return True
    return Status(referral.status) in REQUESTS_END


Made = list[tuple[NewEntry, str | None]]
"""Timeline entries a command added (to number in the change feed), each with its trace."""


def _follow_requests(
    session: AsyncSession,
    referral: Referral,
    requests: list[InformationRequest],
    envelope: Envelope,
    data: EventData,
) -> Made:
    """Open and close the referral's information requests as a new event says (docs/design.md):

    - a site's question opens a request (unless the referral can no longer be amended);
    - a screening of the current revision closes the open screening requests of older revisions:
      ``answered`` when it leaves none of their criteria ``unknown``, else ``superseded``; and with
      decision ``needs_review`` and criteria ``unknown`` it opens one for what is missing;
    - a state in which the clinic can no longer amend (accepted, closed) cancels every open one."""
    made: Made = []
    status = Status(referral.status)
    trace = envelope.trace
    at = _aware(envelope.occurred_at)  # the request follows its cause on the timeline
    if isinstance(data, ReferralInfoRequested):
        if status in REQUESTS_END:
            log.info("site question on a referral that can no longer be amended: not opened")
            return made
        request = InformationRequest(
            referral_id=referral.id,
            clinic_id=referral.clinic_id,
            origin="site",
            revision=referral.revision,
            site_code=data.site_code,
            source_event_id=envelope.id,
            items=[i.model_dump(mode="json") for i in asked_facts(data.criteria)],
            text=data.text,
        )
        made.append(_opened(session, referral, requests, request, trace, at))
    elif isinstance(data, ReferralScreened) and data.revision == referral.revision:
        for request in requests:
            if request.state == "open" and request.origin == "screening" and request.revision < data.revision:
                lacking = still_lacking([i["criterion"] for i in request.items], data.criteria)
                outcome = "superseded" if lacking else "answered"
                made.append(_closed(session, referral, request, outcome, trace, at))
        missing = missing_facts(data.criteria, referral.clinical)
        if data.decision == "needs_review" and missing and status not in REQUESTS_END:
            request = InformationRequest(
                referral_id=referral.id,
                clinic_id=referral.clinic_id,
                origin="screening",
                revision=data.revision,
                source_event_id=envelope.id,
                items=[i.model_dump(mode="json") for i in missing],
            )
            made.append(_opened(session, referral, requests, request, trace, at))
    if status in REQUESTS_END:
        made.extend(
            _closed(session, referral, r, "cancelled", trace, at) for r in requests if r.state == "open"
        )
    return made


async def _close_requests(
    session: AsyncSession, referral: Referral, outcome: str, trace: str | None, *, origin: str | None = None
) -> None:
    """Close the referral's open requests (of ``origin``, or all) in a clinic's command, and number the
    entries this adds in the change feed."""
    found = (await store.information_requests(session, [referral.id]))[referral.id]
    made = [
        _closed(session, referral, r, outcome, trace, utcnow())
        for r in found
        if r.state == "open" and (origin is None or r.origin == origin)
    ]
    if made:
        await _publish_changes(session, [(referral, entry, trace) for entry, trace in made])


def _opened(
    session: AsyncSession,
    referral: Referral,
    requests: list[InformationRequest],
    request: InformationRequest,
    trace: str | None,
    at: datetime,
) -> tuple[NewEntry, str | None]:
    session.add(request)
    requests.append(request)
    view = request.view()
    criteria = ", ".join(i.criterion for i in view.items) or "a question"
    who = f"site {request.site_code}" if request.site_code else "screening"
    reason = f"information requested ({who}): {criteria}"
    event = ReferralInfoRequestOpened(clinic_id=referral.clinic_id, request=view)
    return _request_entry(session, referral, event, view, reason, trace, at), trace


def _closed(
    session: AsyncSession,
    referral: Referral,
    request: InformationRequest,
    outcome: str,
    trace: str | None,
    at: datetime,
) -> tuple[NewEntry, str | None]:
    request.state, request.outcome, request.closed_at = "closed", outcome, utcnow()
    if outcome != "cancelled":
        request.closed_by_revision = referral.revision
    view = request.view()
    event = ReferralInfoRequestClosed(clinic_id=referral.clinic_id, request=view)
    reason = f"information request {outcome}"
    return _request_entry(session, referral, event, view, reason, trace, at), trace


def _request_entry(
    session: AsyncSession,
    referral: Referral,
    event: EventData,
    view: InformationRequestData,
    reason: str,
    trace: str | None,
    at: datetime,
) -> NewEntry:
    """Queue the request's event and put it on the timeline (a notice: no status of its own), occurring
    ``at`` its cause, so that it follows the cause (recorded after it) in timeline order."""
    envelope = Envelope.wrap(event, producer=SERVICE, referral_id=referral.id, trace=trace)
    envelope = envelope.model_copy(update={"occurred_at": at})
    add_event(session, envelope)
    return NewEntry(
        referral_id=referral.id,
        event_id=envelope.id,
        event_type=envelope.type,
        status=None,
        revision=view.revision,
        occurred_at=envelope.occurred_at,
        source=SERVICE,
        reason=reason,
        details={"information_request": view.model_dump(mode="json")},
    )


def _aware(moment: datetime) -> datetime:
    """A producer that forgot the zone: event times are UTC (docs/events.md)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _entry(envelope: Envelope, data: EventData) -> NewEntry:
    described = describe(data)
    occurred_at = _aware(envelope.occurred_at)
    return NewEntry(
        referral_id=envelope.referral_id,
        event_id=envelope.id,
        event_type=envelope.type,
        status=described.status.value if described.status else None,
        revision=described.revision,
        occurred_at=occurred_at,
        source=envelope.producer,
        reason=described.reason,
        details=described.details,
    )


def _new_referral(payload: ReferralCreate, client_id: str, clinic_id: str, study: str) -> NewReferral:
    patient, referrer = payload.patient, payload.referrer
    now = utcnow()
    return NewReferral(
        clinic_id=clinic_id,
        client_id=client_id,
        clinic_reference=payload.clinic_reference,
        study=study,
        referral_day=now.date(),
        created_at=now,
        updated_at=now,
        status_at=now,
        given_name=patient.given_name,
        family_name=patient.family_name,
        date_of_birth=patient.date_of_birth,
        sex=patient.sex,
        email=str(patient.email) if patient.email else None,
        phone=patient.phone,
        preferred_language=patient.preferred_language,
        postal_code=patient.postal_code,
        country=patient.country,
        consent_to_contact=patient.consent_to_contact,
        referrer_name=referrer.name,
        referrer_email=str(referrer.email),
        referrer_phone=referrer.phone,
        clinical=payload.clinical.model_dump(mode="json", exclude_unset=True),
    )


def _snapshot(referral: AnyReferral) -> dict[str, Any]:
    """The fields of ``referral.submitted``/``referral.amended``: the age, never the birth date."""
    return {
        "clinic_id": referral.clinic_id,
        "revision": referral.revision,
        "referral_day": referral.referral_day,
        "age_years": age_in_years(referral.date_of_birth, referral.referral_day),
        "postal_code": referral.postal_code,
        "country": referral.country,
        "consent_to_contact": referral.consent_to_contact,
        "referrer": Referrer(
            name=referral.referrer_name, email=referral.referrer_email, phone=referral.referrer_phone
        ),
        "clinical": referral.clinical,
    }


async def _changeable(session: AsyncSession, referral_id: uuid.UUID, clinic_id: str, action: str) -> Referral:
    referral = await store.get_referral(session, referral_id, clinic_id=clinic_id, lock=True)
    if referral is None:
        raise NotFound("no such referral for this clinic")
    refusal = change_refusal(Status(referral.status), action)
    if refusal is not None:
        raise Conflict(refusal, current_status=referral.status)
    return referral


def _receipt(referral: AnyReferral) -> ReferralReceipt:
    return ReferralReceipt(
        id=referral.id,
        clinic_reference=referral.clinic_reference,
        status=Status(referral.status),
        revision=referral.revision,
        referral_day=referral.referral_day,
    )
