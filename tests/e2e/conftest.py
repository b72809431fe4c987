"""One running system for the end-to-end tests: every service a real process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from services.auth.registry import create_client
from services.devstack.stack import Stack
from shared.auth import Scope
from shared.db import Database
from tests.conftest import Servers
from tests.support.system import Client, running_system


@pytest.fixture(scope="session")
def system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir: Path = tmp_path_factory.mktemp("system")
    with running_system(servers.pg_admin_url, servers.kafka_bootstrap, run_dir) as stack:
        yield stack


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


@pytest.fixture(scope="session")
def clinic(system: Stack) -> Client:
    return Client(system, "demo-clinic")


@pytest.fixture(scope="session")
def ops(system: Stack) -> Client:
    return Client(system, "ops")


@pytest.fixture(scope="session")
def coordinators(system: Stack) -> dict[str, Client]:
    return {code: Client(system, f"coordinator-{code.lower()}") for code in ("WCM", "DFCI", "MCC", "MDACC")}


class Registry:
    """Clients a test registers on the running system's own auth store, beside the demo clients, and
    real tokens for them from a token endpoint (the system's, unless ``issuer_url`` names another)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.db = Database(stack.config.database_url("auth"))
        self.secrets: dict[str, str] = {}

    async def register(
        self,
        client_id: str,
        scopes: Sequence[Scope | str],
        *,
        audiences: Sequence[str],
        clinic_id: str | None = None,
        site_code: str | None = None,
    ) -> None:
        """Register ``client_id`` once per session; later calls with the same id change nothing."""
        if client_id not in self.secrets:
            self.secrets[client_id] = await create_client(
                self.db,
                client_id,
                scopes=scopes,
                audiences=audiences,
                clinic_id=clinic_id,
                site_code=site_code,
            )

    async def token(
        self, http: httpx.AsyncClient, client_id: str, audience: str, *, issuer_url: str | None = None
    ) -> str:
        response = await http.post(
            f"{issuer_url or self.stack.config.url('auth')}/oauth/token",
            data={"grant_type": "client_credentials", "audience": audience},
            auth=(client_id, self.secrets[client_id]),
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


@pytest.fixture(scope="session")
async def registry(system: Stack) -> AsyncIterator[Registry]:
    registry = Registry(system)
    yield registry
    await registry.db.dispose()
