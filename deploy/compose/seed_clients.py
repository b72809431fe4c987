"""Register the compose lab's demo OAuth clients; a one-shot job, safe to run on every ``up``.

The clients are those of ``trialroute run`` (``services.devstack.stack.demo_clients``): a clinic, ops,
a coordinator per seeded site, and the notifier's own client. ``trialroute clients create`` only prints
a generated secret, but the notifier container must know its secret beforehand, so this job gives the
notifier client the secret in ``NOTIFIER_CLIENT_SECRET`` (the variable the notifier itself reads). The
other clients get a new secret on every run, printed once here (``docker compose logs seed-clients``).

Reads ``AUTH_DATABASE_URL`` and ``NOTIFIER_CLIENT_SECRET`` through the services' own settings classes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.auth import registry, store
from services.auth.config import AuthSettings
from services.auth.credentials import hash_secret, verify_secret
from services.auth.migrations import MIGRATIONS
from services.devstack.stack import demo_clients, site_codes
from services.notifier.config import NotifierSettings
from shared.db import Database
from shared.migrations import migrate


async def _set_secret(db: Database, client_id: str, secret: str) -> None:
    """Make ``secret`` the client's secret (no-op if it already is), as ``rotate_secret`` would."""
    async with db.session() as session:
        row = await store.get_client(session, client_id)
        if row is None:
            raise registry.ClientNotFound(client_id)
        if not await asyncio.to_thread(verify_secret, row.secret_hash, secret):
            row.secret_hash = await asyncio.to_thread(hash_secret, secret)
            row.secret_changed_at = datetime.now(UTC)


async def seed() -> dict[str, str]:
    """Create or refresh every demo client; return the secrets of those whose secret changed."""
    auth = AuthSettings()
    notifier = NotifierSettings()
    db = Database(auth.database_url)
    shown: dict[str, str] = {}
    try:
        await migrate(auth.database_url, MIGRATIONS)  # the `migrate` service did it; harmless again
        for client in demo_clients(site_codes()):
            fixed = (
                notifier.client_secret.get_secret_value() if client.client_id == notifier.client_id else None
            )
            try:
                secret = await registry.create_client(
                    db,
                    client.client_id,
                    scopes=client.scopes,
                    audiences=client.audiences,
                    clinic_id=client.clinic_id,
                    site_code=client.site_code,
                    secret=fixed,
                )
            except registry.ClientExists:
                if fixed is not None:
                    await _set_secret(db, client.client_id, fixed)
                    continue
                secret = await registry.rotate_secret(db, client.client_id)
            if fixed is None:
                shown[client.client_id] = secret
    finally:
        await db.dispose()
    return shown


def main() -> None:
    for client_id, secret in asyncio.run(seed()).items():
        print(f"{client_id}\t{secret}")
    print("demo clients ready (the notifier's secret is NOTIFIER_CLIENT_SECRET, not shown)")


if __name__ == "__main__":
    main()
