"""The running system for the fault suite, on servers the suite may restart.

The suite stops and starts PostgreSQL and Kafka, so it refuses servers it cannot restart itself: they
must be the ones the ``deploy/local`` scripts run (this checkout's, or ``TRIALROUTE_DEPLOY_DIR``'s for
a private pair started from a scratch copy), with the ports the environment names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from services.devstack.stack import Stack
from tests.conftest import Servers
from tests.reliability.harness import LocalServers
from tests.support.system import running_system


@pytest.fixture(scope="module")
def local_servers(servers: Servers) -> LocalServers:
    deploy_dir = LocalServers.configured_dir()
    problem = LocalServers(deploy_dir).mismatch(servers.pg_admin_url, servers.kafka_bootstrap)
    if problem:
        # Not a skip: a fault suite that silently did not run would read as a pass.
        pytest.fail(
            f"the fault suite restarts PostgreSQL and Kafka through {deploy_dir}/*.sh and can only run "
            f"on the servers those scripts run: {problem}. Run it through scripts/test.sh, or set "
            "TRIALROUTE_DEPLOY_DIR, TRIALROUTE_PG_PORT and TRIALROUTE_KAFKA_PORT to match.",
            pytrace=False,
        )
    return LocalServers(deploy_dir, pg_fast=asyncio.run(_fsync_off(servers.pg_admin_url)))


async def _fsync_off(pg_admin_url: str) -> bool:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        return bool(await conn.fetchval("SHOW fsync") == "off")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def system(
    servers: Servers, local_servers: LocalServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_system(
        servers.pg_admin_url, servers.kafka_bootstrap, tmp_path_factory.mktemp("faults")
    ) as stack:
        yield stack
