"""The portal's routes: the queue, one referral (decide, record the steps to enrolment), site settings.

Each page is for the signed-in coordinator (``shared.web.signed_in``: no valid session is a redirect to
sign in, then back to the page asked for) and shows only their sites' referrals: any other, or an
unknown id, is the 404 page. Every form posts with the session's CSRF token (``signed_in`` checks it on
every POST: a 403 page without it), then
redirects (303) to a page that says what happened; a bad field is shown again next to its message
(422), never a 500.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from services.site_router import sites
from services.site_router.deps import SiteRouterState, SiteRouterStateDep
from services.site_router.domain import QUEUE_TAB_LABELS, QueueTab, SiteStatus, age_in_queue
from services.site_router.portal import PORTAL, forms
from services.site_router.schemas import PortalItem, PortalReferral, SiteUpdate
from shared.auth import Scope
from shared.problems import Conflict, NotFound, Unprocessable
from shared.web import WebUser, render, signed_in

router = APIRouter(prefix=PORTAL, include_in_schema=False)

Coordinator = Annotated[WebUser, Depends(signed_in(Scope.SITE_REFERRALS))]

_STATIC = Path(__file__).with_name("static")
_TEMPLATES = Path(__file__).with_name("templates")

STEP_LABELS = {
    "contacted": "Contacted",
    "screening_scheduled": "Screening scheduled",
    "consented": "Consented",
    "enrolled": "Enrolled",
    "screen_failed": "Screen failed",
    "not_enrolled": "Not enrolled",
}
EVENT_LABELS = {
    "routed": "Routed to the site",
    "opened": "Opened by the site",
    "accepted": "Accepted",
    "declined": "Declined",
    "closed": "Closed",
    "released": "Released (no longer routable)",
    "withdrawn": "Withdrawn by the referring clinic",
    **STEP_LABELS,
}
VERDICT_LABELS = {
    "met": "Met",
    "not_met": "Not met",
    "unknown": "To confirm",
    "absent": "Absent (exclusion)",
    "present": "Present (exclusion)",
    "not_applicable": "Not applicable",
}
STATUS_LABELS = {"recruiting": "Open", "paused": "Paused", "closed": "Closed by the trial"}


def _page(request: Request, template: str, user: WebUser, status_code: int = 200, **context: Any) -> Response:
    return render(
        request,
        f"portal/{template}",
        status_code=status_code,
        templates=_TEMPLATES,
        portal=PORTAL,
        user=user,
        tab_labels=QUEUE_TAB_LABELS,
        flash=forms.FLASH.get(request.query_params.get("done", "")),
        **context,
    )


def _not_found(request: Request, user: WebUser) -> Response:
    return _page(request, "not_found.html", user, status_code=404, current="queue")


def _age(item: PortalItem | PortalReferral, now: datetime) -> str:
    """Open referrals: time since routing; decided ones: how long they waited for the decision."""
    until = item.decided_at if item.tab == QueueTab.CLOSED and item.decided_at else now
    return age_in_queue((until - item.routed_at).total_seconds())


def _see_other(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{PORTAL}{path}?done={done}", status_code=303)


# --- the queue ------------------------------------------------------------------------------------------


@router.get("/")
async def queue_page(request: Request, user: Coordinator, site_router: SiteRouterStateDep) -> Response:
    """The coordinator's sites' referrals in four tabs (``?tab=``; an unknown tab shows the new ones)."""
    site_codes = user.principal.require_sites()
    queue = await site_router.queries.portal_queue(site_codes)
    tab = next((t for t in QueueTab if t.value == request.query_params.get("tab")), QueueTab.NEW)
    now = datetime.now(UTC)
    names = {i.site_code: i.site_name for i in queue.items}
    site_names = [names.get(code, code) for code in sorted(site_codes)]
    if len(site_names) != len(names):
        site_names = [s.name for s in await site_router.queries.sites_of(site_codes)]
    return _page(
        request,
        "queue.html",
        user,
        current="queue",
        queue=queue,
        tab=tab,
        counts=queue.counts(),
        ages={i.referral_id: _age(i, now) for i in queue.items},
        several_sites=len(site_codes) > 1,
        site_names=site_names,
    )


# --- one referral ---------------------------------------------------------------------------------------


async def _referral(site_router: SiteRouterState, user: WebUser, referral_id: str) -> PortalReferral | None:
    """The referral at the coordinator's sites, or None (not a referral id, or not theirs)."""
    try:
        wanted = uuid.UUID(referral_id)
    except ValueError:
        return None
    try:
        return await site_router.queries.portal_referral(user.principal.require_sites(), wanted)
    except NotFound:
        return None


