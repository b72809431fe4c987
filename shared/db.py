"""Async database access shared by every service: one engine per service store.

PostgreSQL in production and tests, a SQLite file as the embedded default. SQLite gets WAL and a busy
timeout so that an API process, a consumer and a relay can share one file. A PostgreSQL URL takes
libpq's TLS parameters (``?sslmode=verify-full&sslrootcert=/path/ca.crt``), which ``connect_options``
turns into the SSL context asyncpg wants.

PostgreSQL connections never wait forever: connecting is given ``CONNECT_TIMEOUT_S`` and each statement
of a service ``COMMAND_TIMEOUT_S`` (asyncpg's client-side timeouts). A network that drops packets
(a partition, a dead firewall state) leaves a connection open and silent, and without them a request,
a consumer or a relay waiting on it would wait for good; with them it fails, the connection is thrown
away and the work is retried.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Table, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

from shared.retry import conflicts

T = TypeVar("T")


CONNECT_TIMEOUT_S = 10.0
"""Connecting to PostgreSQL (TCP, TLS, authentication), for every engine and listener."""
COMMAND_TIMEOUT_S = 30.0
"""One statement of a service's (not of a migration's, which may rightly take longer). Far above what
any of their statements takes, lock waits included, and far below forever."""


class Database:
    """An engine and its session factory; ``session()`` is one unit of work (one transaction)."""

    def __init__(
        self, url: str, *, pool_size: int = 10, command_timeout_s: float = COMMAND_TIMEOUT_S
    ) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # hide_parameters: a failed statement's error names its SQL, never its values (names, birth dates,
        # emails), so a logged traceback carries no patient identity.
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        engine_url, kwargs["connect_args"] = connect_options(self.url)
        if not self.is_sqlite:
            kwargs["connect_args"]["command_timeout"] = command_timeout_s
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs)
        _ping_when_idle(self.engine)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 3) -> T:
        """``work`` in one transaction, run again from the start if the database aborts it to break a
        deadlock or a serialization conflict (what PostgreSQL advises for both). A safety net: use cases
        that take several locks keep one order (the site router's: ``services/site_router/store.py``), so
        deadlocks should not happen, but a serialization failure or a missed order still can."""
        async for attempt in conflicts(attempts):
            with attempt:
                async with self.session() as session:
                    return await work(session)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def create_tables(self, tables: Sequence[Table]) -> None:
        """Create this service's tables (and only these: every service has its own store)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=list(tables))

    async def ping(self) -> None:
        """One round trip on a pooled connection (no transaction around it): the readiness check, which
        a slow link must not fail by multiplying its latency."""
        async with self.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""libpq's ``sslmode`` values; production uses ``verify-full`` (encrypted, the server's certificate
chains to ``sslrootcert`` and names the host connected to)."""
_LIBPQ_TLS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


def connect_options(url: str | URL) -> tuple[URL, dict[str, Any]]:
    """The URL to give SQLAlchemy and the driver's connect arguments.

    asyncpg does not read libpq's ``sslrootcert``/``sslcert``/``sslkey`` from a URL's query, and its
    ``sslmode`` falls back to files under ``~/.postgresql``: the parameters are taken off the URL and
    become one ``ssl.SSLContext`` (``verify-full``: hostname checked; ``verify-ca``: chain only;
    ``require``: encrypted, unverified, as in libpq without a root certificate). SQLite gets its busy
    timeout; PostgreSQL its connect timeout (``CONNECT_TIMEOUT_S``)."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        return url, {"timeout": 30}
    query = dict(url.query)
    params = {name: query.pop(name) for name in _LIBPQ_TLS if name in query}
    if not params:
        return url, {"timeout": CONNECT_TIMEOUT_S}
    clean = url.set(query=query)
    mode = str(params.get("sslmode", "prefer"))
    if mode not in SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}, not {mode!r}")
    if mode in ("disable", "allow", "prefer"):
        return clean, {"ssl": mode, "timeout": CONNECT_TIMEOUT_S}
    root = params.get("sslrootcert")
    context = ssl.create_default_context(cafile=str(root) if root else None)
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    if "sslcert" in params:  # a client certificate, for servers that authenticate by certificate
        key = params.get("sslkey")
        context.load_cert_chain(str(params["sslcert"]), str(key) if key else None)
    return clean, {"ssl": context, "timeout": CONNECT_TIMEOUT_S}


PING_IDLE_S = 0.5
"""A pooled connection idle for longer is pinged before use (HikariCP's alive-bypass window)."""


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pre-ping, skipped for a connection used within ``PING_IDLE_S``.

    SQLAlchemy's own ``pool_pre_ping`` pings on every checkout, and with asyncpg a ping is BEGIN, a
    query and ROLLBACK: three round trips before each transaction, which on a busy consumer or API cost
    more than the transaction's own statements. A connection checked in a moment ago was alive then;
    one that sat idle (across a database restart, say) is pinged, and if the ping fails the pool drops
    every connection as old as it and checkout reconnects, as with ``pool_pre_ping``.
    """
    dialect = engine.dialect

    def stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["used_at"] = time.monotonic()

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used_at", 0.0) < PING_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise sa_exc.InvalidatePoolError(f"pre-ping failed: {type(error).__name__}") from error

    event.listen(engine.sync_engine, "connect", stamp)
    event.listen(engine.sync_engine, "checkin", stamp)
    event.listen(engine.sync_engine, "checkout", ping)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
