"""deploy/Dockerfile and .dockerignore, read as text (no Docker engine here), and the package data
the image depends on."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

import pytest

from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

STAGES = facts.dockerfile_stages()
RUNTIME = STAGES[-1]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "python3-dev", "libpq-dev")


def _instructions(name: str) -> list[str]:
    return [rest for instruction, rest in RUNTIME.instructions if instruction == name]


def test_multi_stage_on_python_3_11_slim() -> None:
    assert len(STAGES) >= 2
    # Bookworm named: the local base of scripts/test-deploy.sh (debootstrap) is bookworm too.
    assert all(stage.base == "python:3.11-slim-bookworm" for stage in STAGES)
    build = STAGES[0].name
    copies = _instructions("COPY")
    assert copies and all(c.startswith(f"--from={build} ") for c in copies), "runtime gets only the build"


def test_runtime_has_no_build_tools() -> None:
    for rest in _instructions("RUN"):
        assert "apt-get install" not in rest and "pip install" not in rest, rest
        assert not any(f" {tool}" in f" {rest} " for tool in BUILD_TOOLS), rest


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    (user,) = _instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "runAsNonRoot can only verify a numeric user"


def test_entrypoint_is_trialroute_and_the_healthcheck_gets_healthz() -> None:
    assert [json.loads(e) for e in _instructions("ENTRYPOINT")] == [["trialroute"]]
    (healthcheck,) = _instructions("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    port = facts.dockerfile_env()["AUTH_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in command[2]


def test_every_service_listens_on_all_interfaces_on_the_exposed_port() -> None:
    env = facts.dockerfile_env()
    (exposed,) = _instructions("EXPOSE")
    for service in facts.SERVICES:
        prefix = service.upper()
        assert (env[f"{prefix}_HOST"], env[f"{prefix}_PORT"]) == ("0.0.0.0", exposed), service


def test_image_environment_is_read_by_the_services() -> None:
    unknown = set(facts.dockerfile_env()) - facts.env_read_by(None) - facts.PYTHON_RUNTIME_ENV
    assert not unknown


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in facts.DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: .run (databases, credentials) and .git stay out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # `.wheel[s]`: a glob, so that the wheelhouse may be missing (COPY fails on a missing plain path).
    sources = {
        re.sub(r"\[(\w)\]$", r"\1", word.rstrip("/"))
        for instruction, rest in STAGES[0].instructions
        if instruction == "COPY"
        for word in rest.split()[:-1]
    }
    assert sources == allowed


def test_package_data_ships_every_non_python_file_of_the_packages() -> None:
    """The image installs the wheel, not the tree: GeoNames tables, rule sets, templates and seed sites
    reach it only through package data."""
    config = tomllib.loads((facts.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["*"]
    files = [
        path
        for package in ("shared", "services")
        for path in (facts.ROOT / package).rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    ]
    assert any(p.name.endswith(".txt.gz") for p in files), "the GeoNames tables are missing"
    missed = [p for p in files if not any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)]
    assert not missed, f"not in the wheel (add a pattern to package-data): {missed}"
