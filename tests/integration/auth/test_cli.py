"""``trialroute clients ...`` against the auth store, checked through the running token endpoint."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from services.auth.cli import app
from tests.integration.auth.helpers import KEK, ClientJwksServer, RunningAuth, assertion, ec_key, rsa_key
from tests.support.servers import serve_app

pytestmark = pytest.mark.integration


async def clients(auth: RunningAuth, *args: str) -> Result:
    """Run the CLI as an operator would: settings from the environment, its own event loop."""
    env = {
        "AUTH_DATABASE_URL": auth.settings.database_url,
        "AUTH_ENVIRONMENT": "test",
        "AUTH_KEY_ENCRYPTION_SECRET": KEK,
    }
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


def secret_in(result: Result) -> str:
    assert result.exit_code == 0, result.output
    match = re.search(r"client_secret: (\S+)", result.output)
    assert match, result.output
    return match.group(1)


async def test_create_list_rotate_secret_disable(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    created = await clients(
        auth,
        *"create --client-id clinic-7 --scope referrals:write --scope referrals:read".split(),
        *"--audience intake --clinic C7".split(),
    )
    first = secret_in(created)
    assert "shown this once" in created.output
    assert (await auth.token_response(http, "clinic-7", first)).status_code == 200

    listed = await clients(auth, "list")
    assert listed.exit_code == 0
    (line,) = [ln for ln in listed.output.splitlines() if ln.startswith("clinic-7")]
    assert "enabled" in line and "clinic=C7" in line and "referrals:write referrals:read" in line
    assert first not in listed.output

    second = secret_in(await clients(auth, "rotate-secret", "clinic-7"))
    assert second != first
    assert (await auth.token_response(http, "clinic-7", first)).status_code == 401
    assert (await auth.token_response(http, "clinic-7", second)).status_code == 200

    disabled = await clients(auth, "disable", "clinic-7")
    assert disabled.exit_code == 0
    assert (await auth.token_response(http, "clinic-7", second)).status_code == 401
    assert "disabled" in (await clients(auth, "list")).output

    assert (await clients(auth, "enable", "clinic-7")).exit_code == 0
    assert (await auth.token_response(http, "clinic-7", second)).status_code == 200


async def test_site_and_service_clients(auth: RunningAuth) -> None:
    site = "create --client-id site-3 --scope site:referrals --audience site_router --site S3"
    secret_in(await clients(auth, *site.split()))
    service = "create --client-id notifier --scope contact:read --audience intake"
    secret_in(await clients(auth, *service.split()))
    output = (await clients(auth, "list")).output
    assert "site=S3" in output
    assert re.search(r"^notifier\tenabled\t-\t", output, re.MULTILINE)


async def test_refusals_exit_non_zero(auth: RunningAuth) -> None:
    clinic_8 = "create --client-id clinic-8 --scope referrals:read --audience intake --clinic C8".split()
    assert (await clients(auth, *clinic_8)).exit_code == 0

    duplicate = await clients(auth, *clinic_8)
    assert duplicate.exit_code == 1
    assert "exists" in duplicate.output

    two_tenants = await clients(auth, *clinic_8[:2], "clinic-9", *clinic_8[3:], "--site", "S9")
    assert two_tenants.exit_code == 1
    assert "not both" in two_tenants.output

    unknown_scope = await clients(auth, *"create --client-id x-1 --scope admin --audience a".split())
    assert unknown_scope.exit_code == 2  # typer refuses a value outside the Scope choices

    missing = await clients(auth, "disable", "nobody")
    assert missing.exit_code == 1
    assert "no client nobody" in missing.output


async def test_rotate_key_publishes_a_new_key(auth: RunningAuth, http: httpx.AsyncClient) -> None:
    before = {k["kid"] for k in (await http.get(f"{auth.url}/.well-known/jwks.json")).json()["keys"]}
    result = await clients(auth, "rotate-key")
    assert result.exit_code == 0, result.output
    match = re.search(r"new signing key (\S+):", result.output)
    assert match
    after = {k["kid"] for k in (await http.get(f"{auth.url}/.well-known/jwks.json")).json()["keys"]}
    assert after == before | {match.group(1)}


async def test_clinics_register_a_key_by_url_or_file(
    auth: RunningAuth, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    clinic = "--scope referrals:write --audience intake --clinic".split()
    url_key, file_key = rsa_key(), ec_key()
    jwks_file = tmp_path / "clinic-b.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [file_key.as_dict(private=False)]}))
    jwks_server = ClientJwksServer(url_key)
    async with serve_app(jwks_server.app()) as base:
        by_url = await clients(
            auth, "create", "--client-id", "clinic-a", *clinic, "A", "--jwks-url", f"{base}/jwks.json"
        )
        by_file = await clients(
            auth, "create", "--client-id", "clinic-b", *clinic, "B", "--jwks-file", str(jwks_file)
        )
        for result in (by_url, by_file):
            assert result.exit_code == 0, result.output
            assert "private_key_jwt" in result.output
            assert "client_secret" not in result.output

        signed_a = assertion(url_key, "clinic-a", auth.token_url)
        assert (await auth.assertion_response(http, signed_a)).status_code == 200
        signed_b = assertion(file_key, "clinic-b", auth.token_url, alg="ES384")
        assert (await auth.assertion_response(http, signed_b)).status_code == 200

    listed = (await clients(auth, "list")).output
    assert re.search(rf"^clinic-a\t.*auth=private_key_jwt jwks_url={base}/jwks.json$", listed, re.MULTILINE)
    assert re.search(r"^clinic-b\t.*auth=private_key_jwt$", listed, re.MULTILINE)

    no_secret = await clients(auth, "rotate-secret", "clinic-a")
    assert no_secret.exit_code == 1
    assert "signs in with a key" in no_secret.output


async def test_key_registrations_refused(auth: RunningAuth, tmp_path: Path) -> None:
    clinic = "create --client-id clinic-c --scope referrals:write --audience intake".split()
    plain_http = await clients(auth, *clinic, "--jwks-url", "http://ehr.clinic.example/jwks.json")
    assert plain_http.exit_code == 1
    assert "https" in plain_http.output

    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [rsa_key().as_dict(private=False)]}))
    both = await clients(auth, *clinic, "--jwks-url", "https://ehr.example/j", "--jwks-file", str(jwks_file))
    assert both.exit_code == 1
    assert "not both" in both.output

    jwks_file.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    symmetric = await clients(auth, *clinic, "--jwks-file", str(jwks_file))
    assert symmetric.exit_code == 1
    assert "no RSA or EC public key" in symmetric.output

    jwks_file.write_text("not json")
    assert (await clients(auth, *clinic, "--jwks-file", str(jwks_file))).exit_code == 1
    assert "clinic-c" not in (await clients(auth, "list")).output


async def test_a_clinic_moves_from_its_secret_to_a_key(
    auth: RunningAuth, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    created = "create --client-id clinic-m --scope referrals:write --audience intake --clinic M"
    secret = secret_in(await clients(auth, *created.split()))
    key = ec_key()
    jwks_file = tmp_path / "clinic-m.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))

    moved = await clients(auth, "set-keys", "clinic-m", "--jwks-file", str(jwks_file))
    assert moved.exit_code == 0, moved.output
    assert (await auth.token_response(http, "clinic-m", secret)).status_code == 401
    signed = assertion(key, "clinic-m", auth.token_url, alg="ES384")
    assert (await auth.assertion_response(http, signed)).status_code == 200
    assert (await clients(auth, "set-keys", "nobody", "--jwks-file", str(jwks_file))).exit_code == 1
