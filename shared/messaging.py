"""How a service joins the event flow: its consumer loop (with its dead letters) and its outbox relay,
wired the same way for every service from its settings and the roles the process plays."""

from __future__ import annotations

from shared.app import Loop, Role
from shared.consumer import ConsumerLoop
from shared.db import Database
from shared.handlers import Handlers
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings


def consumer_group(settings: ServiceSettings, service: str) -> str:
    """The service's consumer group: one per service, so each service sees every event once."""
    return settings.consumer_group or f"trialroute-{service}"


def event_loops(
    service: str,
    db: Database,
    settings: ServiceSettings,
    roles: frozenset[Role],
    handlers: Handlers | None = None,
) -> list[Loop]:
    """The consumer loop (role ``consumer``, when the service consumes) and the outbox relay (role
    ``relay``); ops scale each role apart."""
    loops: list[Loop] = []
    if handlers is not None and "consumer" in roles:
        consumer = ConsumerLoop(
            db,
            settings.kafka,
            service=service,
            group_id=consumer_group(settings, service),
            handlers=handlers,
            gather_ms=settings.consumer_gather_ms,
        )
        loops.append(Loop("consumer", consumer.run))
    if "relay" in roles:
        relay = OutboxRelay(db, settings.kafka, service=service, gather_s=settings.relay_gather_s)
        loops.append(Loop("relay", relay.run))
    return loops
