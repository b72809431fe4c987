"""The sites held in memory by each process: the public finder and the candidate ranking read them.

The copy may lag the database by up to ``index_refresh_s`` (another instance changed a site), which is
harmless: it only orders candidates and answers the public finder; every reservation is decided by the
database itself (``store.reserve_slot``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.site_router import store
from services.site_router.domain import SiteIndex, SiteView
from shared.db import Database
from shared.retry import pause

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SiteCard:
    """What the public may know of a site: where it is and how to reach the study centre."""

    code: str
    name: str
    city: str
    region: str | None
    country: str
    coordinator_email: str
    phone: str | None


class SiteDirectory:
    """An immutable snapshot (index and cards) swapped whole on reload, so readers never see half."""

    def __init__(self) -> None:
        self.index = SiteIndex([])
        self.cards: dict[str, SiteCard] = {}

    def load(self, sites: Sequence[store.Site]) -> None:
        views = [SiteView(s.code, s.latitude, s.longitude, s.status, s.capacity, s.open_count) for s in sites]
        cards = {
            s.code: SiteCard(s.code, s.name, s.city, s.region, s.country, s.coordinator_email, s.phone)
            for s in sites
        }
        self.index, self.cards = SiteIndex(views), cards

    async def reload(self, db: Database) -> None:
        async with db.session() as session:
            sites = await store.list_sites(session)
        self.load(sites)

    async def keep_fresh(self, db: Database, interval_s: float, stop: asyncio.Event) -> None:
        """Re-read the sites every ``interval_s`` until ``stop``; a failed read keeps the last copy."""
        while not stop.is_set():
            await pause(stop, interval_s)
            if stop.is_set():
                return
            try:
                await self.reload(db)
            except Exception as exc:
                log.warning("site index refresh failed", extra={"error": type(exc).__name__})
