"""``trialroute run``'s demo clinic signs in as clinics should: with its own key (private_key_jwt),
made once in the run dir and registered as its JWK Set; ``trialroute demo`` gets its token with it."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import httpx
import pytest

from services.auth.registry import list_clients
from services.devstack.demo import clinic_token
from services.devstack.stack import DEMO_CLINIC, DEMO_CLINIC_KEY_FILE, Stack, StackConfig
from shared.auth import TokenValidator
from tests.integration.auth.helpers import AUDIENCE, RunningAuth, ServeResource

pytestmark = pytest.mark.integration


async def test_the_demo_clinic_signs_in_with_its_key(
    auth: RunningAuth, http: httpx.AsyncClient, serve_resource: ServeResource, tmp_path: Path
) -> None:
    config = StackConfig(
        run_dir=tmp_path, database_urls={"auth": auth.settings.database_url}, clinic_key=True
    )
    secrets = await Stack(config).seed_clients()
    key_file = tmp_path / DEMO_CLINIC_KEY_FILE
    assert DEMO_CLINIC not in secrets and "ops" in secrets
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "d" in json.loads(key_file.read_text())  # the private key, for the demo to sign with

    again = await Stack(config).seed_clients()  # the next `make run`: same key, clients already there
    assert again.keys() == secrets.keys()
    (clinic,) = [c for c in await list_clients(auth.db) if c.client_id == DEMO_CLINIC]
    assert clinic.auth_method == "private_key_jwt" and clinic.secret_hash is None
    assert clinic.jwks is not None
    assert [k["kid"] for k in clinic.jwks["keys"]] == [json.loads(key_file.read_text())["kid"]]

    credentials = tmp_path / "demo-credentials.json"
    token = await asyncio.to_thread(clinic_token, auth.url, credentials)
    async with serve_resource(TokenValidator(auth.oauth(), AUDIENCE, http)) as api:
        response = await http.get(f"{api}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["clinic_id"] == DEMO_CLINIC


async def test_the_suites_demo_clinic_keeps_its_secret(auth: RunningAuth, tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path, database_urls={"auth": auth.settings.database_url})
    secrets = await Stack(config).seed_clients()
    assert DEMO_CLINIC in secrets
    assert not (tmp_path / DEMO_CLINIC_KEY_FILE).exists()
