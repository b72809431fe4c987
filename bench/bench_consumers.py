"""Does a second consumer instance double screening throughput? One eligibility consumer against two.

Goal: two instances (separate processes, one consumer group) at least 1.6x one, where the work is
CPU-bound. Each run gets a fresh database and consumer group on the shared PostgreSQL and broker. The
instances (``trialroute serve eligibility --role consumer``) start, screen a few warm-up events until
the group has settled, and are then frozen (SIGSTOP) while N ``referral.submitted`` events are loaded
onto the topic; all are thawed (SIGCONT) at one instant and timed until every event is recorded as
handled. That keeps process start-up and group rebalancing out of the figure. CPU per event is read
for each instance and for PostgreSQL, to say what bounds the rate on this two-core machine.

    python -m bench.bench_consumers [--events 3000] [--warmup 100] [--instances 1 2] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.engine import make_url

from bench import profiled
from bench.common import (
    RUN_DIR,
    MachineCpu,
    Progress,
    Summary,
    cpu_seconds,
    cpu_since,
    kafka_bootstrap,
    load,
    machine,
    postgres_cpu,
    run_id,
    temporary_databases,
)
from services.devstack.processes import ServiceProcess, trialroute_argv
from services.devstack.stack import free_port
from services.eligibility.migrations import MIGRATIONS
from shared.events import Referrer
from shared.kafka import delete_topics, ensure_topics, new_producer
from shared.migrations import migrate
from shared.settings import KafkaSettings
from tests.support.builders import sample_referral, submitted, wrap


def submitted_events(count: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``referral.submitted`` records as intake publishes them, serialised up front."""
    records = []
    today = date.today()
    for _ in range(count):
        body = sample_referral()
        data = submitted(
            clinic_id="bench-clinic",
            referral_day=today,
            postal_code=body["patient"]["postal_code"],
            country=body["patient"]["country"],
            referrer=Referrer(**body["referrer"]),
            clinical=body["clinical"],
        )
        envelope = wrap(data)
        records.append((str(envelope.referral_id).encode(), envelope.model_dump_json().encode()))
    return records


