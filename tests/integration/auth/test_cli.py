"""``trialroute clients ...`` against the auth store, checked through the running token endpoint."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from services.auth.cli import app
from tests.integration.auth.helpers import KEK, RunningAuth

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
