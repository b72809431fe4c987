"""Emails: rendered from Jinja2 templates, built as MIME bytes, sent through a small pool of aiosmtplib
connections.

Each template exists as ``<name>.<language>.txt.j2`` (plain text; it also sets ``subject``) and
``<name>.<language>.html.j2`` (the HTML alternative, autoescaped). A language is offered for a
template when both files exist.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import functools
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from services.notifier.config import NotifierSettings
from shared.tls import client_context

TEMPLATES_DIR = Path(__file__).parent / "templates"
_NAME = re.compile(r"^(?P<template>[a-z_]+)\.(?P<language>[a-z]{2,3})\.txt\.j2$")


class DeliveryError(Exception):
    """A delivery that did not happen; ``permanent`` ones are not tried again."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


class Templates:
    """The email templates of one directory, loaded once at start-up."""

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,  # the files do not change under a running process: no stat per email
        )
        self._languages: dict[str, set[str]] = {}
        for path in directory.glob("*.txt.j2"):
            match = _NAME.match(path.name)
            html = path.with_name(path.name.removesuffix(".txt.j2") + ".html.j2")
            if match and html.exists():
                self._languages.setdefault(match["template"], set()).add(match["language"])

    def languages(self, template: str) -> frozenset[str]:
        return frozenset(self._languages.get(template, ()))

    def render(self, template: str, language: str, context: dict[str, Any]) -> Rendered:
        """Subject, text and HTML of one email; a template error is permanent (retrying won't fix it)."""
        try:
            text_module = self.env.get_template(f"{template}.{language}.txt.j2").make_module(context)
            subject = " ".join(str(getattr(text_module, "subject", "")).split())
            html = self.env.get_template(f"{template}.{language}.html.j2").render(
                {**context, "subject": subject, "language": language}
            )
        except jinja2.TemplateError as exc:
            raise DeliveryError(f"template {template}.{language}: {exc}", permanent=True) from exc
        if not subject:
            raise DeliveryError(f"template {template}.{language} sets no subject", permanent=True)
        return Rendered(subject=subject, text=_tidy(str(text_module)), html=html)


def _tidy(text: str) -> str:
    """Collapse the blank lines that template tags leave behind."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


@dataclass(frozen=True, slots=True)
class Email:
    """A message ready for SMTP: the envelope and the bytes of the message."""

    sender: str
    recipient: str
    data: bytes


def build_message(
    rendered: Rendered,
    *,
    sender: str,
    to: str,
    message_id: str,
    language: str,
    date: datetime | None = None,
) -> Email:
    """A multipart/alternative message (text first, HTML preferred by clients that can show it).

    Written directly rather than through ``email.message.EmailMessage``: its header registry parses
    every header it is given and folds it again on output, which cost more CPU than the rest of a
    send. The parts are UTF-8 in quoted-printable (7-bit clean, so any server takes them); headers that
    are long or not ASCII are encoded by ``email.header`` (RFC 2047).
    """
    text = _qp(rendered.text)
    html = _qp(rendered.html)
    boundary = f"=_{uuid.uuid4().hex}"  # "=_" never occurs in quoted-printable
    from_header, address = _sender(sender)
    lines = [
        f"From: {from_header}",
        f"To: {to}",
        f"Subject: {_header('Subject', rendered.subject)}",
        f"Date: {format_datetime(date or datetime.now(UTC))}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-generated",  # RFC 3834: auto-responders must not answer
        f"Content-Language: {language}",
        "MIME-Version: 1.0",
        "Content-Type: multipart/alternative;",
        f' boundary="{boundary}"',
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        text,
        f"--{boundary}",
        'Content-Type: text/html; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        html,
        f"--{boundary}--",
        "",
    ]
    return Email(sender=address, recipient=to, data="\r\n".join(lines).encode())


@functools.lru_cache(maxsize=8)
def _sender(sender: str) -> tuple[str, str]:
    """The From header and the envelope sender of ``sender`` (a setting: parsed once, not per email)."""
    name, address = parseaddr(sender)
    return formataddr((name, address), charset="utf-8"), address


def _qp(body: str) -> str:
    """Quoted-printable with CRLF line ends (binascii's encoder is C, the email package's is Python)."""
    return binascii.b2a_qp(body.encode(), istext=True).decode("ascii").replace("\n", "\r\n")


def _header(name: str, value: str) -> str:
    if value.isascii() and len(name) + len(value) < 76:
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=name).encode(linesep="\r\n")


class Mailer:
    """Sends through the configured SMTP server over a few reused connections.

    A connection per message cost a connect, EHLO and QUIT each time. Here up to ``smtp_connections``
    stay open, each carrying one message at a time. One idle for longer than ``smtp_idle_s`` is closed
    instead of trusted (servers drop idle clients, often without a word), and any error discards the
    connection it happened on. A message is never sent again here: once DATA went out, whether it was
    accepted is the dispatcher's question (its retry reuses the Message-ID).
    """

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.smtp_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # (client, when it was last used)
        self.connections_opened = 0

    async def send(self, email: Email) -> None:
        async with self._slots:
            client = await self._checkout()
            try:
                await client.sendmail(
                    email.sender,
                    [email.recipient],
                    email.data,
                    mail_options=[] if (email.sender + email.recipient).isascii() else ["SMTPUTF8"],
                )
            except _SMTP_ERRORS as exc:
                client.close()
                raise _delivery_error(exc) from exc
            except BaseException:  # a cancellation too: the connection's state is unknown
                client.close()
                raise
            self._idle.append((client, time.monotonic()))

    async def _checkout(self) -> aiosmtplib.SMTP:
        """The most recently used live connection, or a new one."""
        now = time.monotonic()
        while self._idle:
            client, used = self._idle.pop()
            if client.is_connected and now - used < self.settings.smtp_idle_s:
                return client
            client.close()
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            start_tls=s.smtp_starttls,
            use_tls=s.smtp_use_tls,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            timeout=s.smtp_timeout_s,
            # The public roots and TLS_CA_FILE, as every HTTPS client of ours: a relay inside the
            # deployment may carry a certificate of the internal CA.
            tls_context=client_context(s.tls) if s.smtp_use_tls or s.smtp_starttls else None,
        )
        try:
            await client.connect()
        except _SMTP_ERRORS as exc:
            client.close()
            raise _delivery_error(exc) from exc
        except BaseException:
            client.close()
            raise
        self.connections_opened += 1
        return client

    async def probe(self) -> None:
        """Raise unless the SMTP server greets a new connection and answers NOOP (the readiness check,
        cached by ``shared.readiness``); no login, no message, the pool untouched."""
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            start_tls=False,  # the greeting and NOOP show the server answers; TLS is the sends' business
            use_tls=s.smtp_use_tls,
            timeout=s.smtp_timeout_s,
        )
        try:
            await client.connect()
            await client.noop()
            await client.quit()
        finally:
            client.close()

    async def aclose(self) -> None:
        """Say QUIT on the idle connections (shutdown); a server that does not answer is hung up on."""
        idle, self._idle = self._idle, []
        for client, _ in idle:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await client.quit()
            client.close()


_SMTP_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


def _delivery_error(exc: Exception) -> DeliveryError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        # Every recipient refused with a 5xx: the address will not start working by itself.
        codes = [r.code for r in exc.recipients]
        return DeliveryError(
            f"SMTP refused the recipient ({', '.join(map(str, codes))})",
            permanent=bool(codes) and all(c >= 500 for c in codes),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return DeliveryError(f"SMTP {exc.code}: {exc.message[:200]}")
    return DeliveryError(f"SMTP unavailable: {type(exc).__name__}: {str(exc)[:200]}")
