"""Referrals per second through the whole system, from POST to the emails the SMTP server accepted.

Goals: 200 referrals/s sustained with nothing lost, and p95 under 2 s from POST to the patient's email
at an offered 50/s. Every service is its own process (``trialroute serve``) on its own fresh PostgreSQL
database, with a topic prefix of its own on the shared broker and the mailbox process as the SMTP
server; site capacities are raised through the ops admin API so that no referral waits for a slot.

1. Throughput: N referrals are POSTed as fast as intake takes them (closed loop), then the mailbox is
   watched until every patient's and every site's email is in it. The rate is N over the time from the
   first POST to the last of those emails (the mailbox's ``received_at``); anything missing after the
   pipeline stalls is reported as lost.
2. Latency: referrals at a fixed offered rate (open loop) for some seconds; for each, the time from
   its POST to its patient email's ``received_at``.

CPU per referral is read from /proc for each service process, the mailbox, PostgreSQL and the broker:
with two cores, the process that needs most is what bounds the rate.

    python -m bench.bench_end_to_end [--referrals 1000] [--rate 50] [--seconds 20] [--profile notifier]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import profiled
from bench.common import (
    RUN_DIR,
    MachineCpu,
    Progress,
    Summary,
    cpu_seconds,
    cpu_since,
    kafka_bootstrap,
    latency_line,
    load,
    machine,
    memory_mb,
    percentiles_ms,
    postgres_cpu,
    run_id,
    temporary_databases,
)
from services.devstack.processes import trialroute_argv
from services.devstack.stack import DEFAULT_PORTS, SERVICES, Stack, StackConfig, free_port, site_codes
from shared.kafka import delete_topics
from shared.settings import KafkaSettings
from tests.support.builders import sample_referral
from tests.support.kafka import read_topic
from tests.support.system import own_consumer_groups

POSTAL_CODES = ("10021", "02215", "33612", "77030", "60611", "94143", "98109", "80045")
ABROAD = (("SW1A 1AA", "GB"), ("10115", "DE"), ("H3Z 2Y7", "CA"), ("2000", "AU"), ("28001", "ES"))
"""Patients outside the US (``--countries``): the site router loads a country's postal codes on first use."""
SITE_DOMAIN = "@sites.example.org"
CAPACITY = 10_000
MAX_IN_FLIGHT = 64


class BenchStack(Stack):
    """The devstack's Stack, with chosen services run under the profiler."""

    def __init__(self, config: StackConfig, profile: Sequence[str]) -> None:
        super().__init__(config)
        self.profile = set(profile)

    def profile_path(self, service: str) -> Path:
        return (self.config.run_dir / f"{service}.profile").resolve()

    def _start_service(self, service: str) -> None:
        if service not in self.profile:
            super()._start_service(service)
            return
        argv = trialroute_argv("serve", service, "--port", str(self.config.ports[service]))
        argv = [argv[0], "-m", "bench.profiled", str(self.profile_path(service)), *argv[2:]]
        self._start(service, argv, self.service_env(service), f"{self.config.url(service)}/healthz")


@contextmanager
def running(tag: str, profile: Sequence[str]) -> Iterator[BenchStack]:
    """Databases, topics and processes of one system, removed again afterwards whatever happens."""
    run_dir = (RUN_DIR / f"e2e-{tag}").resolve()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap(), topic_prefix=f"bench{tag}.")
    with temporary_databases(*SERVICES, tag=tag) as urls:
        config = StackConfig(
            run_dir=run_dir,
            kafka=kafka,
            database_urls=urls,
            ports={name: free_port() for name in DEFAULT_PORTS},
            environment="test",
            service_env={
                "auth": {"AUTH_KEY_ENCRYPTION_SECRET": f"bench-{tag}", "AUTH_TOKEN_LIFETIME_S": "3600"},
                **own_consumer_groups(f"bench{tag}-"),
            },
        )
        stack = BenchStack(config, profile)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
            asyncio.run(delete_topics(kafka))


