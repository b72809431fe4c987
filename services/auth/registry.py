"""The client registry's operations, callable from Python (the system runner seeds demo clients with
them) and wrapped by the ``trialroute clients`` commands."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from services.auth import store
from services.auth.assertions import key_set
from services.auth.credentials import hash_secret, new_secret
from services.auth.domain import Client, RegistrationError, check_jwks_url, check_registration
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
    """Register a client that signs in with a secret, and return the secret (generated unless given),
    which is not kept. Clinics should sign in with a key instead (``create_key_client``)."""
    secret = secret or new_secret()
    secret_hash = await asyncio.to_thread(hash_secret, secret)
    await _add(db, client_id, scopes, audiences, clinic_id, site_code, secret_hash=secret_hash)
    return secret


async def create_key_client(
    db: Database,
    client_id: str,
    *,
    scopes: Sequence[Scope | str],
    audiences: Sequence[str],
    clinic_id: str | None = None,
    site_code: str | None = None,
    jwks_url: str | None = None,
    jwks: dict[str, Any] | None = None,
) -> None:
    """Register a client that signs in with its own key (``private_key_jwt``, SMART Backend Services):
    its public keys at ``jwks_url`` (fetched when needed: the client rotates keys by publishing) or
    the JWK Set ``jwks`` itself. It has no secret."""
    jwks_url, jwks = _checked_keys(jwks_url, jwks)
    await _add(db, client_id, scopes, audiences, clinic_id, site_code, jwks_url=jwks_url, jwks=jwks)


async def set_keys(
    db: Database, client_id: str, *, jwks_url: str | None = None, jwks: dict[str, Any] | None = None
) -> None:
    """Give a client new public keys (a JWK Set URL or a JWK Set); a client that had a secret loses it
    and from now on signs in with ``private_key_jwt`` (how a clinic moves from a secret to a key)."""
    jwks_url, jwks = _checked_keys(jwks_url, jwks)
    async with db.session() as session:
        row = await store.get_client(session, client_id)
        if row is None:
            raise ClientNotFound(client_id)
        row.secret_hash, row.jwks_url, row.jwks = None, jwks_url, jwks
        row.secret_changed_at = datetime.now(UTC)


def _checked_keys(jwks_url: str | None, jwks: Any) -> tuple[str | None, dict[str, Any] | None]:
    if (jwks_url is None) == (jwks is None):
        raise RegistrationError("a key client needs a JWK Set URL or a JWK Set (one of them)")
    if jwks_url is not None:
        check_jwks_url(jwks_url)
        return jwks_url, None
    return None, public_jwks(jwks)


def public_jwks(jwks: Any) -> dict[str, Any]:
    """The public half of a JWK Set a client registers (private parts, if pasted by mistake, are not
    kept); refuses a set with no usable signing key."""
    try:
        keys = key_set(jwks)
    except ValueError as exc:
        raise RegistrationError(f"JWK Set: {exc}") from exc
    if not keys.keys:
        raise RegistrationError("JWK Set: no RSA or EC public key in it")
    if any(not isinstance(key.kid, str) for key in keys.keys):
        raise RegistrationError("JWK Set: every key needs a 'kid' (the client's assertions name it)")
    return {"keys": [key.as_dict(private=False) for key in keys.keys]}


async def _add(
    db: Database,
    client_id: str,
    scopes: Sequence[Scope | str],
    audiences: Sequence[str],
    clinic_id: str | None,
    site_code: str | None,
    *,
    secret_hash: str | None = None,
    jwks_url: str | None = None,
    jwks: dict[str, Any] | None = None,
) -> None:
    scope_names = list(dict.fromkeys(str(s) for s in scopes))
    audience_names = list(dict.fromkeys(audiences))
    check_registration(client_id, scope_names, audience_names, clinic_id, site_code)
    now = datetime.now(UTC)
    async with db.session() as session:
        if await store.get_client(session, client_id) is not None:
            raise ClientExists(f"client {client_id} exists already")
        session.add(
            store.ClientRow(
                client_id=client_id,
                secret_hash=secret_hash,
                jwks_url=jwks_url,
                jwks=jwks,
                scopes=scope_names,
                audiences=audience_names,
                clinic_id=clinic_id or None,
                site_code=site_code or None,
                enabled=True,
                created_at=now,
                secret_changed_at=now,
            )
        )


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
    """Replace a client's secret at once (the old one stops working) and return the new one. A client
    that signs in with a key has no secret to rotate: it rotates its key (by publishing it)."""
    secret = new_secret()
    secret_hash = await asyncio.to_thread(hash_secret, secret)
    async with db.session() as session:
        row = await store.get_client(session, client_id)
        if row is None:
            raise ClientNotFound(client_id)
        if row.secret_hash is None:
            raise RegistrationError(f"{client_id} signs in with a key, not a secret: nothing to rotate")
        row.secret_hash = secret_hash
        row.secret_changed_at = datetime.now(UTC)
    return secret
