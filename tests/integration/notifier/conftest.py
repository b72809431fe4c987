"""The notifier among real neighbours: the auth service, a stand-in intake, an SMTP server, Kafka and
PostgreSQL (SQLite where a test says so), each on loopback.

The stand-in intake is a real FastAPI app served over HTTP that implements intake's contact route and
checks real tokens with ``shared.auth``, as intake does; its contact book is what the test puts in it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Query
from pydantic import SecretStr
from sqlalchemy import select

from services.auth import store as auth_store
from services.notifier.bootstrap import create_app as create_notifier_app
from services.notifier.config import NotifierSettings
from services.notifier.store import Notification
from shared.app import ServiceSpec
from shared.app import create_app as create_service_app
from shared.auth import Principal, Scope, TokenValidator, require
from shared.db import Database
from shared.events import Envelope, NotifiedEmail, ReferralNotifiedV2, Referrer, SiteRef
from shared.outbox import backlog
from shared.settings import KafkaSettings
from tests.support import builders
from tests.support.auth import Issuer, http, issuer
from tests.support.builders import wrap
from tests.support.kafka import publish, read_topic, topic_has, wait_consumed
from tests.support.servers import checking_tokens, serve_app
from tests.support.smtp import SmtpServer, smtp_server
from tests.support.stores import migrated
from tests.support.waiting import eventually

__all__ = ["http", "issuer", "smtp_server"]  # fixtures

NOTIFIER_CLIENT = "notifier"
CLINIC = "clinic-0001"
CONSUMER_GROUP = "trialroute-notifier"  # the notifier's default, which these tests keep

# The patient of docs/referral.md: none of this may appear in a site's email.
PATIENT = {
    "given_name": "Maria",
    "family_name": "Lopez",
    "email": "maria.lopez@example.com",
    "phone": "+1 212 555 0142",
    "date_of_birth": "1968-03-14",
}
REFERRER = Referrer(name="Dr. Ana Smith", email="asmith@clinic.example.org", phone="+1 212 555 0100")
WCM = SiteRef(
    code="WCM",
    name="Weill Cornell Medicine",
    city="New York",
    coordinator_email="ucart123.wcm@sites.example.org",
    phone="+1 646 962 0000",
)
DFCI = SiteRef(
    code="DFCI",
    name="Dana-Farber Cancer Institute",
    city="Boston",
    coordinator_email="dfci@sites.example.org",
)


# --- auth ---------------------------------------------------------------------------------------


async def set_scopes(issuer: Issuer, client_id: str, scopes: list[Scope]) -> None:
    """An operator fixing a client's scopes in the auth store (the registry has no command for it)."""
    async with issuer.db.session() as session:
        row = await auth_store.get_client(session, client_id)
        assert row is not None
        row.scopes = [s.value for s in scopes]


@pytest.fixture
async def notifier_secret(issuer: Issuer) -> str:
    """The notifier's client, registered with ``contact:read`` for intake."""
    return await issuer.register(NOTIFIER_CLIENT, [Scope.CONTACT_READ], audiences=["intake"])


# --- stand-in intake ------------------------------------------------------------------------------


@dataclass
class Intake:
    url: str
    book: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    reads: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    """(client, referral) for each referral asked for, in each call."""
    calls: list[list[uuid.UUID]] = field(default_factory=list)
    """The referrals asked for, call by call."""

    def add(
        self,
        referral_id: uuid.UUID,
        *,
        consent: bool = True,
        email: str | None = PATIENT["email"],
        language: str = "en",
    ) -> None:
        self.book[referral_id] = {
            "referral_id": str(referral_id),
            "patient": {
                "given_name": PATIENT["given_name"],
                "family_name": PATIENT["family_name"],
                "email": email,
                "preferred_language": language,
                "consent_to_contact": consent,
            },
            "referrer": {"name": REFERRER.name, "email": REFERRER.email},
        }


ContactReader = Annotated[Principal, Depends(require(Scope.CONTACT_READ))]


