"""Client secrets' and passwords' hashes: argon2id at OWASP's parameters, old hashes still accepted."""

from __future__ import annotations

from argon2 import PasswordHasher

from services.auth.credentials import hash_secret, new_secret, verify_secret


def test_new_hashes_are_argon2id_at_19_mib_and_verify_only_the_right_secret() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_secret(stored, secret)
    assert not verify_secret(stored, secret + "x")
    assert not verify_secret(None, secret)


def test_a_hash_stored_with_the_former_default_parameters_still_verifies() -> None:
    secret = new_secret()
    stored = PasswordHasher().hash(secret)  # argon2-cffi's default: m=64 MiB, t=3, p=4
    assert "$m=65536,t=3,p=4$" in stored
    assert verify_secret(stored, secret)
    assert not verify_secret(stored, "wrong")
