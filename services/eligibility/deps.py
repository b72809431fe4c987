"""What eligibility's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.eligibility.config import EligibilitySettings
from services.eligibility.queries import Queries
from shared.deps import ServiceState, state_dep


@dataclass(kw_only=True)
class EligibilityState(ServiceState):
    settings: EligibilitySettings
    queries: Queries


EligibilityStateDep = Annotated[EligibilityState, Depends(state_dep(EligibilityState))]