@pytest.fixture
async def intake(issuer: Issuer) -> AsyncIterator[Intake]:
    standin = Intake(url="")
    router = APIRouter()

    @router.get("/internal/v1/contacts")
    async def contacts(
        principal: ContactReader, referral_id: Annotated[list[uuid.UUID], Query()]
    ) -> dict[str, Any]:
        standin.calls.append(referral_id)
        standin.reads += [(principal.client_id, r) for r in referral_id]
        return {"items": [standin.book[r] for r in referral_id if r in standin.book]}

    async with httpx.AsyncClient(timeout=5) as jwks_http:
        validator = TokenValidator(issuer.oauth, "intake", jwks_http)
        spec = ServiceSpec(
            name="intake-standin",
            title="stand-in intake",
            description="intake's contact route, for the notifier's tests",
            routers=[router],
            state=checking_tokens(validator),
        )
        async with serve_app(create_service_app(spec)) as url:
            standin.url = url
            yield standin


# --- the notifier -----------------------------------------------------------------------------------


MakeSettings = Callable[..., NotifierSettings]


@pytest.fixture
def notifier_settings(
    database_url: str,
    kafka: KafkaSettings,
    issuer: Issuer,
    intake: Intake,
    smtp_server: SmtpServer,
    notifier_secret: str,
) -> MakeSettings:
    """Settings of a notifier wired to this test's neighbours, with fast retries; overridable."""

    def make(**overrides: Any) -> NotifierSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "kafka": kafka,
            "oauth": issuer.oauth,
            "client_id": NOTIFIER_CLIENT,
            "client_secret": SecretStr(notifier_secret),
            "intake_url": intake.url,
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            # Every server of the test shares one event loop: generous timeouts keep a busy moment
            # from turning into a retry that a test counting attempts would trip over.
            "smtp_timeout_s": 5.0,
            "contact_timeout_s": 5.0,
            "lease_s": 30.0,
            "retry_base_s": 0.2,
            "retry_max_s": 1.0,
            "max_attempts": 50,
            "dispatch_interval_s": 0.05,
            "portal_url": "https://sites.trialroute.example/portal/",
            **overrides,
        }
        return NotifierSettings(**values)

    return make


RunNotifier = Callable[[NotifierSettings], AbstractAsyncContextManager[str]]


@pytest.fixture
def run_notifier() -> RunNotifier:
    """Serve a notifier (API, consumer, dispatcher, relay) over HTTP; yields its base URL."""

    @asynccontextmanager
    async def run(settings: NotifierSettings) -> AsyncIterator[str]:
        async with serve_app(create_notifier_app(settings)) as url:
            yield url

    return run


@dataclass
class Stack:
    """This test's notifier neighbours, and the moves every test makes with them."""

    make_settings: MakeSettings
    run_notifier: RunNotifier
    intake: Intake
    smtp: SmtpServer
    kafka: KafkaSettings
    database_url: str

    def run(self, **overrides: Any) -> AbstractAsyncContextManager[str]:
        """A notifier wired to the neighbours (settings overridable, e.g. ``dispatch_batch=3``)."""
        return self.run_notifier(self.make_settings(**overrides))

    def referral(self, **contact: Any) -> uuid.UUID:
        """A new referral id whose contact details intake knows (``Intake.add``'s options)."""
        referral_id = uuid.uuid4()
        self.intake.add(referral_id, **contact)
        return referral_id

    async def publish(self, envelope: Envelope, times: int = 1) -> None:
        await publish(self.kafka, envelope, times)

    async def notifications(self, referral_id: uuid.UUID | None = None) -> list[Notification]:
        return await notifications(self.database_url, referral_id)

    async def settled(self, count: int, **options: Any) -> list[Notification]:
        return await settled(self.database_url, count, **options)

    async def topic_has(self, topic: str, count: int) -> bool:
        return await topic_has(self.kafka, topic, count)

    async def notified(self) -> list[Notified]:
        return await notified(self.kafka)

    async def notified_emails(self, count: int) -> bool:
        """Whether the ``referral.notified`` events on the topic list ``count`` emails (or more)."""
        return sum(len(n.emails) for n in await self.notified()) >= count

    async def quiet(self, database_url: str | None = None) -> None:
        """The marker before asserting that nothing more happened: every ``referral.routed`` published
        so far handled (the notifier's group committed it) and every event the notifier recorded
        published (its outbox drained). Pending emails are the test's own wait (``settled``)."""
        await wait_consumed(self.kafka, CONSUMER_GROUP, "referral.routed")
        db = Database(database_url or self.database_url)
        try:
            await eventually(lambda: _drained(db), what="the notifier's outbox to drain")
        finally:
            await db.dispose()


