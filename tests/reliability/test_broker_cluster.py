"""The whole system on a cluster of three Kafka brokers, one of them crashed at a time under load.

``deploy/local/kafka.sh`` runs the cluster (``TRIALROUTE_KAFKA_NODES=3``): every topic has three
replicas and ``min.insync.replicas`` 2, and every producer (relay, dead letters) sends with
``acks=all`` and idempotence, so a write the brokers acknowledged survives the loss of any one of them.
In turn, while a clinic keeps submitting: a broker that is not the controller killed (SIGKILL), left
down a while, started again; then the same for the active controller (a broker too: combined mode),
whose quorum must elect another. A node comes back only once every partition has all its replicas in
sync again, so the next fault never finds a partition with fewer than two. Nothing may be lost or sent
twice, and the system must keep working while a broker is down: the load runs through every fault,
and during each outage the clinic's referrals are accepted and their emails arrive (through every
stage, so through Kafka on the two brokers left).

The cluster's ports are ``TRIALROUTE_KAFKA_PORT`` + 20..25, its files under ``.run/``; it is stopped
and removed afterwards, also on failure. PostgreSQL is the test run's (no server here crashes but a
broker, whose acknowledged writes are on two other brokers, not on a disk flush).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.devstack.stack import Stack
from tests.conftest import Servers
from tests.reliability.harness import REPO, Fault
from tests.reliability.scenario import mailbox, referral_statuses, run_scenario
from tests.support.system import Client, running_system

pytestmark = pytest.mark.reliability

REFERRALS = 120
RATE_PER_S = 4.0
"""At least this many; the load goes on until both faults have recovered (each: a gap, the outage, the
node starting and catching up: ~30 s on a quiet machine, twice that on a busy one)."""
GAP_S = 3.0
OUTAGE_S = 5.0
"""A crashed broker stays down at least this long, and then until an email arrived meanwhile."""
FLOWING_S = 90.0
"""How long the outage may last waiting for an email through the two brokers left."""
PORT_OFFSET = 20
"""The cluster suite's ports: TRIALROUTE_KAFKA_PORT + 20..29 (the cluster takes +20..+25)."""


class Cluster:
    """Three KRaft nodes run by ``deploy/local/kafka.sh`` on this suite's ports and directory."""

    def __init__(self, port: int, directory: Path) -> None:
        self.directory = directory
        self.env = {
            **os.environ,
            "TRIALROUTE_KAFKA_NODES": "3",
            "TRIALROUTE_KAFKA_PORT": str(port),
            "TRIALROUTE_KAFKA_DIR": str(directory),
        }

    def run(self, *args: str) -> str:
        result = subprocess.run(
            # Not niced further than the test run itself: brokers starved by the services they
            # serve would make every failover slower than it is.
            [str(REPO / "deploy" / "local" / "kafka.sh"), *args],
            capture_output=True,
            text=True,
            timeout=240,
            env=self.env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    @property
    def bootstrap(self) -> str:
        return self.run("bootstrap")

    def controller(self) -> int:
        """The node id of the quorum's leader, the active controller."""
        return int(self.run("controller"))

    def kill(self, node: int) -> None:
        self.run("kill", str(node))

    def start_node(self, node: int) -> None:
        """Start ``node`` again; returns once it is a broker again with every replica in sync."""
        self.run("start-node", str(node))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    port = int(os.environ.get("TRIALROUTE_KAFKA_PORT", "29092")) + PORT_OFFSET
    directory = REPO / ".run" / f"kafka-cluster-{port}"
    shutil.rmtree(directory, ignore_errors=True)  # the previous run's
    cluster = Cluster(port, directory)
    try:
        cluster.run("start")
        yield cluster
    finally:
        try:
            cluster.run("stop")
        finally:  # the data goes; each node's log stays for a post-mortem, until the next run
            for data in directory.glob("node-*/data"):
                shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_system(
    servers: Servers, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_system(servers.pg_admin_url, cluster.bootstrap, tmp_path_factory.mktemp("cluster")) as stack:
        yield stack


@dataclass
class Outage:
    """What happened while one broker was down."""

    fault: str
    node: int
    controller_before: int
    controller_during: int
    accepted: int
    emails: int
    down_s: float
    rejoined_s: float

    def line(self) -> str:
        return (
            f"{self.fault}: node {self.node} down {self.down_s:.0f} s (controller {self.controller_before} "
            f"before, {self.controller_during} meanwhile); meanwhile the load: "
            f"{self.accepted} referrals accepted, {self.emails} emails; back in sync "
            f"{self.rejoined_s:.0f} s after its start"
        )


class Progress:
    """How far the system got: referrals intake accepted, emails the mailbox received."""

    def __init__(self, system: Stack) -> None:
        self.system = system
        self.clinic = Client(system, "demo-clinic")

    def now(self) -> tuple[int, int]:
        return asyncio.run(self._now())

    async def _now(self) -> tuple[int, int]:
        async with httpx.AsyncClient(timeout=30) as web:
            referrals = await referral_statuses(web, self.system, self.clinic)
            return len(referrals), len(await mailbox(web, self.system))


def faults(system: Stack, cluster: Cluster, outages: list[Outage]) -> list[Fault]:
    progress = Progress(system)

    def crash(name: str, choose: Callable[[int], int]) -> Fault:
        def inject() -> None:
            controller = cluster.controller()
            node = choose(controller)
            accepted, emails = progress.now()
            cluster.kill(node)
            down = time.monotonic()
            time.sleep(OUTAGE_S)  # the fault itself: the broker stays down this long, or longer:
            during = cluster.controller()
            accepted_after, emails_after = progress.now()
            while emails_after == emails and time.monotonic() - down < FLOWING_S:
                time.sleep(1.0)  # until the pipeline has delivered an email on the brokers left
                accepted_after, emails_after = progress.now()
            started = time.monotonic()
            cluster.start_node(node)
            outages.append(
                Outage(
                    name,
                    node,
                    controller,
                    during,
                    accepted_after - accepted,
                    emails_after - emails,
                    started - down,
                    time.monotonic() - started,
                )
            )

        return Fault(name, inject)

    return [
        crash("kill -9 a broker (not the controller)", lambda controller: 1 + controller % 3),
        crash("kill -9 the active controller", lambda controller: controller),
    ]


@pytest.mark.timeout(900)  # ~4 min on a quiet 2-core machine; 3 JVMs starting under load take longer
async def test_nothing_is_lost_or_sent_twice_when_a_broker_of_three_crashes(
    cluster_system: Stack, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    outages: list[Outage] = []
    outcome = await run_scenario(
        cluster_system,
        faults(cluster_system, cluster, outages),
        referrals=REFERRALS,
        rate_per_s=RATE_PER_S,
        gap_s=GAP_S,
        title="broker cluster (3 KRaft nodes, RF 3, min.insync.replicas 2)",
    )
    with capsys.disabled():
        print(outcome.report)
        print("\n".join(o.line() for o in outages))
    assert not outcome.problems, "\n".join(outcome.problems)
    assert [o.fault for o in outages] == [
        "kill -9 a broker (not the controller)",
        "kill -9 the active controller",
    ]
    survivor, controller = outages
    assert survivor.node != survivor.controller_before
    assert controller.node == controller.controller_before
    assert controller.controller_during != controller.node, "the quorum elected no other controller"
    for outage in outages:  # the services keep going on two brokers: accepted, and through to the mailbox
        assert outage.accepted > 0 and outage.emails > 0, outage.line()
