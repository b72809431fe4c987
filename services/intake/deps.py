"""What intake's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.intake.commands import Commands
from services.intake.config import IntakeSettings
from services.intake.idempotency import Idempotency
from services.intake.queries import Queries
from shared.deps import ServiceState, state_dep


@dataclass(kw_only=True)
class IntakeState(ServiceState):
    settings: IntakeSettings
    commands: Commands
    queries: Queries
    idempotency: Idempotency
    """Applied by the routes around a command: the commands know nothing of Idempotency-Key."""


IntakeStateDep = Annotated[IntakeState, Depends(state_dep(IntakeState))]