@dataclass
class Mail:
    """What the mailbox process has accepted, read from its files (cheaper than its API's parsing)."""

    directory: Path
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    sites: dict[str, float] = field(default_factory=dict)

    def poll(self) -> None:
        """Read the messages accepted since the last poll (each message is read once)."""
        if not self.directory.exists():
            return
        parser = BytesHeaderParser()
        for path in self.directory.glob("*.json"):
            if path.stem in self.seen:
                continue
            try:
                meta = json.loads(path.read_text())
                meta["at"] = datetime.fromisoformat(meta["received_at"]).timestamp()
                if any(to.endswith(SITE_DOMAIN) for to in meta["to"]):
                    # The referral id is in the site email's subject: "New referral <id> for ...".
                    with path.with_suffix(".eml").open("rb") as eml:
                        words = str(parser.parse(eml)["Subject"] or "").split()
                    if words[:2] == ["New", "referral"] and len(words) > 2:
                        self.sites[words[2]] = meta["at"]
            except (OSError, ValueError, KeyError):
                continue  # being written (the .json comes first): next time
            self.seen[path.stem] = meta

    def received(self, recipient_suffix: str = "") -> dict[str, list[float]]:
        """Recipient address -> times its messages were accepted."""
        out: dict[str, list[float]] = {}
        for meta in self.seen.values():
            for to in meta["to"]:
                if to.endswith(recipient_suffix):
                    out.setdefault(to, []).append(meta["at"])
        return out


@dataclass
class Submitted:
    """A referral we POSTed: when (wall clock, to compare with the mailbox's) and its patient's address."""

    referral_id: str
    patient_email: str
    posted_at: float


def bodies(count: int, rng: random.Random, countries: int = 1) -> list[dict[str, Any]]:
    """Referrals from US postal codes; with ``countries`` > 1, every tenth from one of the first
    ``countries - 1`` other countries of ``ABROAD`` (routed to the nearest site all the same)."""
    abroad = ABROAD[: max(0, countries - 1)]
    out = []
    for _ in range(count):
        if abroad and rng.random() < 0.1:
            postal_code, country = rng.choice(abroad)
            out.append(sample_referral(postal_code=postal_code, country=country))
        else:
            out.append(sample_referral(postal_code=rng.choice(POSTAL_CODES)))
    return out


async def token(http: httpx.AsyncClient, stack: Stack, client_id: str, audience: str) -> dict[str, str]:
    response = await http.post(
        f"{stack.config.url('auth')}/oauth/token",
        data={"grant_type": "client_credentials", "audience": audience},
        auth=(client_id, stack.credentials[client_id]),
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def raise_capacities(http: httpx.AsyncClient, stack: Stack) -> None:
    headers = await token(http, stack, "ops", "site_router")
    for code in site_codes():
        response = await http.patch(
            f"{stack.config.url('site_router')}/v1/sites/{code}", json={"capacity": CAPACITY}, headers=headers
        )
        response.raise_for_status()


async def post(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any]
) -> Submitted | None:
    started = time.time()
    try:
        response = await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        print(f"    POST failed: {type(exc).__name__}")
        return None
    if response.status_code != 202:
        print(f"    POST answered {response.status_code}: {response.text[:200]}")
        return None
    return Submitted(response.json()["id"], body["patient"]["email"], started)


async def burst(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    payloads: list[dict[str, Any]],
    concurrency: int,
) -> list[Submitted]:
    """Closed loop: as fast as intake takes them."""
    queue = iter(payloads)
    done: list[Submitted] = []
    progress = Progress("POSTs", len(payloads))

    async def client() -> None:
        for body in queue:
            if (sent := await post(http, url, headers, body)) is not None:
                done.append(sent)
            progress.update(len(done))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


async def paced(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], payloads: list[dict[str, Any]], rate: float
) -> list[Submitted]:
    """Open loop: one POST every 1/rate seconds whatever the answers do, each started when due, at most
    ``MAX_IN_FLIGHT`` on the wire (a POST over that waits, and its wait counts in its latency)."""
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(body: dict[str, Any]) -> Submitted | None:
        posted_at = time.time()
        async with in_flight:
            sent = await post(http, url, headers, body)
        return None if sent is None else Submitted(sent.referral_id, sent.patient_email, posted_at)

    start = time.perf_counter() + 0.1
    tasks = []
    for i, body in enumerate(payloads):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(body)))
    return [r for r in await asyncio.gather(*tasks) if r is not None]


