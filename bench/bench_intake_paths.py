"""Intake's write paths in one process, without HTTP: the CPU each costs, for A/B comparisons of code.

On a fresh PostgreSQL database (migrated as a deployment is): submissions through the command and the
transaction ``POST /v1/referrals`` runs (``Commands.submit`` under ``api._idempotent``, without and with
an Idempotency-Key), then the other services' status events of each referral (screened, routed, three
notified) recorded by ``record_status_events`` in transactions of ``--batch`` events of one type, as the
consumer loop hands over a poll of one topic. Rounds alternate the parts; each part's CPU time
(``time.process_time``: this process, the database's excluded) and wall time per operation is printed
per round, then the median over rounds. FastAPI, the token check and the consumer loop are left out:
what is measured is what the commands and the store cost.

    python -m bench.bench_intake_paths [--referrals 300] [--rounds 3] [--batch 50] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import load, machine, run_id, temporary_databases
from services.intake import api
from services.intake.commands import Commands, record_status_events
from services.intake.config import IntakeSettings
from services.intake.idempotency import Idempotency
from services.intake.schemas import ReferralCreate
from shared.auth import Principal
from shared.db import Database
from shared.events import Envelope
from shared.migrations import migrate, service_migrations
from tests.support import builders

CLINIC = "bench-clinic"


Rows = dict[str, list[float]]
"""CPU ms per operation of each part, one value per round."""


async def timed(label: str, count: int, work: Awaitable[None], rows: Rows) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    await work
    cpu_ms = (time.process_time() - cpu) * 1000 / count
    wall_ms = (time.perf_counter() - wall) * 1000 / count
    rows.setdefault(label, []).append(cpu_ms)
    print(f"  {label:<34} CPU {cpu_ms:6.3f} ms  wall {wall_ms:6.3f} ms  per op ({count})", flush=True)


def payloads(count: int) -> list[ReferralCreate]:
    """Bodies as the route receives them, validated (outside the timing: that is FastAPI's part)."""
    return [ReferralCreate.model_validate(builders.sample_referral()) for _ in range(count)]


def stream(referral_id: uuid.UUID, at: datetime) -> list[Envelope]:
    """What the other services say of a routed referral, one second apart, in the order they say it."""
    data = [
        builders.screened(clinic_id=CLINIC),
        builders.routed(clinic_id=CLINIC, site=builders.site()),
        builders.notified("site", "site_new_referral"),
        builders.notified("patient", "patient_referral_routed"),
        builders.notified("referrer", "referrer_referral_routed"),
    ]
    return [builders.wrap(d, referral_id, at=at + timedelta(seconds=i)) for i, d in enumerate(data)]


@dataclass
class Paths:
    db: Database
    commands: Commands
    idempotency: Idempotency
    principal: Principal
    batch: int

    async def submit(self, payload: ReferralCreate, keyed: bool) -> uuid.UUID:
        key = uuid.uuid4().hex if keyed else None
        transaction = api._idempotent(self.idempotency, self.principal, key, "/v1/referrals", payload, 202)
        outcome = await self.commands.submit(self.principal, payload, transaction)
        return uuid.UUID(outcome.body["id"])

    async def submit_all(self, bodies: list[ReferralCreate], keyed: bool, ids: list[uuid.UUID]) -> None:
        for payload in bodies:
            ids.append(await self.submit(payload, keyed))

    async def record(self, envelopes: list[Envelope]) -> None:
        """The events in transactions of ``batch``, as the consumer loop hands them to the handler."""
        for start in range(0, len(envelopes), self.batch):
            batch = envelopes[start : start + self.batch]
            async with self.db.session() as session:
                await record_status_events(session, [(e, e.payload()) for e in batch])

    async def round(self, referrals: int, rows: Rows) -> None:
        ids: list[uuid.UUID] = []
        plain, keyed = payloads(referrals), payloads(referrals // 2)
        await timed("submit (no Idempotency-Key)", len(plain), self.submit_all(plain, False, ids), rows)
        await timed("submit (Idempotency-Key)", len(keyed), self.submit_all(keyed, True, []), rows)
        streams = [stream(rid, datetime.now(UTC)) for rid in ids]
        for kind in range(5):
            envelopes = [s[kind] for s in streams]
            label = f"record {envelopes[0].type}" + (f" ({kind - 1})" if kind >= 2 else "")
            await timed(label, len(envelopes), self.record(envelopes), rows)


async def run(args: argparse.Namespace, url: str) -> None:
    await migrate(url, service_migrations("intake"))
    db = Database(url)
    paths = Paths(
        db=db,
        commands=Commands(db, IntakeSettings(environment="test", database_url=url)),
        idempotency=Idempotency(db, ttl=timedelta(hours=24), lock_s=30),
        principal=Principal(
            client_id="bench-clinic", subject="bench", scopes=frozenset({"referrals:write"}), clinic_id=CLINIC
        ),
        batch=args.batch,
    )
    rows: Rows = {}
    warm = payloads(40)  # statement caches, prepared statements, the pool
    await paths.submit_all(warm[:20], False, [])
    await paths.submit_all(warm[20:], True, [])
    for number in range(1, args.rounds + 1):
        print(f"round {number} ({load()})", flush=True)
        await paths.round(args.referrals, rows)
    await db.dispose()
    print("median CPU ms per operation over rounds:")
    for label, values in rows.items():
        print(f"  {label:<34} {statistics.median(values):6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--referrals", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="status events per transaction")
    parser.add_argument(
        "--profile", help="write a pyinstrument session of the run here (python -m bench.profiled --report)"
    )
    args = parser.parse_args()
    print(machine("sqlalchemy", "sqlmodel", "asyncpg", "pydantic"))
    profiler: Any = None
    if args.profile:
        import pyinstrument

        profiler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
    with temporary_databases("intake", tag=run_id()) as urls:
        asyncio.run(run(args, urls["intake"]))
    if profiler is not None:
        profiler.stop()
        profiler.last_session.save(args.profile)
        print(f"profile: {args.profile} (python -m bench.profiled --report {args.profile})")


if __name__ == "__main__":
    main()
