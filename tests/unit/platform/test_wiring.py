"""The wiring rules of docs/CONVENTIONS.md that code review alone lets slip: how routes reach their
dependencies, and which way the layers import."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.auth import api as auth_api
from services.eligibility import api as eligibility_api
from services.intake import api as intake_api
from services.notifier import api as notifier_api
from services.site_router import admin as site_admin
from services.site_router import api as site_api

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ROUTERS = {
    "auth": auth_api.router,
    "eligibility": eligibility_api.router,
    "intake": intake_api.router,
    "notifier": notifier_api.router,
    "site_router": site_api.router,
    "site_router admin": site_admin.router,
}
STATE_READERS = {"shared/deps.py", "shared/app.py"}
"""Where ``app.state`` may be touched: set once by create_app, read once by shared.deps."""


def _sources(*tops: str) -> Iterator[tuple[str, ast.Module]]:
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def _dependencies(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependencies(sub)


def _is_async(call: Callable[..., Any]) -> bool:
    target = call if inspect.isroutine(call) else type(call).__call__  # HTTPBearer: an instance
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def test_no_module_but_shared_deps_reads_app_state() -> None:
    readers = {
        name
        for name, tree in _sources("services", "shared")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and (
            (isinstance(node.value, ast.Name) and node.value.id == "app")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "app")
        )
    }
    assert readers <= STATE_READERS, f"read the state through shared.deps: {sorted(readers - STATE_READERS)}"


def test_no_module_uses_asyncio_wait_for() -> None:
    """Python 3.11's ``wait_for`` swallows a cancellation that arrives as the awaited work finishes: a
    relay cancelled mid-batch went on publishing forever. ``asyncio.timeout`` passes it on."""
    users = {
        name
        for name, tree in _sources("services", "shared", "bench")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "wait_for"
    }
    assert not users, f"use asyncio.timeout instead: {sorted(users)}"


@pytest.mark.parametrize("service", sorted(ROUTERS))
def test_every_route_dependency_is_async(service: str) -> None:
    """A plain ``def`` dependency is run in FastAPI's thread pool: a hop on every request."""
    router: APIRouter = ROUTERS[service]
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    assert routes
    plain = {
        f"{route.path}: {getattr(call, '__name__', type(call).__name__)}"
        for route in routes
        for call in _dependencies(route.dependant)
        if not _is_async(call)
    }
    assert not plain


def test_domain_modules_import_no_io_and_no_outer_layer() -> None:
    outer = ("fastapi", "sqlalchemy", "sqlmodel", "aiokafka", "httpx", "pgeocode", "shared.db", "shared.app")
    found = {}
    for name, tree in _sources("services"):
        if not name.endswith("/domain.py"):
            continue
        service = name.split("/")[1]
        own_outer = tuple(
            f"services.{service}.{m}" for m in ("api", "store", "geo", "queries", "bootstrap", "deps")
        )
        for node in ast.walk(tree):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            bad = [m for m in modules if m.startswith(outer + own_outer)]
            if bad:
                found[name] = bad
    assert not found
