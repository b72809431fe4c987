"""``trialroute clients ...``: register clients, rotate their secrets, rotate the signing key.

Reads ``AuthSettings`` from the environment (``AUTH_DATABASE_URL``, ``AUTH_KEY_ENCRYPTION_SECRET``...).
Each command is a thin wrapper over a function taking a ``Database`` (``services.auth.registry``,
``services.auth.keys``), which is what code should call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from services.auth import registry
from services.auth.config import AuthSettings
from services.auth.domain import RegistrationError
from services.auth.keys import rotate_signing_key
from services.auth.migrations import MIGRATIONS
from shared.auth import Scope
from shared.db import Database
from shared.migrations import prepare_store

app = typer.Typer(help="OAuth2 clients of the auth service, and its signing keys.", no_args_is_help=True)

T = TypeVar("T")


def _run(work: Callable[[Database, AuthSettings], Awaitable[T]]) -> T:
    settings = AuthSettings()

    async def main() -> T:
        db = Database(settings.database_url)
        try:
            await prepare_store(db, MIGRATIONS, settings)
            return await work(db, settings)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except (RegistrationError, registry.ClientExists) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except registry.ClientNotFound as exc:
        typer.echo(f"error: no client {exc}", err=True)
        raise typer.Exit(1) from exc


def _show_secret(client_id: str, secret: str) -> None:
    typer.echo(f"client_id:     {client_id}")
    typer.echo(f"client_secret: {secret}")
    typer.echo("The secret is shown this once and not stored: keep it in the client's secret store now.")


@app.command()
def create(
    client_id: Annotated[str, typer.Option("--client-id", help="e.g. clinic-0001, notifier")],
    audience: Annotated[list[str], typer.Option("--audience", help="a service it may call (repeatable)")],
    scope: Annotated[list[Scope], typer.Option("--scope", help="repeatable")],
    clinic: Annotated[str | None, typer.Option("--clinic", help="the clinic it acts for")] = None,
    site: Annotated[str | None, typer.Option("--site", help="the site it acts for")] = None,
) -> None:
    """Register a client; prints its secret once."""
    secret = _run(
        lambda db, _: registry.create_client(
            db, client_id, scopes=scope, audiences=audience, clinic_id=clinic, site_code=site
        )
    )
    _show_secret(client_id, secret)


@app.command("list")
def list_() -> None:
    """List the clients (never their secrets)."""
    clients = _run(lambda db, _: registry.list_clients(db))
    for c in clients:
        tenant = f"clinic={c.clinic_id}" if c.clinic_id else f"site={c.site_code}" if c.site_code else "-"
        state = "enabled" if c.enabled else "disabled"
        typer.echo(
            f"{c.client_id}\t{state}\t{tenant}\tscopes={' '.join(c.scopes)}\t"
            f"audiences={' '.join(c.audiences)}\tcreated={c.created_at.isoformat(timespec='seconds')}"
        )
    if not clients:
        typer.echo("no clients")


@app.command()
def disable(client_id: Annotated[str, typer.Argument()]) -> None:
    """Refuse the client's next token requests (tokens it holds run out within their lifetime)."""
    _run(lambda db, _: registry.set_enabled(db, client_id, False))
    typer.echo(f"{client_id} disabled")


@app.command()
def enable(client_id: Annotated[str, typer.Argument()]) -> None:
    """Let a disabled client get tokens again."""
    _run(lambda db, _: registry.set_enabled(db, client_id, True))
    typer.echo(f"{client_id} enabled")


@app.command("rotate-secret")
def rotate_secret(client_id: Annotated[str, typer.Argument()]) -> None:
    """Give the client a new secret (the old one stops working now); prints it once."""
    secret = _run(lambda db, _: registry.rotate_secret(db, client_id))
    _show_secret(client_id, secret)


@app.command("rotate-key")
def rotate_key() -> None:
    """Add a signing key: published now, signing after AUTH_KEY_PUBLISH_DELAY_S; old keys retire
    once their last tokens have expired."""
    key = _run(rotate_signing_key)
    typer.echo(f"new signing key {key.kid}: published now, signs from {key.signs_from.isoformat()}")
