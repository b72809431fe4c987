"""What the auth service's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.auth.config import AuthSettings
from services.auth.keys import KeyRing
from services.auth.tokens import TokenServer
from shared.deps import ServiceState, state_dep


@dataclass(kw_only=True)
class AuthState(ServiceState):
    """No token validator: the auth service issues tokens and checks none."""

    settings: AuthSettings
    keyring: KeyRing
    token_server: TokenServer


AuthStateDep = Annotated[AuthState, Depends(state_dep(AuthState))]
