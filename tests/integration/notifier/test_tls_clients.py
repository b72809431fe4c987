"""The notifier's SMTP and webhook clients trust ``TLS_CA_FILE`` (the internal CA) on top of the public
roots, as every HTTPS client of the services does: a mail relay or an endpoint with a certificate of
that CA is reached, and without the setting the same certificate is refused. Real TLS on loopback: an
aiosmtpd server (implicit TLS and STARTTLS) and uvicorn over HTTPS, with a CA trustme makes.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Response
from pydantic import SecretStr

from services.notifier.config import NotifierSettings
from services.notifier.mail import DeliveryError, Email, Mailer
from services.notifier.webhooks import DeliveryFailed, Signed, WebhookSender
from shared.settings import TlsSettings
from tests.support.servers import loopback_socket, serve_app
from tests.support.tls import Pki

pytestmark = pytest.mark.integration

EMAIL = Email("no-reply@trialroute.example", "coordinator@site.example", b"Subject: probe\r\n\r\nprobe\r\n")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.make(tmp_path / "pki", "localhost", "127.0.0.1")


def trusting(pki: Pki | None, **settings: Any) -> NotifierSettings:
    """Notifier settings with ``TLS_CA_FILE`` set to ``pki``'s CA, or unset (public roots only)."""
    return NotifierSettings(
        environment="test",
        client_secret=SecretStr("tls-probe"),
        tls=TlsSettings(ca_file=str(pki.ca_file) if pki else None),
        **settings,
    )


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_over_tls(pki: Pki, *, starttls: bool) -> Iterator[tuple[int, Inbox]]:
    """An SMTP server with ``pki``'s certificate: implicit TLS, or STARTTLS that it requires."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    with loopback_socket() as probe:
        port = int(probe.getsockname()[1])
    tls: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True} if starttls else {"ssl_context": context}
    )
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=10, **tls)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


@pytest.mark.parametrize("starttls", [False, True], ids=["implicit TLS", "STARTTLS"])
async def test_the_mailer_trusts_the_configured_ca(pki: Pki, starttls: bool) -> None:
    mode = {"smtp_starttls": True} if starttls else {"smtp_use_tls": True}
    with smtp_over_tls(pki, starttls=starttls) as (port, inbox):
        mailer = Mailer(trusting(pki, smtp_host="127.0.0.1", smtp_port=port, **mode))
        try:
            await mailer.send(EMAIL)
        finally:
            await mailer.aclose()
        assert [b"probe" in m for m in inbox.messages] == [True]

        public_roots_only = Mailer(trusting(None, smtp_host="127.0.0.1", smtp_port=port, **mode))
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await public_roots_only.send(EMAIL)
        await public_roots_only.aclose()
        assert len(inbox.messages) == 1


async def test_the_webhook_sender_trusts_the_configured_ca(pki: Pki) -> None:
    received: list[str] = []
    app = FastAPI()

    @app.post("/hooks")
    async def hook() -> Response:
        received.append("delivery")
        return Response(status_code=204)

    signed = Signed('{"type": "probe"}', {"webhook-id": f"msg_{uuid.uuid4().hex}"})
    https = {"ssl_certfile": str(pki.cert_file), "ssl_keyfile": str(pki.key_file)}
    async with serve_app(app, tls=https) as url:
        assert url.startswith("https://")
        # A loopback endpoint: allowed here only, as tests/integration/notifier/test_webhooks.py does.
        sender = WebhookSender(trusting(pki, webhook_allow_private_addresses=True))
        try:
            assert await sender.send(f"{url}/hooks", signed) == 204
        finally:
            await sender.aclose()
        assert received == ["delivery"]

        public_roots_only = WebhookSender(trusting(None, webhook_allow_private_addresses=True))
        try:
            with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await public_roots_only.send(f"{url}/hooks", signed)
        finally:
            await public_roots_only.aclose()
        assert received == ["delivery"]
