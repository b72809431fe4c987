"""Emails: rendered from Jinja2 templates, built as ``EmailMessage``, sent through aiosmtplib.

Each template exists as ``<name>.<language>.txt.j2`` (plain text; it also sets ``subject``) and
``<name>.<language>.html.j2`` (the HTML alternative, autoescaped). A language is offered for a
template when both files exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from services.notifier.config import NotifierSettings

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


def build_message(
    rendered: Rendered,
    *,
    sender: str,
    to: str,
    message_id: str,
    language: str,
    date: datetime | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text first, HTML preferred by clients that can show it)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders must not answer
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    # After the parts exist: making the alternative moves Content-* headers into the first part.
    message["Content-Language"] = language
    return message


class Mailer:
    """Sends through the configured SMTP server, one connection per message."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                start_tls=s.smtp_starttls,
                use_tls=s.smtp_use_tls,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                timeout=s.smtp_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused with a 5xx: the address will not start working by itself.
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(
                f"SMTP refused the recipient ({', '.join(map(str, codes))})",
                permanent=bool(codes) and all(c >= 500 for c in codes),
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"SMTP {exc.code}: {exc.message[:200]}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"SMTP unavailable: {type(exc).__name__}: {str(exc)[:200]}") from exc
