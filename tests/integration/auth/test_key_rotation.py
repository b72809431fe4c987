"""Signing-key rotation as resource servers live it: no token ever fails because a key changed."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from joserfc import jws

from services.auth import store
from services.auth.keys import ensure_signing_key, rotate_signing_key
from shared.auth import Scope, TokenValidator
from tests.integration.auth.helpers import AUDIENCE, RunningAuth, StartAuth
from tests.support.clock import Clock

pytestmark = pytest.mark.integration

READER = [Scope.REFERRALS_READ]


def kid_of(token: str) -> str:
    return str(jws.extract_compact(token.encode()).headers()["kid"])


async def published_kids(auth: RunningAuth, http: httpx.AsyncClient) -> set[str]:
    keys = (await http.get(f"{auth.url}/.well-known/jwks.json")).json()["keys"]
    return {k["kid"] for k in keys}


async def test_old_tokens_stay_valid_and_new_ones_are_valid_at_once(
    auth: RunningAuth, http: httpx.AsyncClient
) -> None:
    secret = await auth.register("clinic-1", READER, clinic_id="C1")
    validator = TokenValidator(auth.oauth(), AUDIENCE, http, refetch_interval_s=0)
    before = await auth.token(http, "clinic-1", secret)
    await validator.validate(before)  # the resource server has cached the JWKS of one key

    new_key = await rotate_signing_key(auth.db, auth.settings)  # no publish delay in these settings
    after = await auth.token(http, "clinic-1", secret)

    assert kid_of(after) == new_key.kid != kid_of(before)
    assert await published_kids(auth, http) == {kid_of(before), new_key.kid}
    assert (await validator.validate(before)).client_id == "clinic-1"
    assert (await validator.validate(after)).client_id == "clinic-1"


async def test_a_new_key_is_published_before_it_signs(start_auth: StartAuth, http: httpx.AsyncClient) -> None:
    clock = Clock()
    async with start_auth(clock=clock, key_publish_delay_s=2) as auth:
        secret = await auth.register("clinic-1", READER, clinic_id="C1")
        old_kid = kid_of(await auth.token(http, "clinic-1", secret))

        new_key = await rotate_signing_key(auth.db, auth.settings, now=clock.datetime())
        assert await published_kids(auth, http) == {old_kid, new_key.kid}, "published at once"
        assert kid_of(await auth.token(http, "clinic-1", secret)) == old_kid, "not signing yet"

        clock.advance(2.2)
        assert kid_of(await auth.token(http, "clinic-1", secret)) == new_key.kid


async def test_an_old_key_leaves_the_jwks_once_its_tokens_have_expired(
    start_auth: StartAuth, http: httpx.AsyncClient
) -> None:
    clock = Clock()
    async with start_auth(clock=clock, token_lifetime_s=1, key_retire_leeway_s=0) as auth:
        secret = await auth.register("clinic-1", READER, clinic_id="C1")
        old_kid = kid_of(await auth.token(http, "clinic-1", secret))
        new_key = await rotate_signing_key(auth.db, auth.settings, now=clock.datetime())

        async with auth.db.session() as session:
            old = next(row for row in await store.signing_keys(session) if row.kid == old_kid)
        assert old.schedule().retire_at == new_key.signs_from + auth.settings.token_lifetime_s * _SECOND

        assert old_kid in await published_kids(auth, http)
        clock.advance(1.2)
        assert await published_kids(auth, http) == {new_key.kid}


async def test_startup_creates_the_first_key_once(start_auth: StartAuth, http: httpx.AsyncClient) -> None:
    async with start_auth() as auth:
        first = await published_kids(auth, http)
    async with start_auth() as auth:
        assert await published_kids(auth, http) == first
        assert await ensure_signing_key(auth.db, auth.settings) is None


async def test_private_keys_are_encrypted_at_rest(start_auth: StartAuth) -> None:
    async with start_auth() as auth:
        async with auth.db.session() as session:
            (row,) = await store.signing_keys(session)
        assert row.private_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")

    with pytest.raises(RuntimeError, match="failed to start"):
        async with start_auth(key_encryption_secret="another-secret"):
            pass


_SECOND = timedelta(seconds=1)
