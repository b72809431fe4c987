"""Routing steps shared by every use case: reserve the nearest free slot, waitlist, release, drain.

Each step runs inside the caller's transaction and writes its events to the outbox there, so a routing
and its ``referral.routed`` (or ``waitlisted``, ``unroutable``) commit or vanish together. Callers hold the
referral's lock (``store.lock_referral``) and, before freeing a slot, the waitlist lock: the lock order of
``store`` (referrals, waitlist lock, site rows). Without the waitlist lock, a routing reserves one site at
most (a reservation that finds no room locks nothing); a drain takes other referrals with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router import SERVICE, store
from services.site_router.domain import (
    NEAREST_CANDIDATES,
    AssignmentState,
    ReferralState,
    SiteIndex,
    SiteView,
    confirmation_note,
    criteria_to_confirm,
    declined_by_every_site,
    rank_sites,
)
from shared.events import (
    Envelope,
    EventData,
    ReferralRouted,
    ReferralScreened,
    ReferralUnroutable,
    ReferralWaitlisted,
    SiteRef,
)
from shared.outbox import add_event

log = logging.getLogger(__name__)

WAITLIST_PAGE = 100

WAITLIST_REASON = "no recruiting site has a free slot; the referral is routed as soon as one frees"


def publish(session: AsyncSession, referral_id: uuid.UUID, data: EventData, trace: str | None) -> None:
    add_event(session, Envelope.wrap(data, producer=SERVICE, referral_id=referral_id, trace=trace))


def screening_of(referral: store.ReferralRecord) -> ReferralScreened:
    if referral.screening is None:
        raise ValueError(f"referral {referral.referral_id} has no screening")
    return ReferralScreened.model_validate(referral.screening)


# --- reservation ----------------------------------------------------------------------------------------


Candidate = tuple[str, float]
"""A site code and the patient's distance to it in km."""

Reserved = tuple[str, float, SiteRef]
"""A site whose slot is taken, the patient's distance to it in km, and the site as events name it."""


async def _reserve_first(session: AsyncSession, ranked: Sequence[Candidate]) -> Reserved | None:
    for code, km in ranked:
        if (site := await store.reserve_slot(session, code)) is not None:
            return code, km, site
    return None


async def reserve_nearest(
    session: AsyncSession,
    lat: float,
    lon: float,
    declined: Collection[str],
    index: SiteIndex | None,
) -> Reserved | None:
    """Fast path: the index's nearest sites, filtered by what the database says has room now.

    The nearest candidate with room is the nearest site with room overall, as every nearer site is among
    the candidates; only a site this process has not loaded yet escapes, until the next refresh.
    """
    if index is None or len(index) == 0:
        return None
    ranked = [(r.site.code, r.km) for r in index.nearest(lat, lon, NEAREST_CANDIDATES, declined)]
    room = await store.codes_with_room(session, [code for code, _ in ranked])
    return await _reserve_first(session, [(code, km) for code, km in ranked if code in room])


async def reserve_from_database(
    session: AsyncSession,
    lat: float,
    lon: float,
    declined: Collection[str],
    within: Collection[str] | None = None,
) -> Reserved | None:
    """Authoritative path: every site the database says has room, nearest first."""
    sites = [s for s in await store.sites_with_room(session, within) if s.code not in declined]
    views = [SiteView(s.code, s.latitude, s.longitude, s.status, s.capacity, s.open_count) for s in sites]
    return await _reserve_first(session, [(r.site.code, r.km) for r in rank_sites(lat, lon, views)])


# --- outcomes -------------------------------------------------------------------------------------------


async def route(
    session: AsyncSession,
    referral: store.ReferralRecord,
    index: SiteIndex | None,
    trace: str | None,
    history: Sequence[store.Assignment] | None = None,
) -> None:
    """Send a located referral to the nearest free site it has not been declined by, else waitlist it,
    or make it unroutable when every site has declined it. ``history``: its assignments, if the caller
    has just read them (this transaction holds the referral's lock, so they cannot have changed)."""
    assert referral.latitude is not None and referral.longitude is not None
    if history is None:
        history = await store.assignments_of(session, referral.referral_id)
    declined = store.declined_codes(history)
    if declined and declined_by_every_site(declined, await store.all_site_codes(session)):
        reason = f"declined by every site ({', '.join(sorted(declined))})"
        await mark_unroutable(session, referral, reason, trace)
        return
    lat, lon = referral.latitude, referral.longitude
    choice = await reserve_nearest(session, lat, lon, declined, index)
    if choice is None:
        # Before waitlisting, look again under the waitlist lock: a slot freed meanwhile is seen here, or
        # its releaser (which takes the same lock) sees this referral on the waitlist.
        await store.waitlist_lock(session)
        choice = await reserve_from_database(session, lat, lon, declined)
    if choice is None:
        await store.enqueue(session, referral.referral_id)
        referral.state, referral.reason = ReferralState.WAITLISTED, WAITLIST_REASON
        publish(
            session,
            referral.referral_id,
            ReferralWaitlisted(clinic_id=referral.clinic_id, reason=WAITLIST_REASON),
            trace,
        )
        return
    if referral.state == ReferralState.WAITLISTED:  # only a waitlisted referral has a place to leave
        await store.dequeue(session, referral.referral_id)
    await assign(session, referral, *choice, rank=len(history) + 1, trace=trace)


