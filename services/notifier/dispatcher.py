"""The dispatcher: the background loop that turns pending notifications into emails.

Per batch: claim due notifications (``sending``, under a lease, in a short transaction), then deliver
them concurrently: fetch the contact details they need from intake (once per referral in the batch),
render, send over SMTP. Outcomes are recorded as they come in, those that arrive together in one
transaction: ``sent`` (with one ``referral.notified`` version 2 per referral of that transaction,
listing its emails), ``skipped`` with the reason, back to ``pending`` with a later ``next_attempt_at``,
or ``failed`` with a dead letter. An outcome waits at most ``RECORD_GATHER_S`` for others to join it;
if the shared transaction fails, each is recorded on its own (then each email has its own event).
No transaction is open while the network is used.

Exactly once: a row is claimed by one dispatcher at a time (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
database write lock on SQLite), and an outcome is written only while the claim is still ours. The one
duplicate window is a crash after the SMTP server accepted the message and before ``sent`` commits: the
lease then runs out and the email is sent again, with the same Message-ID, so receiving mail systems can
drop the copy. Recording outcomes together widens that window by at most ``RECORD_GATHER_S``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import SERVICE, store
from services.notifier.config import NotifierSettings
from services.notifier.contacts import Contact, ContactsClient
from services.notifier.domain import (
    State,
    choose_language,
    gives_up,
    mask_email,
    needs_contact,
    patient_skip_reason,
    retry_delay_s,
)
from services.notifier.mail import DeliveryError, Mailer, Templates, build_message
from services.notifier.store import Notification
from shared import tracing
from shared.db import Database
from shared.dead_letters import DeadLetter, FailedNotification
from shared.events import (
    Envelope,
    EventData,
    NotifiedEmail,
    RecipientRole,
    ReferralInfoRequestOpened,
    ReferralNotifiedV2,
    ReferralProgressed,
    ReferralRouted,
    ReferralSiteDecided,
    UnknownEventType,
    dead_letter_topic,
)
from shared.observability import metrics, redact, referral_context
from shared.outbox import OutboxRecord, add_event, wake_relay
from shared.retry import briefly, keep_working
from shared.wakeup import Wakeup

log = logging.getLogger(__name__)

# How long the outcomes already in wait for the rest of their batch before being committed without it.
RECORD_GATHER_S = 0.2


@dataclass(frozen=True, slots=True)
class Delivered:
    recipient: str
    language: str


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed notification and how its delivery went, waiting to be recorded."""

    row: Notification
    envelope: Envelope | None  # None when the stored source event is unreadable
    outcome: Delivered | Skipped | DeliveryError
    traceparent: str | None = None  # the send's span: the notified event continues its trace

    def context(self) -> AbstractContextManager[None]:
        return referral_context(self.row.referral_id, self.envelope.trace if self.envelope else None)


