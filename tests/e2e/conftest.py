"""One running system for the end-to-end tests: every service a real process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.devstack.stack import Stack
from tests.conftest import Servers
from tests.support.auth import Issuer, attached_issuer
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


@pytest.fixture(scope="session")
async def registry(system: Stack) -> AsyncIterator[Issuer]:
    """The system's own auth process: clients a test registers in its store, beside the demo clients,
    and real tokens for them from its token endpoint."""
    async with attached_issuer(system.config.url("auth"), system.config.database_url("auth")) as issuer:
        yield issuer
