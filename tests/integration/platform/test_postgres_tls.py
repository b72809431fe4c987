"""PostgreSQL over TLS with ``sslmode=verify-full``: a server started by deploy/local/postgres.sh with a
certificate for ``localhost`` only (made here), TLS required. verify-full connects to ``localhost``,
and refuses a server whose certificate names another host or chains to another CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from sqlalchemy import text

from shared.db import Database, connect_options
from shared.migrations import current_revision, service_migrations
from tests.support.tls import Pki, local_postgres, tls_pg_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pg-pki"), "localhost")


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[int]:
    with local_postgres(pki, tls_pg_port()):
        yield tls_pg_port()


def url(port: int, host: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"postgresql+asyncpg://postgres@{host}:{port}/postgres?{query}"


async def connection_ssl(database_url: str) -> tuple[bool, str]:
    """Whether the session is encrypted, and with which protocol, as the server sees it."""
    db = Database(database_url)
    try:
        async with db.session() as session:
            row = (
                await session.execute(
                    text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            ).one()
    finally:
        await db.dispose()
    return bool(row.ssl), str(row.version)


async def test_verify_full_connects_to_the_host_the_certificate_names(server: int, pki: Pki) -> None:
    encrypted, version = await connection_ssl(
        url(server, "localhost", sslmode="verify-full", sslrootcert=str(pki.ca_file))
    )
    assert encrypted
    assert version.startswith("TLSv1.")


async def test_migrations_connect_the_same_way(server: int, pki: Pki) -> None:
    verified = url(server, "localhost", sslmode="verify-full", sslrootcert=str(pki.ca_file))
    assert await current_revision(verified, service_migrations("intake")) == ()


async def test_verify_full_refuses_a_certificate_for_another_host(server: int, pki: Pki) -> None:
    db = Database(url(server, "127.0.0.1", sslmode="verify-full", sslrootcert=str(pki.ca_file)))
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await db.ping()
    finally:
        await db.dispose()


async def test_verify_ca_checks_the_chain_but_not_the_name(server: int, pki: Pki) -> None:
    encrypted, _ = await connection_ssl(
        url(server, "127.0.0.1", sslmode="verify-ca", sslrootcert=str(pki.ca_file))
    )
    assert encrypted


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
async def test_a_server_certificate_from_another_ca_is_refused(
    server: int, tmp_path: Path, mode: str
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    db = Database(url(server, "localhost", sslmode=mode, sslrootcert=str(other)))
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await db.ping()
    finally:
        await db.dispose()


async def test_the_server_refuses_a_connection_without_tls(server: int) -> None:
    db = Database(url(server, "localhost", sslmode="disable"))
    try:
        with pytest.raises(Exception, match="no encryption"):
            await db.ping()
    finally:
        await db.dispose()


def test_an_unknown_sslmode_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="sslmode must be one of"):
        connect_options("postgresql+asyncpg://u@db/x?sslmode=verify_full")
