"""No token can be checked while the issuer's keys cannot be fetched: a 503 a client may retry."""

import httpx
import pytest
from fastapi import FastAPI

from shared.auth import IssuerUnavailable
from shared.problems import install_problem_handlers

pytestmark = pytest.mark.unit


async def test_an_unreachable_issuer_is_a_503_with_retry_after() -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/checked")
    async def checked() -> None:
        raise IssuerUnavailable("the token issuer's keys cannot be fetched")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/v1/checked")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
