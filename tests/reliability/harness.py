"""What the fault suite needs around a running system: the scripts that run its servers, a clinic's
steady load, watchers for what must never happen during a fault, and the accounting of every email.

Kept apart from the test so that the test reads as the scenario: load, faults in sequence, checks.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from services.devstack.processes import ServiceProcess
from services.devstack.stack import Stack
from tests.support.builders import sample_referral
from tests.support.system import Client

REPO = Path(__file__).resolve().parents[2]
ROLES = ("site", "patient", "referrer")
OWN_PORT_OFFSET = 10
"""The fault suite's servers listen on the environment's ports plus this (+10..+19 are the suite's)."""
TOKEN_ERROR = "token: "
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LocalServers:
    """The ``deploy/local`` scripts that run the test's PostgreSQL and Kafka.

    Restarting through them is the only safe way: they stop exactly the server their pid file or data
    directory names, with the ports the environment gives them (``TRIALROUTE_PG_PORT``,
    ``TRIALROUTE_KAFKA_PORT``, overridden by ``env``: :meth:`own` names the suite's own pair), never
    another engineer's.
    """

    def __init__(
        self, deploy_dir: Path, *, pg_fast: bool = False, env: Mapping[str, str] | None = None
    ) -> None:
        self.deploy_dir = deploy_dir
        self.pg_fast = pg_fast
        self.env = dict(env or {})
        """What every script call gets on top of ours: the ports and directories of these servers."""

    @classmethod
    def own(cls, run_dir: Path, *, offset: int = OWN_PORT_OFFSET) -> LocalServers:
        """A durable PostgreSQL (fsync and synchronous commit on: a SIGKILL loses nothing committed) and
        a broker of the suite's own, on the environment's ports plus ``offset``, with their files
        under ``run_dir``: restarting or killing them disturbs no other test, nor another engineer's."""
        pg_port = int(os.environ.get("TRIALROUTE_PG_PORT", "25432")) + offset
        kafka_port = int(os.environ.get("TRIALROUTE_KAFKA_PORT", "29092")) + offset
        env = {
            "TRIALROUTE_PG_PORT": str(pg_port),
            "TRIALROUTE_PG_DIR": str(run_dir / "postgres"),
            "TRIALROUTE_PG_FAST": "0",
            "TRIALROUTE_KAFKA_PORT": str(kafka_port),
            "TRIALROUTE_KAFKA_CONTROLLER_PORT": str(kafka_port + 1),
            "TRIALROUTE_KAFKA_DIR": str(run_dir / "kafka"),
            "TRIALROUTE_KAFKA_HEAP": os.environ.get("TRIALROUTE_KAFKA_HEAP", "768m"),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(cls.configured_dir(), env=env)

    def start(self) -> None:
        self.run("postgres", "start")
        self.run("kafka", "start")

    def stop(self) -> None:
        """Both, whatever state a fault left them in (stopping a stopped one is a no-op)."""
        try:
            self.run("kafka", "stop")
        finally:
            self.run("postgres", "stop")

    def pg_admin_url(self) -> str:
        return self.run("postgres", "url")

    def kafka_bootstrap(self) -> str:
        return self.run("kafka", "bootstrap")

    @staticmethod
    def configured_dir() -> Path:
        """Where the scripts are: ``TRIALROUTE_DEPLOY_DIR`` (scripts of a scratch copy, say one being
        changed), else this checkout's ``deploy/local``."""
        return Path(os.environ.get("TRIALROUTE_DEPLOY_DIR", REPO / "deploy" / "local")).resolve()

    def run(self, script: str, *args: str, env: Mapping[str, str] | None = None) -> str:
        result = subprocess.run(
            [str(self.deploy_dir / f"{script}.sh"), *args],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **self.env, **(env or {})},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{script}.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def mismatch(self, pg_admin_url: str, kafka_bootstrap: str) -> str | None:
        """Why the servers under test are not the ones these scripts run, or None if they are."""
        try:
            self.run("postgres", "status")
            self.run("kafka", "status")
            scripts_pg = make_url(self.run("postgres", "url"))
            scripts_kafka = self.run("kafka", "bootstrap")
        except (OSError, RuntimeError) as exc:
            return f"the servers are not running under {self.deploy_dir}: {exc}"
        tested_pg = make_url(pg_admin_url)
        if (scripts_pg.host, scripts_pg.port) != (tested_pg.host, tested_pg.port):
            return f"TRIALROUTE_TEST_PG_URL is {pg_admin_url}, but {self.deploy_dir} runs {scripts_pg}"
        if scripts_kafka != kafka_bootstrap:
            return f"KAFKA_BOOTSTRAP_SERVERS is {kafka_bootstrap}, but {self.deploy_dir} runs {scripts_kafka}"
        return None

    def restart_kafka(self, down_s: float = 0.0) -> None:
        self.run("kafka", "stop")
        time.sleep(down_s)  # the fault itself: the broker stays down this long
        self.run("kafka", "start")

    def restart_postgres(self, down_s: float = 0.0) -> None:
        """Stop and start again, in the durability mode it ran in."""
        self.run("postgres", "stop")
        time.sleep(down_s)  # the fault itself: the database stays down this long
        self._start_postgres()

    def kill_postgres(self, down_s: float = 0.0) -> None:
        """SIGKILL the postmaster (and its backends), as a crash would; the start recovers from the WAL."""
        self.run("postgres", "kill")
        time.sleep(down_s)  # the fault itself: the database stays down this long
        self._start_postgres()

    def _start_postgres(self) -> None:
        self.run("postgres", "start", env={"TRIALROUTE_PG_FAST": "1"} if self.pg_fast else {})


@dataclass
class Clock:
    """Seconds since the load started, for our own events and for the mailbox's wall-clock stamps."""

    started: float = field(default_factory=time.monotonic)
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    def now(self) -> float:
        return time.monotonic() - self.started

    def at(self, iso: str) -> float:
        return (datetime.fromisoformat(iso) - self.started_wall).total_seconds()


@dataclass
class Submission:
    """One referral a clinic wants in, and what the system answered it."""

    index: int
    eligible: bool
    body: dict[str, Any]
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    referral_id: str | None = None
    accepted_at: float | None = None
    attempts: int = 0
    refused: str | None = None

    @property
    def final_status(self) -> str:
        return "notified" if self.eligible else "not_routed"

    @property
    def addresses(self) -> dict[str, str]:
        return {"patient": self.body["patient"]["email"], "referrer": self.body["referrer"]["email"]}


def plan(count: int, *, ineligible_every: int = 7) -> list[Submission]:
    """Mostly eligible referrals near each site; one in ``ineligible_every`` (~15%) with ECOG 3."""
    return [planned(i, ineligible_every=ineligible_every) for i in range(count)]


def planned(index: int, *, ineligible_every: int = 7) -> Submission:
    """The ``index``-th referral of :func:`plan` (a load that goes on past its plan makes more)."""
    postal_codes = ("10065", "02215", "33612", "77030", "10021")
    eligible = index % ineligible_every != ineligible_every // 2
    clinical = {} if eligible else {"ecog": 3}
    body = sample_referral(postal_code=postal_codes[index % len(postal_codes)], **clinical)
    return Submission(index, eligible, body)


@dataclass(frozen=True)
class Answer:
    """One attempt of the clinic's: when, for which referral, and what came back. ``status`` None is no
    answer at all: intake unreachable or the connection reset (``error``), or no token to send."""

    at: float
    index: int
    status: int | None
    retry_after: str | None = None
    error: str | None = None

    @property
    def no_token(self) -> bool:
        """Not an answer of intake's: the clinic had no token to send (auth or its store down)."""
        return (self.error or "").startswith(TOKEN_ERROR)


class Load:
    """A clinic submitting at a steady rate, each referral in its own task so that one retrying does
    not hold up the next. Like a real clinic's client it retries connection errors, 5xx, 429 and 409
    "still in progress" with the same Idempotency-Key; anything else is a refusal."""

    def __init__(
        self,
        stack: Stack,
        clinic: Client,
        web: httpx.AsyncClient,
        clock: Clock,
        submissions: list[Submission],
        *,
        rate_per_s: float,
        patience_s: float = 120,
    ) -> None:
        self.stack = stack
        self.clinic = clinic
        self.web = web
        self.clock = clock
        self.submissions = submissions
        self.rate_per_s = rate_per_s
        self.patience_s = patience_s
        self.answers: list[Answer] = []
        """Every attempt's outcome, in order: what a clinic saw during each fault."""

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.referral_id is not None]

    async def run(self, until: asyncio.Event | None = None) -> None:
        """Every planned submission; with ``until``, then more at the same rate until it is set, so
        that the load runs through every fault however long the faults take."""
        tasks = []
        index = 0
        while index < len(self.submissions) or (until is not None and not until.is_set()):
            if index == len(self.submissions):
                self.submissions.append(planned(index))
            submission = self.submissions[index]
            # The load's arrival rate: submissions are spread in time on purpose.
            await asyncio.sleep(max(0.0, submission.index / self.rate_per_s - self.clock.now()))
            tasks.append(asyncio.create_task(self._submit(submission)))
            index += 1
        await asyncio.gather(*tasks)

    async def _submit(self, submission: Submission) -> None:
        url = f"{self.stack.config.url('intake')}/v1/referrals"
        give_up = time.monotonic() + self.patience_s
        while time.monotonic() < give_up:
            submission.attempts += 1
            try:
                headers = await self.clinic.headers(self.web, "intake")
            except httpx.HTTPError as exc:  # auth down, or its store: no token to send
                self.answers.append(
                    Answer(self.clock.now(), submission.index, None, error=f"{TOKEN_ERROR}{exc!r}")
                )
                await asyncio.sleep(0.5)  # a client's back-off, part of the load
                continue
            try:
                response = await self.web.post(
                    url, json=submission.body, headers={**headers, "Idempotency-Key": submission.key}
                )
            except httpx.HTTPError as exc:  # intake down, the connection reset, or a timeout
                self.answers.append(Answer(self.clock.now(), submission.index, None, error=repr(exc)))
                await asyncio.sleep(0.5)  # a client's back-off, part of the load
                continue
            self.answers.append(
                Answer(
                    self.clock.now(),
                    submission.index,
                    response.status_code,
                    retry_after=response.headers.get("Retry-After"),
                )
            )
            if response.is_success:
                submission.referral_id = str(response.json()["id"])
                submission.accepted_at = self.clock.now()
                return
            if response.status_code == 401:
                self.clinic.forget("intake", headers)
            elif not _retryable(response):
                submission.refused = f"{response.status_code} {response.text[:300]}"
                return
            await asyncio.sleep(min(float(response.headers.get("Retry-After", 0.5)), 2.0))


def _retryable(response: httpx.Response) -> bool:
    if response.status_code >= 500 or response.status_code == 429:
        return True
    # 409 is "the same key is still in progress" (retry) or "a duplicate clinic_reference" (existing_id).
    return response.status_code == 409 and "existing_id" not in response.text


class Watch:
    """Records, while the faults run, what must never happen: a process that exits on its own (the
    suite never restarts one it did not kill, which would hide the crash) and a site over capacity."""

    def __init__(self, stack: Stack, ops: Client, web: httpx.AsyncClient, clock: Clock) -> None:
        self.stack = stack
        self.ops = ops
        self.web = web
        self.clock = clock
        self.expected_down: set[str] = set()
        self.exits: dict[str, str] = {}
        self.overbooked: list[str] = []
        self.site_polls = 0

    async def processes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, process in self.stack.processes.items():
                # alive() first: a fault marks a process expected-down before it kills it.
                if not process.alive() and name not in self.expected_down and name not in self.exits:
                    code = process.process.returncode if process.process else None
                    self.exits[name] = f"exited with {code} at {self.clock.now():.1f}s:\n{process.tail(40)}"
            await _pause(stop, 0.5)

    async def sites(self, stop: asyncio.Event) -> None:
        url = f"{self.stack.config.url('site_router')}/v1/sites"
        while not stop.is_set():
            try:
                headers = await self.ops.headers(self.web, "site_router")
                response = await self.web.get(url, headers=headers)
                if response.status_code == 401:
                    self.ops.forget("site_router", headers)
                elif response.is_success:
                    self.site_polls += 1
                    for site in response.json():
                        if site["open_count"] > site["capacity"]:
                            self.overbooked.append(
                                f"{site['code']} {site['open_count']}/{site['capacity']} "
                                f"at {self.clock.now():.1f}s"
                            )
            except httpx.HTTPError:
                pass  # site_router (or auth, or the database) is down: a fault, not a finding
            await _pause(stop, 1.0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


@dataclass
class Fault:
    """A fault injected and repaired by one blocking call (run in a worker thread)."""

    name: str
    inject: Callable[[], None]
    down: tuple[str, ...] = ()
    """Processes the fault itself takes down: the watch does not report them."""
    at: float | None = None
    """When to start (seconds since the load started), for faults on a schedule that may overlap
    (chaos mode); None: in turn, ``gap_s`` after the previous one recovered."""
    target: str | None = None
    """What the fault hits (a process, ``kafka``, ``postgres``, ``mailbox``): two faults on one target
    never run at once, the later waits (default: its name)."""
    kind: str | None = None
    """What sort of fault (chaos mode's kinds: ``kill``, ``restart_postgres``, ...), for the checks."""
    then_s: float | None = None
    """In turn: the pause before the next fault, if not ``gap_s`` (a database outage stalls every
    pipeline stage, which needs longer than a process restart to flow again)."""


@dataclass
class FaultRecord:
    name: str
    started: float
    recovered: float
    accepted_so_far: int
    kind: str | None = None


async def run_faults(faults: list[Fault], watch: Watch, load: Load, *, gap_s: float) -> list[FaultRecord]:
    """Each fault in turn, ``gap_s`` apart, while the load and the watch go on; or, when the faults
    have start times (``Fault.at``), each at its time, overlapping as the schedule says. The records
    are in the order the faults started."""
    if any(fault.at is not None for fault in faults):
        return await _run_scheduled(faults, watch, load)
    records = []
    pause = gap_s
    for fault in faults:
        await asyncio.sleep(pause)  # the spacing of faults under load, part of the scenario
        records.append(await _inject(fault, watch, load))
        pause = gap_s if fault.then_s is None else fault.then_s
    return records


async def _run_scheduled(faults: list[Fault], watch: Watch, load: Load) -> list[FaultRecord]:
    held: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def at_its_time(fault: Fault) -> FaultRecord:
        await asyncio.sleep(max(0.0, (fault.at or 0.0) - watch.clock.now()))  # the schedule, on purpose
        async with held[fault.target or fault.name]:  # a target still recovering: this one waits
            return await _inject(fault, watch, load)

    records = await asyncio.gather(*(at_its_time(fault) for fault in faults))
    return sorted(records, key=lambda record: record.started)


async def _inject(fault: Fault, watch: Watch, load: Load) -> FaultRecord:
    started, accepted = watch.clock.now(), len(load.accepted)
    watch.expected_down.update(fault.down)
    try:
        await asyncio.to_thread(fault.inject)
    finally:
        watch.expected_down.difference_update(fault.down)
    return FaultRecord(fault.name, started, watch.clock.now(), accepted, fault.kind)


def overlapping(name: str, first: Fault, second: Fault, *, after_s: float) -> Fault:
    """Two faults as one: ``second`` starts ``after_s`` into ``first`` (which must last longer to
    overlap), and the pair has recovered when both have. One row of the table, one window."""

    def inject() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(first.inject)
            time.sleep(after_s)  # the overlap itself
            second.inject()
            running.result()

    return Fault(name, inject, down=(*first.down, *second.down), kind=f"{first.kind}+{second.kind}")


def revive(process: ServiceProcess, within_s: float = 120) -> None:
    """Start a killed process again as a supervisor (Kubernetes, systemd) would: once more each time it
    exits during start-up (a service refuses to start while its database is down), until healthy."""
    deadline = time.monotonic() + within_s
    while True:
        process.start()
        try:
            process.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
            return
        except RuntimeError:  # it exited: start it again, after a supervisor's back-off
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@dataclass
class Mailbox:
    """Every message the SMTP server accepted, sorted per expected email: (referral id, role) →
    Message-ID → arrival times. Whatever matches no expected email is ``strays`` (arrival times)."""

    copies: dict[tuple[str, str], dict[str, list[float]]]
    strays: list[float]
    stray_details: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def surplus(self) -> list[str]:
        """What the unexpected emails were, for the report."""
        more_ids = [
            f"{referral} {role}: {len(per_id)} Message-IDs"
            for (referral, role), per_id in self.copies.items()
            if len(per_id) > 1
        ]
        return more_ids + self.stray_details


def sort_mail(
    messages: list[dict[str, Any]], accepted: list[Submission], site_addresses: set[str], clock: Clock
) -> Mailbox:
    """Patient and referrer emails by their unique address; the site's by its subject's referral id."""
    slots = {
        address: (s.referral_id, role)
        for s in accepted
        if s.eligible and s.referral_id
        for role, address in s.addresses.items()
    }
    routed = {s.referral_id for s in accepted if s.eligible}
    copies: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    strays: list[float] = []
    details: list[str] = []
    arrivals: list[float] = []
    for message in messages:
        arrived = clock.at(message["received_at"])
        arrivals.append(arrived)
        for recipient in message["envelope_to"]:
            slot = slots.get(recipient.lower())
            if slot is None and recipient.lower() in site_addresses:
                match = _UUID.search(str(message["subject"] or ""))
                if match and match.group() in routed:
                    slot = (match.group(), "site")
            if slot is None:
                strays.append(arrived)
                details.append(f"to {recipient}: {message['subject']!r} at {arrived:.1f}s")
            else:
                copies[slot][str(message["message_id"])].append(arrived)
    return Mailbox(copies, strays, details, arrivals)


@dataclass
class Row:
    fault: str
    at: float | None = None
    recovered: float | None = None
    accepted_so_far: int = 0
    accepted: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    emails: int = 0
    unavailable: int = 0
    """503 answers with a Retry-After: intake saying it cannot commit now."""
    no_answer: int = 0
    """Attempts intake did not answer: intake down, a reset connection, a timeout."""
    no_token: int = 0
    """Attempts that never reached intake: no token (auth down, or its store)."""
    server_errors: int = 0
    """Any other 5xx (a 500 is a bug: a store outage must be a 503)."""
    kind: str | None = None


def account(
    faults: list[FaultRecord],
    accepted: list[Submission],
    statuses: Mapping[str, str],
    mailbox: Mailbox,
    answers: Sequence[Answer] = (),
) -> list[Row]:
    """One row per window, from one fault's start to the next's (the first: the load before any fault).

    A referral belongs to the window it was accepted in: ``completed`` (final status, every email
    there) and ``lost`` (expected emails that never arrived) count those. ``duplicated`` (another copy
    with the same Message-ID: the documented SMTP window) and ``extra`` (any other surplus email) count
    by when the surplus copy arrived; the clinic's ``answers`` by when they came.
    """
    rows = [Row("load only, before the faults")] + [
        Row(f.name, f.started, f.recovered, f.accepted_so_far, kind=f.kind) for f in faults
    ]
    starts = [0.0] + [f.started for f in faults]

    def row_at(seconds: float) -> Row:
        index = max(i for i, start in enumerate(starts) if seconds >= start or i == 0)
        return rows[index]

    for s in accepted:
        assert s.referral_id is not None and s.accepted_at is not None
        row = row_at(s.accepted_at)
        row.accepted += 1
        missing = [r for r in ROLES if s.eligible and not mailbox.copies.get((s.referral_id, r))]
        row.lost += len(missing)
        if statuses.get(s.referral_id) == s.final_status and not missing:
            row.completed += 1
    for per_id in mailbox.copies.values():
        firsts = sorted((min(times), mid) for mid, times in per_id.items())
        for _, mid in firsts[1:]:
            row_at(min(per_id[mid])).extra += 1
        for times in per_id.values():
            for arrived in sorted(times)[1:]:
                row_at(arrived).duplicated += 1
    for arrived in mailbox.strays:
        row_at(arrived).extra += 1
    for arrived in mailbox.arrivals:  # shows the pipeline was busy while the fault lasted
        row_at(arrived).emails += 1
    for answer in answers:
        row = row_at(answer.at)
        if answer.status is None and answer.no_token:
            row.no_token += 1
        elif answer.status is None:
            row.no_answer += 1
        elif answer.status == 503 and answer.retry_after:
            row.unavailable += 1
        elif answer.status >= 500:
            row.server_errors += 1
    total = Row("total", accepted_so_far=len(accepted))
    for row in rows:
        total.accepted += row.accepted
        total.completed += row.completed
        total.lost += row.lost
        total.duplicated += row.duplicated
        total.extra += row.extra
        total.emails += row.emails
        total.unavailable += row.unavailable
        total.no_answer += row.no_answer
        total.no_token += row.no_token
        total.server_errors += row.server_errors
    return [*rows, total]


def table(rows: list[Row]) -> str:
    columns = (
        ("fault", 44),
        ("at s", 6),
        ("back s", 7),
        ("accepted so far", 16),
        ("in window", 10),
        ("completed", 10),
        ("lost", 5),
        ("duplicated", 11),
        ("extra", 6),
        ("emails", 7),
        ("503s", 6),
        ("no answer", 10),
        ("no token", 9),
    )

    def line(cells: list[str]) -> str:
        return "".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True))
        )

    def cell(value: object) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = [line([name for name, _ in columns])]
    for r in rows:
        values = (r.fault, r.at, r.recovered, r.accepted_so_far, r.accepted, r.completed, r.lost)
        more = (r.duplicated, r.extra, r.emails, r.unavailable, r.no_answer, r.no_token)
        lines.append(line([cell(v) for v in (*values, *more)]))
    return "\n".join(lines)
