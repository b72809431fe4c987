"""Schema migrations of each service's store, with Alembic: written once here, used by every service.

Each service keeps its revisions in ``services/<name>/migrations/`` (shipped in the wheel) and its
revision in a version table of its own, ``alembic_version_<name>``, so that stores sharing one
PostgreSQL database never read each other's revision. The Alembic environment (``env.py``) and the
revision template (``script.py.mako``) are shared: ``shared/migration_env/``.

- ``migrate`` brings a store to the code's head (``trialroute migrate [SERVICE]``), holding a lock so
  that processes starting together migrate one at a time;
- ``check`` refuses a store that is behind or ahead of the code, saying what to run;
- ``prepare_store`` is every service's ``on_start`` hook: migrate if the service may, then check;
- ``new_revision`` writes a new revision from the difference between the models and the head
  (``scripts/revision.sh SERVICE "message"``);
- ``differences`` is that difference for a store already migrated (empty when models and migrations agree).

How a change ships without downtime (expand, deploy, contract) is in ``docs/migrations.md``.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, inspect, pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.sql.sqltypes import AutoString

from shared.db import Database, connect_options
from shared.settings import ServiceSettings
from shared.store import UTCDateTime

log = logging.getLogger(__name__)

ENV_DIR = Path(__file__).resolve().parent / "migration_env"
"""The one Alembic environment (``env.py``, ``script.py.mako``) every service's revisions run in."""


class StoreNotAtHead(RuntimeError):
    """The store's schema is not the one this code was written for: the service must not start."""


@dataclass(frozen=True)
class Migrations:
    """One service's migrations: its name, its tables (the models) and where its revisions are."""

    service: str
    tables: Sequence[Table]
    versions_dir: Path
    metadata: MetaData = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Only this service's tables: the models of every service share SQLModel's metadata.
        metadata = MetaData()
        for table in self.tables:
            table.to_metadata(metadata)
        object.__setattr__(self, "metadata", metadata)

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.service}"

    def config(self, connection: Connection | None = None) -> Config:
        """Alembic's configuration for this service, built in code (no alembic.ini to ship or find)."""
        config = Config()
        config.set_main_option("script_location", str(ENV_DIR))
        config.set_main_option("version_locations", str(self.versions_dir))
        config.set_main_option("path_separator", "os")
        config.set_main_option("file_template", "m%%(rev)s_%%(slug)s")  # an importable module name
        config.attributes["migrations"] = self
        config.attributes["connection"] = connection
        return config

    def script(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.config())

    def head(self) -> str:
        """The revision this code needs (one head: a second is a merge to make, refused)."""
        heads = self.script().get_heads()
        if len(heads) != 1:
            raise RuntimeError(f"{self.service} has {len(heads)} migration heads {heads}; merge them")
        return heads[0]

    def owns(self, obj: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
        """Alembic's ``include_object``: a table in the store that is not this service's (another
        service's, in a shared database) is none of its business."""
        if type_ == "table" and reflected and name not in self.metadata.tables:
            return False
        return True


def service_migrations(service: str) -> Migrations:
    """A service's ``Migrations`` by its name (``services/<name>/migrations``), for the tools that take
    the name: ``trialroute migrate``, the dev stack, the tests."""
    module = importlib.import_module(f"services.{service}.migrations")
    migrations: Migrations = module.MIGRATIONS
    return migrations


# --- the environment (shared/migration_env/env.py calls run_env) -------------------------------------


def run_env() -> None:
    """What ``env.py`` does: run the revisions on the connection ``migrate`` handed over."""
    from alembic import context

    migrations: Migrations = context.config.attributes["migrations"]
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `trialroute migrate`, not the alembic command line")
    context.configure(
        connection=connection,
        target_metadata=migrations.metadata,
        version_table=migrations.version_table,
        include_object=migrations.owns,
        render_item=render_item,
        render_as_batch=True,  # SQLite alters a table by copying it; PostgreSQL alters it in place
        compare_type=True,
        transaction_per_migration=False,
    )
    # ``migrate`` holds the transaction (and the lock): alembic runs in it and commits nothing itself.
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection, service: str) -> None:
    """One migrator of a store at a time (replicas starting together, a deploy step racing one); the
    revision is read after the lock is taken, so the second finds the store migrated."""
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(f"trialroute-migrate-{service}".encode())
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite":
        # The sqlite3 module starts no transaction before DDL: take the write lock now, so that the
        # revision read and every statement after it are one transaction.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _check_foreign_keys(connection: Connection) -> None:
    """SQLite's batch migrations copy tables with foreign keys off: check them before committing."""
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render the project's column types importably in revision files."""
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from shared.store import UTCDateTime")
        return "UTCDateTime()"
    if isinstance(obj, AutoString):  # SQLModel's str columns: a VARCHAR, of a length when one is given
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