async def _referral_page(
    request: Request,
    user: WebUser,
    site_router: SiteRouterState,
    view: PortalReferral,
    errors: forms.FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    contact = None
    if view.status == "accepted":
        contact = await site_router.contacts.read(view.referral_id, user.access_token)
    return _page(
        request,
        "referral.html",
        user,
        status_code=status_code,
        current="queue",
        view=view,
        age=_age(view, datetime.now(UTC)),
        contact=contact,
        errors=errors.errors if errors else {},
        values=errors.values if errors else {},
        step_labels=STEP_LABELS,
        verdict_labels=VERDICT_LABELS,
        event_labels=EVENT_LABELS,
        several_sites=len(user.principal.require_sites()) > 1,
    )


@router.get("/referrals/{referral_id}")
async def referral_page(
    referral_id: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep
) -> Response:
    """A routed referral opened here is no longer new (``opened_at``); the patient's identity only once
    the site has accepted it."""
    view = await _referral(site_router, user, referral_id)
    if view is None:
        return _not_found(request, user)
    if view.status == "routed" and view.opened_at is None:
        site_code, rid = view.site_code, view.referral_id
        await site_router.db.run(lambda session: site_router.commands.opened(session, site_code, rid))
        view = await site_router.queries.portal_referral(user.principal.require_sites(), rid)
    return await _referral_page(request, user, site_router, view)


@router.post("/referrals/{referral_id}/accept")
async def accept(
    referral_id: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep
) -> Response:
    view = await _referral(site_router, user, referral_id)
    if view is None:
        return _not_found(request, user)
    site_code, rid = view.site_code, view.referral_id
    try:
        await site_router.db.run(lambda session: site_router.commands.accept(session, site_code, rid))
    except Conflict as exc:
        errors = forms.FormErrors({"form": f"Not accepted: {exc.detail}."})
        return await _referral_page(request, user, site_router, view, errors, status_code=409)
    return _see_other(f"/referrals/{rid}", "accepted")


@router.post("/referrals/{referral_id}/decline")
async def decline(
    referral_id: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep
) -> Response:
    view = await _referral(site_router, user, referral_id)
    if view is None:
        return _not_found(request, user)
    reason, errors = forms.decline_reason((await request.form()).get("reason"))
    if reason is None:
        return await _referral_page(request, user, site_router, view, errors, status_code=422)
    site_code, rid = view.site_code, view.referral_id
    try:
        await site_router.db.run(
            lambda session: site_router.commands.decline(session, site_code, rid, reason)
        )
    except Conflict as exc:
        errors = forms.FormErrors({"form": f"Not declined: {exc.detail}."})
        return await _referral_page(request, user, site_router, view, errors, status_code=409)
    return _see_other("/", "declined")


_PROGRESS_FIELDS = {
    "screening_date": "screening_date",
    "subject_id": "subject_id",
    "reason": "outcome_reason",
}
"""A step's field and the form field its message is shown next to."""


@router.post("/referrals/{referral_id}/progress")
async def progress(
    referral_id: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep
) -> Response:
    """A step to enrolment, as the site API records it (``commands.progress``)."""
    view = await _referral(site_router, user, referral_id)
    if view is None:
        return _not_found(request, user)
    form = await request.form()
    body, errors = forms.progress_step(form, _PROGRESS_FIELDS)
    if body is None:
        return await _referral_page(request, user, site_router, view, errors, status_code=422)
    site_code, rid, by = view.site_code, view.referral_id, user.principal.user or user.principal.subject
    try:
        await site_router.db.run(
            lambda session: site_router.commands.progress(
                session,
                site_code,
                rid,
                body.step,
                screening_date=body.screening_date,
                subject_id=body.subject_id,
                reason=body.reason,
                recorded_by=by,
            )
        )
    except Unprocessable as exc:
        errors = forms.problem_errors(exc, _PROGRESS_FIELDS, form)
        return await _referral_page(request, user, site_router, view, errors, status_code=422)
    except Conflict as exc:
        errors = forms.FormErrors({"form": f"Not recorded: {exc.detail}."})
        return await _referral_page(request, user, site_router, view, errors, status_code=409)
    return _see_other(f"/referrals/{rid}", "progressed")


# --- site settings --------------------------------------------------------------------------------------


async def _settings_page(
    request: Request,
    user: WebUser,
    site_router: SiteRouterState,
    errors: dict[str, dict[str, str]] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return _page(
        request,
        "settings.html",
        user,
        status_code=status_code,
        current="settings",
        sites=await site_router.queries.sites_of(user.principal.require_sites()),
        status_labels=STATUS_LABELS,
        errors=errors or {},
        values=values or {},
    )


@router.get("/settings")
async def settings_page(request: Request, user: Coordinator, site_router: SiteRouterStateDep) -> Response:
    """Each of the coordinator's sites: capacity, and intake paused or open."""
    return await _settings_page(request, user, site_router)


@router.post("/settings/{code}/capacity")
async def change_capacity(
    code: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep
) -> Response:
    """More capacity routes waiting referrals at once; less never takes referrals away."""
    if code not in user.principal.require_sites():
        return _not_found(request, user)
    field_name = f"capacity-{code}"
    value, errors = forms.capacity((await request.form()).get("capacity"), field_name)
    if value is None:
        return await _settings_page(
            request, user, site_router, {code: errors.errors}, {code: errors.values["value"]}, status_code=422
        )
    async with site_router.db.session() as session:
        await sites.update_site(session, code, SiteUpdate(capacity=value))
    await site_router.directory.reload(site_router.db)
    return _see_other("/settings", "capacity")


async def _set_status(
    code: str, request: Request, user: WebUser, site_router: SiteRouterState, wanted: SiteStatus
) -> Response:
    """Pause a recruiting site or resume a paused one; a site the trial closed stays closed."""
    if code not in user.principal.require_sites():
        return _not_found(request, user)
    current = await site_router.queries.site(code)
    allowed_from = SiteStatus.RECRUITING if wanted == SiteStatus.PAUSED else SiteStatus.PAUSED
    if current.status != allowed_from:
        errors = {
            code: {
                f"status-{code}": f"The site is {STATUS_LABELS.get(current.status, current.status).lower()}."
            }
        }
        return await _settings_page(request, user, site_router, errors, status_code=409)
    async with site_router.db.session() as session:
        await sites.set_status(session, code, wanted)
    await site_router.directory.reload(site_router.db)
    return _see_other("/settings", "paused" if wanted == SiteStatus.PAUSED else "resumed")


@router.post("/settings/{code}/pause")
async def pause(code: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep) -> Response:
    return await _set_status(code, request, user, site_router, SiteStatus.PAUSED)


@router.post("/settings/{code}/resume")
async def resume(code: str, request: Request, user: Coordinator, site_router: SiteRouterStateDep) -> Response:
    return await _set_status(code, request, user, site_router, SiteStatus.RECRUITING)


# --- the stylesheet -------------------------------------------------------------------------------------


@router.get("/static/portal.css")
async def stylesheet() -> Response:
    """Public (no session needed); revalidated each time so a deployment never mixes old and new."""
    return Response(
        (_STATIC / "portal.css").read_bytes(),
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )
