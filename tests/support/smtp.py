"""A real SMTP server on loopback (aiosmtpd) that keeps every message it accepts.

    with SmtpServer() as smtp:                    # or the ``smtp_server`` fixture
        settings = NotifierSettings(smtp_host=smtp.host, smtp_port=smtp.port, ...)
        smtp.stop()                               # an outage: connections are refused
        smtp.start()                              # back, on the same port, with what it had
        await smtp.wait_for(lambda got: len(got) >= 3)
        smtp.by_message_id()                      # {Message-ID: [every copy received]}
        smtp.connections()                        # how many client connections carried those messages
        smtp.all_ended()                          # every connection that carried those has ended
    SmtpServer(idle_timeout=0.5)                  # hangs up on a client idle that long, as servers do

The server runs in aiosmtpd's own thread and event loop, so it answers while the test's loop waits.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from tests.support.waiting import eventually


@dataclass(frozen=True)
class Received:
    """One accepted message: the SMTP envelope and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    connection: tuple[str, int] = ("", 0)  # the client's address and port: one per SMTP connection

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def body(self, subtype: str = "plain") -> str:
        """The text (``plain``) or HTML (``html``) alternative."""
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_subtype() != subtype:
            raise AssertionError(f"no text/{subtype} part")
        return str(part.get_content())  # type: ignore[attr-defined]

    def raw_text(self) -> str:
        """Everything a recipient could read: headers and every part."""
        parts = [f"{k}: {v}" for k, v in self.message.items()]
        parts += [self.body("plain"), self.body("html")]
        return "\n".join(parts)


class _Capture:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.ended: set[tuple[str, int]] = set()  # client addresses of connections that ended

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = BytesParser(policy=policy.default).parsebytes(raw)
        with self.lock:
            self.messages.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    message=message,  # type: ignore[arg-type]
                    connection=tuple(session.peer),
                )
            )
        return "250 Message accepted for delivery"


class _CountingSMTP(SMTP):
    """aiosmtpd's server protocol, noting the connections that ended (say, hung up on when idle)."""

    def __init__(self, handler: _Capture, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._counts = handler

    def connection_lost(self, error: Exception | None) -> None:
        peer = tuple(self.session.peer) if self.session else ("", 0)
        super().connection_lost(error)
        with self._counts.lock:
            self._counts.ended.add(peer)  # type: ignore[arg-type]


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    """An aiosmtpd server with a fixed loopback port, so it can go down and come back at the same place."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, idle_timeout: float = 300
    ) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.idle_timeout = idle_timeout
        self._capture = _Capture()
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            return
        controller = _Controller(
            self._capture, hostname=self.host, port=self.port, ready_timeout=10, timeout=self.idle_timeout
        )
        # The port may linger for a moment after a stop.
        for attempt in Retrying(
            stop=stop_after_delay(10),
            wait=wait_fixed(0.1),
            retry=retry_if_exception_type((OSError, RuntimeError)),
            reraise=True,
        ):
            with attempt:
                controller.start()
        self._controller = controller

    def stop(self) -> None:
        """An outage: new connections are refused until ``start``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def messages(self) -> list[Received]:
        with self._capture.lock:
            return list(self._capture.messages)

    def by_message_id(self) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = defaultdict(list)
        for received in self.messages:
            grouped[received.message_id].append(received)
        return dict(grouped)

    def connections(self) -> int:
        """How many SMTP connections the messages received so far came over."""
        return len({m.connection for m in self.messages})

    def all_ended(self) -> bool:
        """Whether every connection that carried a message so far has ended (closed by the client, or
        hung up on); connections that carried none, like the controller's own start-up probe, aside."""
        with self._capture.lock:
            return {m.connection for m in self._capture.messages} <= self._capture.ended

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]

    async def wait_for(
        self, check: Callable[[list[Received]], bool], *, within: float = 30, what: str = "messages"
    ) -> list[Received]:
        """The messages received, once ``check(messages)`` holds; fail with ``what`` when it never does."""

        async def received() -> list[Received] | None:
            got = self.messages
            return got if check(got) else None

        return await eventually(received, within=within, interval=0.05, what=what)

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A running SMTP server of this test's own."""
    with SmtpServer() as server:
        yield server
