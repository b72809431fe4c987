"""A store that cannot be reached answers 503 with Retry-After, as problem+json, never 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter

from shared.app import ServiceSpec, create_app
from shared.db import Database
from shared.deps import DbDep, ServiceState
from shared.settings import ServiceSettings
from tests.support.servers import loopback_socket, serve_app

pytestmark = pytest.mark.integration


async def test_an_unreachable_database_is_a_retryable_503() -> None:
    closed = loopback_socket()  # bound, never listening: connections are refused at once
    port = closed.getsockname()[1]
    db = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nothing")
    router = APIRouter()

    @router.get("/v1/ping-store")
    async def ping_store(db: DbDep) -> dict[str, str]:
        await db.ping()
        return {"status": "ok"}

    state = ServiceState(db=db, settings=ServiceSettings())
    app = create_app(ServiceSpec(name="t", title="t", description="t", routers=[router], state=state))
    try:
        async with serve_app(app) as url, httpx.AsyncClient() as http:
            response = await http.get(f"{url}/v1/ping-store")
    finally:
        closed.close()
        await db.dispose()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert response.json()["status"] == 503
