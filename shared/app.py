"""The FastAPI application every service is built from.

Routes, the state they read (a ``shared.deps.ServiceState``), background loops (consumers, relays) and
readiness checks are handed in by the service's bootstrap; this module gives them the same health and
metrics endpoints, problem+json errors, body limits and lifecycle. Loops start in the lifespan and stop
on shutdown, never at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from shared import tracing
from shared.deps import ServiceState
from shared.docs import mount_docs
from shared.observability import metrics
from shared.problems import install_problem_handlers, problem_response, unexpected_problem
from shared.readiness import CachedCheck
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

Role = Literal["api", "consumer", "relay"]
ALL_ROLES: frozenset[Role] = frozenset({"api", "consumer", "relay"})
"""A process plays one or more roles: ops scale the API, the consumers and the relay separately."""

_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""A JSON string's ``\\u0000`` escape (not an escaped backslash followed by the text ``u0000``)."""

Check = Callable[[], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Loop:
    """A background loop run by the application, e.g. a consumer or an outbox relay."""

    name: str
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class ServiceSpec:
    """What a service's bootstrap hands to ``create_app``."""

    name: str
    title: str
    description: str
    state: ServiceState
    """What the routes reach through ``shared.deps`` (kept as ``app.state.service``)."""
    routers: Sequence[APIRouter] = ()
    loops: Sequence[Loop] = ()
    checks: dict[str, Check] = field(default_factory=dict)
    """Readiness, by dependency name. Each runs as a ``shared.readiness.CachedCheck`` (a given one as it
    is, any other probing at most every second): bounded load on the dependency, no flapping."""
    on_start: Sequence[Hook] = ()
    on_stop: Sequence[Hook] = ()
    max_body_bytes: int = 65_536
    json_prefixes: tuple[str, ...] = ("/v1/", "/internal/")
    openapi_tags: list[dict[str, Any]] | None = None
    http_clients: Sequence[httpx.AsyncClient] = ()
    """The service's outbound HTTP clients, traced (and carrying the trace on) when tracing is on."""


def create_app(spec: ServiceSpec) -> FastAPI:
    settings = spec.state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in spec.on_start:
            await hook()
        metrics_server = _MetricsServer.start(settings)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loop.run(stop), name=loop.name) for loop in spec.loops]
        for task in tasks:
            task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            stop.set()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=15)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)
            for hook in spec.on_stop:
                await hook()
            if provider is not None:
                await asyncio.to_thread(tracing.shutdown, spec.name, provider)

    docs = settings.serves_docs
    app = FastAPI(
        title=spec.title,
        description=spec.description,
        version="1.0",
        lifespan=lifespan,
        openapi_tags=spec.openapi_tags,
        docs_url=None,  # served by shared.docs, without a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # A redirect to the path with(out) its trailing slash would be built from the Host header,
        # which the client chooses: a 404 instead.
        redirect_slashes=False,
    )
    app.state.service = spec.state
    provider = tracing.setup(spec.name, settings.tracing)
    if docs:
        mount_docs(app, service=spec.name, settings=spec.state.settings)
    install_problem_handlers(app)
    app.include_router(
        _ops_router(spec, metrics_here=settings.metrics_enabled and settings.metrics_port is None)
    )
    for router in spec.routers:
        app.include_router(router)
    app.add_middleware(
        GuardMiddleware,
        service=spec.name,
        max_body_bytes=spec.max_body_bytes,
        json_prefixes=spec.json_prefixes,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.trusted_proxies:  # outermost: every layer and route sees the client the proxy saw
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    if provider is not None:
        tracing.instrument(provider, app=app, engine=spec.state.db.engine, clients=spec.http_clients)
    return app


SERVER_OPTIONS: dict[str, Any] = {"proxy_headers": False, "server_header": False}
"""How uvicorn must run these apps: proxy headers are the app's business (``trusted_proxies``), not
uvicorn's, whose default believes ``X-Forwarded-For`` from loopback; no ``server`` header."""


def serve(app: FastAPI, host: str, port: int, tls: dict[str, Any] | None = None) -> None:
    """Run one service process until SIGINT/SIGTERM (uvicorn stops the loops through the lifespan).
    ``tls``: uvicorn's certificate options (``shared.tls.server_options``), none for plain HTTP."""
    import uvicorn

    # What start-up built (FastAPI, SQLAlchemy, pandas through pgeocode: ~170,000 objects) lives as long as
    # the process; frozen, a full collection no longer walks it (~95 ms with the event loop stopped).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, **SERVER_OPTIONS, **(tls or {}))


@dataclass
class _MetricsServer:
    """``/metrics`` on a port of its own (prometheus_client's small threaded HTTP server), so that the
    public port need not carry it."""

    server: Any
    thread: Any

    @classmethod
    def start(cls, settings: ServiceSettings) -> _MetricsServer | None:
        if not settings.metrics_enabled or settings.metrics_port is None:
            return None
        server, thread = start_http_server(settings.metrics_port, addr=settings.host)
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _ops_router(spec: ServiceSpec, *, metrics_here: bool) -> APIRouter:
    router = APIRouter(tags=["operations"])
    checks = {
        name: check if isinstance(check, CachedCheck) else CachedCheck(check, interval_s=1.0)
        for name, check in spec.checks.items()
    }

    @router.get("/healthz", summary="Alive: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @router.get(
        "/readyz",
        summary="Ready: database, Kafka and the token issuer are reachable",
        responses={503: {"description": "a dependency is unreachable"}},
    )
    async def readyz() -> Response:
        results = await asyncio.gather(*(_run_check(c) for c in checks.values()))
        outcome = dict(zip(checks, results, strict=True))
        if all(v == "ok" for v in outcome.values()):
            return JSONResponse({"status": "ready", "checks": outcome})
        return problem_response(503, "Service unavailable", "a dependency is not reachable", checks=outcome)

    if metrics_here:

        @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


async def _run_check(check: Check) -> str:
    try:
        async with asyncio.timeout(3):
            await check()
        return "ok"
    except Exception as exc:
        return f"failed: {type(exc).__name__}"


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background loop stopped", extra={"loop": task.get_name()}, exc_info=task.exception())


class GuardMiddleware:
    """Refuses oversized bodies (413), non-JSON bodies on JSON routes (415) and NUL characters in JSON
    text (422: PostgreSQL cannot store them, so every route would fail with a 500); times every request;
    answers an exception no route meant with a problem (500, or 503 for a store that is down) that the
    metrics count, where Starlette's outermost layer would re-raise it to the server.

    Pure ASGI, because it sits on every request's hot path.
    """

    def __init__(self, app: ASGIApp, *, service: str, max_body_bytes: int, json_prefixes: tuple[str, ...]):
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.json_prefixes = json_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
            else:
                await self.app(scope, self._limited(receive, json_body=_is_json(scope)), send_wrapper)
        except Exception as exc:
            if status is not None:  # too late for an answer: the server ends the connection
                raise
            await unexpected_problem(exc, scope["path"])(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.requests.labels(self.service, scope["method"], path, status or 500).observe(
                time.perf_counter() - started
            )

    def _refuse(self, scope: Scope) -> Response | None:
        if scope["method"] not in {"POST", "PUT", "PATCH"}:
            return None
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return problem_response(
                413,
                "Payload too large",
                f"the body exceeds {self.max_body_bytes} bytes",
                instance=scope["path"],
            )
        if scope["path"].startswith(self.json_prefixes) and (length is None or length != "0"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and ctype != "application/json" and not ctype.endswith("+json"):
                return problem_response(
                    415,
                    "Unsupported media type",
                    f"send application/json, not {ctype}",
                    instance=scope["path"],
                )
        return None

    def _limited(self, receive: Receive, *, json_body: bool) -> Receive:
        """Count streamed bodies too, which carry no Content-Length; scan a whole JSON body for NUL."""
        seen = 0
        limit = self.max_body_bytes
        chunks: list[bytes] = []

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                # An HTTPException passes through FastAPI's body parsing to the problem handlers.
                if seen > limit:
                    raise HTTPException(413, f"the body exceeds {limit} bytes")
                if json_body:
                    chunks.append(body)
                    if not message.get("more_body") and _NUL_ESCAPE.search(b"".join(chunks)):
                        raise HTTPException(422, "text must not contain NUL characters (\\u0000)")
            return message

        return wrapped


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI will read the body as JSON: a JSON media type, or none at all."""
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]  # ASGI: (name, value) byte pairs
    for name, value in headers:
        if name.lower() == b"content-type":
            ctype = value.decode("latin-1").split(";")[0].strip().lower()
            return ctype == "application/json" or ctype.endswith("+json")
    return True


CONTENT_SECURITY_POLICY = "default-src 'self'; frame-ancestors 'none'"


class SecurityHeadersMiddleware:
    """Headers every answer carries unless its route chose its own: ``nosniff``, no referrer,
    ``Cache-Control: no-store`` (answers carry patient contact, referral states, tokens: no cache or
    browser may keep them; the JWKS and the finder page say otherwise), and for HTML a CSP that
    loads nothing from elsewhere and lets no other site frame the page.

    Pure ASGI, like ``GuardMiddleware``: it only edits the response start.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Cache-Control", "no-store")
                if headers.get("content-type", "").lower().startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                    headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)
