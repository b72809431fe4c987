"""The lock files (requirements/*.txt, made by scripts/lock.sh) against pyproject.toml, the Dockerfile and
the code: the image is built from exactly the runtime set, which holds nothing of the local stack's or
the tests', and no module a service runs in production imports a package outside it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

REQUIREMENTS = facts.ROOT / "requirements"
PYPROJECT = tomllib.loads((facts.ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FIRST_PARTY = {"shared", "services", "__future__"}
DEVSTACK = facts.ROOT / "services" / "devstack"
_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\")
_HASH = re.compile(r"\s+--hash=(?P<hash>sha256:[0-9a-f]{64})( \\)?")


@cache
def locked(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """requirements/<name>.txt as {canonical name: (version, hashes)}; a line that is neither a comment,
    an exact pin nor one of its hashes fails."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current: set[str] | None = None
    for line in (REQUIREMENTS / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if (pin := _PIN.fullmatch(line)) is not None:
            current = set()
            entries[canonicalize_name(pin["name"])] = (pin["version"], current)
        else:
            hashed = _HASH.fullmatch(line)
            assert hashed is not None and current is not None, f"{name}.txt: not a hashed pin: {line}"
            current.add(hashed["hash"])
    return {package: (version, frozenset(hashes)) for package, (version, hashes) in entries.items()}


def _requirements(group: str) -> list[Requirement]:
    """pyproject's requirements of one group ("runtime" or an extra), without the project itself."""
    listed = PROJECT["dependencies"] if group == "runtime" else PROJECT["optional-dependencies"][group]
    return [r for r in map(Requirement, listed) if canonicalize_name(r.name) != PROJECT["name"]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements bring in on this interpreter (Python 3.11 on Linux, as locked),
    read from the installed distributions' metadata: an account independent of the lock tool's."""
    seen: set[str] = set()
    pending = [(r, frozenset(r.extras)) for r in requirements]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        for extra in extras:
            pending.extend(
                (r, frozenset(r.extras))
                for r in map(Requirement, importlib.metadata.requires(name) or [])
                if r.marker is not None and r.marker.evaluate({"extra": extra})
            )
        if name in seen:
            continue
        seen.add(name)
        pending.extend(
            (r, frozenset(r.extras))
            for r in map(Requirement, importlib.metadata.requires(name) or [])
            if r.marker is None or r.marker.evaluate({"extra": ""})
        )
    return seen


@pytest.mark.parametrize("name", ["runtime", "local", "dev", "build"])
def test_every_entry_is_pinned_and_hashed(name: str) -> None:
    entries = locked(name)
    assert entries
    assert all(hashes for _, hashes in entries.values()), name


@pytest.mark.parametrize(("group", "name"), [("runtime", "runtime"), ("local", "local"), ("dev", "dev")])
def test_the_lock_keeps_pyproject_pins(group: str, name: str) -> None:
    """A pin changed in pyproject.toml without re-locking (scripts/lock.sh) fails here."""
    for requirement in _requirements(group):
        version, _ = locked(name).get(canonicalize_name(requirement.name), ("missing", frozenset()))
        assert requirement.specifier.contains(version), f"{requirement} but {name}.txt has {version}"
    for requirement in map(Requirement, PYPROJECT["build-system"]["requires"]):
        assert requirement.specifier.contains(locked("build")[canonicalize_name(requirement.name)][0])


def test_the_lock_files_nest_with_one_version_of_each_package() -> None:
    runtime, local, dev = locked("runtime"), locked("local"), locked("dev")
    assert runtime.items() <= local.items() <= dev.items()


def test_the_runtime_lock_is_exactly_what_the_runtime_dependencies_bring_in() -> None:
    """So the image gets no package of the local stack's or the tests' (testcontainers, aiosmtpd,
    schemathesis, pytest...), and every package a service needs."""
    assert set(locked("runtime")) == _closure(_requirements("runtime"))
    assert set(locked("local")) == _closure(_requirements("runtime") + _requirements("local"))
    extras_only = {canonicalize_name(r.name) for r in _requirements("local") + _requirements("dev")}
    assert {"aiosmtpd", "testcontainers", "schemathesis", "pytest"} <= extras_only - set(locked("runtime"))


def test_the_image_installs_the_runtime_lock_only_and_the_project_without_dependencies() -> None:
    build = facts.dockerfile_stages()[0]
    installs = [rest for instruction, rest in build.instructions if instruction == "RUN" and "pip" in rest]
    commands = [c.strip() for rest in installs for c in rest.split("&&") if "pip install" in c]
    assert commands
    for command in commands:
        files = re.findall(r"-r (\S+)", command)
        if files:
            assert "--require-hashes" in command and files in (
                ["requirements/runtime.txt"],
                ["requirements/build.txt"],
            ), command
        else:
            assert "--no-deps" in command and "/wheels/trialroute-" in command, command
    assert any("-r requirements/runtime.txt" in c for c in commands)


def _imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    """The top-level names of the absolute imports in a module (or only those run when it is imported)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _third_party(paths: list[Path]) -> dict[str, set[str]]:
    """{distribution: modules importing it} for every non-stdlib, non-project import in the files."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FIRST_PARTY or top in sys.stdlib_module_names:
                continue
            where = str(path.relative_to(facts.ROOT))
            for distribution in distributions.get(top, [f"<no distribution provides {top}>"]):
                found.setdefault(canonicalize_name(distribution), set()).add(where)
    return found


def test_production_modules_import_only_runtime_packages() -> None:
    production = [
        path
        for package in ("shared", "services")
        for path in (facts.ROOT / package).rglob("*.py")
        if DEVSTACK not in path.parents
    ]
    outside = {d: m for d, m in _third_party(production).items() if d not in locked("runtime")}
    assert not outside, f"imported in production but not in requirements/runtime.txt: {outside}"
    local = {d: m for d, m in _third_party(list(DEVSTACK.rglob("*.py"))).items() if d not in locked("local")}
    assert not local, f"imported by the local stack but not in requirements/local.txt: {local}"


def test_production_modules_load_the_local_stack_only_when_it_is_run() -> None:
    """`trialroute run`, `demo` and `mailbox` import services.devstack inside the command, so the image
    (which lacks aiosmtpd) still starts `trialroute`."""
    eager = [
        str(path.relative_to(facts.ROOT))
        for package in ("shared", "services")
        for path in (facts.ROOT / package).rglob("*.py")
        if DEVSTACK not in path.parents
        and any(name.startswith("services.devstack") for name in _imports(path, module_level_only=True))
    ]
    assert not eager