# --- running them --------------------------------------------------------------------------------------


def _engine(url: str | URL) -> AsyncEngine:
    url = make_url(url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # No pool: the connection is used once. No foreign keys on SQLite (PRAGMA foreign_keys is a no-op
    # inside a transaction, and batch migrations drop and recreate tables that others refer to).
    engine_url, connect_args = connect_options(url)
    return create_async_engine(engine_url, poolclass=pool.NullPool, connect_args=connect_args)


async def _with_connection(url: str | URL, work: Callable[[Connection], Any]) -> Any:
    engine = _engine(url)
    try:
        async with engine.connect() as connection:
            result = await connection.run_sync(work)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


async def migrate(url: str | URL, migrations: Migrations, target: str = "head") -> tuple[str, ...]:
    """Bring the store at ``url`` to ``target`` (the code's head by default; an older revision, or
    ``base``, downgrades) and return the revision it is at.

    A store created before migrations existed (its tables made from the models at start-up) is adopted:
    when the version table is missing but the service's tables are there, it is stamped at the first
    revision, whose schema is the one those versions created, and migrated on from there.
    """

    def run(connection: Connection) -> tuple[str, ...]:
        _lock(connection, migrations.service)
        config = migrations.config(connection)
        script = migrations.script()
        if _created_before_migrations(connection, migrations):
            log.warning("adopting a store created without migrations", extra={"service": migrations.service})
            command.stamp(config, script.get_base() or "base")
        revisions = _revisions(connection, migrations)
        refusal = _refusal(migrations, revisions, migrating=True)
        if refusal:
            raise StoreNotAtHead(refusal)
        if _below(script, revisions, target):
            command.downgrade(config, target)
        else:
            command.upgrade(config, target)
        _check_foreign_keys(connection)
        return _revisions(connection, migrations)

    revisions: tuple[str, ...] = await _with_connection(url, run)
    return revisions


def _revisions(connection: Connection, migrations: Migrations) -> tuple[str, ...]:
    context = MigrationContext.configure(connection, opts={"version_table": migrations.version_table})
    return tuple(context.get_current_heads())


def _below(script: ScriptDirectory, revisions: tuple[str, ...], target: str) -> bool:
    """Whether ``target`` is an ancestor of the store's revision: reaching it is a downgrade."""
    if target == "head" or not revisions:
        return False
    if target == "base":
        return True
    wanted = script.get_revision(target)
    if wanted is None:
        return False
    ancestors = {r.revision for head in revisions for r in script.iterate_revisions(head, "base")}
    return wanted.revision in ancestors and wanted.revision not in revisions


def _created_before_migrations(connection: Connection, migrations: Migrations) -> bool:
    """Tables of the service but no version table: made by a version from before migrations (whose
    tables are the first revision's, so a later revision's new tables are not required here)."""
    existing = set(inspect(connection).get_table_names())
    if migrations.version_table in existing:
        return False
    return bool(existing & set(migrations.metadata.tables))


async def current_revision(url: str | URL, migrations: Migrations) -> tuple[str, ...]:
    """The store's revision(s): none for an empty store."""
    revisions: tuple[str, ...] = await _with_connection(url, lambda c: _revisions(c, migrations))
    return revisions


async def check(engine: AsyncEngine, migrations: Migrations) -> None:
    """Raise ``StoreNotAtHead`` unless the store is at the code's head, saying what to do."""

    async with engine.connect() as connection:
        revisions = await connection.run_sync(lambda c: _revisions(c, migrations))
    refusal = _refusal(migrations, revisions)
    if refusal:
        raise StoreNotAtHead(refusal)


def _refusal(migrations: Migrations, revisions: tuple[str, ...], *, migrating: bool = False) -> str | None:
    """Why a store at ``revisions`` will not do for this code (``None``: it will). Migrating, only a
    revision the code does not know is a reason: a newer version was there."""
    head = migrations.head()
    if revisions == (head,):
        return None
    service = migrations.service
    script = migrations.script()
    if not all(_known(script, r) for r in revisions):
        return (
            f"{service}'s store is at revision {', '.join(revisions)}, which this version of the code "
            f"does not know (its head is {head}): a newer version migrated it; deploy that version or a "
            "newer one"
        )
    if migrating:
        return None
    at = ", ".join(revisions) or "no revision (an empty store)"
    return f"{service}'s store is at {at}; this code needs {head}: run `trialroute migrate {service}`"


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises its own ResolutionError / CommandError for an unknown id
        return False


async def prepare_store(db: Database, migrations: Migrations, settings: ServiceSettings) -> None:
    """Every service's ``on_start`` (and its CLI's): migrate the store when the service may
    (``settings.migrates_on_start``), then refuse to go on unless it is at the code's revision."""
    if settings.migrates_on_start:
        await migrate(db.url, migrations)
    try:
        await check(db.engine, migrations)
    except StoreNotAtHead as refusal:
        log.error("%s", refusal)
        raise


async def differences(url: str | URL, migrations: Migrations) -> list[Any]:
    """What autogenerate would write for the store at ``url``: empty when it matches the models."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": migrations.version_table,
                "include_object": migrations.owns,
                "compare_type": True,
                "target_metadata": migrations.metadata,
            },
        )
        diff: list[Any] = compare_metadata(context, migrations.metadata)
        return diff

    result: list[Any] = await _with_connection(url, compare)
    return result


async def new_revision(migrations: Migrations, message: str, *, url: str | URL | None = None) -> Path:
    """Write the next revision of ``migrations``: what the models add to the head, autogenerated
    against a scratch SQLite store at the head (or the store at ``url``), then formatted with ruff.
    Review it before committing: autogenerate does not see renames, data moves or server defaults."""
    with tempfile.TemporaryDirectory() as scratch:
        target = url or f"sqlite+aiosqlite:///{Path(scratch) / 'scratch.db'}"
        if migrations.script().get_heads():  # a new service's first revision starts from an empty store
            await migrate(target, migrations)
        number = len(list(migrations.script().walk_revisions())) + 1

        def generate(connection: Connection) -> Path:
            config = migrations.config(connection)
            script = command.revision(config, message, autogenerate=True, rev_id=f"{number:04d}")
            if script is None or isinstance(script, list):
                raise RuntimeError("alembic wrote no single revision")
            return Path(script.path)

        path: Path = await _with_connection(target, generate)
    _format(path)
    return path


def _format(path: Path) -> None:
    beside = Path(sys.executable).with_name("ruff")  # the project's pinned ruff, in its .venv
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff is None:
        log.warning("ruff not found: format %s yourself", path)
        return
    subprocess.run([ruff, "check", "--fix", "--quiet", str(path)], check=False)  # noqa: S603
    subprocess.run([ruff, "format", "--quiet", str(path)], check=True)  # noqa: S603
