"""``trialroute clients ...``: register clients, rotate their secrets, rotate the signing key;
``trialroute users ...``: people's accounts.

Reads ``AuthSettings`` from the environment (``AUTH_DATABASE_URL``, ``AUTH_KEY_ENCRYPTION_SECRET``...).
Each command is a thin wrapper over a function taking a ``Database`` (``services.auth.registry``,
``services.auth.keys``), which is what code should call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from services.auth.domain import Role
from shared.auth import Scope

if TYPE_CHECKING:  # imported when a command runs: every process imports this module (services/cli.py)
    from services.auth import users
    from services.auth.config import AuthSettings
    from shared.db import Database

app = typer.Typer(help="OAuth2 clients of the auth service, and its signing keys.", no_args_is_help=True)

T = TypeVar("T")


def _run(work: Callable[[Database, AuthSettings], Awaitable[T]]) -> T:
    from services.auth import registry
    from services.auth.config import AuthSettings
    from services.auth.domain import RegistrationError
    from services.auth.migrations import MIGRATIONS
    from shared.db import Database
    from shared.migrations import prepare_store

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


JwksUrl = Annotated[
    str | None,
    typer.Option(
        "--jwks-url",
        help="where the client publishes its public keys (https): it signs in with private_key_jwt and "
        "rotates keys by publishing them",
    ),
]
JwksFile = Annotated[
    Path | None,
    typer.Option(
        "--jwks-file", help="a JWK Set file of the client's public keys: it signs in with private_key_jwt"
    ),
]


def _check_one_key_source(jwks_url: str | None, jwks_file: Path | None) -> None:
    if (jwks_url is None) == (jwks_file is None):
        typer.echo("error: --jwks-url or --jwks-file (one of them, not both)", err=True)
        raise typer.Exit(1)


def _read_jwks(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        typer.echo(f"error: --jwks-file {path}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not isinstance(data, dict):
        typer.echo(f"error: --jwks-file {path}: not a JWK Set", err=True)
        raise typer.Exit(1)
    return data


@app.command()
def create(
    client_id: Annotated[str, typer.Option("--client-id", help="e.g. clinic-0001, notifier")],
    audience: Annotated[list[str], typer.Option("--audience", help="a service it may call (repeatable)")],
    scope: Annotated[list[Scope], typer.Option("--scope", help="repeatable")],
    clinic: Annotated[str | None, typer.Option("--clinic", help="the clinic it acts for")] = None,
    site: Annotated[str | None, typer.Option("--site", help="the site it acts for")] = None,
    jwks_url: JwksUrl = None,
    jwks_file: JwksFile = None,
) -> None:
    """Register a client. With --jwks-url or --jwks-file (the way for clinics: SMART Backend Services)
    it signs in with its own key and has no secret; without, it gets a secret, printed once."""
    from services.auth import registry

    if jwks_url is None and jwks_file is None:
        secret = _run(
            lambda db, _: registry.create_client(
                db, client_id, scopes=scope, audiences=audience, clinic_id=clinic, site_code=site
            )
        )
        _show_secret(client_id, secret)
        return
    _check_one_key_source(jwks_url, jwks_file)
    jwks = _read_jwks(jwks_file) if jwks_file is not None else None
    _run(
        lambda db, _: registry.create_key_client(
            db,
            client_id,
            scopes=scope,
            audiences=audience,
            clinic_id=clinic,
            site_code=site,
            jwks_url=jwks_url,
            jwks=jwks,
        )
    )
    typer.echo(f"client_id: {client_id}")
    where = f"its JWK Set at {jwks_url}" if jwks_url else f"the JWK Set registered from {jwks_file}"
    typer.echo(f"It signs in with private_key_jwt (RS384, ES384 or RS256), with the keys of {where}.")


@app.command("list")
def list_() -> None:
    """List the clients (never their secrets)."""
    from services.auth import registry

    clients = _run(lambda db, _: registry.list_clients(db))
    for c in clients:
        tenant = f"clinic={c.clinic_id}" if c.clinic_id else f"site={c.site_code}" if c.site_code else "-"
        state = "enabled" if c.enabled else "disabled"
        typer.echo(
            f"{c.client_id}\t{state}\t{tenant}\tscopes={' '.join(c.scopes)}\t"
            f"audiences={' '.join(c.audiences)}\tcreated={c.created_at.isoformat(timespec='seconds')}\t"
            f"auth={c.auth_method}{f' jwks_url={c.jwks_url}' if c.jwks_url else ''}"
        )
    if not clients:
        typer.echo("no clients")


@app.command()
def disable(client_id: Annotated[str, typer.Argument()]) -> None:
    """Refuse the client's next token requests (tokens it holds run out within their lifetime)."""
    from services.auth import registry

    _run(lambda db, _: registry.set_enabled(db, client_id, False))
    typer.echo(f"{client_id} disabled")


@app.command()
def enable(client_id: Annotated[str, typer.Argument()]) -> None:
    """Let a disabled client get tokens again."""
    from services.auth import registry

    _run(lambda db, _: registry.set_enabled(db, client_id, True))
    typer.echo(f"{client_id} enabled")