async def until_delivered(
    mail: Mail, submitted: list[Submitted], *, stall_s: float, what: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Wait until every referral's patient and site email is in; give up after ``stall_s`` without
    progress. Returns patient email -> first received time, referral id -> site email time."""
    wanted = {s.patient_email for s in submitted}
    ids = {s.referral_id for s in submitted}
    progress = Progress(f"{what}: patient + site emails", 2 * len(submitted))
    last_count, last_change = -1, time.monotonic()
    while True:
        await asyncio.to_thread(mail.poll)
        patients = {to: min(ts) for to, ts in mail.received().items() if to in wanted}
        sites = {rid: at for rid, at in mail.sites.items() if rid in ids}
        count = len(patients) + len(sites)
        progress.update(count)
        if count == 2 * len(submitted):
            return patients, sites
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return patients, sites
        await asyncio.sleep(0.5)


def cpu_snapshot(stack: Stack) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each process, grouped by what it is."""
    snap = {
        name: {p.process.pid: cpu_seconds(p.process.pid)}
        for name, p in stack.processes.items()
        if p.process is not None
    }
    snap["postgresql (all)"] = postgres_cpu()
    snap["kafka broker"] = {pid: cpu_seconds(pid) for pid in kafka_broker_pids()}
    return snap


def kafka_broker_pids() -> list[int]:
    """The broker deploy/local/kafka.sh started from this checkout (other checkouts run their own)."""
    marker = str(Path(".run/kafka/server.properties").resolve())
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def cpu_lines(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], referrals: int, elapsed: float
) -> tuple[str, float, float]:
    """The per-process CPU lines, and the total ms per referral with and without the mailbox."""
    used = {k: cpu_since(v, after.get(k, {})) for k, v in before.items()}
    referrals, elapsed = max(referrals, 1), max(elapsed, 1e-9)
    parts = [
        f"{name} {sec / referrals * 1e3:.1f} ms ({sec / elapsed:.0%} of a core)"
        for name, sec in sorted(used.items(), key=lambda kv: -kv[1])
    ]
    total = sum(used.values()) / referrals * 1e3
    without = total - used.get("mailbox", 0.0) / referrals * 1e3
    text = (
        f"      CPU per referral: total {total:.1f} ms, without the SMTP catcher (mailbox) {without:.1f} ms\n"
        "      by process: " + ", ".join(parts)
    )
    return text, total, without


def memory_line(stack: Stack, when: str) -> tuple[str, dict[str, float]]:
    """Resident memory of each process of the system: now (``idle``) or its peak so far (under load)."""
    pids = {name: p.process.pid for name, p in stack.processes.items() if p.process is not None}
    brokers = kafka_broker_pids()
    if brokers:
        pids["kafka broker"] = brokers[0]
    peak = when != "idle"
    sizes = {name: memory_mb(pid)[1 if peak else 0] for name, pid in pids.items()}
    what = "peak resident memory so far (VmHWM)" if peak else "resident memory (VmRSS)"
    parts = [f"{name} {mb:,.0f} MB" for name, mb in sorted(sizes.items(), key=lambda kv: -kv[1])]
    return f"      {what}, {when}: " + ", ".join(parts), sizes