class BatchContacts:
    """Contact details for one dispatch batch: one read for all the referrals whose rows need them
    (the patient's and the referrer's email), made when the first row asks, awaited by each and dropped
    with the batch. Nothing outlives the batch: contact details are PHI and the notifier does not keep
    them. A failed read fails every row that needed it; each is tried again later."""

    def __init__(self, client: ContactsClient, rows: Collection[Notification]) -> None:
        self.client = client
        self.referral_ids = {row.referral_id for row in rows}
        self.traces = [tracing.context_of(row.traceparent) for row in rows]
        self._read: asyncio.Task[dict[uuid.UUID, Contact]] | None = None

    async def fetch(self, referral_id: uuid.UUID) -> Contact:
        if self._read is None:
            self._read = asyncio.create_task(self._read_all())
        # Shielded: one row's delivery timing out must not cancel the read its siblings await.
        contact = (await asyncio.shield(self._read)).get(referral_id)
        if contact is None:
            raise DeliveryError("intake has no such referral")
        return contact

    async def _read_all(self) -> dict[uuid.UUID, Contact]:
        """The one read, in a span of its own: the child of the rows' trace, or linked to each of
        theirs when the batch gathered several referrals (the read belongs to no one referral)."""
        parent, links = tracing.batch_parent(self.traces)
        with tracing.tracer(SERVICE).start_as_current_span(
            "contacts read",
            context=parent,
            links=links,
            attributes={"trialroute.referral_count": len(self.referral_ids)},
        ):
            return await self.client.fetch(self.referral_ids)

    def close(self) -> None:
        """Drop the batch's read (cancelled if still running, its failure collected)."""
        read, self._read = self._read, None
        if read is None:
            return
        if read.done():
            if not read.cancelled():
                read.exception()  # retrieved: each awaiting row has had it already
        else:
            read.cancel()


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: NotifierSettings,
        *,
        mailer: Mailer,
        templates: Templates,
        contacts: ContactsClient,
        consumer_name: str = "trialroute-notifier-dispatcher",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.mailer = mailer
        self.templates = templates
        self.contacts = contacts
        self.consumer_name = consumer_name
        self.clock = clock
        self.record_gather_s = RECORD_GATHER_S

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; a database outage pauses the loop, it never ends it. Woken by
        the commit that makes an email due (``store.EMAILS_CHANNEL``); polls every
        ``dispatch_interval_s`` for retries that come due and as the safety net (and on SQLite)."""
        async with Wakeup(self.db, store.EMAILS_CHANNEL).running(stop) as wake:
            await keep_working(
                stop,
                self.dispatch_once,
                idle_s=self.settings.dispatch_interval_s,
                on_failure=_pass_failed,
                wake=wake,
                gather_s=self.settings.dispatch_gather_s,
                batch=self.settings.dispatch_batch,
            )

    async def dispatch_once(self) -> int:
        """Claim one batch of due notifications, deliver them concurrently and record the outcomes;
        returns how many were claimed."""
        async with self.db.session() as session:
            rows = await store.claim_due(
                session,
                is_sqlite=self.db.is_sqlite,
                now=self.clock(),
                lease_s=self.settings.lease_s,
                limit=self.settings.dispatch_batch,
            )
        if not rows:
            return 0
        needing = [r for r in rows if needs_contact(cast(RecipientRole, r.recipient_role))]
        contacts = BatchContacts(self.contacts, needing)
        pending = {asyncio.ensure_future(self._attempt(row, contacts)) for row in rows}
        try:
            while pending:
                # Outcomes are committed together, but none waits long for its slower siblings: every
                # second a sent email stays unrecorded is a second in which a crash would resend it.
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if pending:
                    more, pending = await asyncio.wait(pending, timeout=self.record_gather_s)
                    done |= more
                await self._record_together([task.result() for task in done])
        finally:
            for task in pending:  # only when cancelled (shutdown): the leases run out, nothing is lost
                task.cancel()
            contacts.close()
        return len(rows)

    async def _attempt(self, row: Notification, contacts: BatchContacts) -> Attempt:
        """Deliver one notification; every error becomes its outcome (a ``DeliveryError``)."""
        try:
            envelope = Envelope.model_validate_json(row.source)
        except ValueError:
            return Attempt(row, None, DeliveryError("the stored source event is unreadable", permanent=True))
        span = tracing.tracer(SERVICE).start_as_current_span(
            f"email {row.template}",
            context=tracing.context_of(row.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={
                "trialroute.referral_id": str(row.referral_id),
                "trialroute.notification_id": str(row.id),
                "trialroute.recipient_role": row.recipient_role,
                "trialroute.template": row.template,
                "trialroute.attempt": row.attempts,
            },
        )
        with referral_context(row.referral_id, envelope.trace), span:
            traceparent = tracing.current_traceparent()
            try:
                if row.attempts > self.settings.max_attempts:
                    # Only leases that ran out get here (a crash or hang on every attempt).
                    raise DeliveryError("no outcome recorded within the lease on any attempt", permanent=True)
                outcome: Delivered | Skipped | DeliveryError
                async with asyncio.timeout(self.settings.delivery_timeout_s):
                    outcome = await self._deliver(row, envelope, contacts)
            except DeliveryError as exc:
                outcome = exc
            except TimeoutError:
                outcome = DeliveryError("delivery timed out")
            except Exception as exc:
                log.exception("delivery failed unexpectedly", extra={"notification": row.id})
                outcome = DeliveryError(type(exc).__name__)
        return Attempt(row, envelope, outcome, traceparent)

    async def _deliver(
        self, row: Notification, envelope: Envelope, contacts: BatchContacts
    ) -> Delivered | Skipped:
        try:
            data = envelope.payload()
        except (ValueError, UnknownEventType) as exc:  # pydantic's ValidationError is a ValueError
            unreadable = f"the stored source event is unreadable: {type(exc).__name__}"
            raise DeliveryError(unreadable, permanent=True) from exc
        role = cast(RecipientRole, row.recipient_role)
        contact = await contacts.fetch(row.referral_id) if needs_contact(role) else None
        preferred: str | None = None
        if row.recipient_role == "site":
            if not isinstance(data, ReferralRouted):
                raise DeliveryError(f"no site address in {envelope.type}", permanent=True)
            to = data.site.coordinator_email
        elif row.recipient_role == "referrer":
            assert contact is not None
            to = contact.referrer.email
        else:
            assert contact is not None
            reason = patient_skip_reason(contact.patient.consent_to_contact, contact.patient.email)
            if reason is not None:
                return Skipped(reason)
            to = str(contact.patient.email)
            preferred = contact.patient.preferred_language
        language = choose_language(preferred, self.templates.languages(row.template))
        context = render_context(self.settings, envelope, data, row, contact)
        if isinstance(data, ReferralSiteDecided | ReferralProgressed):
            context["site_label"] = await self._site_name(row.referral_id, data.site_code)
        rendered = self.templates.render(row.template, language, context)
        message = build_message(
            rendered, sender=self.settings.mail_from, to=to, message_id=row.message_id, language=language
        )
        await self.mailer.send(message)
        return Delivered(recipient=mask_email(to), language=language)

    async def _site_name(self, referral_id: uuid.UUID, site_code: str) -> str:
        """The deciding site's name, from the routing it decides on, if the notifier has seen it."""
        async with self.db.session() as session:
            routings = (await store.routings(session, [referral_id])).get(referral_id, [])
        return next((r.site.name for r in routings if r.site.code == site_code), f"Site {site_code}")

    async def _record_together(self, attempts: list[Attempt]) -> None:
        """Commit several outcomes in one transaction (one commit instead of one each); if that fails,
        nothing of it was committed, and each is recorded on its own with ``_record``'s retries."""
        if len(attempts) > 1:
            try:
                async with self.db.session() as session:
                    ours = await self._write(session, attempts, self.clock())
            except Exception as exc:
                log.warning(
                    "could not record %d outcomes together, recording one by one",
                    len(attempts),
                    extra={"error": type(exc).__name__},
                )
            else:
                for attempt in attempts:
                    self._report(attempt, attempt.row.id in ours)
                return
        for attempt in attempts:
            await self._record(attempt)

    async def _record(self, attempt: Attempt) -> None:
        """Commit an outcome, riding out short database blips: after a send, every second the row
        stays uncommitted is a second in which a crash would send the email twice."""
        try:
            async for retrying in briefly(self.settings.lease_s / 4):
                with retrying:
                    async with self.db.session() as session:
                        ours = await self._write(session, [attempt], self.clock())
        except Exception as exc:
            # The lease runs out and another pass tries again (with the same Message-ID).
            with attempt.context():
                log.error("could not record a delivery outcome", extra={"error": type(exc).__name__})
            return
        self._report(attempt, attempt.row.id in ours)

    async def _write(self, session: AsyncSession, attempts: list[Attempt], now: datetime) -> set[int]:
        """Write the outcomes in ``session`` and return the ids of the rows still ours; nothing is
        written for a row whose lease was lost (it belongs to another pass, which records its own)."""
        ours = await store.finish(session, [(a.row, self._outcome(a, now)) for a in attempts], now=now)
        sent: dict[uuid.UUID, list[Attempt]] = {}
        for attempt in attempts:
            row, outcome = attempt.row, attempt.outcome
            if row.id not in ours:
                continue
            if isinstance(outcome, Delivered):
                sent.setdefault(row.referral_id, []).append(attempt)
            elif isinstance(outcome, DeliveryError) and self._gives_up(row, outcome):
                session.add(self._dead_letter(row, _error_text(outcome), now))
                wake_relay(session, SERVICE)
        for emails in sent.values():
            # One referral.notified per referral and transaction, in the trace of its first email.
            add_event(session, notified_event(emails), traceparent=emails[0].traceparent)
        return ours

    def _outcome(self, attempt: Attempt, now: datetime) -> dict[str, Any]:
        """The columns an outcome sets on its row."""
        row, outcome = attempt.row, attempt.outcome
        if isinstance(outcome, Skipped):
            return {"state": State.SKIPPED, "skip_reason": outcome.reason, "last_error": None}
        if isinstance(outcome, Delivered):
            return {
                "state": State.SENT,
                "recipient": outcome.recipient,
                "language": outcome.language,
                "sent_at": now,
                "last_error": None,
            }
        message = _error_text(outcome)
        if self._gives_up(row, outcome):
            return {"state": State.FAILED, "last_error": message}
        delay = retry_delay_s(row.attempts, self.settings.retry_base_s, self.settings.retry_max_s)
        return {
            "state": State.PENDING,
            "last_error": message,
            "next_attempt_at": now + timedelta(seconds=delay),
        }

    def _gives_up(self, row: Notification, outcome: DeliveryError) -> bool:
        return gives_up(row.attempts, self.settings.max_attempts, permanent=outcome.permanent)

    def _report(self, attempt: Attempt, ours: bool) -> None:
        """Metrics and the log line of a committed outcome."""
        row, outcome = attempt.row, attempt.outcome
        with attempt.context():
            if isinstance(outcome, DeliveryError):
                if not ours:
                    return
                give_up = self._gives_up(row, outcome)
                outcome_label = "failed" if give_up else "retried"
                metrics.emails.labels(SERVICE, row.template, row.recipient_role, outcome_label).inc()
                if give_up:
                    metrics.dead_letters.labels(SERVICE, row.source_topic).inc()
                log.warning(
                    "notification failed" if give_up else "notification will be retried",
                    extra={
                        "notification": row.id,
                        "attempts": row.attempts,
                        "error": _error_text(outcome),
                    },
                )
                return
            if not ours:
                log.warning("lease lost before the outcome was recorded", extra={"notification": row.id})
                return
            kind = "skipped" if isinstance(outcome, Skipped) else "sent"
            metrics.emails.labels(SERVICE, row.template, row.recipient_role, kind).inc()
            log.info("notification %s", kind, extra={"notification": row.id, "role": row.recipient_role})

    def _dead_letter(self, row: Notification, error: str, now: datetime) -> OutboxRecord:
        """The notification's dead letter on ``<source topic>.dlq``, published by the relay because it
        is written in the same transaction as ``failed``."""
        letter = DeadLetter.of_value(
            row.source.encode(),
            error=f"DeliveryError: {error}",
            consumer=self.consumer_name,
            topic=self.settings.kafka.topic(row.source_topic),
            key=str(row.referral_id),
            failed_at=now,
            notification=FailedNotification(
                id=row.id,
                recipient_role=row.recipient_role,
                template=row.template,
                message_id=row.message_id,
                attempts=row.attempts,
            ),
        )
        return OutboxRecord(
            event_id=uuid.uuid4(),
            topic=dead_letter_topic(row.source_topic),
            key=str(row.referral_id),
            payload=letter.to_bytes().decode(),
        )


