"""The OpenAPI document every service serves: sign-in steps, error shape, problem+json error bodies."""

from __future__ import annotations

from typing import Any

import pytest

from shared.docs import describe
from shared.problems import PROBLEM_JSON

pytestmark = pytest.mark.unit

TOKEN_URL = "https://issuer.example.org/oauth/token"


def document() -> dict[str, Any]:
    validation = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
    oauth_error = {"application/json": {"example": {"error": "invalid_client"}}}
    return {
        "info": {"title": "t", "description": "What the service does."},
        "paths": {
            "/v1/things": {
                "post": {
                    "security": [{"oauth2_client_credentials": []}],
                    "responses": {"202": {"description": "ok"}, "422": {"content": validation}},
                }
            },
            "/oauth/token": {"post": {"responses": {"401": {"content": oauth_error}}}},
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
        },
        "components": {"schemas": {"HTTPValidationError": {}, "ValidationError": {}}},
    }


def test_secured_operations_document_401_403_and_every_error_is_a_problem() -> None:
    scopes = {("/v1/things", "post"): ["things:write"]}
    schema = describe(document(), token_url=TOKEN_URL, audience="things", scopes=scopes)
    responses = schema["paths"]["/v1/things"]["post"]["responses"]
    assert set(responses) == {"202", "401", "403", "422"}
    assert "things:write" in responses["403"]["description"]
    for code in ("401", "403", "422"):
        (media,) = responses[code]["content"]
        assert media == PROBLEM_JSON
        assert responses[code]["content"][media]["example"]["status"] == int(code)
    assert responses["422"]["content"][PROBLEM_JSON]["example"]["errors"][0]["field"]
    token = schema["paths"]["/oauth/token"]["post"]["responses"]["401"]["content"]
    assert list(token) == ["application/json"]  # a documented body (RFC 6749's) is kept as it is
    assert set(schema["components"]["schemas"]) == {"Problem"}  # FastAPI's 422 shape is gone


def test_description_says_how_to_sign_in_only_where_a_token_is_checked() -> None:
    scopes = {("/v1/things", "post"): ["things:write"]}
    text = describe(document(), token_url=TOKEN_URL, audience="things", scopes=scopes)["info"]["description"]
    assert text.startswith("What the service does.")
    assert f"token endpoint: `{TOKEN_URL}`" in text and "audience: `things`" in text
    assert "`things:write`" in text and "private_key_jwt" in text and "## Errors" in text

    public = document()
    del public["paths"]["/v1/things"]
    text = describe(public, token_url=TOKEN_URL, audience="things")["info"]["description"]
    assert "## Signing in" not in text and "## Errors" in text
