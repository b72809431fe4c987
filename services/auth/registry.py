"""The client registry's operations, callable from Python (the system runner seeds demo clients with
them) and wrapped by the ``trialroute clients`` commands."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from services.auth import store
from services.auth.credentials import hash_secret, new_secret
from services.auth.domain import Client, check_registration
from shared.auth import Scope
from shared.db import Database


class ClientExists(ValueError):
    pass


class ClientNotFound(LookupError):
    pass


async def create_client(
    db: Database,
    client_id: str,
    *,
    scopes: Sequence[Scope | str],
    audiences: Sequence[str],
    clinic_id: str | None = None,
    site_code: str | None = None,
    secret: str | None = None,
) -> str:
    """Register a client and return its secret (generated unless given), which is not kept."""
    scope_names = list(dict.fromkeys(str(s) for s in scopes))
    audience_names = list(dict.fromkeys(audiences))
    check_registration(client_id, scope_names, audience_names, clinic_id, site_code)
    secret = secret or new_secret()
    secret_hash = await asyncio.to_thread(hash_secret, secret)
    now = datetime.now(UTC)
    async with db.session() as session:
        if await store.get_client(session, client_id) is not None:
            raise ClientExists(f"client {client_id} exists already")
        session.add(
            store.ClientRow(
                client_id=client_id,
                secret_hash=secret_hash,
                scopes=scope_names,
                audiences=audience_names,
                clinic_id=clinic_id or None,
                site_code=site_code or None,
                enabled=True,
                created_at=now,
                secret_changed_at=now,
            )
        )
    return secret


async def list_clients(db: Database) -> list[Client]:
    async with db.session() as session:
        return [row.to_client() for row in await store.list_clients(session)]


async def set_enabled(db: Database, client_id: str, enabled: bool) -> None:
    """Disable (or re-enable) a client: its next token request fails; tokens it holds run out."""
    async with db.session() as session:
        row = await store.get_client(session, client_id)
        if row is None:
            raise ClientNotFound(client_id)
        row.enabled = enabled


async def rotate_secret(db: Database, client_id: str) -> str:
    """Replace a client's secret at once (the old one stops working) and return the new one."""
    secret = new_secret()
    secret_hash = await asyncio.to_thread(hash_secret, secret)
    async with db.session() as session:
        row = await store.get_client(session, client_id)
        if row is None:
            raise ClientNotFound(client_id)
        row.secret_hash = secret_hash
        row.secret_changed_at = datetime.now(UTC)
    return secret
