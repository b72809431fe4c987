"""Every service's store migrations on PostgreSQL and SQLite: they agree with the models, carry the data
of a store through every revision, and a service refuses a store that is not at its code's revision."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    CHAR,
    JSON,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    column,
    select,
    text,
    update,
)
from sqlalchemy import table as table_clause
from sqlalchemy.ext.asyncio import create_async_engine

from shared.migrations import (
    Migrations,
    StoreNotAtHead,
    current_revision,
    differences,
    migrate,
    new_revision,
    service_migrations,
)
from shared.settings import ServiceSettings
from shared.store import UTCDateTime

pytestmark = pytest.mark.integration

SERVICES = ("auth", "intake", "eligibility", "site_router", "notifier", "insights")
BACKENDS = ("postgresql", "sqlite")

MakeUrl = Callable[[str], Awaitable[str]]


@pytest.fixture
def store_url(make_database_url: Callable[[], Awaitable[str]], tmp_path: Path) -> MakeUrl:
    """An empty store on the backend asked for: a fresh PostgreSQL database or a new SQLite file."""

    async def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        return await make_database_url()

    return make


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrations_build_exactly_what_the_models_describe(
    service: str, backend: str, store_url: MakeUrl
) -> None:
    """Fails when a model changes without a revision (scripts/revision.sh SERVICE "what changes")."""
    url = await store_url(backend)
    migrations = service_migrations(service)
    assert await migrate(url, migrations) == (migrations.head(),)
    assert await differences(url, migrations) == []


# --- data through every revision -----------------------------------------------------------------------

FIXED_UUID = uuid.UUID("6f1c1f0e-3b0a-4c2e-9d55-0123456789ab")
OVERRIDES: dict[str, Any] = {
    "oauth_client.site_code": None,  # a client acts for a clinic or a site, not both
    "site.status": "recruiting",
}
"""Values a table's CHECK constraints need; every other column gets a representative value by type."""


def _value(table: Table, column: Any, dialect: str) -> Any:
    key = f"{table.name}.{column.name}"
    if key in OVERRIDES:
        return OVERRIDES[key]
    if isinstance(column.type, JSON):
        return {"kept": ["through", "every", "revision"]}
    try:
        kind = column.type.python_type
    except NotImplementedError:
        kind = str
    if kind is bool:
        return True
    if kind is int:
        return 7
    if kind is float:
        return 1.5
    if kind is datetime:
        moment = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
        return moment if dialect == "postgresql" else moment.replace(tzinfo=None)
    if kind is date:
        return date(2026, 11, 25)
    if kind is uuid.UUID:
        return FIXED_UUID
    if isinstance(column.type, CHAR) and column.type.length == 32:  # a UUID as SQLite keeps it
        return FIXED_UUID.hex
    return "x"  # every key column the same: a foreign key finds its row


def _tables(connection: Connection, migrations: Migrations) -> list[Table]:
    metadata = MetaData()
    metadata.reflect(connection)
    return [t for t in metadata.sorted_tables if not t.name.startswith("alembic_version")]


def _insert_rows(connection: Connection, migrations: Migrations) -> None:
    dialect = connection.dialect.name
    for table in _tables(connection, migrations):
        row = {c.name: _value(table, c, dialect) for c in table.columns}
        connection.execute(table.insert().values(row))


def _read_rows(connection: Connection, migrations: Migrations) -> dict[str, list[dict[str, Any]]]:
    return {
        table.name: [dict(r._mapping) for r in connection.execute(select(table))]
        for table in _tables(connection, migrations)
    }