async def load_topic(kafka: KafkaSettings, records: list[tuple[bytes, bytes]]) -> float:
    """Publish the records (key = referral id, spread over the partitions); seconds it took."""
    producer = await new_producer(kafka, client_id="bench-loader")
    started = time.perf_counter()
    try:
        futures = [
            await producer.send(kafka.topic("referral.submitted"), value=value, key=key)
            for key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def wait_handled(
    pg_url: str, group: str, target: int, *, timeout_s: float, progress: Progress
) -> float:
    """Poll until ``target`` events are recorded; the time it happened (perf_counter)."""
    deadline = time.monotonic() + timeout_s
    conn = await asyncpg.connect(pg_url)
    try:
        while time.monotonic() < deadline:
            done = int(
                await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", group)
            )
            progress.update(done)
            if done >= target:
                return time.perf_counter()
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise TimeoutError(f"only {done} of {target} events handled after {timeout_s:.0f} s")


async def wait_stable(kafka: KafkaSettings, group: str, members: int, *, timeout_s: float) -> None:
    """Until the group is Stable with every instance in it (a late joiner would rebalance mid-run)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # (error_code, group, state, protocol_type, protocol, members)
            _, _, state, _, _, joined = (await admin.describe_consumer_groups([group]))[0].groups[0][:6]
            if state == "Stable" and len(joined) == members:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group} not stable with {members} members after {timeout_s:.0f} s")
    finally:
        await admin.close()


def run_instances(
    count: int, db_url: str, kafka: KafkaSettings, args: argparse.Namespace, tag: str
) -> dict[str, float]:
    """Start ``count`` consumer processes, warm them up, freeze, load, thaw, time; stop them."""
    group = f"bench-{tag}-x{count}"
    pg_url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    asyncio.run(_create_tables(db_url))  # once, before the instances race to create them
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "ELIGIBILITY_DATABASE_URL": db_url,
        "ELIGIBILITY_ENVIRONMENT": "test",
        "ELIGIBILITY_CONSUMER_GROUP": group,
    }
    with ExitStack() as stack:
        processes = []
        for i in range(count):
            port = free_port()
            argv = trialroute_argv("serve", "eligibility", "--role", "consumer", "--port", str(port))
            if args.profile and i == 0:
                profile = (RUN_DIR / f"consumers-{tag}" / f"x{count}-{i}.profile").resolve()
                argv = [argv[0], "-m", "bench.profiled", str(profile), *argv[2:]]
                stack.callback(_print_profile, profile)
            process = ServiceProcess(
                f"eligibility-{i}",
                argv,
                env,
                RUN_DIR / f"consumers-{tag}" / f"x{count}-{i}.log",
                f"http://127.0.0.1:{port}/healthz",
            )
            process.start()
            stack.callback(process.stop)
            processes.append(process)
        for process in processes:
            process.wait_healthy()
        pids = [p.process.pid for p in processes if p.process is not None]

        warm = submitted_events(args.warmup)
        asyncio.run(load_topic(kafka, warm))
        asyncio.run(wait_handled(pg_url, group, args.warmup, timeout_s=120, progress=Progress("warm-up", 0)))
        asyncio.run(wait_stable(kafka, group, count, timeout_s=60))
        time.sleep(args.settle_s)  # and let each member fetch from its partitions again

        records = submitted_events(args.events)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            load_s = asyncio.run(load_topic(kafka, records))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        cpu0 = [cpu_seconds(pid) for pid in pids]
        pg0, machine0 = postgres_cpu(), MachineCpu.now()
        started = time.perf_counter()
        progress = Progress(f"{count} instance(s)", args.warmup + args.events)
        done_at = asyncio.run(
            wait_handled(pg_url, group, args.warmup + args.events, timeout_s=600, progress=progress)
        )
        elapsed = done_at - started
        cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        return {
            "elapsed": elapsed,
            "rate": args.events / elapsed,
            "load_s": load_s,
            "cpu_per_event_ms": sum(cpu) / args.events * 1e3,
            "busiest_instance_share": max(cpu) / elapsed,
            "postgres_per_event_ms": cpu_since(pg0, postgres_cpu()) / args.events * 1e3,
            "machine_busy": MachineCpu.now().busy_share_since(machine0),
        }


def _print_profile(path: Path) -> None:
    if path.exists():
        print(f"\nprofile of the first instance ({path}):\n{profiled.report(path)}")


async def _create_tables(db_url: str) -> None:
    await migrate(db_url, MIGRATIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause once the group is stable")
    parser.add_argument("--profile", action="store_true", help="profile the first instance, print it")
    parser.add_argument("--summary", type=Path, help="append headline figures (JSON lines) here")
    args = parser.parse_args(argv)
    summary = Summary(args.summary, "consumers")

    print(machine("aiokafka", "sqlalchemy", "asyncpg"))
    tag = run_id()
    partitions = KafkaSettings().partitions
    print(
        f"\nconsumers: eligibility screening of {args.events} pre-loaded referral.submitted events "
        f"({partitions} partitions), one consumer process against several in one group"
    )
    names = [f"eligibility{n}" for n in args.instances]
    results: dict[int, dict[str, float]] = {}
    with temporary_databases(*names, tag=tag) as urls:
        for count in args.instances:
            # Topics of its own per run: a new group reads a topic from the start, earlier runs' too.
            kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap(), topic_prefix=f"bench{tag}x{count}.")
            asyncio.run(ensure_topics(kafka))
            try:
                r = run_instances(count, urls[f"eligibility{count}"], kafka, args, tag)
            finally:
                asyncio.run(delete_topics(kafka))
            results[count] = r
            print(
                f"  {count} instance(s): {r['rate']:,.0f} events/s ({args.events} in "
                f"{r['elapsed']:.1f} s; loaded in {r['load_s']:.1f} s while frozen)\n"
                f"      CPU per event: consumers {r['cpu_per_event_ms']:.2f} ms, PostgreSQL (all) "
                f"{r['postgres_per_event_ms']:.2f} ms; busiest instance "
                f"{r['busiest_instance_share']:.0%} of a core; machine {r['machine_busy']:.0%} busy; "
                f"{load()}",
                flush=True,
            )

    if 1 in results:
        one = results[1]["rate"]
        summary.add("eligibility consumer, 1 instance", f"{one:,.0f} events/s")
        for count, r in results.items():
            if count == 1:
                continue
            speedup = r["rate"] / one
            goal_met = speedup >= 1.6
            print(
                f"  {count} instances / 1: {speedup:.2f}x (goal >= 1.6x: {'met' if goal_met else 'missed'})"
            )
            summary.add(
                f"eligibility consumer, {count} instances",
                f"{r['rate']:,.0f} events/s ({speedup:.2f}x)",
                goal=">= 1.6x" if count == 2 else "",
                met=goal_met if count == 2 else None,
                note=f"machine {r['machine_busy']:.0%} busy",
            )


if __name__ == "__main__":
    main()
