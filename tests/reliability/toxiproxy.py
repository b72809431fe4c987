"""Toxiproxy (Shopify's TCP fault proxy) for the network fault suite: its server as a process of the
test's own, and its HTTP API (https://github.com/Shopify/toxiproxy#http-api) driven with httpx.

A proxy listens on a loopback port and relays every connection to its upstream; toxics added to it
act on every connection through it, open or new, until removed:

- ``latency`` (``latency`` ms, ``jitter`` ms): each chunk of data delayed;
- ``reset_peer`` (``timeout`` ms, 0: at once): every connection closed (a TCP RST), new ones too;
- ``timeout`` (``timeout`` ms, 0: never closed): data dropped on the floor while the connection stays
  open. On both streams, that is a partition as a client sees one: connects succeed (the proxy
  accepts), then nothing comes back, no error, no FIN. Only the client's own timeouts end the wait.
  When the toxic is removed, the connections it held are closed (as a firewall that lost their state
  would): clients reconnect.

The API is small and stable; the Python clients on PyPI are unmaintained, so httpx talks to it directly.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
STREAMS = ("upstream", "downstream")


def install() -> Path:
    """The server binary, built once per machine by ``scripts/install-toxiproxy.sh`` (at once when cached)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "install-toxiproxy.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/install-toxiproxy.sh failed:\n{result.stdout}{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


class ToxiproxyServer:
    """``toxiproxy-server`` on 127.0.0.1:``api_port``, its log in ``log_path``; a context manager that
    stops it (SIGTERM, then SIGKILL) whatever happened."""

    def __init__(self, binary: Path, api_port: int, log_path: Path) -> None:
        self.binary = binary
        self.api_port = api_port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)

    def __enter__(self) -> ToxiproxyServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # this run's only
            self.process = subprocess.Popen(
                [str(self.binary), "-host", "127.0.0.1", "-port", str(self.api_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LOG_LEVEL": "error"},  # not every closed link,
            )
        try:
            self._wait_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _wait_answering(self, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"toxiproxy-server exited with {self.process.returncode}: see {self.log_path}"
                )
            try:
                if self.api.get("/version").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # the server process starting: polled, with a deadline
        raise TimeoutError(f"toxiproxy-server did not answer on port {self.api_port} in {timeout_s}s")

    def stop(self) -> None:
        self.api.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def proxy(self, name: str, listen_port: int, upstream: str) -> Proxy:
        """A new proxy from 127.0.0.1:``listen_port`` to ``upstream`` (host:port)."""
        response = self.api.post(
            "/proxies",
            json={"name": name, "listen": f"127.0.0.1:{listen_port}", "upstream": upstream, "enabled": True},
        )
        _ok(response)
        return Proxy(self.api, name, listen_port)

    def reset(self) -> None:
        """Every proxy enabled and every toxic removed (after a test that failed half-way)."""
        _ok(self.api.post("/reset"))


@dataclass
class Proxy:
    api: httpx.Client
    name: str
    listen_port: int

    def set_upstream(self, upstream: str) -> None:
        _ok(self.api.post(f"/proxies/{self.name}", json={"upstream": upstream}))

    def add(self, kind: str, *, stream: str = "downstream", **attributes: Any) -> str:
        """Add a toxic of ``kind`` on ``stream``; returns its name, for ``remove``."""
        toxic = f"{kind}_{stream}"
        body = {"name": toxic, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}
        _ok(self.api.post(f"/proxies/{self.name}/toxics", json=body))
        return toxic

    def remove(self, toxic: str) -> None:
        _ok(self.api.delete(f"/proxies/{self.name}/toxics/{toxic}"))

    def toxics(self) -> list[dict[str, Any]]:
        response = self.api.get(f"/proxies/{self.name}/toxics")
        _ok(response)
        return list(response.json())


@contextmanager
def toxic(
    proxies: list[Proxy], kind: str, *, streams: tuple[str, ...] = ("downstream",), **attributes: Any
) -> Iterator[None]:
    """The toxic on every stream of every proxy for the duration of the block, removed afterwards
    (also when the block fails)."""
    added: list[tuple[Proxy, str]] = []
    try:
        for proxy in proxies:
            for stream in streams:
                added.append((proxy, proxy.add(kind, stream=stream, **attributes)))
        yield
    finally:
        for proxy, name in added:
            proxy.remove(name)


def _ok(response: httpx.Response) -> None:
    if response.status_code >= 300:
        raise RuntimeError(
            f"toxiproxy {response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
