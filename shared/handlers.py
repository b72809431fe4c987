"""How a service says which events it handles: handlers keyed by event class.

The event class is the one fact: the topic a consumer subscribes to is the class's ``event_type``, and
each payload is checked to be of the class its handler was registered for. A handler runs inside the
consumer loop's transaction (``shared.consumer``), which also records the event id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import EVENT_TYPES, Envelope, EventData


class PoisonMessage(Exception):
    """A record that can never be handled: dead-letter it at once."""


E = TypeVar("E", bound=EventData)
E_contra = TypeVar("E_contra", bound=EventData, contravariant=True)


class Handler(Protocol[E_contra]):
    """``handler(session, envelope, data)``: ``data`` is the envelope's validated payload, of the event
    class the handler was registered for."""

    def __call__(self, session: AsyncSession, envelope: Envelope, data: E_contra, /) -> Awaitable[None]: ...


class BatchHandler(Protocol[E]):
    """``handler(session, [(envelope, data), ...])``: all of a transaction's new events of its classes."""

    def __call__(self, session: AsyncSession, items: list[tuple[Envelope, E]], /) -> Awaitable[None]: ...


Item: TypeAlias = tuple[Envelope, EventData]


@dataclass(frozen=True, eq=False)
class Together:
    """A handler that takes all of a transaction's new events of its classes in one call, in order, so
    that it can read and write them with a few statements instead of a few per event. It runs after the
    per-event handlers of the same transaction; a record handled alone comes as a list of one."""

    handle: Callable[[AsyncSession, list[Item]], Awaitable[None]]


@dataclass(frozen=True)
class One:
    handle: Callable[[AsyncSession, Envelope, EventData], Awaitable[None]]


class Handlers:
    """Which handler takes each event class. The classes are the one fact: the topics a consumer
    subscribes to follow from them, and each payload is checked to be of its handler's class."""

    def __init__(self) -> None:
        self._by_event: dict[type[EventData], One | Together] = {}

    def on(self, event: type[E], handler: Handler[E]) -> Handlers:
        """Handle each event of class ``event`` on its own."""

        async def checked(session: AsyncSession, envelope: Envelope, data: EventData) -> None:
            await handler(session, envelope, _payload_of((event,), envelope, data))

        return self._add((event,), One(checked))

    def together(self, events: Sequence[type[E]], handler: BatchHandler[E]) -> Handlers:
        """Handle the events of ``events``' classes of one transaction in one call (see ``Together``)."""
        classes = tuple(events)

        async def checked(session: AsyncSession, items: list[Item]) -> None:
            await handler(
                session, [(envelope, _payload_of(classes, envelope, data)) for envelope, data in items]
            )

        return self._add(classes, Together(checked))

    def _add(self, events: tuple[type[EventData], ...], handler: One | Together) -> Handlers:
        for event in events:
            if event in self._by_event:
                raise ValueError(f"{event.__name__} has a handler already")
            self._by_event[event] = handler
        return self

    def of(self, envelope: Envelope) -> One | Together | None:
        """The handler of the envelope's event class, if this consumer handles it."""
        model = EVENT_TYPES.get((envelope.type, envelope.version))
        return self._by_event.get(model) if model is not None else None

    @property
    def topics(self) -> list[str]:
        return sorted({event.event_type for event in self._by_event})


def _payload_of(events: tuple[type[E], ...], envelope: Envelope, data: EventData) -> E:
    """``data`` as the class its handler takes (a registry that maps a type to another model is a bug
    that no retry fixes)."""
    for event in events:
        if isinstance(data, event):
            return data
    raise PoisonMessage(f"{envelope.type} v{envelope.version} is not a {events[0].__name__}")