async def assign(
    session: AsyncSession,
    referral: store.ReferralRecord,
    site_code: str,
    km: float,
    site: SiteRef | None = None,
    *,
    rank: int,
    trace: str | None,
) -> store.Assignment:
    """Record the routing to a site whose slot is already reserved, and publish ``referral.routed``
    (``site``: as the reservation returned it, else read)."""
    assignment = store.Assignment(
        referral_id=referral.referral_id, site_code=site_code, rank=rank, distance_km=round(km, 1)
    )
    session.add(assignment)
    referral.state, referral.reason = ReferralState.ROUTED, None
    await session.flush()
    await publish_routed(session, referral, assignment, trace, site)
    log.info("referral routed", extra={"site": site_code, "rank": rank})
    return assignment


async def publish_routed(
    session: AsyncSession,
    referral: store.ReferralRecord,
    assignment: store.Assignment,
    trace: str | None,
    site: SiteRef | None = None,
) -> None:
    """Publish ``referral.routed`` for the assignment; ``site`` when the caller has it, else read."""
    if site is None:
        stored = await store.get_site(session, assignment.site_code)
        assert stored is not None
        site = SiteRef(
            code=stored.code,
            name=stored.name,
            city=stored.city,
            coordinator_email=stored.coordinator_email,
            phone=stored.phone,
        )
    screened = screening_of(referral)
    verdicts = [(c.id, c.verdict, c.reason) for c in screened.criteria]
    routed = ReferralRouted(
        clinic_id=referral.clinic_id,
        revision=screened.revision,
        site=site,
        distance_km=assignment.distance_km,
        rank=assignment.rank,
        decision=screened.decision,
        criteria_to_confirm=criteria_to_confirm(verdicts),
        consent_to_contact=screened.consent_to_contact,
        referrer=screened.referrer,
        note=confirmation_note(verdicts),
    )
    publish(session, referral.referral_id, routed, trace)


async def mark_unroutable(
    session: AsyncSession, referral: store.ReferralRecord, reason: str, trace: str | None
) -> None:
    await store.dequeue(session, referral.referral_id)
    referral.state, referral.reason = ReferralState.UNROUTABLE, reason
    event = ReferralUnroutable(clinic_id=referral.clinic_id, reason=reason)
    publish(session, referral.referral_id, event, trace)


# --- freeing slots --------------------------------------------------------------------------------------


async def release(
    session: AsyncSession,
    assignment: store.Assignment,
    state: AssignmentState,
    *,
    reason: str | None = None,
    enrolled: bool | None = None,
) -> None:
    """End an active assignment and free its slot; the caller holds the waitlist lock and then drains."""
    assignment.state, assignment.reason, assignment.enrolled = state, reason, enrolled
    assignment.decided_at = datetime.now(UTC)
    await session.flush()
    await store.free_slot(session, assignment.site_code)


async def drain_waitlist(session: AsyncSession, within: Collection[str] | None, trace: str | None) -> int:
    """Route waitlisted referrals, oldest first, to the sites in ``within`` (all when None) that have
    room, skipping those that declined them; returns how many were routed."""
    await store.waitlist_lock(session)
    routed, after = 0, 0
    room = await store.sites_with_room(session, within)
    while room:
        page = await store.waitlist(session, WAITLIST_PAGE, after)
        if not page:
            break
        for entry_id, referral_id in page:
            after = entry_id
            referral = await store.try_lock_waitlisted(session, referral_id)
            if referral is None or referral.latitude is None or referral.longitude is None:
                continue  # another transaction owns it, or it was never located
            history = await store.assignments_of(session, referral_id)
            declined = store.declined_codes(history)
            lat, lon, codes = referral.latitude, referral.longitude, [s.code for s in room]
            choice = await reserve_from_database(session, lat, lon, declined, codes)
            if choice is None:
                continue
            await store.dequeue(session, referral_id)
            await assign(session, referral, *choice, rank=len(history) + 1, trace=trace)
            routed += 1
            room = await store.sites_with_room(session, within)
            if not room:
                break
    return routed
