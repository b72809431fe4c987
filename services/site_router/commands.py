"""The site router's use cases on referrals: a screening arrives, the clinic withdraws, the site accepts,
declines, closes (those on sites themselves are in ``sites.py``).

Each runs in the caller's transaction (the consumer loop's, or a route's ``db.session()``), locks the
referral first and writes its events to the outbox. Locks follow the one order of ``store``: referral
rows, then the waitlist lock, then site rows; a use case that frees a slot takes the waitlist lock before
it, and a transaction handling several referrals (a consumer poll) takes all their locks first
(``hold``). So PostgreSQL never has to abort one of them to break a deadlock.

A re-screen (an amended referral) of a referral the site router already holds:

- still routable and routed: it keeps its site (no churn for the site or the patient) and
  ``referral.routed`` is published again with the new revision, so downstream timelines show where it is;
- no longer routable and routed or waitlisted: the slot or the waitlist place is released;
- accepted: the site owns the outcome; the screening shown to it is updated, nothing is released;
- waitlisted, unroutable or not routed, and routable now: routed as a new referral would be (a
  waitlisted one keeps its place in the queue);
- closed or withdrawn, or an older revision than the one held: ignored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Sequence
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router import SERVICE, routing, store
from services.site_router.directory import SiteDirectory
from services.site_router.domain import (
    FINAL_REFERRAL_STATES,
    AssignmentState,
    ReferralState,
    step_fields_refusal,
    step_refusal,
)
from services.site_router.geo import Geocoder, GeoError, Location
from shared.events import (
    OUTCOME_STEPS,
    EnrolmentStep,
    Envelope,
    ReferralInfoRequested,
    ReferralProgressed,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralWithdrawn,
    SiteDecision,
)
from shared.outbox import add_event
from shared.problems import Conflict, NotFound, Unprocessable
from shared.store import utcnow

log = logging.getLogger(__name__)

Decided = tuple[store.ReferralRecord, store.Assignment]

Progressed = tuple[store.ReferralRecord, store.Assignment, list[store.ReferralStep]]

SiteCodes = str | Collection[str]
"""The caller's site, or the sites a coordinator works for: a referral is theirs when its site is one."""


def _codes(site_codes: SiteCodes) -> frozenset[str]:
    return frozenset({site_codes}) if isinstance(site_codes, str) else frozenset(site_codes)


