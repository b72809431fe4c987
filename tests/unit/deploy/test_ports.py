"""Ports for the services of a local stack (``trialroute run``, the e2e and fault suites, benchmarks)."""

from __future__ import annotations

import socket
from pathlib import Path

from services.devstack.stack import SERVER_PORT_BLOCKS, free_port


def test_ports_handed_out_are_distinct_free_and_below_the_ephemeral_range() -> None:
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < first_ephemeral for port in ports)
    assert not [p for p in ports for block in SERVER_PORT_BLOCKS if p in block], "PostgreSQL's or Kafka's"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # still free: nothing took it meanwhile
