"""conftest's guard: tests may use sockets on this machine only (no traffic leaves it)."""

import socket

import pytest


def test_names_and_addresses_off_this_machine_are_refused_before_any_packet():
    with pytest.raises(OSError, match="off this machine"):
        socket.getaddrinfo("www.cs.toronto.edu", 443)
    with pytest.raises(OSError, match="off this machine"):
        socket.create_connection(("ufldl.stanford.edu", 80), timeout=1)
    with socket.socket() as sock, pytest.raises(OSError, match="off this machine"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1 (RFC 5737), never routed anyway
    with socket.socket() as sock, pytest.raises(OSError, match="off this machine"):
        sock.connect_ex(("192.0.2.1", 80))


def test_loopback_connections_still_work():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            accepted, _ = server.accept()
            accepted.close()
