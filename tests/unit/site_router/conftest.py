"""Site-router unit tests run with the network cut: geocoding must work from the shipped data alone."""

import socket
from collections.abc import Iterator

import pytest


class NetworkBlockedError(RuntimeError):
    """Raised by any attempt to resolve a name or open a connection during these tests."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise NetworkBlockedError(f"network access attempted: {args!r}")


@pytest.fixture(scope="package", autouse=True)
def no_network() -> Iterator[None]:
    """A guard, not a mock: name resolution and outbound connections raise instead of happening.

    Package-scoped so that it is in force before module-scoped fixtures load data, and lifted after this
    package's last test (integration tests elsewhere need the network).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket.socket, "connect_ex", _refuse)
        patch.setattr(socket, "getaddrinfo", _refuse)
        patch.setattr(socket, "create_connection", _refuse)
        yield
