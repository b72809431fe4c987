"""The whole system as real processes on PostgreSQL, Kafka and a real SMTP server, for e2e and faults.

Every service runs as ``trialroute serve`` in its own process with its own PostgreSQL database, topics
and consumer groups; the mailbox process is the SMTP server and keeps every message it accepted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from services.devstack.stack import DEFAULT_PORTS, SERVICES, Stack, StackConfig, free_port
from shared.kafka import delete_topics
from shared.settings import KafkaSettings

TEST_ENV = {
    "auth": {"AUTH_KEY_ENCRYPTION_SECRET": f"e2e-{uuid.uuid4().hex}"},
    "notifier": {
        "NOTIFIER_RETRY_BASE_S": "0.5",
        "NOTIFIER_RETRY_MAX_S": "2",
        "NOTIFIER_DISPATCH_INTERVAL_S": "0.1",
        "NOTIFIER_LEASE_S": "40",
        "NOTIFIER_MAX_ATTEMPTS": "200",
    },
}


CONSUMERS = ("intake", "eligibility", "site_router", "notifier", "insights")
"""The services that consume events, each in a consumer group (``<SERVICE>_CONSUMER_GROUP``)."""


def own_consumer_groups(prefix: str) -> dict[str, dict[str, str]]:
    """Environment giving each consuming service the group ``<prefix>trialroute-<service>``.

    Consumer groups are not covered by the topic prefix: without groups of its own, a system on a shared
    broker would rebalance every other system's members of ``trialroute-<service>`` (and they its own).
    """
    return {s: {f"{s.upper()}_CONSUMER_GROUP": f"{prefix}trialroute-{s}"} for s in CONSUMERS}


def consumer_group(stack: Stack, service: str) -> str:
    """The group ``service`` consumes in, in this system (the service's default when none is set)."""
    return stack.service_env(service).get(f"{service.upper()}_CONSUMER_GROUP") or f"trialroute-{service}"


@contextmanager
def running_system(
    pg_admin_url: str,
    kafka_bootstrap: str,
    run_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
    pg_ports: Mapping[str, int] | None = None,
) -> Iterator[Stack]:
    """Databases, topics, processes: created, started, and removed again afterwards. Consumer groups
    are the run's own too; they are left empty (aiokafka cannot delete them) for the broker to expire.
    ``env`` is given to every service (e.g. where to export traces); ``extra_env``: more environment per
    service (a system with TOTP required, say); ``pg_ports``: the loopback port a service reaches its
    database on, when not the server's own (a TCP proxy's in front of it, for the network faults)."""
    run = uuid.uuid4().hex[:8]
    names = {s: f"e2e_{s}_{uuid.uuid4().hex[:8]}" for s in SERVICES}
    groups = own_consumer_groups(f"e2e{run}-")
    asyncio.run(create_or_drop_databases(pg_admin_url, names.values(), create=True))
    admin = make_url(pg_admin_url).set(drivername="postgresql+asyncpg")
    config = StackConfig(
        run_dir=run_dir,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"e2e{run}."),
        database_urls={
            s: admin.set(database=n, port=(pg_ports or {}).get(s, admin.port)).render_as_string(
                hide_password=False
            )
            for s, n in names.items()
        },
        ports={name: free_port() for name in DEFAULT_PORTS},
        environment="test",
        service_env={
            s: TEST_ENV.get(s, {}) | groups.get(s, {}) | dict(env or {}) | dict((extra_env or {}).get(s, {}))
            for s in SERVICES
        },
    )
    stack = Stack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        asyncio.run(delete_topics(config.kafka))
        asyncio.run(create_or_drop_databases(pg_admin_url, names.values(), create=False))


async def create_or_drop_databases(pg_admin_url: str, names: Iterable[str], *, create: bool) -> None:
    """Create (or force-drop) the named PostgreSQL databases; the benchmarks' stacks use it too."""
    conn = await asyncpg.connect(pg_admin_url)
    try:
        for name in names:
            if create:
                await conn.execute(f'CREATE DATABASE "{name}"')
            else:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class Client:
    """A demo client of the running system: tokens per audience, fetched again shortly before they
    expire (the fault suite runs longer than a token lives) or after ``forget``.

    One fetch at a time per audience, as a real client would: concurrent callers wait for it rather
    than each asking auth, whose argon2 secret check would otherwise starve under the herd.
    """

    def __init__(self, stack: Stack, client_id: str) -> None:
        self.stack = stack
        self.client_id = client_id
        self._tokens: dict[str, tuple[str, float]] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    async def headers(self, http: httpx.AsyncClient, audience: str) -> dict[str, str]:
        async with self._fetching.setdefault(audience, asyncio.Lock()):
            token, renew_at = self._tokens.get(audience, ("", 0.0))
            if time.monotonic() >= renew_at:
                response = await http.post(
                    f"{self.stack.config.url('auth')}/oauth/token",
                    data={"grant_type": "client_credentials", "audience": audience},
                    auth=(self.client_id, self.stack.credentials[self.client_id]),
                )
                response.raise_for_status()
                body = response.json()
                token = body["access_token"]
                renew_at = time.monotonic() + float(body.get("expires_in", 300)) / 2
                self._tokens[audience] = (token, renew_at)
        return {"Authorization": f"Bearer {token}"}

    def forget(self, audience: str, refused: Mapping[str, str]) -> None:
        """Drop the token a server refused (``refused``: the headers sent), unless another caller
        already replaced it, so that the next call fetches a new one."""
        current = self._tokens.get(audience)
        if current and refused.get("Authorization") == f"Bearer {current[0]}":
            del self._tokens[audience]
