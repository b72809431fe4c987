"""The site router's use cases on a real PostgreSQL database, with the real geocoder and site index.

Sites are the trial's four US centres by default (sites.json); a patient at 10021 (Upper East Side) has
them in the order WCM (New York), DFCI (Boston), MCC (Tampa), MDACC (Houston).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.site_router import SERVICE as AUDIENCE
from services.site_router import sites, store
from services.site_router.bootstrap import create_app
from services.site_router.commands import Commands
from services.site_router.config import SiteRouterSettings
from services.site_router.directory import SiteDirectory
from services.site_router.geo import Geocoder
from services.site_router.schemas import SiteCreate
from shared.app import Role
from shared.auth import Scope
from shared.db import Database
from shared.events import CriterionVerdict, Envelope, ReferralScreened, ReferralWithdrawn
from shared.settings import KafkaSettings
from tests.conftest import Servers
from tests.support.auth import Issuer
from tests.support.builders import REFERRER, screened
from tests.support.servers import serve_app
from tests.support.stores import migrated

NEAREST_FIRST = ["WCM", "DFCI", "MCC", "MDACC"]
"""The trial's sites from a patient at 10021, New York."""

TRIAL_SITES: dict[str, dict[str, Any]] = {
    "WCM": {"name": "Weill Cornell Medicine", "city": "New York", "postal_code": "10065"},
    "DFCI": {"name": "Dana-Farber Cancer Institute", "city": "Boston", "postal_code": "02215"},
    "MCC": {"name": "Moffitt Cancer Center", "city": "Tampa", "postal_code": "33612"},
    "MDACC": {"name": "MD Anderson Cancer Center", "city": "Houston", "postal_code": "77030"},
}


@pytest.fixture(scope="session")
def geocoder(tmp_path_factory: pytest.TempPathFactory) -> Geocoder:
    """One warm geocoder for the whole run (its index kept in a temporary runtime dir)."""
    coder = Geocoder(index_dir=tmp_path_factory.mktemp("geonames-index"))
    coder.warm(["US", "GB"])
    return coder


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_database_url(
    request: pytest.FixtureRequest, make_database_url: Callable[[], Awaitable[str]], tmp_path: Path
) -> str:
    """PostgreSQL, then the embedded SQLite file: the reservation and the waitlist hold on both."""
    if request.param == "sqlite":
        return await migrated(f"sqlite+aiosqlite:///{tmp_path / 'site_router.db'}", "site_router")
    return await migrated(await make_database_url(), "site_router")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