@app.command("rotate-secret")
def rotate_secret(client_id: Annotated[str, typer.Argument()]) -> None:
    """Give the client a new secret (the old one stops working now); prints it once."""
    from services.auth import registry

    secret = _run(lambda db, _: registry.rotate_secret(db, client_id))
    _show_secret(client_id, secret)


@app.command("set-keys")
def set_keys(
    client_id: Annotated[str, typer.Argument()], jwks_url: JwksUrl = None, jwks_file: JwksFile = None
) -> None:
    """Give a client new public keys; a client with a secret loses it: it signs in with its key now."""
    from services.auth import registry

    _check_one_key_source(jwks_url, jwks_file)
    jwks = _read_jwks(jwks_file) if jwks_file is not None else None
    _run(lambda db, _: registry.set_keys(db, client_id, jwks_url=jwks_url, jwks=jwks))
    typer.echo(f"{client_id} signs in with private_key_jwt (no secret)")


@app.command("rotate-key")
def rotate_key() -> None:
    """Add a signing key: published now, signing after AUTH_KEY_PUBLISH_DELAY_S; old keys retire
    once their last tokens have expired."""
    from services.auth.keys import rotate_signing_key

    key = _run(rotate_signing_key)
    typer.echo(f"new signing key {key.kid}: published now, signs from {key.signs_from.isoformat()}")


users_app = typer.Typer(
    help="People's accounts (coordinators, ops): they sign in to the portals with them.", no_args_is_help=True
)


def _run_users(work: Callable[[Database, AuthSettings], Awaitable[T]]) -> T:
    from services.auth import users
    from services.auth.domain import AccountError

    try:
        return _run(work)
    except users.UserExists as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except users.UserNotFound as exc:
        typer.echo(f"error: no account {exc}", err=True)
        raise typer.Exit(1) from exc
    except AccountError as exc:
        typer.echo(f"error: {exc.field}: {exc.reason}", err=True)
        raise typer.Exit(1) from exc


def _show_link(link: users.PasswordLink, settings: AuthSettings) -> None:
    typer.echo(f"user:  {link.user.email} ({link.user.id})")
    typer.echo(f"set-password link (once, until {link.expires_at.isoformat(timespec='minutes')}):")
    typer.echo(f"  {link.url(settings.public_base)}")
    typer.echo("Give the link to the person only; it is shown this once and not stored.")


@users_app.command("create")
def create_user(
    email: Annotated[str, typer.Option("--email", help="their sign-in")],
    name: Annotated[str, typer.Option("--name", help="display name")],
    role: Annotated[Role, typer.Option("--role")],
    site: Annotated[
        list[str] | None, typer.Option("--site", help="a site a coordinator works for (repeatable)")
    ] = None,
) -> None:
    """Create an account; prints its one-time set-password link."""
    from services.auth import users
    from services.auth.config import AuthSettings

    settings = AuthSettings()
    link = _run_users(
        lambda db, s: users.create_user(
            db,
            email=email,
            display_name=name,
            role=role.value,
            site_codes=site or [],
            link_lifetime_s=s.password_link_lifetime_s,
        )
    )
    _show_link(link, settings)


@users_app.command("list")
def list_users() -> None:
    """List the accounts (never their passwords or TOTP secrets)."""
    from services.auth import users

    found = _run_users(lambda db, _: users.list_users(db))
    for u in found:
        state = "disabled" if u.disabled else "enabled"
        sites = f"sites={','.join(u.site_codes)}" if u.site_codes else "-"
        password = "password" if u.has_password else "no-password"
        totp = "totp" if u.totp_confirmed else "no-totp"
        typer.echo(
            f"{u.email}\t{u.role.value}\t{state}\t{sites}\t{password}\t{totp}\t{u.display_name}\t{u.id}"
        )
    if not found:
        typer.echo("no accounts")


@users_app.command("disable")
def disable_user(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    """No more sign-ins; the account's sessions end now (tokens it holds run out within their lifetime)."""
    from services.auth import users

    done = _run_users(lambda db, _: users.set_disabled(db, user, True))
    typer.echo(f"{done.email} disabled")


@users_app.command("enable")
def enable_user(user: Annotated[str, typer.Argument(help="email or id")]) -> None:
    """Let a disabled account sign in again."""
    from services.auth import users

    done = _run_users(lambda db, _: users.set_disabled(db, user, False))
    typer.echo(f"{done.email} enabled")


@users_app.command("reset")
def reset_user(
    user: Annotated[str, typer.Argument(help="email or id")],
    keep_totp: Annotated[
        bool, typer.Option("--keep-totp", help="keep the authenticator app (only the password was lost)")
    ] = False,
) -> None:
    """Forget the password (and the authenticator app), end the sessions; prints a new set-password link."""
    from services.auth import users
    from services.auth.config import AuthSettings

    settings = AuthSettings()
    link = _run_users(
        lambda db, s: users.reset(
            db, user, link_lifetime_s=s.password_link_lifetime_s, reset_totp=not keep_totp
        )
    )
    _show_link(link, settings)
