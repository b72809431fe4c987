"""Client secrets: generated once, shown once, stored only as argon2id hashes; and the box that keeps
people's TOTP keys encrypted at rest.

Verification costs tens of milliseconds and tens of MiB on purpose (it is what makes a stolen hash
expensive to attack); callers run it off the event loop. The parameters are OWASP's first argon2id
configuration (19 MiB, 2 passes, 1 lane) rather than argon2-cffi's default (RFC 9106's "low memory"
64 MiB, 3 passes, 4 lanes), whose 64 MiB per check was auth's peak memory (issue 19: at most 150 MB per
service). Hashes stored with other parameters still verify: each hash carries its own.
"""

from __future__ import annotations

import base64
import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1 (client secrets are 256 random bits;
# people's passwords are what the memory cost is for, and OWASP holds this configuration sufficient).
_hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


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


class SecretBox:
    """Small secrets kept readable by us alone at rest (the people's TOTP keys): cryptography's Fernet
    (AES-128-CBC with HMAC-SHA256), its key derived with HKDF-SHA256 from ``AUTH_KEY_ENCRYPTION_SECRET``,
    the secret that already protects the signing keys. A stolen database copy yields no TOTP keys."""

    def __init__(self, secret: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"trialroute auth totp").derive(
            secret.encode("utf-8")
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str | None:
        """The secret, or ``None`` if it was sealed with another key (the encryption secret changed)."""
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError):
            return None


@functools.cache
def secret_box(secret: str) -> SecretBox:
    return SecretBox(secret)
