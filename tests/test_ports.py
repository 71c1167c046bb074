"""The ports the tests and the demo pick for servers they start: never one that the kernel may
give an outgoing connection first."""

from __future__ import annotations

import socket

from worker.devtools import outbox
from worker.devtools.outbox import free_port


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_bound() -> None:
    # Given the kernel's range for outgoing connections (and bind(0))
    low, high = outbox._ephemeral_range()
    assert 1024 < low <= high
    # When ports are picked
    ports = [free_port() for _ in range(20)]
    # Then each lies between the well-known services and that range, and is free to bind
    assert all(10000 <= port < low for port in ports), ports
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()
