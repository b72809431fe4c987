"""A local SMTP server that keeps every message and shows it on a small web page (like Mailpit).

Messages are kept as ``.eml`` files, so they survive a restart of the mailbox and can be opened in any
mail program. Only for development and demos: it accepts mail for anyone and relays nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import json
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from shared.problems import NotFound, install_problem_handlers


class MailStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        message_key = f"{stamp}-{uuid.uuid4().hex[:8]}"
        meta = {"from": mail_from, "to": rcpt_tos, "received_at": datetime.now(UTC).isoformat()}
        (self.directory / f"{message_key}.json").write_text(json.dumps(meta))
        (self.directory / f"{message_key}.eml").write_bytes(data)
        return message_key

    def list(self) -> list[dict[str, Any]]:
        return [self.summary(p.stem) for p in sorted(self.directory.glob("*.eml"), reverse=True)]

    def summary(self, key: str) -> dict[str, Any]:
        message = self.message(key)
        meta = json.loads((self.directory / f"{key}.json").read_text())
        return {
            "id": key,
            "envelope_to": meta["to"],
            "received_at": meta["received_at"],
            "subject": message["Subject"],
            "to": message["To"],
            "message_id": message["Message-ID"],
            "language": message["Content-Language"],
        }

    def message(self, key: str) -> EmailMessage:
        path = self.directory / f"{key}.eml"
        if "/" in key or not path.exists():
            raise NotFound(f"no message {key}")
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.store.save(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        return "250 Message accepted for delivery"


def preview_app(store: MailStore) -> FastAPI:
    app = FastAPI(title="trialroute mail preview", description="Every email the local stack sent.")
    install_problem_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/messages", summary="Every message received, newest first")
    async def messages() -> list[dict[str, Any]]:
        return store.list()

    @app.get("/", response_class=HTMLResponse, summary="The inbox")
    async def inbox() -> str:
        rows = "".join(
            f"<tr><td>{html.escape(m['received_at'][:19])}</td><td>{html.escape(str(m['to']))}</td>"
            f"<td><a href='/messages/{m['id']}'>{html.escape(str(m['subject']))}</a></td></tr>"
            for m in store.list()
        )
        return _page(
            "Mail preview", f"<table><tr><th>received</th><th>to</th><th>subject</th></tr>{rows}</table>"
        )

    @app.get("/messages/{key}", response_class=HTMLResponse, summary="One message")
    async def show(key: str) -> str:
        message = store.message(key)
        text = message.get_body(preferencelist=("plain",))
        rich = message.get_body(preferencelist=("html",))
        headers = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in message.items()
        )
        body = f"<pre>{html.escape(text.get_content()) if text else ''}</pre>"
        if rich is not None:
            body += f"<iframe sandbox srcdoc='{html.escape(rich.get_content(), quote=True)}'></iframe>"
        return _page(str(message["Subject"]), f"<p><a href='/'>inbox</a></p><table>{headers}</table>{body}")

    return app


def _page(title: str, body: str) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}"
        "iframe{width:100%;height:30em;border:1px solid #ccc}"
    )
    head = f"<!doctype html><title>{html.escape(title)}</title><style>{style}</style>"
    return f"{head}<h1>{html.escape(title)}</h1>{body}"


async def run_mailbox(directory: Path, smtp_port: int, http_port: int, host: str = "127.0.0.1") -> None:
    """Serve SMTP and the preview page until cancelled."""
    import uvicorn

    store = MailStore(directory)
    controller = Controller(_Handler(store), hostname=host, port=smtp_port)
    controller.start()
    try:
        server = uvicorn.Server(
            uvicorn.Config(preview_app(store), host=host, port=http_port, log_config=None)
        )
        await server.serve()
    finally:
        await asyncio.to_thread(controller.stop)
