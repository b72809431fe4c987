"""The edges every service shares (``shared.app``), over real HTTP: security headers, no redirect built
from ``Host``, docs and metrics closed by setting, metrics on a port of their own, an unexpected error
answered and counted, and ``X-Forwarded-For`` believed only from a configured proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import REGISTRY

from shared.app import CONTENT_SECURITY_POLICY, ServiceSpec, create_app
from shared.db import Database
from shared.deps import ServiceState
from shared.problems import PROBLEM_JSON
from shared.settings import ServiceSettings
from tests.support.servers import loopback_socket, serve_app

pytestmark = pytest.mark.integration

SERVICE = "edges-test"
router = APIRouter()


@router.get("/v1/whoami")
async def whoami(request: Request) -> dict[str, str | None]:
    """The address the limits and throttles key on."""
    return {"client": request.client.host if request.client else None, "scheme": request.url.scheme}


@router.get("/v1/fails")
async def fails() -> None:
    raise OverflowError("date value out of range")  # what an unchecked conversion raises deep down


@router.get("/v1/cached")
async def cached() -> JSONResponse:
    return JSONResponse({"public": True}, headers={"Cache-Control": "public, max-age=60"})


@router.get("/page")
async def page() -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>page</title>")


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[str]:
    values: dict[str, Any] = {"environment": "test", **settings}
    state = ServiceState(db=Database("sqlite+aiosqlite://"), settings=ServiceSettings(**values))
    app = create_app(ServiceSpec(name=SERVICE, title="edges", description="", state=state, routers=[router]))
    async with serve_app(app) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def forged(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, "X-Forwarded-Proto": "https"}


async def test_every_answer_is_nosniff_and_not_stored(http: httpx.AsyncClient) -> None:
    async with serving() as url:
        for path in ("/v1/whoami", "/healthz", "/v1/missing", "/openapi.json"):
            response = await http.get(f"{url}{path}")
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["cache-control"] == "no-store", path
            assert response.headers["referrer-policy"] == "no-referrer", path
            assert "content-security-policy" not in response.headers  # JSON is no page
        own = await http.get(f"{url}/v1/cached")
        assert own.headers["cache-control"] == "public, max-age=60"  # a route's own choice stands
        assert "server" not in (await http.get(f"{url}/healthz")).headers


async def test_pages_get_a_content_security_policy(http: httpx.AsyncClient) -> None:
    async with serving() as url:
        assert (await http.get(f"{url}/redoc")).status_code == 404  # ReDoc would load from a CDN
        for path in ("/page", "/docs"):
            response = await http.get(f"{url}{path}")
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/html")
            # A page may set a stricter policy of its own (the docs page does); never a looser one.
            policy = response.headers["content-security-policy"]
            if path != "/docs":
                assert policy == CONTENT_SECURITY_POLICY, path
            assert {"default-src 'self'", "frame-ancestors 'none'"} <= set(policy.split("; ")), path
            assert response.headers["x-frame-options"] == "DENY"


async def test_no_redirect_is_built_from_the_host_header(http: httpx.AsyncClient) -> None:
    async with serving() as url:
        response = await http.get(f"{url}/v1/whoami/", headers={"Host": "evil.example"})
        assert response.status_code == 404
        assert "location" not in response.headers
        assert response.headers["content-type"] == PROBLEM_JSON


async def test_docs_and_metrics_close_by_setting(http: httpx.AsyncClient) -> None:
    async with serving(docs_enabled=False, metrics_enabled=False) as url:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert (await http.get(f"{url}{path}")).status_code == 404, path
        assert (await http.get(f"{url}/healthz")).status_code == 200
    async with serving(environment="production") as url:  # production: docs off unless asked for
        assert (await http.get(f"{url}/docs")).status_code == 404
        assert (await http.get(f"{url}/metrics")).status_code == 200
    async with serving(environment="production", docs_enabled=True) as url:
        assert (await http.get(f"{url}/openapi.json")).status_code == 200


async def test_metrics_on_their_own_port(http: httpx.AsyncClient) -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()  # free again: the metrics server binds it
    async with serving(metrics_port=port) as url:
        assert (await http.get(f"{url}/metrics")).status_code == 404
        metrics = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200
        assert "trialroute_http_request_seconds" in metrics.text
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_an_unexpected_error_is_a_counted_problem(http: httpx.AsyncClient) -> None:
    def count() -> float:
        labels = {"service": SERVICE, "method": "GET", "route": "/v1/fails", "status": "500"}
        return REGISTRY.get_sample_value("trialroute_http_request_seconds_count", labels) or 0.0

    before = count()
    async with serving() as url:
        response = await http.get(f"{url}/v1/fails")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["status"] == 500
    assert "out of range" not in response.text  # no internals
    assert response.headers["x-content-type-options"] == "nosniff"
    assert count() == before + 1


async def test_forwarded_headers_are_ignored_by_default(http: httpx.AsyncClient) -> None:
    async with serving() as url:
        for address in ("203.0.113.7", "198.51.100.1", "2001:db8::1"):
            response = await http.get(f"{url}/v1/whoami", headers=forged(address))
            assert response.json() == {"client": "127.0.0.1", "scheme": "http"}


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(http: httpx.AsyncClient) -> None:
    async with serving(trusted_proxies=["10.0.0.0/8", "192.0.2.1"]) as url:
        response = await http.get(f"{url}/v1/whoami", headers=forged("203.0.113.7"))
        assert response.json()["client"] == "127.0.0.1"


async def test_forwarded_headers_from_a_trusted_proxy_name_the_client(http: httpx.AsyncClient) -> None:
    async with serving(trusted_proxies=["127.0.0.0/8"]) as url:
        response = await http.get(f"{url}/v1/whoami", headers=forged("203.0.113.7"))
        assert response.json() == {"client": "203.0.113.7", "scheme": "https"}
        # The proxy appends the peer it saw: what the client wrote before it is not believed.
        chain = await http.get(f"{url}/v1/whoami", headers=forged("198.51.100.1, 203.0.113.7"))
        assert chain.json()["client"] == "203.0.113.7"
        assert (await http.get(f"{url}/v1/whoami")).json()["client"] == "127.0.0.1"


def test_a_trusted_proxy_must_be_an_address_or_network() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ServiceSettings(trusted_proxies=["proxy.internal"])
