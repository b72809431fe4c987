"""Serve an ASGI app over real HTTP, in-process, for the length of a test.

    sock = loopback_socket()                       # bound now: the URL is known before the app exists
    app = create_app(settings_with(issuer=url_of(sock)))
    async with serve_app(app, sock=sock) as base_url:
        response = await http.get(f"{base_url}/healthz")

Without ``sock`` the app gets a free port of its own; ``tls`` (``shared.tls.server_options``) serves
HTTPS, and the URL yielded is then ``https://``. Startup (the app's lifespan) completes before
the block starts; a failing startup raises instead of hanging; shutdown runs the lifespan's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from shared.app import SERVER_OPTIONS
from shared.auth import TokenValidator
from shared.db import Database
from shared.deps import ServiceState
from shared.settings import ServiceSettings
from tests.support.waiting import eventually


def checking_tokens(validator: TokenValidator) -> ServiceState:
    """The state of a stand-in service whose routes only check tokens (its database is never opened)."""
    return ServiceState(
        db=Database("sqlite+aiosqlite://"), settings=ServiceSettings(), token_validator=validator
    )


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the test runner's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def loopback_socket() -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 with a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{host}:{port}"


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    *,
    sock: socket.socket | None = None,
    startup_timeout_s: float = 30.0,
    tls: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on the current event loop; yield its base URL."""
    sock = sock or loopback_socket()
    # As in production (shared.app.serve): proxy headers only from the app's trusted_proxies.
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        log_config=None,
        access_log=False,
        ws="none",
        http="h11",
        **SERVER_OPTIONS,
        **(tls or {}),
    )
    server = _InProcessServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's answer to a failed startup; keep it out of the loop
            raise RuntimeError("the app failed to start (see its log)") from exc

    task = asyncio.create_task(serve(), name="uvicorn")

    async def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        return server.started

    try:
        await eventually(started, within=startup_timeout_s, interval=0.01, what="the app to start")
        yield url_of(sock, "https" if tls else "http")
    finally:
        await _stop(server, task)
        sock.close()


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    done, _ = await asyncio.wait({task}, timeout=15)
    if not done:
        server.force_exit = True
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # a startup error was raised already; a shutdown error is in uvicorn's log
