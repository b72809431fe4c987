"""Client secrets: generated once, shown once, stored only as argon2id hashes.

Verification costs tens of milliseconds and tens of MiB on purpose (it is what makes a stolen hash
expensive to attack); callers run it off the event loop.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 "low memory" defaults


@functools.cache
def _decoy_hash() -> str:
    """A hash of nothing anyone knows: unknown and disabled clients are checked against it, so their
    answer takes as long as a wrong secret's and does not reveal which client ids exist."""
    return _hasher.hash(secrets.token_urlsafe(32))


def new_secret() -> str:
    """256 random bits, URL-safe (no ':' that would upset HTTP Basic)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret_hash: str | None, secret: str) -> bool:
    """True only for the right secret; ``None`` (no such client) costs the same and is False."""
    try:
        return _hasher.verify(secret_hash or _decoy_hash(), secret) and secret_hash is not None
    except (VerificationError, InvalidHashError):
        return False
