"""The auth service's HTTP API: the token endpoint, the JWKS and the discovery documents.

The token endpoint answers in RFC 6749's error format (``{"error": "invalid_client"}``), which every
OAuth2 client library understands; everything else answers errors as problem+json, like every service.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from services.auth.codes import CODE_GRANT, PKCE_METHOD
from services.auth.config import AuthSettings
from services.auth.deps import AuthStateDep
from services.auth.tokens import ASSERTION_ALGORITHMS, AUTH_METHODS, GRANT_TYPE
from shared.auth import Scope

router = APIRouter(tags=["oauth2"])

_TOKEN_REQUEST = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["grant_type"],
                "properties": {
                    "grant_type": {"type": "string", "enum": [GRANT_TYPE, CODE_GRANT]},
                    "code": {"type": "string", "description": "authorization_code: the code, once"},
                    "redirect_uri": {"type": "string", "description": "authorization_code: as sent"},
                    "code_verifier": {"type": "string", "description": "authorization_code: PKCE"},
                    "scope": {"type": "string", "description": "space-separated; default: all allowed"},
                    "resource": {"type": "string", "description": "RFC 8707: the audience wanted"},
                    "audience": {"type": "string", "description": "same as resource (Auth0's name)"},
                    "client_assertion_type": {
                        "type": "string",
                        "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
                        "description": "private_key_jwt (SMART Backend Services)",
                    },
                    "client_assertion": {
                        "type": "string",
                        "description": "private_key_jwt: a JWT signed RS384, ES384 or RS256 with the "
                        "client's key ('kid' in the header); iss = sub = client id, aud = this URL, exp at "
                        "most 5 minutes ahead, a jti never used before",
                    },
                    "client_id": {"type": "string", "description": "client_secret_post only"},
                    "client_secret": {"type": "string", "description": "client_secret_post only"},
                },
            },
            "example": {"grant_type": GRANT_TYPE, "audience": "intake", "scope": "referrals:write"},
        }
    },
}


def _oauth_error(error: str, description: str) -> dict[str, Any]:
    """An RFC 6749 error body, what OAuth2 client libraries read (not problem+json)."""
    example = {"error": error, "error_description": description}
    return {"application/json": {"schema": {"type": "object"}, "example": example}}


@router.post(
    "/oauth/token",
    summary="Issue an access token (client credentials, or a portal's authorization code)",
    openapi_extra={"requestBody": _TOKEN_REQUEST},
    responses={
        200: {"description": "an RFC 9068 JWT access token: access_token, token_type, expires_in, scope"},
        400: {
            "description": "RFC 6749 error: invalid_request, invalid_scope, invalid_target, ...",
            "content": _oauth_error("invalid_scope", "the client may not have the scope ops"),
        },
        401: {
            "description": "RFC 6749 error invalid_client",
            "content": _oauth_error("invalid_client", "client authentication failed"),
        },
        429: {"description": "too many failed client authentications (problem+json, Retry-After)"},
    },
)
async def issue_token(request: Request, auth: AuthStateDep) -> Response:
    """Machines: the client credentials grant. Portals: the authorization code grant with the PKCE
    ``code_verifier`` (public portals send only ``client_id``). Client authentication: a signed JWT
    (``private_key_jwt``, RFC 7523 as SMART Backend Services profiles it: the way for clinics), or a
    secret: HTTP Basic (``client_secret_basic``) or form fields
    (``client_secret_post``)."""
    return await auth.token_server.token_response(request)


@router.get("/.well-known/jwks.json", summary="The public keys that verify access tokens")
async def jwks(auth: AuthStateDep) -> JSONResponse:
    await auth.keyring.refresh_if_stale()
    # A cache may keep the set for as long as a new key waits before it signs: no token is missed.
    return JSONResponse(
        auth.keyring.jwks(),
        headers={"Cache-Control": f"public, max-age={auth.settings.key_publish_delay_s}"},
        media_type="application/jwk-set+json",
    )


@router.get("/.well-known/oauth-authorization-server", summary="RFC 8414 authorization server metadata")
async def authorization_server_metadata(auth: AuthStateDep) -> dict[str, Any]:
    return metadata(auth.settings)


@router.get(
    "/.well-known/openid-configuration",
    summary="The same metadata, where generic OIDC resource servers look for the jwks_uri",
)
async def openid_configuration(auth: AuthStateDep) -> dict[str, Any]:
    return metadata(auth.settings)


@router.get(
    "/.well-known/smart-configuration",
    summary="SMART App Launch discovery: how a backend service (a clinic's EHR) signs in",
)
async def smart_configuration(auth: AuthStateDep) -> dict[str, Any]:
    settings = auth.settings
    return {
        "issuer": settings.issuer,
        "jwks_uri": settings.jwks_url,
        "token_endpoint": settings.token_url,
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": [GRANT_TYPE],
        "scopes_supported": [s.value for s in Scope],
        "capabilities": ["client-confidential-asymmetric"],
    }


def metadata(settings: AuthSettings) -> dict[str, Any]:
    return {
        "issuer": settings.issuer,
        "authorization_endpoint": settings.authorization_url,
        "token_endpoint": settings.token_url,
        "jwks_uri": settings.jwks_url,
        "grant_types_supported": [GRANT_TYPE, CODE_GRANT],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": [PKCE_METHOD],
        "token_endpoint_auth_methods_supported": [*AUTH_METHODS, "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": [s.value for s in Scope],
    }