def notified_event(sent: Sequence[Attempt]) -> Envelope:
    """The ``referral.notified`` (version 2) of the emails about one referral recorded as sent in one
    transaction: one event for all of them, in the trace of the first one's source event."""
    first = sent[0]
    assert first.envelope is not None and all(a.row.referral_id == first.row.referral_id for a in sent)
    return Envelope.wrap(
        ReferralNotifiedV2(
            emails=[
                NotifiedEmail(
                    recipient_role=cast(RecipientRole, a.row.recipient_role),
                    template=a.row.template,
                    message_id=a.row.message_id,
                    source_event_id=a.row.source_event_id,
                )
                for a in sent
            ]
        ),
        producer=SERVICE,
        referral_id=first.row.referral_id,
        trace=first.envelope.trace,
    )


OUTCOME_LABELS = {
    "enrolled": "the patient was enrolled",
    "screen_failed": "the patient did not pass the study's screening",
    "not_enrolled": "the patient was not enrolled",
}
"""The site's outcome in words for the referrer's email (the subject id stays with the site and the clinic's
timeline: the email needs none)."""


def site_referral_url(settings: NotifierSettings, referral_id: uuid.UUID) -> str:
    """The referral's page in the site portal: the id only in the URL, never patient identity."""
    return f"{settings.portal_url.rstrip('/')}/referrals/{referral_id}"