async def _run(url: str, work: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("service", SERVICES)
async def test_a_store_with_data_keeps_it_through_every_revision_to_the_head(
    service: str, backend: str, store_url: MakeUrl
) -> None:
    """A row in every table at the first revision, then one revision at a time up to the head: after
    each, every row is still there, and every column that still exists holds what it held."""
    url = await store_url(backend)
    migrations = service_migrations(service)
    revisions = [r.revision for r in reversed(list(migrations.script().walk_revisions()))]
    assert revisions[-1] == migrations.head()

    assert await migrate(url, migrations, revisions[0]) == (revisions[0],)
    await _run(url, lambda c: _insert_rows(c, migrations))
    before = await _run(url, lambda c: _read_rows(c, migrations))
    assert before and all(len(rows) == 1 for rows in before.values()), before

    for revision in revisions[1:] or revisions:  # with one revision: migrating again keeps the data
        assert await migrate(url, migrations, revision) == (revision,)
        after = await _run(url, lambda c: _read_rows(c, migrations))
        for name, rows in before.items():
            if name not in after:
                continue  # a table a revision dropped (the contract step)
            assert len(after[name]) == len(rows), f"{name} lost rows at {revision}"
            kept = {k: v for k, v in after[name][0].items() if k in rows[0]}
            assert kept == {k: v for k, v in rows[0].items() if k in kept}, f"{name} changed at {revision}"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_store_created_before_migrations_is_adopted_with_its_data(
    backend: str, store_url: MakeUrl
) -> None:
    """Stores made by earlier versions (tables created from the models at start-up, no version table)
    are stamped at the first revision and migrated on, not recreated."""
    url = await store_url(backend)
    migrations = service_migrations("intake")
    # What an earlier version created from its models: the first revision's schema, no version table.
    await migrate(url, migrations, "0001")
    await _run(url, lambda c: c.execute(text(f"DROP TABLE {migrations.version_table}")))
    insert = "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('c', 'e', '2026-01-01')"
    await _run(url, lambda c: c.execute(text(insert)))

    assert await migrate(url, migrations) == (migrations.head(),)
    rows = await _run(url, lambda c: c.execute(text("SELECT consumer, event_id FROM processed_events")).all())
    assert [tuple(r) for r in rows] == [("c", "e")]


# --- refusing to start -----------------------------------------------------------------------------------


def _settings(service: str, url: str, **values: Any) -> ServiceSettings:
    config = importlib.import_module(f"services.{service}.config")
    cls = next(
        v
        for v in vars(config).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    )
    settings: ServiceSettings = cls(environment="development", database_url=url, **values)
    return settings


async def _start(service: str, settings: ServiceSettings) -> None:
    """Run the service app's start-up (its lifespan, API role only), then its shut-down."""
    app = importlib.import_module(f"services.{service}.bootstrap").create_app(settings, frozenset({"api"}))
    async with app.router.lifespan_context(app):
        pass


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_refuses_a_store_behind_its_code_and_says_what_to_run(
    service: str, make_database_url: Callable[[], Awaitable[str]]
) -> None:
    url = await make_database_url()  # PostgreSQL: migrating is a deploy step, not the service's
    with pytest.raises(StoreNotAtHead) as refusal:
        await _start(service, _settings(service, url))
    assert f"run `trialroute migrate {service}`" in str(refusal.value)
    assert await current_revision(url, service_migrations(service)) == ()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_service_refuses_a_store_ahead_of_its_code(backend: str, store_url: MakeUrl) -> None:
    url = await store_url(backend)
    migrations = service_migrations("intake")
    await migrate(url, migrations)
    version = table_clause(migrations.version_table, column("version_num"))
    await _run(url, lambda c: c.execute(update(version).values(version_num="f00d")))

    with pytest.raises(StoreNotAtHead) as refusal:
        await _start("intake", _settings("intake", url, migrate_on_start=False))
    assert "revision f00d, which this version of the code does not know" in str(refusal.value)
    with pytest.raises(StoreNotAtHead):  # nor does it migrate a store it does not understand
        await _start("intake", _settings("intake", url, migrate_on_start=True))


async def test_a_service_allowed_to_migrates_its_store_at_start(
    make_database_url: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    """SQLite files (the embedded default) by default; PostgreSQL when INTAKE_MIGRATE_ON_START says so."""
    migrations = service_migrations("intake")
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    await _start("intake", _settings("intake", sqlite_url))
    assert await current_revision(sqlite_url, migrations) == (migrations.head(),)

    pg_url = await make_database_url()
    await _start("intake", _settings("intake", pg_url, migrate_on_start=True))
    assert await current_revision(pg_url, migrations) == (migrations.head(),)


def test_trialroute_migrate_brings_a_store_to_the_head_and_check_says_so(tmp_path: Path) -> None:
    env = os.environ | {"INTAKE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"}
    trialroute = [sys.executable, "-m", "services.cli"]
    head = service_migrations("intake").head()

    behind = subprocess.run([*trialroute, "migrate", "intake", "--check"], env=env, capture_output=True)
    assert behind.returncode == 1
    assert f"intake: at no revision, code needs {head}" in behind.stdout.decode()

    done = subprocess.run([*trialroute, "migrate", "intake"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert f"intake: at {head}" in done.stdout.decode()

    check = subprocess.run([*trialroute, "migrate", "intake", "--check"], env=env, capture_output=True)
    assert check.returncode == 0


# --- writing a revision (scripts/revision.sh) ------------------------------------------------------------


async def test_a_new_revision_is_written_from_what_the_models_add_and_then_agrees_with_them(
    tmp_path: Path,
) -> None:
    """What the integrator runs when a branch adds a table or a column: the next revision, importable
    and formatted, that brings a store to the changed models (and back)."""
    shipped = service_migrations("notifier")
    versions = tmp_path / "migrations"
    shutil.copytree(shipped.versions_dir, versions, ignore=shutil.ignore_patterns("__pycache__"))
    probe = Table(
        "webhook_probe",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("url", String(500), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Index("ix_webhook_probe_created", "created_at"),
    )
    changed = Migrations("notifier", [*shipped.tables, probe], versions)

    path = await new_revision(changed, "add webhook probe")

    number = len(list(shipped.script().walk_revisions())) + 1
    assert path.name == f"m{number:04d}_add_webhook_probe.py"
    source = path.read_text()
    assert "from shared.store import UTCDateTime" in source
    assert 'op.create_table(\n        "webhook_probe"' in source
    assert f'down_revision: str | None = "{shipped.head()}"' in source
    url = f"sqlite+aiosqlite:///{tmp_path / 'notifier.db'}"
    assert await migrate(url, changed) == (f"{number:04d}",)
    assert await differences(url, changed) == []
    assert await migrate(url, changed, shipped.head()) == (shipped.head(),)
    assert await differences(url, shipped) == []


async def test_a_new_service_s_first_revision_is_its_whole_schema(tmp_path: Path) -> None:
    """A service with no revision yet (scripts/revision.sh NEW "initial schema"): the first revision
    creates every table of its models, from an empty store."""
    shipped = service_migrations("insights")
    versions = tmp_path / "migrations"
    versions.mkdir()
    fresh = Migrations("probe_service", shipped.tables, versions)

    path = await new_revision(fresh, "initial schema")

    assert path.name == "m0001_initial_schema.py"
    assert "down_revision: str | None = None" in path.read_text()
    url = f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}"
    assert await migrate(url, fresh) == ("0001",)
    assert await differences(url, fresh) == []
