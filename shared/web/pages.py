"""Server-rendered pages for every service: Jinja2 templates, one base layout, one small stylesheet,
and the error pages (403, 404...).

``render(request, "portal.html", referrals=...)`` looks for the template in the calling service's own
``templates/`` folder (the one beside the module that defines its ``ServiceState``, e.g.
``services/site_router/templates``) and then in ``shared/web/templates`` (``base.html``,
``error.html``), so a service's page extends the shared layout::

    {% extends "base.html" %}
    {% block title %}Referrals{% endblock %}
    {% block content %}<h1>Referrals</h1>...{% endblock %}

No JavaScript and no build chain: the pages work with any browser, a keyboard and a screen reader; the
stylesheet (``/_web/site.css``, served by ``pages_router``, which ``sign_in_router`` includes) is
loaded from the service's own origin, as its Content-Security-Policy (``default-src 'self'``) wants.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from shared.deps import service_state
from shared.problems import ProblemError

WEB_DIR = Path(__file__).resolve().parent
SHARED_TEMPLATES = WEB_DIR / "templates"
CSS_FILE = WEB_DIR / "static" / "site.css"
CSS_URL = "/_web/site.css"


@functools.cache
def _templates(service_templates: Path | None) -> Jinja2Templates:
    folders = [p for p in (service_templates, SHARED_TEMPLATES) if p is not None and p.is_dir()]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in folders]),
        autoescape=True,
    )
    return Jinja2Templates(env=env)


def service_templates(request: Request) -> Path | None:
    """The calling service's ``templates/`` folder: beside the module of its state class."""
    module = sys.modules.get(type(service_state(request)).__module__)
    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent / "templates" if file else None


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    templates: Path | None = None,
    **context: Any,
) -> HTMLResponse:
    """The page ``template`` with ``context``, plus what the layout needs: ``css_url``, and for a
    signed-in person (``shared.web.signin.signed_in``) ``user`` and ``csrf_token``. Keeps their session
    alive (its idle timer restarts). ``templates``: a folder of the service's own to search instead of
    its default one (a part of the service with pages of its own, e.g. site_router's ``portal/``)."""
    web_user = getattr(request.state, "web_user", None)
    base: dict[str, Any] = {
        "css_url": CSS_URL,
        "user": web_user,
        "csrf_token": getattr(web_user, "csrf_token", ""),
        "signout_url": getattr(request.state, "web_signout_url", None),
        "service_name": getattr(request.state, "web_service_name", None) or "trialroute",
    }
    response = _templates(templates or service_templates(request)).TemplateResponse(
        request, template, {**base, **context}, status_code=status_code, headers=headers
    )
    keep_session(request, response)
    return response


def keep_session(request: Request, response: Response) -> None:
    """Re-issue the signed-in person's session cookie on ``response`` (what ``render`` does): pages that
    answer otherwise (a redirect after a form) call it to restart the idle timer."""
    refresh = getattr(request.state, "web_session_refresh", None)
    if refresh is not None:
        refresh(response)


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    return render(request, "error.html", status_code=status, title=title, detail=detail)


class PageError(ProblemError):
    """An error a page route raises: answered with the error page (HTML), not problem+json."""

    def response(self, request: Request) -> Response | None:
        return error_page(request, self.status, self.title, self.detail)


class PageForbidden(PageError):
    status = 403
    title = "Not allowed"


class PageNotFound(PageError):
    status = 404
    title = "Page not found"


def pages_router() -> APIRouter:
    """The stylesheet every page links (same origin, cached for an hour)."""
    router = APIRouter(include_in_schema=False)

    @router.get(CSS_URL)
    async def stylesheet() -> FileResponse:
        return FileResponse(
            CSS_FILE, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
        )

    return router
