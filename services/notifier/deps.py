"""What the notifier's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.notifier.config import NotifierSettings
from services.notifier.queries import Queries
from shared.deps import ServiceState, state_dep


@dataclass(kw_only=True)
class NotifierState(ServiceState):
    settings: NotifierSettings
    queries: Queries


NotifierStateDep = Annotated[NotifierState, Depends(state_dep(NotifierState))]
