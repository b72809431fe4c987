"""Every service's ``/docs`` works where the clinic is: no internet, a strict Content-Security-Policy.

Each service is its own app (API role) on its own PostgreSQL database, served over loopback. In headless
Chromium every request to another origin than the service's is aborted (and recorded), and every
response carries the policy ``default-src 'self'`` in place of the service's own: Swagger UI must still
render the operations, with nothing refused on the console. Screenshots are kept under
``.run/screenshots/test_docs/``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import expect
from pydantic import SecretStr

from services.auth import bootstrap as auth
from services.auth.config import AuthSettings
from services.eligibility import bootstrap as eligibility
from services.eligibility.config import EligibilitySettings
from services.insights import bootstrap as insights
from services.insights.config import InsightsSettings
from services.intake import bootstrap as intake
from services.intake.config import IntakeSettings
from services.notifier import bootstrap as notifier
from services.notifier.config import NotifierSettings
from services.site_router import bootstrap as site_router
from services.site_router.config import SiteRouterSettings
from shared.problems import PROBLEM_JSON
from tests.support.browser import Pages
from tests.support.servers import serve_app
from tests.support.stores import migrated

pytestmark = pytest.mark.e2e

STRICT_CSP = "default-src 'self'"

APPS: dict[str, Callable[[str], FastAPI]] = {
    "auth": lambda url: auth.create_app(
        AuthSettings(
            environment="test", database_url=url, key_encryption_secret=SecretStr("docs-test-secret")
        ),
        frozenset({"api"}),
    ),
    "intake": lambda url: intake.create_app(
        IntakeSettings(environment="test", database_url=url), frozenset({"api"})
    ),
    "eligibility": lambda url: eligibility.create_app(
        EligibilitySettings(environment="test", database_url=url), frozenset({"api"})
    ),
    "site_router": lambda url: site_router.create_app(
        SiteRouterSettings(environment="test", database_url=url), frozenset({"api"})
    ),
    "notifier": lambda url: notifier.create_app(
        NotifierSettings(environment="test", database_url=url, client_secret=SecretStr("docs-secret")),
        frozenset({"api"}),
    ),
    "insights": lambda url: insights.create_app(
        InsightsSettings(environment="test", database_url=url), frozenset({"api"})
    ),
}


@pytest.fixture
def serve(make_database_url: Callable[[], Awaitable[str]]) -> Callable[[str], Any]:
    @asynccontextmanager
    async def start(service: str) -> AsyncIterator[str]:
        store = await migrated(await make_database_url(), service)
        async with serve_app(APPS[service](store)) as url:
            yield url

    return start


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


@pytest.mark.parametrize("service", list(APPS))
async def test_swagger_ui_renders_offline_under_a_strict_policy(
    service: str, serve: Callable[[str], Any], pages: Pages
) -> None:
    async with serve(service) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            document = (await http.get("/openapi.json")).json()
        async with pages.open(f"{url}/docs", csp=STRICT_CSP) as tab:
            page = tab.page
            listed = page.locator(".opblock")
            await expect(listed).to_have_count(len(operations(document)))
            await expect(listed.first).to_be_visible()
            paths = await page.locator(".opblock-summary-path").all_inner_texts()
            shown = sorted(p.replace("\u200b", "") for p in paths)  # Swagger UI breaks paths with ZWSP
            assert shown == sorted(p for p, _, _ in operations(document))
            title = f"trialroute {service.replace('_', ' ')}"
            await expect(page.locator(".info .title")).to_contain_text(title)
            await expect(page.locator(".info").get_by_role("heading", name="Errors")).to_be_visible()
            await tab.screenshot("docs")

            await listed.first.locator(".opblock-summary").click()  # an operation, opened
            await expect(listed.first.locator(".responses-wrapper")).to_be_visible()
            await tab.screenshot("operation")

            assert tab.blocked == []  # nothing tried to leave the service: no CDN, no validator badge
            # Nothing refused but Swagger UI's inline SVG icons (its stylesheet's data: images, which the
            # services' own policy allows: img-src 'self' data:); no script refused, no script error.
            icons = "Loading the image 'data:image/svg+xml"
            assert [e for e in tab.console_errors if not e.startswith(icons)] == []


async def test_docs_page_and_files_come_from_the_service_itself(serve: Callable[[str], Any]) -> None:
    async with serve("intake") as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        page = await http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://|=\"//", page.text), "the page names another origin"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>\s*\S", page.text), "an inline script"
        assert page.headers["content-security-policy"].startswith("default-src 'self';")
        assert "unsafe" not in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        scripts = re.findall(r'<script src="([^"]+)"', page.text)
        assert scripts == ["/docs/static/swagger-ui-bundle.js", "/docs/static/docs-init.js"]
        files = {
            "/docs/static/swagger-ui-bundle.js": "text/javascript",
            "/docs/static/docs-init.js": "text/javascript",
            "/docs/static/swagger-ui.css": "text/css",
            "/docs/static/favicon-32x32.png": "image/png",
        }
        for path, media_type in files.items():
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(media_type), path
            again = await http.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304, path
        assert "validatorUrl: null" in (await http.get("/docs/static/docs-init.js")).text
        assert (await http.get("/docs/static/index.html")).status_code == 404  # only the listed files
        assert (await http.get("/docs/static/..%2F..%2Fapp.py")).status_code == 404
        assert (await http.get("/redoc")).status_code == 404  # it would load from a CDN


@pytest.mark.parametrize("service", ["intake", "site_router", "eligibility", "notifier", "insights"])
async def test_the_document_says_how_to_sign_in_and_what_errors_look_like(
    service: str, serve: Callable[[str], Any]
) -> None:
    async with serve(service) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
    description = document["info"]["description"]
    assert "## Signing in" in description and "## Errors" in description
    assert "http://127.0.0.1:8000/oauth/token" in description  # the issuer's token endpoint (settings)
    assert f"audience: `{service}`" in description
    assert "private_key_jwt" in description and "client_credentials" in description
    assert '"errors": [' in description  # the error example
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, method, operation in operations(document):
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                content = response.get("content", {})
                if path.startswith("/fhir/"):  # FHIR clients read an OperationOutcome (docs/fhir.md)
                    assert list(content) == ["application/fhir+json"], (path, method, code)
                    continue
                assert list(content) == [PROBLEM_JSON], (path, method, code)
                body = content[PROBLEM_JSON]
                example = body.get("example") or next(iter(body["examples"].values()))["value"]
                where = (path, method, code)
                assert example["status"] == int(code) and example["type"] == "about:blank", where
        if operation.get("security"):
            assert {"401", "403"} <= set(operation["responses"]), (path, method)


async def test_main_operations_carry_request_examples(serve: Callable[[str], Any]) -> None:
    for service, path, method in [
        ("intake", "/v1/referrals", "post"),
        ("site_router", "/v1/site/referrals/{referral_id}/decline", "post"),
        ("site_router", "/v1/site/referrals/{referral_id}/close", "post"),
        ("site_router", "/v1/sites", "post"),
        ("auth", "/oauth/token", "post"),
    ]:
        async with serve(service) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            document = (await http.get("/openapi.json")).json()
        (content,) = document["paths"][path][method]["requestBody"]["content"].values()
        schema = content.get("schema", {})
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        examples = [content.get("example"), *(content.get("examples") or {}).values()]
        examples += schema.get("examples", [])
        assert any(examples), (service, path)
    token = document["paths"]["/oauth/token"]["post"]["responses"]["401"]["content"]["application/json"]
    assert token["example"]["error"] == "invalid_client"  # RFC 6749's shape, what OAuth clients read
