"""The notifier's readiness names SMTP: the sending process reports the mail server gone, by itself,
and ready again once it answers (the probe: a new connection's greeting and NOOP, at a bounded rate)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.notifier.conftest import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_readiness_reports_the_smtp_server_down_and_back(stack: Stack) -> None:
    async with stack.run() as url, httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def readiness(status: int) -> dict[str, Any] | None:
            response = await http.get("/readyz")
            return dict(response.json()) if response.status_code == status else None

        ready = await eventually(lambda: readiness(200), what="ready")
        assert ready["checks"]["smtp"] == "ok"
        stack.smtp.stop()
        try:
            down = await eventually(lambda: readiness(503), within=40, what="not ready without SMTP")
            assert down["checks"]["smtp"].startswith("failed")
            assert {k: v for k, v in down["checks"].items() if k != "smtp"} == {
                "database": "ok",
                "kafka": "ok",
                "issuer": "ok",
            }
        finally:
            stack.smtp.start()
        back = await eventually(lambda: readiness(200), within=40, what="ready again")
        assert back["checks"]["smtp"] == "ok"
