"""What checking a client's signed assertion (``private_key_jwt``) needs beyond authlib: the client's
public keys, and the assertions seen already.

- ``ClientKeys``: a client's JWK Set, registered with it or fetched from its JWK Set URL with httpx and
  cached (``AUTH_CLIENT_JWKS_CACHE_S``). An assertion signed with a ``kid`` the cached set lacks makes
  it fetch the set again (the client has rotated its key), at most every
  ``AUTH_CLIENT_JWKS_REFETCH_S`` per URL, so unknown ``kid``s cannot turn us into a flood on the
  client's server.
- ``SeenAssertions``: each assertion's ``jti``, in the store until the assertion expires, so a replay
  is refused by every replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError

from services.auth import store
from services.auth.config import AuthSettings
from services.auth.domain import Client
from shared.db import Database

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 65_536
"""A JWK Set of a few keys is a few KiB; a larger answer is refused, not read."""

KEY_TYPES = ("RSA", "EC")
"""The key types of the algorithms we accept (RS256/RS384, ES384); symmetric keys are never used."""

MAX_JTI_LENGTH = 255


def key_set(data: Any) -> KeySet:
    """The usable public keys of a JWK Set (``{"keys": [...]}``): RSA and EC keys that import; others
    are left out rather than failing the whole set. Raises ``ValueError`` if it is no JWK Set."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('a JWK Set is a JSON object with a "keys" array')
    keys = []
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in KEY_TYPES:
            continue
        try:
            imported = KeySet.import_key_set({"keys": [jwk]}).keys[0]
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        keys.append(imported)
    return KeySet(keys)


def has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


@dataclass(frozen=True)
class _Fetched:
    keys: KeySet
    fetched_at: float
    fresh_until: float


class ClientKeys:
    """Clients' public keys, fetched JWK Sets cached per URL (see the module docstring)."""

    def __init__(
        self,
        settings: AuthSettings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.http = http
        self.clock = clock
        self._fetched: dict[str, _Fetched] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def of(self, client: Client | None, kid: str | None) -> KeySet:
        """The keys that may have signed ``client``'s assertion with ``kid``; empty when it has none."""
        if client is None:
            return KeySet([])
        if client.jwks is not None:
            try:
                return key_set(client.jwks)
            except ValueError:
                return KeySet([])
        if client.jwks_url is None:
            return KeySet([])
        return await self._keys_at(client.jwks_url, kid)

    async def _keys_at(self, url: str, kid: str | None) -> KeySet:
        cached = self._fetched.get(url)
        if cached is not None and not self._worth_fetching(cached, kid):
            return cached.keys
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            current = self._fetched.get(url)
            if current is not cached and current is not None:  # another request fetched meanwhile
                return current.keys
            fetched = await self._fetch(url, cached)
            self._fetched[url] = fetched
            return fetched.keys

    def _worth_fetching(self, cached: _Fetched, kid: str | None) -> bool:
        now = self.clock()
        if now >= cached.fresh_until:
            return True
        unknown = kid is not None and not has_kid(cached.keys, kid)
        return unknown and now - cached.fetched_at >= self.settings.client_jwks_refetch_s

    async def _fetch(self, url: str, cached: _Fetched | None) -> _Fetched:
        now = self.clock()
        try:
            keys = key_set(await self._get(url))
        except (httpx.HTTPError, ValueError) as exc:
            # Keep what we had; try again after the re-fetch interval, not on every request.
            log.warning("client JWK Set not fetched", extra={"jwks_url": url, "reason": str(exc)[:200]})
            keys = cached.keys if cached else KeySet([])
            return _Fetched(keys, now, now + self.settings.client_jwks_refetch_s)
        return _Fetched(keys, now, now + self.settings.client_jwks_cache_s)

    async def _get(self, url: str) -> Any:
        async with self.http.stream(
            "GET", url, headers={"Accept": "application/jwk-set+json, application/json"}
        ) as response:
            response.raise_for_status()
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWK Set is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


class SeenAssertions:
    """The ``jti`` of every client assertion accepted, kept in the store until it expires."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def first_use(self, client_id: str, jti: str, keep_until: float) -> bool:
        """Record ``jti`` for ``client_id``; False if it was used before (a replay)."""
        if not jti or len(jti) > MAX_JTI_LENGTH:
            return False
        now = datetime.fromtimestamp(self.clock(), UTC)
        async with self.db.session() as session:
            await store.forget_assertions_expired(session, now)
        try:
            async with self.db.session() as session:
                session.add(
                    store.SeenAssertionRow(
                        client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(keep_until, UTC)
                    )
                )
        except IntegrityError:
            return False
        return True