@pytest.fixture
def stack(
    notifier_settings: MakeSettings,
    run_notifier: RunNotifier,
    intake: Intake,
    smtp_server: SmtpServer,
    kafka: KafkaSettings,
    database_url: str,
) -> Stack:
    return Stack(notifier_settings, run_notifier, intake, smtp_server, kafka, database_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'notifier.db'}"


# --- events and the store ---------------------------------------------------------------------------


def routed(referral_id: uuid.UUID, site: SiteRef = WCM, *, rank: int = 1, consent: bool = True) -> Envelope:
    """A routing that needs review: the site's email lists the criteria to confirm and the note."""
    data = builders.routed(
        clinic_id=CLINIC,
        site=site,
        distance_km=6.4,
        rank=rank,
        decision="needs_review",
        criteria_to_confirm=["cd123_positive", "organ_function"],
        note="CD123 by immunohistochemistry only; organ function not assessed",
        consent_to_contact=consent,
        referrer=REFERRER,
    )
    return wrap(data, referral_id)


def site_decided(referral_id: uuid.UUID, decision: str, reason: str | None = None) -> Envelope:
    return wrap(
        builders.site_decided(decision, clinic_id=CLINIC, site_code=WCM.code, reason=reason), referral_id
    )


async def notifications(database_url: str, referral_id: uuid.UUID | None = None) -> list[Notification]:
    db = Database(database_url)
    try:
        async with db.session() as session:
            query = select(Notification).order_by(Notification.id)  # type: ignore[arg-type]
            if referral_id is not None:
                query = query.where(Notification.referral_id == referral_id)
            return list((await session.execute(query)).scalars().all())
    finally:
        await db.dispose()


async def settled(
    database_url: str,
    count: int,
    *,
    states: frozenset[str] = frozenset({"sent", "skipped"}),
    within: float = 60,
) -> list[Notification]:
    """Wait until ``count`` notifications exist and all are in ``states``."""
    result: list[Notification] = []

    async def check() -> bool:
        nonlocal result
        result = await notifications(database_url)
        return len(result) == count and all(n.state in states for n in result)

    await eventually(check, within=within, what=f"{count} notifications in {sorted(states)}")
    return result


@dataclass(frozen=True)
class Notified:
    """One ``referral.notified`` the notifier published: its envelope and the emails it lists."""

    envelope: Envelope
    emails: list[NotifiedEmail]

    @property
    def roles(self) -> list[str]:
        return [e.recipient_role for e in self.emails]


async def notified(kafka: KafkaSettings) -> list[Notified]:
    """The ``referral.notified`` events on the topic, oldest first; the notifier publishes only version
    2 (one event per referral per recording transaction, listing its emails)."""
    found = []
    for record in await read_topic(kafka, "referral.notified"):
        envelope = Envelope.from_bytes(record.value or b"")
        data = envelope.payload()
        assert isinstance(data, ReferralNotifiedV2), f"a referral.notified of version {envelope.version}"
        assert record.key == str(envelope.referral_id).encode(), "keyed by the referral id"
        found.append(Notified(envelope, list(data.emails)))
    return found


def emails_of(events: list[Notified]) -> list[tuple[uuid.UUID, str, str]]:
    """(referral, role, Message-ID) of every email the events list."""
    return [(n.envelope.referral_id, e.recipient_role, e.message_id) for n in events for e in n.emails]


async def _drained(db: Database) -> bool:
    return await backlog(db) == 0


def assert_each_email_once(smtp: SmtpServer, expected: int) -> None:
    copies = {mid: len(received) for mid, received in smtp.by_message_id().items()}
    assert len(copies) == expected, f"{len(copies)} distinct emails, expected {expected}"
    assert set(copies.values()) == {1}, f"duplicates: { {m: n for m, n in copies.items() if n > 1} }"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at notifier's head revision (``trialroute migrate notifier``)."""
    return await migrated(await make_database_url(), "notifier")
