"""Service processes on one machine: start, wait until healthy, kill, restart, stop.

Used by ``trialroute run`` (the whole system for a newcomer) and by the end-to-end and fault suites,
which need every service as a real process they can ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class ServiceProcess:
    """One OS process of the stack, with its own log file."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - argv is built by this module, never from input
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches the runner, which stops us in order
        )
        log.close()

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Block until ``/healthz`` answers 200; fail early, with the log's tail, if the process died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if self.health_url is None:
                return
            try:
                if httpx.get(self.health_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown hook runs, as in a crash."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 15) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_healthy()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def trialroute_argv(*args: str) -> list[str]:
    """Run our own CLI with the interpreter running us, so the stack uses the same environment."""
    return [sys.executable, "-m", "services.cli", *args]