async def measure(stack: BenchStack, args: argparse.Namespace, summary: Summary) -> None:
    rng = random.Random(args.seed)
    mail = Mail(stack.config.run_dir / "mail")
    intake = f"{stack.config.url('intake')}/v1/referrals"
    limits = httpx.Limits(
        max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT, keepalive_expiry=2
    )
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await raise_capacities(http, stack)
        headers = await token(http, stack, "demo-clinic", "intake")
        warm = await burst(http, intake, headers, bodies(args.warmup, rng), 4)
        await until_delivered(mail, warm, stall_s=60, what="warm-up")

        await asyncio.sleep(3)  # let the warm-up's last passes finish: idle means idle
        idle_text, idle = memory_line(stack, "idle")
        print(idle_text, flush=True)
        print(f"\nthroughput: {args.referrals} referrals, {args.concurrency} concurrent POSTs")
        before, machine0 = cpu_snapshot(stack), MachineCpu.now()
        t0 = time.time()
        sent = await burst(
            http, intake, headers, bodies(args.referrals, rng, args.countries), args.concurrency
        )
        posted = time.time() - t0
        patients, sites = await until_delivered(mail, sent, stall_s=args.stall_s, what="throughput")
        last = max([*patients.values(), *sites.values()], default=time.time())
        elapsed = last - t0
        after = cpu_snapshot(stack)
        lost = 2 * len(sent) - len(patients) - len(sites)
        rate = len(sent) / elapsed
        referrers = sum(1 for to in mail.received() if to.startswith("referrer."))
        print(
            f"  POSTs: {len(sent)} accepted in {posted:.1f} s ({len(sent) / posted:,.0f}/s)\n"
            f"  {rate:,.1f} referrals/s from first POST to last patient/site email ({elapsed:.1f} s); "
            f"lost: {lost} (patient {len(sent) - len(patients)}, site {len(sent) - len(sites)}); "
            f"referrer emails in the mailbox so far: {referrers}; {load()}\n"
            f"      machine {MachineCpu.now().busy_share_since(machine0):.0%} busy"
        )
        cpu_text, total, without = cpu_lines(before, after, len(sent), elapsed)
        print(cpu_text, flush=True)
        loaded_text, loaded = memory_line(stack, "after the throughput run")
        print(loaded_text, flush=True)
        summary.add(
            "end to end, CPU per referral (all processes)",
            f"{total:.1f} ms ({without:.1f} ms without the SMTP catcher)",
            goal="<= 20 ms",
            met=total <= 20,
        )
        services = [name for name in idle if name in SERVICES]
        for label, sizes, limit in (("idle", idle, 100), ("peak under load", loaded, 150)):
            biggest = max(services, key=lambda name: sizes[name], default=None)
            if biggest is not None:
                summary.add(
                    f"end to end, largest service memory, {label}",
                    f"{sizes[biggest]:,.0f} MB ({biggest}); "
                    + ", ".join(f"{n} {sizes[n]:,.0f}" for n in sorted(sizes) if n != biggest),
                    goal=f"<= {limit} MB",
                    met=sizes[biggest] <= limit,
                )
        summary.add(
            "end to end, sustained",
            f"{rate:,.1f} referrals/s, {lost} lost",
            goal=">= 200/s, 0 lost",
            met=rate >= 200 and lost == 0,
        )

        runs = []
        if args.seconds > 0:
            if args.low_rate > 0:
                runs.append((args.low_rate, args.seconds, LOW_RATE_GOAL))
            runs.append((args.rate, args.seconds, "< 2 s"))
        if args.sustainable_seconds > 0:
            # Latency where the pipeline keeps up: half the rate it just sustained (no goal of its own).
            runs.append((round(max(rate / 2, 0.5), 1), args.sustainable_seconds, ""))
        for offered, seconds, goal in runs:
            await latency_run(
                http,
                stack,
                mail,
                intake,
                headers,
                bodies(int(offered * seconds), rng),
                offered,
                args.stall_s,
                summary,
                goal,
            )


LOW_RATE_GOAL = "p50 < 0.25 s, p95 < 1 s"
HOPS = ("referral.submitted", "referral.screened", "referral.routed")


async def hop_lines(kafka: KafkaSettings, sent: Sequence[Submitted], patients: dict[str, float]) -> str:
    """Where a referral's time goes, hop by hop, from the events on the run's topics: each event's
    ``occurred_at`` (its writing transaction, before the commit) and its record's timestamp (when the
    relay sent it). "relay" is commit + wake-up + gather + claim + send; "to the next service" is the
    broker, the consumer's fetch and the handler up to its own event."""
    written: dict[str, dict[str, float]] = {topic: {} for topic in HOPS}
    sent_at: dict[str, dict[str, float]] = {topic: {} for topic in HOPS}
    for topic in HOPS:
        for record in await read_topic(kafka, topic):
            envelope = json.loads(record.value or b"{}")
            rid = str(envelope.get("referral_id"))
            if rid not in written[topic]:  # the first of a referral (a re-screening would follow)
                written[topic][rid] = datetime.fromisoformat(envelope["occurred_at"]).timestamp()
                sent_at[topic][rid] = record.timestamp / 1e3
    spans: dict[str, list[float]] = {}

    def add(label: str, start: float | None, end: float | None) -> None:
        if start is not None and end is not None:
            spans.setdefault(label, []).append(end - start)

    for s in sent:
        rid = s.referral_id
        points = [written[t].get(rid) for t in HOPS]
        relayed = [sent_at[t].get(rid) for t in HOPS]
        add("POST -> submitted written (intake)", s.posted_at, points[0])
        for i, topic in enumerate(HOPS):
            short = topic.removeprefix("referral.")
            add(f"{short}: written -> sent (relay)", points[i], relayed[i])
            following = points[i + 1] if i + 1 < len(HOPS) else patients.get(s.patient_email)
            after = (
                HOPS[i + 1].removeprefix("referral.") + " written" if i + 1 < len(HOPS) else "patient email"
            )
            add(f"{short}: sent -> {after}", relayed[i], following)
    if not spans:
        return ""
    width = max(len(label) for label in spans)
    lines = [f"  {label:<{width}}  {latency_line(values)}" for label, values in spans.items()]
    return "  where the time went (p50 of each hop need not add up to the p50 of the whole):\n" + "\n".join(
        lines
    )


