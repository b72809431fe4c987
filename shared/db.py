"""Async database access shared by every service: one engine per service store.

PostgreSQL in production and tests, a SQLite file as the embedded default. SQLite gets WAL and a busy
timeout so that an API process, a consumer and a relay can share one file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

TRANSIENT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
"""Connection exceptions, insufficient resources, the server shutting down or starting up,
serialization failures and deadlocks: errors that pass by themselves (prefixes of SQLSTATE codes)."""


def is_transient_error(error: BaseException) -> bool:
    """True for a database failure worth retrying (the server restarting, a lost connection).

    SQLAlchemy's asyncpg dialect raises some of these as a bare ``DBAPIError``, not as
    ``OperationalError``: "the database system is shutting down" (57P01/57P03) during a restart,
    for one. Only the SQLSTATE tells them apart from a constraint violation or a bad query.
    """
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(code, str) and code.startswith(TRANSIENT_SQLSTATES)
    return False


class Database:
    """An engine and its session factory; ``session()`` is one unit of work (one transaction)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # hide_parameters: a failed statement's error names its SQL, never its values (names, birth dates,
        # emails), so a logged traceback carries no patient identity.
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def create_tables(self, tables: Sequence[Table]) -> None:
        """Create this service's tables (and only these: every service has its own store)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=list(tables))

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
