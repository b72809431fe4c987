"""Network faults between every service and Kafka, PostgreSQL and SMTP, while a clinic keeps submitting.

Every link a service has to a server runs through Toxiproxy (``tests/reliability/toxiproxy.py``): one
proxy per service in front of the shared test PostgreSQL, one in front of the suite's own broker (which
advertises the proxy's address, so every connection a client makes after bootstrapping goes through it
too) and one in front of the mailbox's SMTP port. In turn, a few seconds apart: 200 ms ± 50 ms latency
on Kafka and PostgreSQL, every connection reset, then a 20 s partition (data dropped, connections left
open: only the clients' own timeouts notice) from Kafka, from PostgreSQL, from SMTP.

Afterwards the scenario's checks (``tests.reliability.scenario``): every accepted referral final, every
email once, no dead letter, no loop stopped, every service ready. And readiness told the truth: while
a partition lasted, each affected service's ``/readyz`` answered 503 naming the unreachable dependency,
and 200 again once it healed, by itself; while the latency lasted, it stayed 200.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from services.devstack.stack import SERVICES, Stack
from tests.conftest import Servers
from tests.reliability.harness import Fault
from tests.reliability.scenario import run_scenario
from tests.reliability.toxiproxy import STREAMS, Proxy, ToxiproxyServer, install, toxic
from tests.support.system import running_system

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = REPO / ".run" / "netfaults"
REFERRALS = 120
"""At least this many; the load goes on until every fault has recovered (about 130 s)."""
RATE_PER_S = 4.0
GAP_S = 2.0
LATENCY_S = 10.0
RESET_S = 1.0
PARTITION_S = 20.0
RECOVERY_S = 90.0
"""How long a service may take, after a partition heals, to be ready again by itself (intake's API,
with a queue of clients' retries ahead of its readiness probe for the pool, took 25 s on a loaded
machine; the others a few seconds)."""
KAFKA_USERS = ("intake", "eligibility", "site_router", "notifier", "insights")
"""The services with a ``kafka`` readiness check (auth never connects to the broker)."""


@dataclass(frozen=True)
class Ports:
    """Everything the suite listens on: ``TRIALROUTE_KAFKA_PORT`` + 30..34 and ``TRIALROUTE_PG_PORT``
    + 30..35, so that it never collides with the shared servers or the other fault suites."""

    broker: int  # and its controller on the next port
    kafka_proxy: int
    api: int
    smtp_proxy: int
    pg_proxies: dict[str, int]

    @classmethod
    def from_env(cls) -> Ports:
        kafka = int(os.environ.get("TRIALROUTE_KAFKA_PORT", "29092")) + 30
        pg = int(os.environ.get("TRIALROUTE_PG_PORT", "25432")) + 30
        return cls(
            broker=kafka,
            kafka_proxy=kafka + 2,
            api=kafka + 3,
            smtp_proxy=kafka + 4,
            pg_proxies={service: pg + i for i, service in enumerate(SERVICES)},
        )


@dataclass
class Network:
    """The proxies between the services and their servers."""

    ports: Ports
    toxiproxy: ToxiproxyServer
    kafka: Proxy
    postgres: dict[str, Proxy]
    smtp: Proxy

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka_proxy}"


class OwnBroker:
    """The suite's single broker (``deploy/local/kafka.sh``, its files under ``.run/netfaults/kafka``),
    advertising the Kafka proxy's port: the shared broker advertises its own, which would let clients
    around the proxy after their first metadata answer."""

    def __init__(self, ports: Ports) -> None:
        self.directory = RUN_DIR / "kafka"
        self.env = {
            **os.environ,
            "TRIALROUTE_KAFKA_PORT": str(ports.broker),
            "TRIALROUTE_KAFKA_ADVERTISED_PORT": str(ports.kafka_proxy),
            "TRIALROUTE_KAFKA_DIR": str(self.directory),
            "TRIALROUTE_KAFKA_HEAP": "768m",
        }

    def run(self, command: str) -> None:
        result = subprocess.run(
            [str(REPO / "deploy" / "local" / "kafka.sh"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed:\n{result.stdout}{result.stderr}")

    def __enter__(self) -> OwnBroker:
        self.run("stop")  # one a failed run left behind (the script stops only its own pid file's)
        try:
            self.run("start")
        except BaseException:
            self.run("stop")
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.run("stop")


@pytest.fixture(scope="module")
def network(servers: Servers) -> Iterator[Network]:
    ports = Ports.from_env()
    pg = make_url(servers.pg_admin_url)
    with ToxiproxyServer(install(), ports.api, RUN_DIR / "toxiproxy.log") as toxiproxy:
        kafka = toxiproxy.proxy("kafka", ports.kafka_proxy, f"127.0.0.1:{ports.broker}")
        postgres = {
            service: toxiproxy.proxy(f"postgres-{service}", port, f"{pg.host}:{pg.port}")
            for service, port in ports.pg_proxies.items()
        }
        # The mailbox's SMTP port is chosen when the system starts: the upstream is set then.
        smtp = toxiproxy.proxy("smtp", ports.smtp_proxy, "127.0.0.1:9")
        with OwnBroker(ports):
            yield Network(ports, toxiproxy, kafka, postgres, smtp)


@pytest.fixture(scope="module")
def proxied_system(
    servers: Servers, network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_system(
        servers.pg_admin_url,
        network.kafka_bootstrap,
        tmp_path_factory.mktemp("netfaults"),
        pg_ports=network.ports.pg_proxies,
        extra_env={"notifier": {"NOTIFIER_SMTP_PORT": str(network.ports.smtp_proxy)}},
    ) as stack:
        network.smtp.set_upstream(f"127.0.0.1:{stack.config.ports['smtp']}")
        yield stack


@dataclass
class Readiness:
    """What the services' ``/readyz`` said during one fault and after it, in seconds since it began."""

    fault: str
    dependency: str
    services: tuple[str, ...]
    down_at: dict[str, float] = field(default_factory=dict)
    """First 503 naming ``dependency``, per service."""
    unready_at: dict[str, str] = field(default_factory=dict)
    """Any answer but 200 during the fault, per service (for the latency, which must not cause one)."""
    ready_at: dict[str, float] = field(default_factory=dict)
    """First 200 after the fault was repaired, per service."""

    def line(self) -> str:
        def seconds(found: dict[str, float]) -> str:
            return ", ".join(f"{s} {found[s]:.1f}" if s in found else f"{s} never" for s in self.services)

        return (
            f"{self.fault}: /readyz naming {self.dependency} 503 at [{seconds(self.down_at)}] s; "
            f"200 again at [{seconds(self.ready_at)}] s"
        )


