"""Signing keys: generated, stored encrypted, rotated, and held in memory as a key ring.

Private keys live in the auth store as PKCS#8 PEM encrypted with ``AUTH_KEY_ENCRYPTION_SECRET``
(cryptography's best available PEM encryption, through joserfc). Every process reloads the ring from
the store every ``key_cache_s`` seconds, so a rotation made by one process (or by the CLI) reaches all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from joserfc.jwk import KeyParameters, RSAKey

from services.auth import store
from services.auth.config import AuthSettings
from services.auth.domain import KeySchedule, plan_rotation, published, signing_kid
from shared.auth import ALGORITHM, TokenValidator, signing_keys
from shared.db import Database
from shared.settings import OAuthSettings

_PARAMETERS: KeyParameters = {"use": "sig", "alg": ALGORITHM}


class NoSigningKey(RuntimeError):
    """No key signs now: the store was emptied or every key retired. Run ``clients rotate-key``."""


class KeyRing:
    """This process's view of the signing keys: which signs now, which are published."""

    def __init__(self, db: Database, settings: AuthSettings, *, clock: Callable[[], float] = time.time):
        self.db = db
        self.settings = settings
        self.clock = clock
        self._schedules: list[KeySchedule] = []
        self._keys: dict[str, RSAKey] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def refresh_if_stale(self) -> None:
        loaded_at = self._loaded_at
        if loaded_at is None or self.clock() - loaded_at >= self.settings.key_cache_s:
            async with self._lock:
                if self._loaded_at == loaded_at:
                    await self.refresh()

    async def refresh(self) -> None:
        async with self.db.session() as session:
            rows = await store.signing_keys(session)
        secret = self.settings.key_encryption_secret.get_secret_value()
        keys: dict[str, RSAKey] = {}
        for row in rows:
            key = self._keys.get(row.kid)
            if key is None:  # decrypting is deliberately slow (a KDF): once per key per process
                key = await asyncio.to_thread(_decrypt, row.private_pem, row.kid, secret)
            keys[row.kid] = key
        self._schedules = [row.schedule() for row in rows]
        self._keys = keys
        self._loaded_at = self.clock()

    def signing_key(self) -> RSAKey:
        kid = signing_kid(self._schedules, self.now())
        if kid is None:
            raise NoSigningKey("no signing key is active; run `trialroute clients rotate-key`")
        return self._keys[kid]

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys to publish: pending, signing and retiring ones."""
        return {
            "keys": [self._keys[k.kid].as_dict(private=False) for k in published(self._schedules, self.now())]
        }


def _decrypt(pem: str, kid: str, secret: str) -> RSAKey:
    try:
        return RSAKey.import_key(pem.encode(), parameters={**_PARAMETERS, "kid": kid}, password=secret)
    except (ValueError, TypeError) as exc:
        raise RuntimeError(
            f"signing key {kid} cannot be decrypted: AUTH_KEY_ENCRYPTION_SECRET differs from the one "
            "it was stored with"
        ) from exc


def _new_key(settings: AuthSettings) -> tuple[str, str]:
    key = RSAKey.generate_key(settings.key_size, parameters=_PARAMETERS.copy(), auto_kid=True)
    pem = key.as_pem(private=True, password=settings.key_encryption_secret.get_secret_value())
    return str(key.kid), pem.decode()


async def rotate_signing_key(
    db: Database, settings: AuthSettings, *, now: datetime | None = None
) -> KeySchedule:
    """Add a key that is published at once and signs after ``key_publish_delay_s``; schedule the
    retirement of the others; delete keys retired already. Returns the new key's schedule."""
    kid, pem = await asyncio.to_thread(_new_key, settings)
    return await _add_key(db, settings, kid, pem, now=now, publish_delay=settings.key_publish_delay_s)


async def ensure_signing_key(db: Database, settings: AuthSettings) -> KeySchedule | None:
    """At start-up: a first key (signing at once) if no key is signing or about to."""
    async with db.session() as session:
        rows = await store.signing_keys(session)
    if any(row.signs_until is None for row in rows):
        return None
    kid, pem = await asyncio.to_thread(_new_key, settings)
    return await _add_key(db, settings, kid, pem, now=None, publish_delay=0)


async def _add_key(
    db: Database, settings: AuthSettings, kid: str, pem: str, *, now: datetime | None, publish_delay: int
) -> KeySchedule:
    now = now or datetime.now(UTC)
    async with db.session() as session:
        rows = {row.kid: row for row in await store.lock_signing_keys(session)}
        plan = plan_rotation(
            [row.schedule() for row in rows.values()],
            kid,
            now,
            publish_delay=timedelta(seconds=publish_delay),
            token_lifetime=timedelta(seconds=settings.token_lifetime_s),
            retire_leeway=timedelta(seconds=settings.key_retire_leeway_s),
        )
        for ending in plan.ending:
            rows[ending.kid].signs_until = ending.signs_until
            rows[ending.kid].retire_at = ending.retire_at
        await store.delete_signing_keys(session, plan.expired)
        new = plan.new_key
        session.add(
            store.SigningKeyRow(
                kid=new.kid, private_pem=pem, created_at=new.created_at, signs_from=new.signs_from
            )
        )
    return plan.new_key


class OwnTokenValidator(TokenValidator):
    """The auth service checks the tokens its own routes (``/v1/users``) receive against its key ring,
    without fetching its own JWKS over HTTP; every other check is ``TokenValidator``'s."""

    def __init__(
        self, keyring: KeyRing, oauth: OAuthSettings, audience: str, http: httpx.AsyncClient
    ) -> None:
        super().__init__(oauth, audience, http, refetch_interval_s=0.0, clock=keyring.clock)
        self.keyring = keyring

    async def _fetch(self) -> dict[str, RSAKey]:
        await self.keyring.refresh_if_stale()
        return signing_keys(self.keyring.jwks())
