"""The notifier's reads: the delivery log ops look at; a clinic's webhook endpoints and deliveries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.notifier import store
from services.notifier.domain import DeliveryState, State
from services.notifier.schemas import (
    DeliveryList,
    DeliveryPublic,
    EndpointList,
    EndpointPublic,
    NotificationLog,
    NotificationPublic,
)
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

    async def endpoints(self, clinic_id: str) -> EndpointList:
        """The clinic's endpoints (never their secrets)."""
        async with self.db.session() as session:
            rows = (await store.endpoints(session, [clinic_id])).get(clinic_id, [])
        return EndpointList(endpoints=[EndpointPublic.of(r) for r in rows])

    async def deliveries(
        self,
        clinic_id: str,
        *,
        endpoint_id: uuid.UUID | None,
        referral_id: uuid.UUID | None,
        state: DeliveryState | None,
        limit: int,
    ) -> DeliveryList:
        """The clinic's webhook deliveries, newest first."""
        async with self.db.session() as session:
            rows = await store.deliveries(
                session, clinic_id, endpoint_id=endpoint_id, referral_id=referral_id, state=state, limit=limit
            )
        return DeliveryList(deliveries=[DeliveryPublic.of(r) for r in rows])
