"""authlib's ``AuthorizationServer`` adapted, once, to FastAPI (Starlette) requests and responses.

authlib ships server integrations for Flask and Django only. Its server is synchronous: it reads a
request object, asks ``query_client`` for the client, runs the grant and the token generator, and
answers through ``handle_response(status, body, headers)``. This adapter:

- reads the form body (``application/x-www-form-urlencoded``, RFC 6749 §3.2) asynchronously and wraps
  the request in a ``StarletteOAuth2Request``;
- loads, before authlib runs, the client the request names (``load_client`` is async, authlib's
  ``query_client`` is not), and serves ``query_client`` from it for the duration of the request;
- runs authlib's token endpoint in a worker thread, so argon2 verification and RSA signing never
  block the event loop;
- serves the authorization endpoint in two steps, so that a sign-in page can come between them:
  ``check_authorization`` validates the request (client, exact redirect URI, response type, scope, PKCE)
  and ``issue_code`` answers it for the person who signed in;
- turns authlib's answers into Starlette ``Response`` objects and its signals into callbacks
  (``connect``); the error an answer carries is kept on the request, for ``finish``, which runs
  asynchronously after authlib (the throttle counts failures in the database there).

Grants, client authentication methods, scopes and error bodies stay authlib's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jws
from joserfc.errors import JoseError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

ClientLoader = Callable[[str], Awaitable[ClientMixin | None]]
Receiver = Callable[..., None]

MAX_CLIENT_ID_LENGTH = 200
"""Longer ids are not looked up (nothing that long is registered); they fail authentication."""

_loaded_clients: ContextVar[dict[str, ClientMixin | None]] = ContextVar("loaded_clients")


class StarletteOAuth2Payload(OAuth2Payload):  # type: ignore[misc]  # authlib has no types: Any
    """The form parameters, first value of each in ``data``, every value in ``datalist``."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in pairs:
            self._datalist[name].append(value)
        self._data = {name: values[0] for name, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]  # authlib has no types: Any
    """An authlib request made from a Starlette one whose body has already been read."""

    def __init__(self, request: Request, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__(method=request.method, uri=str(request.url), headers=request.headers)
        self.payload = StarletteOAuth2Payload(pairs)
        self.query = dict(request.query_params)
        self.client_host = request.client.host if request.client else None
        self.error: OAuth2Error | None = None
        """The error authlib answered with, if it did."""

    @property
    def args(self) -> dict[str, str]:
        return self.query

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def named_client_id(self) -> str | None:
        """The client id the caller claims (HTTP Basic first, then a client assertion's ``sub``, then
        the form), before it is verified."""
        basic_id, _ = extract_basic_authorization(self.headers)
        subject = self.unverified_assertion[1].get("sub")
        claimed = subject if isinstance(subject, str) else None
        return basic_id or claimed or self.payload.data.get("client_id") or None

    @property
    def unverified_assertion(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The header and claims of the RFC 7523 client assertion, if the request carries one, read
        without checking anything: to know which client and key to load. Empty if none or malformed."""
        data = self.payload.data
        if data.get("client_assertion_type") != JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE:
            return {}, {}
        try:
            compact = jws.extract_compact(data.get("client_assertion", "").encode())
            claims = json.loads(compact.payload)
        except (JoseError, ValueError):
            return {}, {}
        return compact.headers(), claims if isinstance(claims, dict) else {}


class AuthorizationCheck:
    """An authorization request checked: its grant (valid) or its error, and the client loaded."""

    def __init__(self, request: StarletteOAuth2Request, loaded: dict[str, ClientMixin | None]) -> None:
        self.request = request
        self.loaded = loaded
        self.grant: Any = None
        self.error: OAuth2Error | None = None

    @property
    def client(self) -> ClientMixin | None:
        return self.grant.request.client if self.grant is not None else None


class FastAPIAuthorizationServer(AuthorizationServer):  # type: ignore[misc]  # authlib has no types: Any
    """An authlib authorization server answering Starlette requests; see the module docstring."""

    def __init__(self, load_client: ClientLoader, *, scopes_supported: list[str] | None = None) -> None:
        super().__init__(scopes_supported=scopes_supported)
        self._load_client = load_client
        self._receivers: defaultdict[str, list[Receiver]] = defaultdict(list)

    async def token_response(self, request: Request) -> Response:
        """The token endpoint: read the request, prepare what authlib needs, let authlib answer."""
        pairs = await _form_pairs(request)
        try:
            oauth_request = StarletteOAuth2Request(request, pairs)
        except OAuth2Error as error:  # e.g. insecure_transport: not https, not loopback
            return self.handle_response(*error())
        loaded = await self.prepare(oauth_request)
        response = await run_in_threadpool(self._create_token_response, oauth_request, loaded)
        await self.finish(oauth_request)
        return response

    async def check_authorization(self, request: Request) -> AuthorizationCheck:
        """Validate an authorization request (its query): what the sign-in page needs, or the error."""
        oauth_request = StarletteOAuth2Request(request, request.query_params.multi_items())
        client_id = oauth_request.payload.data.get("client_id")
        loaded: dict[str, ClientMixin | None] = {}
        if client_id and len(client_id) <= MAX_CLIENT_ID_LENGTH and "\x00" not in client_id:
            loaded = {client_id: await self._load_client(client_id)}
        check = AuthorizationCheck(oauth_request, loaded)
        try:
            check.grant = await run_in_threadpool(
                self._in_context, loaded, self.get_consent_grant, oauth_request
            )
        except OAuth2Error as error:
            check.error = error
        return check

    async def issue_code(self, check: AuthorizationCheck, person: Any) -> Response:
        """Answer a valid authorization request for ``person``: a redirect with the code (and state)."""
        assert check.grant is not None, "check_authorization found the request valid"
        return await run_in_threadpool(
            self._in_context,
            check.loaded,
            self.create_authorization_response,
            check.request,
            person,
            check.grant,
        )

    def error_redirect(self, check: AuthorizationCheck) -> Response | None:
        """The error sent back to the client, when its redirect URI is known good (RFC 6749
        §4.1.2.1); ``None`` when it is not: the page must say it, never redirect."""
        error = check.error
        if error is None or not getattr(error, "redirect_uri", None):
            return None
        return self.handle_error_response(check.request, error)

    def _in_context(self, loaded: dict[str, Any], work: Callable[..., Any], *args: Any) -> Any:
        token = _loaded_clients.set(loaded)
        try:
            return work(*args)
        finally:
            _loaded_clients.reset(token)

    async def prepare(self, request: StarletteOAuth2Request) -> dict[str, ClientMixin | None]:
        """Asynchronous work before authlib's synchronous flow: load the client the request names.
        Subclasses extend it (and may refuse the request by raising)."""
        client_id = request.named_client_id
        # A NUL is never in a registered id, and PostgreSQL refuses it in a query: not looked up.
        if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH or "\x00" in client_id:
            return {}
        return {client_id: await self._load_client(client_id)}

    async def finish(self, request: StarletteOAuth2Request) -> None:
        """Asynchronous work after authlib answered (``request.error`` says whether it failed)."""

    def _create_token_response(self, request: StarletteOAuth2Request, loaded: dict[str, Any]) -> Response:
        token = _loaded_clients.set(loaded)
        try:
            return self.create_token_response(request)  # type: ignore[no-any-return]
        finally:
            _loaded_clients.reset(token)

    # authlib's framework hooks

    def query_client(self, client_id: str) -> ClientMixin | None:
        return _loaded_clients.get({}).get(client_id)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if not isinstance(request, StarletteOAuth2Request):
            raise TypeError("await token_response(request): the body must be read asynchronously first")
        return request

    def handle_response(self, status: int, body: Any, headers: Iterable[tuple[str, str]]) -> Response:
        content = json.dumps(body) if isinstance(body, dict | list) else body
        return Response(content=content, status_code=status, headers=dict(headers))

    def handle_error_response(self, request: OAuth2Request, error: OAuth2Error) -> Response:
        if isinstance(request, StarletteOAuth2Request):
            request.error = error
        return super().handle_error_response(request, error)  # type: ignore[no-any-return]

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        for receiver in self._receivers[name]:
            receiver(*args, **kwargs)

    def connect(self, name: str, receiver: Receiver) -> None:
        """Call ``receiver`` on authlib's signal ``name`` (e.g. ``after_authenticate_client``).
        Receivers run in the worker thread: keep them quick and thread-safe."""
        self._receivers[name].append(receiver)


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    """RFC 6749 token requests are form-encoded; anything else reads as empty (and authlib says so)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return []
    body = await request.body()
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return []
