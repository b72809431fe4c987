"""The running system for the fault suite and chaos mode, on servers of the suite's own that it may
restart and kill.

Both stop, restart and SIGKILL PostgreSQL and Kafka, so they run their own pair (through the
``deploy/local`` scripts, on the environment's ports plus 10, files under ``.run/faults``), never the
shared ones other tests use. A test that crashes a server runs it durable: the PostgreSQL has fsync and
synchronous commit on, and the fixture checks that it does.

One system serves both suites (starting six processes and seeding them is a minute of CI's time on a
2-core machine): each scenario counts only what happened since it began (``run_scenario``), and the
system must be healthy before each suite uses it (``system`` asserts it). The suites that share it run
last in the package, one after the other, so that it and its servers are stopped as soon as they are
done and never run idle beside another suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from services.devstack.stack import SERVICES, Stack
from shared.dead_letters import list_dead_letters
from shared.events import TOPICS
from tests.reliability.harness import REPO, LocalServers
from tests.reliability.scenario import loop_crashes, notifications, unready_services
from tests.support.system import Client, running_system

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


SHARED = ("test_faults.py", "test_chaos.py")
"""The modules that share ``system``, in the order they run: after every other module here."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suites that share one system last in this package, the fault suite before chaos; every
    other test keeps its place (stable sort within this package's block)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SHARED.index(name) + 1 if name in SHARED else 0

    here = [i for i, item in enumerate(items) if item.path.parent == REPO / "tests" / "reliability"]
    if here:
        ordered = sorted((items[i] for i in here), key=rank)
        for i, item in zip(here, ordered, strict=True):
            items[i] = item


@pytest.fixture(scope="package")
def shared_system(local_servers: LocalServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_system(
        local_servers.pg_admin_url(), local_servers.kafka_bootstrap(), tmp_path_factory.mktemp("faults")
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def system(shared_system: Stack) -> Stack:
    """The shared system, once it is shown healthy: what an earlier suite left must not count here."""
    problems = asyncio.run(health_problems(shared_system))
    assert not problems, "the shared system is not healthy:\n" + "\n".join(problems)
    return shared_system


async def health_problems(system: Stack) -> list[str]:
    """Why ``system`` is not fit for a new scenario: a process not running, a service not ready, a
    background loop stopped, an email still to be sent (it would land in the next scenario's windows),
    a notification given up on, a dead letter."""
    problems = [f"{name} not running" for name, p in system.processes.items() if not p.alive()]
    problems += [f"background loop stopped: {line}" for line in loop_crashes(system)]
    ops = Client(system, "ops")
    async with httpx.AsyncClient(timeout=10) as web:
        problems += [
            f"{name} not ready: {detail}" for name, detail in (await unready_services(web, system)).items()
        ]
        pending = await notifications(web, system, ops, "pending", "sending")
        problems += [
            f"notification {n['state']}: {n['recipient_role']} of {n['referral_id']}" for n in pending
        ]
        failed = await notifications(web, system, ops, "failed")
        problems += [f"notification failed: {n['recipient_role']} of {n['referral_id']}" for n in failed]
    for topic in TOPICS:
        letters = await list_dead_letters(system.config.kafka, topic)
        problems += [f"{len(letters)} dead letters on {topic}.dlq"] if letters else []
    problems += [f"{name} has no process" for name in SERVICES if name not in system.processes]
    return problems
