"""Certificates the TLS tests make (a throwaway CA from trustme), and the project's PostgreSQL and Kafka
scripts started with TLS on ports of their own, next to the test run's plain servers.

    pki = Pki.make(tmp_path, "localhost", "127.0.0.1")        # ca.pem, server.pem, server.key
    with local_postgres(pki, port) as admin_url: ...         # deploy/local/postgres.sh, TLS required
    with local_kafka(pki, port, user, password) as bootstrap: ...  # deploy/local/kafka.sh, SASL_SSL

Ports: TRIALROUTE_TLS_PG_PORT (25584) and TRIALROUTE_TLS_KAFKA_PORT (29184, its controller the next);
set them so that parallel runs on one machine do not collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"


def tls_pg_port() -> int:
    return int(os.environ.get("TRIALROUTE_TLS_PG_PORT", "25584"))


def tls_kafka_port() -> int:
    return int(os.environ.get("TRIALROUTE_TLS_KAFKA_PORT", "29184"))


@dataclass(frozen=True)
class Pki:
    """A CA and one certificate it issued, as PEM files (the key unencrypted PKCS#8, which Kafka and
    PostgreSQL both read)."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, directory: Path, *names: str) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert(*names)
        pki = cls(ca, directory / "ca.pem", directory / "server.pem", directory / "server.key")
        ca.cert_pem.write_to_path(str(pki.ca_file))
        pki.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        pki.key_file.write_bytes(pkcs8(leaf.private_key_pem.bytes()))
        pki.key_file.chmod(0o600)
        return pki

    def client(self, directory: Path, name: str) -> tuple[Path, Path]:
        """A client certificate (mutual TLS) this CA issued: its PEM chain and key files."""
        leaf = self.ca.issue_cert(name)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(pkcs8(leaf.private_key_pem.bytes()))
        return cert, key


def pkcs8(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _script(name: str, command: str, env: dict[str, str]) -> None:
    subprocess.run(["nice", str(LOCAL / name), command], env={**os.environ, **env}, check=True)


@contextmanager
def local_postgres(pki: Pki, port: int) -> Iterator[str]:
    """deploy/local/postgres.sh on ``port`` with TLS required and ``pki``'s certificate; yields its
    admin URL (host 127.0.0.1, ``sslmode=require``). Stopped and its files removed afterwards."""
    base = ROOT / ".run" / f"tls-postgres-{port}"
    env = {
        "TRIALROUTE_PG_PORT": str(port),
        "TRIALROUTE_PG_DIR": str(base),
        "TRIALROUTE_PG_SSL_CERT": str(pki.cert_file),
        "TRIALROUTE_PG_SSL_KEY": str(pki.key_file),
        "TRIALROUTE_PG_FAST": "1",
    }
    shutil.rmtree(base, ignore_errors=True)
    try:
        _script("postgres.sh", "start", env)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    finally:
        _script("postgres.sh", "stop", env)
        shutil.rmtree(base.resolve(), ignore_errors=True)
        if base.is_symlink():
            base.unlink()


@contextmanager
def local_kafka(pki: Pki, port: int, user: str, password: str) -> Iterator[str]:
    """deploy/local/kafka.sh on ``port`` (controller ``port + 1``) with a SASL_SSL listener and one
    SCRAM-SHA-512 user; yields the bootstrap address. Stopped and its files removed afterwards."""
    base = ROOT / ".run" / f"tls-kafka-{port}"
    env = {
        "TRIALROUTE_KAFKA_PORT": str(port),
        "TRIALROUTE_KAFKA_CONTROLLER_PORT": str(port + 1),
        "TRIALROUTE_KAFKA_DIR": str(base),
        "TRIALROUTE_KAFKA_SSL_CERT": str(pki.cert_file),
        "TRIALROUTE_KAFKA_SSL_KEY": str(pki.key_file),
        "TRIALROUTE_KAFKA_SSL_CA": str(pki.ca_file),
        "TRIALROUTE_KAFKA_USER": user,
        "TRIALROUTE_KAFKA_PASSWORD": password,
        "TRIALROUTE_KAFKA_HEAP": "512m",
    }
    shutil.rmtree(base, ignore_errors=True)
    try:
        _script("kafka.sh", "start", env)
        yield f"127.0.0.1:{port}"
    finally:
        _script("kafka.sh", "stop", env)
        shutil.rmtree(base, ignore_errors=True)
