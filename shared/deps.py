"""How a route reaches what its service's bootstrap built: one typed state object, read one way.

Each service subclasses ``ServiceState`` with what its routes need (``IntakeState`` adds its commands and
queries, ...); its bootstrap builds one and hands it to ``ServiceSpec(state=...)``; ``create_app`` keeps
it as ``app.state.service``. Routes never read ``app.state``: they declare ``Annotated`` dependencies::

    IntakeStateDep = Annotated[IntakeState, Depends(state_dep(IntakeState))]   # services/intake/deps.py

    @router.get("/v1/referrals/{referral_id}")
    async def read_referral(referral_id: UUID, intake: IntakeStateDep, session: SessionDep) -> ...

Every dependency here is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a hop
that costs more than the lookup on every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Database
from shared.settings import ServiceSettings

if TYPE_CHECKING:  # shared.auth reads the state through this module
    from shared.auth import TokenValidator


@dataclass(kw_only=True)
class ServiceState:
    """What every service's routes may need; a service's subclass narrows ``settings`` and adds its own."""

    db: Database
    settings: ServiceSettings
    token_validator: TokenValidator | None = None
    """None where no route checks tokens (the auth service issues them)."""


State = TypeVar("State", bound=ServiceState)


def service_state(request: Request) -> ServiceState:
    """The one place ``app.state`` is read (set once by ``shared.app.create_app``)."""
    return cast(ServiceState, request.app.state.service)


def state_dep(kind: type[State]) -> Callable[[Request], Awaitable[State]]:
    """A dependency giving a service its own state, typed as its ``ServiceState`` subclass."""

    async def dependency(request: Request) -> State:
        return cast(State, service_state(request))

    dependency.__name__ = f"{kind.__name__}_dependency"
    return dependency


async def _db(request: Request) -> Database:
    return service_state(request).db


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction for the request: commits when the route returns, rolls back if it raises."""
    async with service_state(request).db.session() as session:
        yield session


DbDep = Annotated[Database, Depends(_db)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
