"""The running system for the fault suite, on servers of the suite's own that it may restart and kill.

The suite stops, restarts and SIGKILLs PostgreSQL and Kafka, so it runs its own pair (through the
``deploy/local`` scripts, on the environment's ports plus 10, files under ``.run/faults``), never the
shared ones other tests use. A test that crashes a server runs it durable: the PostgreSQL has fsync and
synchronous commit on, and the fixture checks that it does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from services.devstack.stack import Stack
from tests.reliability.harness import REPO, LocalServers
from tests.support.system import running_system

RUN_DIR = REPO / ".run" / "faults"


@pytest.fixture(scope="package")
def local_servers() -> Iterator[LocalServers]:
    """Started for the first test that needs them, stopped after the last (also on failure)."""
    servers = LocalServers.own(RUN_DIR)
    try:
        servers.start()
        durability = asyncio.run(_durability(servers.pg_admin_url()))
        assert durability == {"fsync": "on", "synchronous_commit": "on"}, durability
        yield servers
    finally:
        servers.stop()


async def _durability(pg_admin_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in ("fsync", "synchronous_commit")}
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def system(local_servers: LocalServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_system(
        local_servers.pg_admin_url(), local_servers.kafka_bootstrap(), tmp_path_factory.mktemp("faults")
    ) as stack:
        yield stack
