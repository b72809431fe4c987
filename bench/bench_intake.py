"""How many referrals per second intake accepts, and how fast it answers, beside a bare insert endpoint.

Goal: intake at least 0.7 of the bare endpoint's rate, and p99 under 100 ms at half its maximum rate.
Both servers are separate processes (``trialroute serve intake --role api`` and ``bench/bare_intake.py``,
same uvicorn settings) on fresh databases of the shared PostgreSQL; intake checks a real token from a
real auth process. The load generator is async httpx in this process: closed loop with bounded
concurrency for the maximum rate (rounds interleaved, best of each kept, so that other engineers' load
hits both alike), then an open loop at half intake's best rate, whose latencies count from each
request's scheduled time (no coordinated omission). CPU per request is read from /proc for each process.

    python -m bench.bench_intake [--requests 2000] [--concurrency 16] [--rounds 2] [--open-seconds 20]
                                 [--profile] [--summary FILE]      (from the repo root)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import profiled
from bench.common import (
    RUN_DIR,
    Progress,
    Summary,
    cpu_seconds,
    cpu_since,
    kafka_bootstrap,
    latency_line,
    load,
    machine,
    percentiles_ms,
    postgres_cpu,
    run_id,
    temporary_databases,
)
from services.auth.registry import create_client
from services.devstack.processes import ServiceProcess, trialroute_argv
from services.devstack.stack import Stack, StackConfig, free_port
from shared.auth import Scope
from shared.db import Database
from shared.migrations import migrate, service_migrations
from shared.settings import KafkaSettings
from tests.support.builders import sample_referral

CLINIC = "bench-clinic"
MAX_IN_FLIGHT = 64


@dataclass
class Servers:
    intake: ServiceProcess
    bare: ServiceProcess
    intake_url: str
    bare_url: str
    token: str
    profile: Path | None


@dataclass
class Run:
    """One load run against one server: what came back, how long it took, what it cost."""

    label: str
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed: float = 0.0
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    def line(self) -> str:
        others = {s: n for s, n in self.statuses.items() if s != 202}
        per = 1e3 / max(self.accepted, 1)
        return (
            f"  {self.label}: {self.rate:,.0f} accepted/s ({self.accepted} in {self.elapsed:.1f} s"
            + (f", other statuses {others}" if others else "")
            + f"); {latency_line(self.latencies)}\n"
            f"      CPU per request: server {self.server_cpu * per:.2f} ms, PostgreSQL (all) "
            f"{self.postgres_cpu * per:.2f} ms, load generator {self.client_cpu * per:.2f} ms; {load()}"
        )


def bodies(count: int) -> list[bytes]:
    """Distinct referrals (unique clinic_reference and patient), serialised once, before timing."""
    return [json.dumps(sample_referral()).encode() for _ in range(count)]


async def closed_loop(
    http: httpx.AsyncClient,
    label: str,
    url: str,
    headers: dict[str, str],
    payloads: Sequence[bytes],
    concurrency: int,
    server: ServiceProcess,
    *,
    idempotency_keys: bool = False,
) -> Run:
    """``concurrency`` clients, each sending its next request as soon as the last one is answered."""
    run = Run(label)
    queue = iter(payloads)
    progress = Progress(label, len(payloads))

    async def client() -> None:
        for body in queue:
            extra = {"Idempotency-Key": uuid.uuid4().hex} if idempotency_keys else {}
            started = time.perf_counter()
            response = await http.post(url, content=body, headers=headers | extra)
            run.latencies.append(time.perf_counter() - started)
            run.statuses[response.status_code] += 1
            progress.update(len(run.latencies))

    await _measured(run, server, asyncio.gather(*(client() for _ in range(concurrency))))
    return run


async def open_loop(
    http: httpx.AsyncClient,
    label: str,
    url: str,
    headers: dict[str, str],
    payloads: Sequence[bytes],
    rate: float,
    server: ServiceProcess,
) -> Run:
    """Requests at a fixed rate whatever the answers do; latency counts from the scheduled time.

    One task per request, started when it is due (not all up front), and at most ``MAX_IN_FLIGHT``
    requests on the wire: a request over that waits, and its wait counts in its latency. Without the
    cap, a server falling behind would make httpx's pool juggle hundreds of queued requests, whose cost
    grows with their number, and the load generator rather than the server would set the figures.
    """
    run = Run(label)
    progress = Progress(label, len(payloads))
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(due: float, body: bytes) -> None:
        async with in_flight:
            run.lateness.append(time.perf_counter() - due)
            response = await http.post(url, content=body, headers=headers)
        run.latencies.append(time.perf_counter() - due)
        run.statuses[response.status_code] += 1
        progress.update(len(run.latencies))

    async def schedule() -> None:
        start = time.perf_counter() + 0.1
        tasks = []
        for i, body in enumerate(payloads):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(due, body)))
        await asyncio.gather(*tasks)

    await _measured(run, server, schedule())
    return run


async def _measured(run: Run, server: ServiceProcess, work: Awaitable[object]) -> None:
    assert server.process is not None
    pid = server.process.pid
    cpu0, pg0, client0 = cpu_seconds(pid), postgres_cpu(), time.process_time()
    started = time.perf_counter()
    await work
    run.elapsed = time.perf_counter() - started
    run.server_cpu = cpu_seconds(pid) - cpu0
    run.postgres_cpu = cpu_since(pg0, postgres_cpu())
    run.client_cpu = time.process_time() - client0


async def register_and_token(auth_db_url: str, auth_url: str) -> str:
    """A clinic client registered in the auth store, and a token from the real token endpoint."""
    db = Database(auth_db_url)
    try:
        secret = await create_client(
            db, CLINIC, scopes=[Scope.REFERRALS_WRITE], audiences=["intake"], clinic_id=CLINIC
        )
    finally:
        await db.dispose()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{auth_url}/oauth/token",
            data={"grant_type": "client_credentials", "audience": "intake"},
            auth=(CLINIC, secret),
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


@contextmanager
def servers(urls: dict[str, str], tag: str, *, profile: bool) -> Iterator[Servers]:
    """auth, intake (API role) and the bare endpoint, each a process; stopped afterwards."""
    run_dir = RUN_DIR / f"intake-{tag}"
    ports = {"auth": free_port(), "intake": free_port()}
    config = StackConfig(
        run_dir=run_dir,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap(), topic_prefix=f"bench{tag}."),
        database_urls=urls,
        ports=ports,
        environment="test",
        service_env={"auth": {"AUTH_KEY_ENCRYPTION_SECRET": f"bench-{tag}", "AUTH_TOKEN_LIFETIME_S": "3600"}},
    )
    env = Stack(config).service_env
    logs = run_dir / "logs"
    # A deployment's migrate step: services refuse a store that is not at their code's revision.
    for service in ("auth", "intake"):
        asyncio.run(migrate(urls[service], service_migrations(service)))
    with ExitStack() as stack:
        auth = ServiceProcess(
            "auth",
            trialroute_argv("serve", "auth", "--port", str(ports["auth"])),
            env("auth"),
            logs / "auth.log",
            f"{config.url('auth')}/healthz",
        )
        auth.start()
        stack.callback(auth.stop)
        auth.wait_healthy()
        token = asyncio.run(register_and_token(urls["auth"], config.url("auth")))

        argv = trialroute_argv("serve", "intake", "--role", "api", "--port", str(ports["intake"]))
        profile_path = None
        if profile:
            profile_path = (run_dir / "intake.profile").resolve()
            argv = [argv[0], "-m", "bench.profiled", str(profile_path), *argv[2:]]
        intake = ServiceProcess(
            "intake", argv, env("intake"), logs / "intake.log", f"{config.url('intake')}/healthz"
        )
        intake.start()
        stack.callback(intake.stop)
        bare_port = free_port()
        bare = ServiceProcess(
            "bare",
            [sys.executable, "-m", "bench.bare_intake", "--port", str(bare_port)],
            {"BENCH_DATABASE_URL": urls["intake"]},
            logs / "bare.log",
            f"http://127.0.0.1:{bare_port}/healthz",
        )
        bare.start()
        stack.callback(bare.stop)
        intake.wait_healthy()
        bare.wait_healthy()
        yield Servers(
            intake,
            bare,
            f"{config.url('intake')}/v1/referrals",
            f"http://127.0.0.1:{bare_port}/v1/referrals",
            token,
            profile_path,
        )


async def measure(servers: Servers, args: argparse.Namespace, summary: Summary) -> None:
    json_headers = {"Content-Type": "application/json"}
    intake_headers = json_headers | {"Authorization": f"Bearer {servers.token}"}
    limits = httpx.Limits(
        max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT, keepalive_expiry=2
    )
    targets = {
        "bare": (servers.bare_url, json_headers, servers.bare),
        "intake": (servers.intake_url, intake_headers, servers.intake),
    }
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        for name, (url, headers, process) in targets.items():  # warm-up: connections, caches, JWKS
            warm = await closed_loop(
                http, f"{name} warm-up", url, headers, bodies(args.warmup), args.concurrency, process
            )
            if warm.accepted != args.warmup:
                raise SystemExit(f"{name} refused warm-up requests: {dict(warm.statuses)}")

        print(f"\nclosed loop: {args.requests} requests per run, {args.concurrency} concurrent clients")
        best: dict[str, Run] = {}
        for round_ in range(1, args.rounds + 1):
            for name, (url, headers, process) in targets.items():
                run = await closed_loop(
                    http,
                    f"{name} (round {round_})",
                    url,
                    headers,
                    bodies(args.requests),
                    args.concurrency,
                    process,
                )
                print(run.line(), flush=True)
                if name not in best or run.rate > best[name].rate:
                    best[name] = run
        keyed = await closed_loop(
            http,
            "intake with Idempotency-Key",
            servers.intake_url,
            intake_headers,
            bodies(args.requests),
            args.concurrency,
            servers.intake,
            idempotency_keys=True,
        )
        print(keyed.line(), flush=True)

        bare_rate, intake_rate = best["bare"].rate, best["intake"].rate
        ratio = intake_rate / bare_rate
        print(
            f"\n  best: intake {intake_rate:,.0f}/s, bare {bare_rate:,.0f}/s: intake at {ratio:.2f} "
            f"of bare (goal >= 0.70: {'met' if ratio >= 0.7 else 'missed'})"
        )
        summary.add("intake max rate (closed loop)", f"{intake_rate:,.0f} referrals/s")
        summary.add("bare insert max rate (closed loop)", f"{bare_rate:,.0f} inserts/s")
        summary.add(
            "intake / bare rate", f"{ratio:.2f}", goal=">= 0.70", met=ratio >= 0.7, note="best of rounds"
        )
        summary.add("intake with Idempotency-Key", f"{keyed.rate:,.0f} referrals/s")

        half = intake_rate / 2
        count = max(int(half * args.open_seconds), 100)
        print(f"\nopen loop at half intake's best rate: {half:,.0f} requests/s, {count} requests")
        run = await open_loop(
            http,
            "intake (open loop)",
            servers.intake_url,
            intake_headers,
            bodies(count),
            half,
            servers.intake,
        )
        print(run.line())
        late = percentiles_ms(run.lateness)[2]
        print(
            f"      sends started late by p99 {late:.1f} ms (the load generator keeping up, or waiting "
            f"for one of its {MAX_IN_FLIGHT} connections)"
        )
        p99 = percentiles_ms(run.latencies)[2]
        print(f"  p99 {p99:.1f} ms at {half:,.0f}/s (goal < 100 ms: {'met' if p99 < 100 else 'missed'})")
        summary.add(
            f"intake p99 at half max ({half:,.0f}/s, open loop)",
            f"{p99:.0f} ms",
            goal="< 100 ms",
            met=p99 < 100,
        )


def print_profile(path: Path) -> None:
    print(f"\nintake profile (whole run, {path}):")
    print(profiled.report(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per closed-loop run")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--open-seconds", type=float, default=20)
    parser.add_argument("--profile", action="store_true", help="run intake under a profiler, print it")
    parser.add_argument("--summary", type=Path, help="append headline figures (JSON lines) here")
    args = parser.parse_args(argv)
    summary = Summary(args.summary, "intake")

    print(machine("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "httpx"))
    print(
        "\nintake: POST /v1/referrals (trialroute serve intake --role api) against a bare insert endpoint;"
        " fresh databases on the shared PostgreSQL"
    )
    if args.profile:
        print("  (intake runs under a profiler: its figures are slower than unprofiled)")
    tag = run_id()
    with temporary_databases("intake", "auth", tag=tag) as urls:
        with servers(urls, tag, profile=args.profile) as running:
            asyncio.run(measure(running, args, summary))
        if running.profile is not None and running.profile.exists():
            print_profile(running.profile)


if __name__ == "__main__":
    main()