@dataclass
class CommandKit:
    """The use cases and what a test needs around them."""

    db: Database
    commands: Commands

    async def add_sites(self, capacities: dict[str, int], status: str = "recruiting") -> None:
        async with self.db.session() as session:
            for code, capacity in capacities.items():
                data = SiteCreate(
                    code=code,
                    country="US",
                    coordinator_email=f"{code.lower()}@sites.example.org",
                    capacity=capacity,
                    status=status,  # type: ignore[arg-type]
                    **TRIAL_SITES[code],
                )
                await sites.create_site(session, data, self.commands.geocoder)
        await self.commands.directory.reload(self.db)

    async def screen(self, referral_id: uuid.UUID | None = None, **overrides: Any) -> uuid.UUID:
        """Hand the router a screening, as the consumer loop would (one transaction)."""
        referral_id = referral_id or uuid.uuid4()
        scr = screening(**overrides)
        await self.db.run(lambda session: self.commands.screened(session, referral_id, scr, None))
        return referral_id

    async def withdraw(self, referral_id: uuid.UUID) -> None:
        withdrawn = ReferralWithdrawn(clinic_id="C1")
        await self.db.run(lambda session: self.commands.withdrawn(session, referral_id, withdrawn, None))

    async def decline(self, site: str, referral_id: uuid.UUID, reason: str = "not now") -> None:
        await self.db.run(lambda session: self.commands.decline(session, site, referral_id, reason))

    async def close(self, site: str, referral_id: uuid.UUID, enrolled: bool = False) -> None:
        await self.db.run(lambda session: self.commands.close(session, site, referral_id, enrolled, None))

    async def referral(self, referral_id: uuid.UUID) -> store.ReferralRecord:
        async with self.db.session() as session:
            found = await session.get(store.ReferralRecord, referral_id)
        assert found is not None
        return found

    async def site_of(self, referral_id: uuid.UUID) -> str | None:
        async with self.db.session() as session:
            current = store.active(await store.assignments_of(session, referral_id))
        return current.site_code if current else None

    async def open_counts(self) -> dict[str, int]:
        async with self.db.session() as session:
            return {s.code: s.open_count for s in await store.list_sites(session)}

    async def active_per_site(self) -> Counter[str]:
        """Counted from the assignments themselves, not from open_count: the two must agree."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(store.Assignment.site_code).where(
                    store.Assignment.state.in_(["routed", "accepted"])  # type: ignore[attr-defined]
                )
            )
            return Counter(rows.scalars().all())

    async def waitlisted(self) -> list[uuid.UUID]:
        async with self.db.session() as session:
            return [r for _, r in await store.waitlist(session, 10_000)]

    async def events(self, topic: str | None = None) -> list[Envelope]:
        async with self.db.session() as session:
            query = select(store.OutboxRecord).order_by(store.OutboxRecord.id)  # type: ignore[arg-type]
            rows = (await session.execute(query)).scalars().all()
        envelopes = [Envelope.model_validate_json(r.payload) for r in rows]
        return [e for e in envelopes if topic is None or e.type == topic]

    async def events_of(self, referral_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, e.data) for e in await self.events() if e.referral_id == referral_id]


@pytest.fixture
async def kit(db: Database, geocoder: Geocoder) -> CommandKit:
    directory = SiteDirectory()
    await directory.reload(db)
    return CommandKit(db, Commands(geocoder, directory))


def screening(
    *,
    postal_code: str = "10021",
    country: str = "US",
    routable: bool = True,
    decision: str = "needs_review",
    revision: int = 1,
    unknown: Iterable[str] = ("ecog",),
) -> ReferralScreened:
    """A screening whose ``unknown`` criteria the site will have to confirm."""
    criteria = [
        CriterionVerdict(id="age", verdict="met", reason="55 years"),
        *(CriterionVerdict(id=c, verdict="unknown", reason=f"{c} not given") for c in unknown),
    ]
    return screened(
        clinic_id="C1",
        revision=revision,
        decision=decision,
        score=0.9,
        routable=routable,
        criteria=criteria,
        age_years=55,
        postal_code=postal_code,
        country=country,
        referrer=REFERRER.model_copy(update={"phone": "+1 212 555 0100"}),
    )


SEED = Path(sites.__file__).with_name("seed") / "sites.json"


# --- the service over real HTTP ---------------------------------------------------------------------------


def router_settings(
    database_url: str, kafka: KafkaSettings, issuer: Issuer, **overrides: Any
) -> SiteRouterSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "kafka": kafka,
        "oauth": issuer.oauth,
        "index_refresh_s": 0.5,
        **overrides,
    }
    return SiteRouterSettings(**values)


ServeRouter = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def serve_router(database_url: str, servers: Servers, issuer: Issuer, geocoder: Geocoder) -> ServeRouter:
    """Start the site router (API only by default) over real HTTP on the test's database.

    Pass ``kafka`` (the fixture's settings, topics created) to run the consumer and the relay; an API-only
    instance gets a topic prefix of its own and creates no topics (it never touches the broker).
    """

    @asynccontextmanager
    async def start(
        roles: frozenset[Role] = frozenset({"api"}), kafka: KafkaSettings | None = None, **overrides: Any
    ) -> AsyncIterator[str]:
        kafka = kafka or KafkaSettings(
            bootstrap_servers=servers.kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}."
        )
        settings = router_settings(database_url, kafka, issuer, **overrides)
        async with serve_app(create_app(settings, roles, geocoder=geocoder)) as url:
            yield url

    return start


@dataclass
class Tokens:
    """Real tokens from the running auth service, for the site router's audience."""

    issuer: Issuer
    http: httpx.AsyncClient

    async def site(self, code: str, scopes: Sequence[Scope] = (Scope.SITE_REFERRALS,)) -> dict[str, str]:
        token = await self.issuer.token(
            self.http, f"site-{code.lower()}-{len(scopes)}", scopes, audience=AUDIENCE, site_code=code
        )
        return {"Authorization": f"Bearer {token}"}

    async def admin(self) -> dict[str, str]:
        token = await self.issuer.token(self.http, "trial-staff", [Scope.SITES_ADMIN], audience=AUDIENCE)
        return {"Authorization": f"Bearer {token}"}

    async def clinic(self) -> dict[str, str]:
        token = await self.issuer.token(
            self.http, "clinic-c1", [Scope.REFERRALS_READ], audience=AUDIENCE, clinic_id="C1"
        )
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(issuer: Issuer, http: httpx.AsyncClient) -> Tokens:
    return Tokens(issuer, http)


@pytest.fixture
async def database_url(make_database_url: Callable[[], Awaitable[str]]) -> str:
    """A fresh PostgreSQL database at site_router's head revision (``trialroute migrate site_router``)."""
    return await migrated(await make_database_url(), "site_router")
