"""The OpenAPI document a clinic integrates from: every field with an example, every error, scopes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.intake.conftest import RunningIntake

pytestmark = pytest.mark.integration

OPERATIONS = {
    ("post", "/v1/referrals"): ("referrals:write", {"401", "403", "409", "413", "415", "422"}),
    ("get", "/v1/referrals"): ("referrals:read", {"401", "403", "422"}),
    ("get", "/v1/changes"): ("referrals:read", {"401", "403", "422"}),
    ("get", "/v1/referrals/{referral_id}"): ("referrals:read", {"401", "403", "404", "422"}),
    ("post", "/v1/referrals/{referral_id}/amendments"): (
        "referrals:write",
        {"401", "403", "404", "409", "422"},
    ),
    ("post", "/v1/referrals/{referral_id}/withdraw"): (
        "referrals:write",
        {"401", "403", "404", "409", "422"},
    ),
    ("get", "/internal/v1/contacts"): ("contact:read", {"401", "403", "422"}),
    ("get", "/v1/site/referrals/{referral_id}/contact"): ("site:contact", {"401", "403", "404", "422"}),
    ("get", "/v1/audit/contact-reads"): ("ops", {"401", "403", "422"}),
}


@pytest.fixture
async def document(module_intake: RunningIntake, http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get(f"{module_intake.url}/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def test_every_field_has_an_example_and_the_contract_fields_a_description(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    missing = [
        f"{name}.{field}"
        for name, schema in schemas.items()
        for field, prop in schema.get("properties", {}).items()
        if not (prop.get("examples") or "example" in prop) and "$ref" not in str(prop)
    ]
    assert missing == []
    for name in ("ReferralCreate", "Patient", "Referrer", "ClinicalData", "OrganFunction", "PriorTherapy"):
        undescribed = [f for f, prop in schemas[name]["properties"].items() if not prop.get("description")]
        assert undescribed == [], name
    assert "never leave intake" in schemas["ReferralCreate"]["properties"]["patient"]["description"]


def test_every_operation_documents_its_scope_and_errors_as_problems(document: dict[str, Any]) -> None:
    for (method, path), (scope, errors) in OPERATIONS.items():
        operation = document["paths"][path][method]
        assert operation["security"] == [{"oauth2_client_credentials": [scope]}], path
        assert errors <= set(operation["responses"]), (path, set(operation["responses"]))
        for code, response in operation["responses"].items():
            if code.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (path, code)
                assert response["content"]["application/problem+json"]["examples"]


def test_idempotency_rules_and_limits_are_documented(document: dict[str, Any]) -> None:
    submit = document["paths"]["/v1/referrals"]["post"]
    for rule in ("Idempotency-Key", "24 hours", "different body", "409", "Idempotent-Replayed", "64 KiB"):
        assert rule in submit["description"], rule
    assert any(p["name"] == "Idempotency-Key" for p in submit["parameters"])
    assert submit["requestBody"]["content"]["application/json"]["examples"]["referral"]["value"]["patient"]
    assert "client credentials" in document["info"]["description"]
