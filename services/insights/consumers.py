"""Kafka entry point: every funnel event of a transaction, in one call, into the fact rows.

One ``Together`` handler rather than one per event: the command locks the transaction's referral rows
in id order once (the loop hands up to 50 records together), and one lock order is what keeps
consumers of different topics and partitions from deadlocking on the same referral.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.insights import commands
from shared.events import Envelope, EventData
from shared.handlers import Handlers


async def on_events(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
    await commands.record(session, items)


HANDLERS = Handlers().together(commands.FOLDED, on_events)
