"""What the site router's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.site_router.commands import Commands
from services.site_router.config import SiteRouterSettings
from services.site_router.directory import SiteDirectory
from services.site_router.portal.contact import PatientContacts
from services.site_router.queries import Queries
from shared.deps import ServiceState, state_dep
from shared.ratelimit import SlidingWindow


@dataclass(kw_only=True)
class SiteRouterState(ServiceState):
    settings: SiteRouterSettings
    commands: Commands
    directory: SiteDirectory
    finder_limit: SlidingWindow
    """The public site finder's requests per address, shared by every instance (``rate_hit``)."""
    queries: Queries
    contacts: PatientContacts
    """The patient's contact from intake, for the portal's page of an accepted referral."""


SiteRouterStateDep = Annotated[SiteRouterState, Depends(state_dep(SiteRouterState))]
