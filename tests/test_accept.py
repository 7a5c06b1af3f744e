"""Connections that wait in the listen backlog together are all taken, several per
wakeup of the accept loop (server/front.py MAX_ACCEPTS_PER_WAKEUP), and each is
served and counted once."""

from __future__ import annotations

import os
import signal
import socket

from durakv.server.front import MAX_ACCEPTS_PER_WAKEUP


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(64)
        assert chunk, "connection closed before its reply"
        data += chunk
    return data


def test_a_burst_of_waiting_connections_is_accepted_and_served(server_factory):
    srv = server_factory(shards=1)
    admin = srv.client()
    before = admin.info("stats")["total_connections_received"]
    router = srv.child_pid("router", 0)
    count = 2 * MAX_ACCEPTS_PER_WAKEUP + 7  # more than two wakeups' worth
    socks = []
    # While the router is stopped the kernel completes the handshakes into the listen
    # backlog, so that the router finds them all waiting at once.
    os.kill(router, signal.SIGSTOP)
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\nburst:%d\r\n$1\r\n1\r\n" % (len(b"burst:%d" % n), n))
            socks.append(sock)
    finally:
        os.kill(router, signal.SIGCONT)
    try:
        assert [read_line(sock) for sock in socks] == [b"+OK\r\n"] * count
        assert admin.info("stats")["total_connections_received"] - before == count
        assert admin.info("clients")["connected_clients"] == count + 1
        assert len(admin.keys("burst:*")) == count
    finally:
        for sock in socks:
            sock.close()
