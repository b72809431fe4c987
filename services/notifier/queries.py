"""The notifier's reads: the delivery log ops look at."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.notifier import store
from services.notifier.domain import State
from services.notifier.schemas import NotificationLog, NotificationPublic
from shared.db import Database


@dataclass
class Queries:
    db: Database

    async def notifications(
        self, referral_id: uuid.UUID | None, state: State | None, limit: int
    ) -> NotificationLog:
        """A referral's notifications, or those in a state, oldest first; recipients masked."""
        async with self.db.session() as session:
            rows = await store.for_referral(session, referral_id, state, limit)
        return NotificationLog(notifications=[NotificationPublic.of(r) for r in rows])