def render_context(
    settings: NotifierSettings,
    envelope: Envelope,
    data: EventData,
    row: Notification,
    contact: Contact | None,
) -> dict[str, Any]:
    """What a template may use. Patient identity (the given name) only ever reaches the patient's own
    email; the site's email is rendered without any contact lookup."""
    context: dict[str, Any] = {
        "study": settings.study_name,
        "referral_id": str(envelope.referral_id),
        "previous_site": row.previous_site,
    }
    if isinstance(data, ReferralRouted):
        context.update(
            site=data.site.model_dump(),
            distance_km=data.distance_km,
            rank=data.rank,
            decision=data.decision,
            decision_label=data.decision.replace("_", " "),
            criteria_to_confirm=list(data.criteria_to_confirm),
            note=data.note,
            clinic_id=data.clinic_id,
            referrer=data.referrer.model_dump(),
            site_referral_url=site_referral_url(settings, envelope.referral_id),
        )
    elif isinstance(data, ReferralSiteDecided):
        context.update(
            decision=data.decision,
            reason=data.reason,
            enrolled=data.enrolled,
            site_code=data.site_code,
            site_label=f"Site {data.site_code}",
            referrer=None,
        )
    elif isinstance(data, ReferralProgressed):
        context.update(
            step=data.step,
            step_label=OUTCOME_LABELS.get(data.step, data.step.replace("_", " ")),
            reason=data.reason,
            site_code=data.site_code,
            site_label=f"Site {data.site_code}",
            referrer=None,
        )
    elif isinstance(data, ReferralInfoRequestOpened):
        request = data.request
        context.update(
            origin=request.origin,
            site_code=request.site_code,
            revision=request.revision,
            items=[item.model_dump() for item in request.items],
            has_question=request.text is not None,
            referrer=None,
        )
    if contact is not None and row.recipient_role == "referrer":
        context["referrer"] = {"name": contact.referrer.name, "email": contact.referrer.email, "phone": None}
    if contact is not None and row.recipient_role == "patient":
        context["patient_given_name"] = contact.patient.given_name
    return context


def _pass_failed(error: BaseException) -> None:
    log.warning("dispatcher pass failed, retrying", extra={"error": type(error).__name__})


def _error_text(error: DeliveryError) -> str:
    """An error as stored and logged: addresses redacted, at most 1,000 characters."""
    return redact(str(error))[:1000]