async def latency_run(
    http: httpx.AsyncClient,
    stack: Stack,
    mail: Mail,
    intake: str,
    headers: dict[str, str],
    payloads: list[dict[str, Any]],
    rate: float,
    stall_s: float,
    summary: Summary,
    goal: str,
) -> None:
    """Offer ``payloads`` at ``rate`` (open loop); POST -> email latencies from the mailbox's clock."""
    print(f"\nlatency: {len(payloads)} referrals offered at {rate:g}/s (open loop)")
    before, machine0 = cpu_snapshot(stack), MachineCpu.now()
    t0 = time.time()
    sent = await paced(http, intake, headers, payloads, rate)
    patients, sites = await until_delivered(mail, sent, stall_s=stall_s, what=f"latency at {rate:g}/s")
    elapsed = max([*patients.values(), *sites.values()], default=time.time()) - t0
    after = cpu_snapshot(stack)
    to_patient = [patients[s.patient_email] - s.posted_at for s in sent if s.patient_email in patients]
    to_site = [sites[s.referral_id] - s.posted_at for s in sent if s.referral_id in sites]
    lost = 2 * len(sent) - len(patients) - len(sites)
    if to_patient:
        print(f"  POST -> patient email: {latency_line(to_patient)}")
    if to_site:
        print(f"  POST -> site email:    {latency_line(to_site)}")
    print(f"  lost: {lost}; {load()}; machine {MachineCpu.now().busy_share_since(machine0):.0%} busy")
    print(cpu_lines(before, after, len(sent), elapsed)[0], flush=True)
    p95 = percentiles_ms(to_patient)[1] / 1e3 if to_patient else float("inf")
    p50 = float(np.median(to_patient)) if to_patient else float("inf")
    met = None
    if goal == LOW_RATE_GOAL:
        met = p50 < 0.25 and p95 < 1 and lost == 0
    elif goal:
        met = p95 < 2 and lost == 0
    summary.add(
        f"end to end, p95 POST -> patient email at {rate:g}/s",
        f"{p95:.2f} s (p50 {p50:.2f} s), {lost} lost" if to_patient else "n/a",
        goal=goal,
        met=met,
    )
    hops = await hop_lines(stack.config.kafka, sent, patients)
    if hops:
        print(hops, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--referrals", type=int, default=1000, help="throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=50, help="offered rate of the latency run")
    parser.add_argument(
        "--low-rate", type=float, default=20, help="first a latency run at this rate (0: skip)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument(
        "--sustainable-seconds", type=float, default=15, help="then at half the sustained rate (0: skip)"
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--countries",
        type=int,
        default=1,
        choices=range(1, len(ABROAD) + 2),
        help="patients' countries in the throughput run (1: the US only)",
    )
    parser.add_argument("--stall-s", type=float, default=60, help="give up after this long without an email")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", nargs="*", default=[], choices=SERVICES, help="services to profile")
    parser.add_argument("--summary", type=Path, help="append headline figures (JSON lines) here")
    args = parser.parse_args(argv)
    summary = Summary(args.summary, "end to end")

    print(machine("fastapi", "aiokafka", "sqlalchemy", "asyncpg", "aiosmtpd"))
    print(
        "\nend to end: auth, intake, eligibility, site_router, notifier and the mailbox (SMTP) as processes,"
        " fresh PostgreSQL databases, shared broker"
    )
    tag = run_id()
    started = time.monotonic()
    with running(tag, args.profile) as stack:
        print(f"  system started in {time.monotonic() - started:.0f} s; logs in {stack.config.run_dir}")
        asyncio.run(measure(stack, args, summary))
    for service in args.profile:
        path = stack.profile_path(service)
        if path.exists():
            print(f"\n{service} profile ({path}):\n{profiled.report(path)}")


if __name__ == "__main__":
    main()
