"""HTTPS end to end: a real service (auth) served by uvicorn with the certificate its settings name, and
the service-to-service clients (token fetching, JWKS) trusting the CA that ``TLS_CA_FILE`` names. No
AUTHLIB_INSECURE_TRANSPORT: the token endpoint is reached over TLS."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.auth.bootstrap import create_app
from services.auth.config import AuthSettings
from services.devstack.processes import trialroute_argv
from shared.auth import Scope, ServiceTokenSource, TokenValidator
from shared.settings import OAuthSettings, TlsSettings
from shared.tls import client_context, http_client, server_options
from tests.support.auth import Issuer, attached_issuer
from tests.support.servers import loopback_socket, serve_app, url_of
from tests.support.stores import migrated
from tests.support.tls import Pki
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.make(tmp_path / "pki", "127.0.0.1", "localhost")


def auth_settings(database_url: str, pki: Pki, url: str, **options: object) -> AuthSettings:
    return AuthSettings(
        environment="test",
        database_url=database_url,
        issuer=url,
        key_encryption_secret=SecretStr("tests-key-encryption-secret"),
        key_publish_delay_s=0,
        ssl_certfile=str(pki.cert_file),
        ssl_keyfile=str(pki.key_file),
        tls=TlsSettings(ca_file=str(pki.ca_file)),
        **options,
    )


@pytest.fixture
async def https_issuer(database_url: str, pki: Pki) -> AsyncIterator[Issuer]:
    """The auth service serving HTTPS only, its issuer URL https://127.0.0.1:PORT."""
    sock = loopback_socket()
    settings = auth_settings(database_url, pki, url_of(sock, "https"))
    await migrated(database_url, "auth")
    async with (
        attached_issuer(settings.issuer, database_url) as issuer,
        serve_app(create_app(settings), sock=sock, tls=server_options(settings)) as url,
    ):
        assert url == settings.issuer
        yield issuer


async def test_a_service_token_is_fetched_and_checked_over_https(https_issuer: Issuer, pki: Pki) -> None:
    secret = await https_issuer.register("notifier", [Scope.CONTACT_READ], audiences=["intake"])
    oauth = OAuthSettings(issuer=https_issuer.url)
    tls = TlsSettings(ca_file=str(pki.ca_file))
    source = ServiceTokenSource(
        oauth, "notifier", secret, "intake", [Scope.CONTACT_READ], verify=client_context(tls)
    )
    try:
        token = await source.token()
    finally:
        await source.aclose()
    async with http_client(tls, timeout=10) as http:
        principal = await TokenValidator(oauth, "intake", http).validate(token)  # JWKS over HTTPS
        metadata = (await http.get(f"{https_issuer.url}/.well-known/openid-configuration")).json()
    assert principal.client_id == "notifier"
    assert principal.scopes == {"contact:read"}
    assert metadata["token_endpoint"].startswith("https://127.0.0.1:")


async def test_a_client_that_does_not_trust_the_ca_is_refused(https_issuer: Issuer) -> None:
    async with httpx.AsyncClient(timeout=10) as http:  # certifi's roots only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{https_issuer.url}/healthz")
    async with http_client(TlsSettings(), timeout=10) as http:  # no TLS_CA_FILE
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{https_issuer.url}/healthz")


async def test_plain_http_is_not_served_on_the_https_port(https_issuer: Issuer) -> None:
    plain = https_issuer.url.replace("https://", "http://")
    async with httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{plain}/healthz")


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    database_url: str, pki: Pki, tmp_path: Path
) -> None:
    sock = loopback_socket()
    settings = auth_settings(database_url, pki, url_of(sock, "https"), ssl_client_ca_file=str(pki.ca_file))
    await migrated(database_url, "auth")
    cert, key = pki.client(tmp_path, "intake")
    tls = TlsSettings(ca_file=str(pki.ca_file))
    with_certificate = client_context(tls)
    with_certificate.load_cert_chain(cert, key)
    async with serve_app(create_app(settings), sock=sock, tls=server_options(settings)) as url:
        async with http_client(tls, timeout=10) as http:
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await http.get(f"{url}/healthz")
        async with httpx.AsyncClient(verify=with_certificate, timeout=10) as http:
            response = await http.get(f"{url}/healthz")
    assert response.status_code == 200


async def test_trialroute_serve_serves_https_with_its_secrets_from_files(pki: Pki, tmp_path: Path) -> None:
    """The process ops run: `trialroute serve auth` in production mode, its certificate named by the
    environment and its key-encryption secret read from a file (a production start refuses the default)."""
    secret = tmp_path / "key-encryption-secret"
    secret.write_text("a-secret-from-a-mounted-file\n")
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "AUTH_ENVIRONMENT": "production",
        "AUTH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}",
        "AUTH_MIGRATE_ON_START": "true",
        "AUTH_ISSUER": f"https://127.0.0.1:{port}",
        "AUTH_SSL_CERTFILE": str(pki.cert_file),
        "AUTH_SSL_KEYFILE": str(pki.key_file),
        "AUTH_KEY_ENCRYPTION_SECRET_FILE": str(secret),
    }
    process = await asyncio.create_subprocess_exec(
        *trialroute_argv("serve", "auth", "--port", str(port)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with http_client(TlsSettings(ca_file=str(pki.ca_file)), timeout=5) as http:

            async def healthy() -> httpx.Response | None:
                if process.returncode is not None:
                    raise AssertionError(f"trialroute serve exited {process.returncode}")
                try:
                    return await http.get(f"https://127.0.0.1:{port}/healthz")
                except httpx.ConnectError as error:
                    if "CERTIFICATE" in str(error):
                        raise
                    return None

            response = await eventually(healthy, within=60, interval=0.2, what="auth to serve HTTPS")
            jwks = await http.get(f"https://127.0.0.1:{port}/.well-known/jwks.json")
    finally:
        if process.returncode is None:
            process.terminate()
        _, errors = await process.communicate()
    assert response.status_code == 200
    assert jwks.status_code == 200 and jwks.json()["keys"]
    assert b"a-secret-from-a-mounted-file" not in errors
