"""What the auth service's routes reach: its state (``shared.deps``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.auth.config import AuthSettings
from services.auth.keys import KeyRing
from services.auth.sessions import Sessions
from services.auth.throttle import LoginThrottle
from services.auth.tokens import TokenServer
from shared.deps import ServiceState, state_dep


@dataclass(kw_only=True)
class AuthState(ServiceState):
    """Its token validator checks its own tokens against its key ring (``/v1/users``, scope ops)."""

    settings: AuthSettings
    keyring: KeyRing
    token_server: TokenServer
    sessions: Sessions
    signin_throttle: LoginThrottle
    """Failed sign-ins of people (passwords, TOTP codes), per address and per account from it."""


AuthStateDep = Annotated[AuthState, Depends(state_dep(AuthState))]
