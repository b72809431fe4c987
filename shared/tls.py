"""TLS in one place: what the services' HTTPS clients trust and how uvicorn serves HTTPS.

Kafka's TLS is built in ``shared.kafka`` (aiokafka's context), PostgreSQL's in ``shared.db``
(``sslmode``); docs/security.md says what is encrypted where and how the certificates are provided.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from shared.settings import ServiceSettings, TlsSettings


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """httpx's default trust (certifi's roots) plus ``TLS_CA_FILE``, the internal CA that signed the
    services' certificates: a service reaches both the internal issuer and a public one. Hostnames are
    checked (``check_hostname``), as by default."""
    context = httpx.create_ssl_context()
    if tls.ca_file:
        context.load_verify_locations(cafile=tls.ca_file)
    return context


def http_client(tls: TlsSettings, **options: Any) -> httpx.AsyncClient:
    """An HTTP client for calling another service (JWKS, tokens, contacts), trusting ``client_context``."""
    return httpx.AsyncClient(verify=client_context(tls), **options)


def server_options(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's TLS options from the settings: none (plain HTTP) without a certificate; with
    ``ssl_client_ca_file``, clients must present a certificate it signed (mutual TLS)."""
    if not settings.serves_tls:
        return {}
    options: dict[str, Any] = {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}
    if settings.ssl_client_ca_file:
        options.update(ssl_ca_certs=settings.ssl_client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options