class Commands:
    """The referral use cases, with the geocoder and the in-memory site index they need."""

    def __init__(self, geocoder: Geocoder, directory: SiteDirectory) -> None:
        self.geocoder = geocoder
        self.directory = directory

    async def locate(self, postal_code: str, country: str) -> Location:
        """Geocode off the event loop: an uncached lookup is a pandas query of a few milliseconds."""
        return await asyncio.to_thread(self.geocoder.locate, postal_code, country)

    # --- events ---------------------------------------------------------------------------------------

    async def hold(self, session: AsyncSession, referral_ids: Sequence[uuid.UUID]) -> None:
        """Before the use cases of a transaction that handles several referrals (a consumer poll): lock
        them all in id order, then take the waitlist lock, as together they may free and reserve slots at
        several sites (see ``store``). Another poll doing the same then waits at its first lock, never
        while holding a site row this one wants; a single referral needs neither step."""
        await store.lock_referrals(session, referral_ids)
        if len(set(referral_ids)) > 1:
            await store.waitlist_lock(session)

    async def screened(
        self, session: AsyncSession, referral_id: uuid.UUID, data: ReferralScreened, trace: str | None
    ) -> None:
        located: Location | str | None = None
        if data.routable:
            try:
                located = await self.locate(data.postal_code, data.country)
            except GeoError as exc:
                located = exc.reason
        referral = await store.lock_referral(session, referral_id)
        history: Sequence[store.Assignment] = ()  # a referral first seen now has no assignments yet
        if referral is None:
            referral = await store.insert_referral(
                session,
                store.ReferralRecord(
                    referral_id=referral_id, clinic_id=data.clinic_id, state=ReferralState.NOT_ROUTED
                ),
            )
        elif referral.state in FINAL_REFERRAL_STATES or referral.revision > data.revision:
            log.info("screening ignored", extra={"state": referral.state, "revision": data.revision})
            return
        else:
            history = await store.assignments_of(session, referral_id)
        referral.clinic_id, referral.revision = data.clinic_id, data.revision
        referral.screening = data.model_dump(mode="json")
        current = store.active(history)
        if not data.routable:
            if current is not None and current.state == AssignmentState.ACCEPTED:
                return  # the site accepted it and decides the outcome; it sees the new screening
            await self._retire(session, referral, current, trace)
            referral.state = ReferralState.NOT_ROUTED
            referral.reason = f"pre-screening decision '{data.decision}' is not routed"
            return
        if current is not None:
            if current.state == AssignmentState.ROUTED:
                await routing.publish_routed(session, referral, current, trace)
            return
        if isinstance(located, str) or located is None:
            await routing.mark_unroutable(session, referral, located or "not located", trace)
            return
        referral.latitude, referral.longitude = located.latitude, located.longitude
        await routing.route(session, referral, self.directory.index, trace, history)

    async def withdrawn(
        self, session: AsyncSession, referral_id: uuid.UUID, data: ReferralWithdrawn, trace: str | None
    ) -> None:
        """Free the slot or the waitlist place; a withdrawal seen before the screening leaves a tombstone
        so that the screening, when it comes, is ignored."""
        referral = await store.lock_referral(session, referral_id)
        if referral is None:
            await store.insert_referral(
                session,
                store.ReferralRecord(
                    referral_id=referral_id,
                    clinic_id=data.clinic_id,
                    state=ReferralState.WITHDRAWN,
                    reason=data.reason,
                ),
            )
            return
        if referral.state in FINAL_REFERRAL_STATES:
            return
        current = store.active(await store.assignments_of(session, referral_id))
        await self._retire(session, referral, current, trace, AssignmentState.WITHDRAWN, data.reason)
        referral.state, referral.reason = ReferralState.WITHDRAWN, data.reason

    async def _retire(
        self,
        session: AsyncSession,
        referral: store.ReferralRecord,
        current: store.Assignment | None,
        trace: str | None,
        state: AssignmentState = AssignmentState.RELEASED,
        reason: str | None = None,
    ) -> None:
        """Take the referral off the waitlist and out of its site's queue; the freed slot goes on."""
        if current is None and referral.state != ReferralState.WAITLISTED:
            return
        await store.waitlist_lock(session)
        await store.dequeue(session, referral.referral_id)
        if current is None:
            return
        await routing.release(session, current, state, reason=reason or "no longer routable")
        await routing.drain_waitlist(session, [current.site_code], trace)

    # --- site decisions -------------------------------------------------------------------------------

    async def accept(self, session: AsyncSession, site_codes: SiteCodes, referral_id: uuid.UUID) -> Decided:
        referral, assignment = await self._site_assignment(session, site_codes, referral_id)
        if assignment.state == AssignmentState.ACCEPTED:
            return referral, assignment
        self._expect(assignment, AssignmentState.ROUTED)
        assignment.state = AssignmentState.ACCEPTED
        assignment.decided_at = assignment.accepted_at = utcnow()
        referral.state = ReferralState.ACCEPTED
        self._decided(session, referral, assignment.site_code, "accepted")
        return referral, assignment

    async def decline(
        self, session: AsyncSession, site_codes: SiteCodes, referral_id: uuid.UUID, reason: str
    ) -> Decided:
        """Free the slot, send the referral to the next nearest site that has not declined it (or the
        waitlist, or unroutable once every site has), and give the slot to the waitlist."""
        referral, assignment = await self._site_assignment(session, site_codes, referral_id)
        site_code = assignment.site_code
        if assignment.state == AssignmentState.DECLINED:
            return referral, assignment
        self._expect(assignment, AssignmentState.ROUTED)
        await store.waitlist_lock(session)
        await routing.release(session, assignment, AssignmentState.DECLINED, reason=reason)
        self._decided(session, referral, site_code, "declined", reason=reason)
        await routing.route(session, referral, self.directory.index, None)
        await routing.drain_waitlist(session, [site_code], None)
        return referral, assignment

    async def close(
        self,
        session: AsyncSession,
        site_codes: SiteCodes,
        referral_id: uuid.UUID,
        enrolled: bool,
        reason: str | None,
    ) -> Decided:
        """The legacy end of a referral (before ``progress``): ``referral.site_decided`` closed, with
        ``enrolled`` as said and no step recorded. Kept for old clients; new ones record the outcome
        with ``progress`` (which also says why, or the subject id). A referral whose outcome was
        recorded by a step is final: closing it again is a 409."""
        referral, assignment = await self._site_assignment(session, site_codes, referral_id)
        site_code = assignment.site_code
        if (
            assignment.state == AssignmentState.CLOSED
            and assignment.enrolled == enrolled
            and not assignment.step
        ):
            return referral, assignment
        self._expect(assignment, AssignmentState.ROUTED, AssignmentState.ACCEPTED)
        await store.waitlist_lock(session)
        await routing.release(session, assignment, AssignmentState.CLOSED, reason=reason, enrolled=enrolled)
        referral.state, referral.reason = ReferralState.CLOSED, reason
        self._decided(session, referral, site_code, "closed", reason=reason, enrolled=enrolled)
        await routing.drain_waitlist(session, [site_code], None)
        return referral, assignment

    async def opened(self, session: AsyncSession, site_code: str, referral_id: uuid.UUID) -> None:
        """A coordinator of the site opened its routed referral in the portal: it is no longer "new".
        No event: nothing anyone else sees changes."""
        await store.mark_opened(session, site_code, referral_id)

    async def ask(
        self,
        session: AsyncSession,
        site_codes: SiteCodes,
        referral_id: uuid.UUID,
        criteria: list[str],
        text: str | None,
    ) -> tuple[uuid.UUID, str]:
        """Queue the site's question for the referring clinic (``referral.info_requested``; intake
        makes it an information request). Only while the referral is routed to this site and not yet
        accepted: after that the clinic can no longer amend it. Returns the event's id and the site."""
        referral, assignment = await self._site_assignment(session, site_codes, referral_id)
        self._expect(assignment, AssignmentState.ROUTED)
        event = ReferralInfoRequested(
            clinic_id=referral.clinic_id,
            site_code=assignment.site_code,
            revision=referral.revision,
            criteria=list(dict.fromkeys(criteria)),
            text=text,
        )
        envelope = Envelope.wrap(event, producer=SERVICE, referral_id=referral_id)
        add_event(session, envelope)
        return envelope.id, assignment.site_code

    async def progress(
        self,
        session: AsyncSession,
        site_codes: SiteCodes,
        referral_id: uuid.UUID,
        step: EnrolmentStep,
        *,
        screening_date: date | None = None,
        subject_id: str | None = None,
        reason: str | None = None,
        recorded_by: str | None = None,
    ) -> Progressed:
        """Record the accepting site's next step to enrolment (``referral.progressed``, same
        transaction). The slot stays held until an outcome (enrolled, screen_failed, not_enrolled),
        which ends the assignment, frees the slot and lets the waitlist take it, as ``close`` does.
        Recording the step the referral already stands at, with the same fields, changes nothing (a
        retry); the order and the fields each step needs are ``domain.step_refusal`` and
        ``domain.step_fields_refusal``. Returns the referral, the assignment and its steps."""
        given = {
            name: value
            for name, value in (
                ("screening_date", screening_date),
                ("subject_id", subject_id),
                ("reason", reason),
            )
            if value is not None
        }
        # Whose referral first: another site's gets 404 whatever its body says, and learns nothing.
        referral, assignment = await self._site_assignment(session, site_codes, referral_id)
        bad_input = step_fields_refusal(step, given)
        if bad_input is not None:
            assert bad_input.field is not None
            raise Unprocessable(
                "1 invalid field(s)", errors=[{"field": bad_input.field, "reason": bad_input.reason}]
            )
        assert assignment.id is not None
        steps = (await store.steps_of(session, [assignment.id]))[assignment.id]
        if steps and assignment.step == step:
            last = steps[-1]
            if (last.screening_date, last.subject_id, last.reason) == (screening_date, subject_id, reason):
                return referral, assignment, steps
        refusal = step_refusal(assignment.state, assignment.step, step)
        if refusal is not None:
            raise Conflict(refusal.reason, state=assignment.state, step=assignment.step)
        recorded = store.ReferralStep(
            assignment_id=assignment.id,
            referral_id=referral_id,
            site_code=assignment.site_code,
            step=step,
            screening_date=screening_date,
            subject_id=subject_id,
            reason=reason,
            recorded_by=recorded_by,
        )
        session.add(recorded)
        assignment.step, assignment.step_at = step, utcnow()
        event = ReferralProgressed(
            clinic_id=referral.clinic_id,
            site_code=assignment.site_code,
            step=step,
            screening_date=screening_date,
            subject_id=subject_id,
            reason=reason,
        )
        routing.publish(session, referral_id, event, None)
        if step in OUTCOME_STEPS:
            await store.waitlist_lock(session)
            await routing.release(
                session, assignment, AssignmentState.CLOSED, reason=reason, enrolled=step == "enrolled"
            )
            referral.state, referral.reason = ReferralState.CLOSED, reason or step
            await routing.drain_waitlist(session, [assignment.site_code], None)
        log.info("referral progressed", extra={"site": assignment.site_code, "step": step})
        return referral, assignment, [*steps, recorded]

    async def _site_assignment(
        self, session: AsyncSession, site_codes: SiteCodes, referral_id: uuid.UUID
    ) -> tuple[store.ReferralRecord, store.Assignment]:
        """The referral and its latest assignment at one of the caller's sites; 404 when none of them
        ever had it (as for a referral that does not exist)."""
        codes = _codes(site_codes)
        referral = await store.lock_referral(session, referral_id)
        history = await store.assignments_of(session, referral_id) if referral else []
        mine = [a for a in history if a.site_code in codes]
        if referral is None or not mine:
            raise NotFound(f"no referral {referral_id} at site {', '.join(sorted(codes))}")
        return referral, mine[-1]

    @staticmethod
    def _expect(assignment: store.Assignment, *states: AssignmentState) -> None:
        if assignment.state not in states:
            raise Conflict(
                f"the referral is {assignment.state} at this site",
                state=assignment.state,
            )

    @staticmethod
    def _decided(
        session: AsyncSession,
        referral: store.ReferralRecord,
        site_code: str,
        decision: SiteDecision,
        *,
        reason: str | None = None,
        enrolled: bool | None = None,
    ) -> None:
        event = ReferralSiteDecided(
            clinic_id=referral.clinic_id,
            site_code=site_code,
            decision=decision,
            reason=reason,
            enrolled=enrolled,
        )
        routing.publish(session, referral.referral_id, event, None)