async def poll_readiness(
    stack: Stack, seen: Readiness, *, seconds: float, began: float, until_ready: bool = False
) -> None:
    """Ask every service of ``seen`` for ``/readyz`` twice a second for ``seconds`` (or, ``until_ready``,
    until each has answered 200), recording what they said."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as web:

        async def ask(service: str) -> None:
            try:
                response = await web.get(f"{stack.config.url(service)}/readyz")
            except httpx.HTTPError as exc:
                now = time.monotonic() - began
                seen.unready_at.setdefault(service, f"{type(exc).__name__} at {now:.1f}s")
                return
            now = time.monotonic() - began  # when the answer came
            if response.status_code == 200:
                if until_ready:
                    seen.ready_at.setdefault(service, now)
                return
            seen.unready_at.setdefault(service, f"{response.status_code} {response.text[:200]} at {now:.1f}s")
            checks = response.json().get("checks", {}) if response.status_code == 503 else {}
            if checks.get(seen.dependency, "ok") != "ok":
                seen.down_at.setdefault(service, now)

        while time.monotonic() < deadline:
            pending = [s for s in seen.services if not (until_ready and s in seen.ready_at)]
            if not pending:
                return
            await asyncio.gather(*(ask(s) for s in pending))
            await asyncio.sleep(0.5)  # the probing rate, part of the scenario


def faults(stack: Stack, network: Network, observed: list[Readiness]) -> list[Fault]:
    pg = list(network.postgres.values())
    everything = [network.kafka, *pg, network.smtp]

    def latency() -> None:
        seen = Readiness("latency", "any", SERVICES)
        observed.append(seen)
        began = time.monotonic()
        with toxic([network.kafka, *pg], "latency", latency=200, jitter=50):
            asyncio.run(poll_readiness(stack, seen, seconds=LATENCY_S, began=began))

    def resets() -> None:
        with toxic(everything, "reset_peer", timeout=0):
            time.sleep(RESET_S)  # the fault itself: every connection made meanwhile is reset too

    def partition(name: str, proxies: list[Proxy], dependency: str, services: tuple[str, ...]) -> Fault:
        def inject() -> None:
            seen = Readiness(name, dependency, services)
            observed.append(seen)
            began = time.monotonic()
            with toxic(proxies, "timeout", streams=STREAMS, timeout=0):
                asyncio.run(poll_readiness(stack, seen, seconds=PARTITION_S, began=began))
            asyncio.run(poll_readiness(stack, seen, seconds=RECOVERY_S, began=began, until_ready=True))

        return Fault(name, inject)

    return [
        Fault("latency 200±50 ms Kafka+PG", latency),
        Fault("connections reset (all)", resets),
        partition(f"Kafka partition {PARTITION_S:.0f} s", [network.kafka], "kafka", KAFKA_USERS),
        partition(f"PostgreSQL partition {PARTITION_S:.0f} s", pg, "database", SERVICES),
        partition(f"SMTP partition {PARTITION_S:.0f} s", [network.smtp], "smtp", ("notifier",)),
    ]


def readiness_problems(observed: list[Readiness]) -> list[str]:
    problems = []
    for seen in observed:
        if seen.dependency == "any":  # the latency: slow, not down
            problems += [f"{s} not ready during {seen.fault}: {why}" for s, why in seen.unready_at.items()]
            continue
        problems += [
            f"{s}'s /readyz never named {seen.dependency} during {seen.fault}"
            for s in seen.services
            if s not in seen.down_at
        ]
        problems += [
            f"{s} not ready again within {RECOVERY_S:.0f} s of the end of {seen.fault}"
            for s in seen.services
            if s not in seen.ready_at
        ]
    return problems


@pytest.mark.timeout(600)
async def test_nothing_is_lost_or_sent_twice_through_latency_resets_and_partitions(
    proxied_system: Stack, network: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    observed: list[Readiness] = []
    try:
        outcome = await run_scenario(
            proxied_system,
            faults(proxied_system, network, observed),
            referrals=REFERRALS,
            rate_per_s=RATE_PER_S,
            gap_s=GAP_S,
            title="network faults (Toxiproxy)",
        )
    finally:
        network.toxiproxy.reset()  # nothing left toxic for the teardown, whatever happened
    problems = outcome.problems + readiness_problems(observed)
    with capsys.disabled():
        print(outcome.report)
        print("\n".join(seen.line() for seen in observed if seen.dependency != "any"))
        print(*(f"PROBLEM: {p}" for p in readiness_problems(observed)), sep="\n")
    assert len(observed) == 4, [seen.fault for seen in observed]
    assert not problems, "\n".join(problems)
