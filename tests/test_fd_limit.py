"""File descriptors (issue 9, item 12): under a low `ulimit -n` the router lowers
maxclients with redis-server's warnings, and when accept runs out of descriptors
every client still gets an answer: service, or `-ERR max number of clients reached`."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys

import pytest
import redis

from conftest import DurakvServer
from proctools import free_port

NOFILE = 256
SHARDS = 2
EXPECTED_MAXCLIENTS = NOFILE - 32 - SHARDS  # Redis' 32 reserved, plus one link per shard
CLIENTS = 300
LOWERED_NOFILE = 128
ERR_MAX_CLIENTS = b"-ERR max number of clients reached\r\n"


class LowUlimitServer(DurakvServer):
    """A server whose processes start with RLIMIT_NOFILE soft = hard = NOFILE."""

    def start(self) -> "LowUlimitServer":
        self.port = free_port()
        argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(self.port),
                "--shards", str(self.shards), "--data-dir", str(self.data_dir)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)))
        self.wait_ready()
        return self


def ping_many(port: int, count: int) -> tuple[int, int, list[socket.socket]]:
    """Open `count` connections and PING on each, keeping them open. Every one
    must answer within the timeout: (served, refused, sockets)."""
    served = refused = 0
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(100)  # a mute socket raises socket.timeout here
            assert chunk or reply == b"", "connection closed mid-reply"
            if not chunk:
                break
            reply += chunk
        if reply == b"+PONG\r\n":
            served += 1
        else:
            assert reply == ERR_MAX_CLIENTS, reply
            refused += 1
    return served, refused, socks


def test_low_ulimit_lowers_maxclients_and_no_client_is_left_mute(tmp_path):
    srv = LowUlimitServer(tmp_path / "data", shards=SHARDS)
    try:
        srv.start()
        r = srv.client()
        assert r.config_get("maxclients") == {"maxclients": str(EXPECTED_MAXCLIENTS)}
        log = srv.log()
        assert "You requested maxclients of 10000 requiring at least 10034 max file descriptors." in log
        assert (f"Current maximum open files is {NOFILE}. maxclients has been reduced to "
                f"{EXPECTED_MAXCLIENTS} to compensate for low ulimit.") in log

        served, refused, socks = ping_many(srv.port, CLIENTS)
        print(f"maxclients {EXPECTED_MAXCLIENTS}: {served} served, {refused} refused")
        assert served == EXPECTED_MAXCLIENTS - 1  # r holds one slot
        assert refused == CLIENTS - served
        for sock in socks:
            sock.close()

        assert r.config_set("maxclients", "200") is True  # lower is always fine
        with pytest.raises(redis.ResponseError) as refused_set:
            r.config_set("maxclients", "10000")
        assert str(refused_set.value) == (
            "CONFIG SET failed (possibly related to argument 'maxclients') - The operating system is not "
            f"able to handle the specified number of clients, try with {EXPECTED_MAXCLIENTS}")
        assert r.config_get("maxclients") == {"maxclients": "200"}

        # When accept itself fails (EMFILE: here the router's limit is cut below
        # what maxclients needs), the spare descriptor still answers every connection.
        try:
            resource.prlimit(srv.child_pid("router", 0), resource.RLIMIT_NOFILE, (LOWERED_NOFILE, LOWERED_NOFILE))
        except PermissionError:
            pytest.skip("cannot lower another process's RLIMIT_NOFILE here")
        served, refused, socks = ping_many(srv.port, CLIENTS)
        print(f"maxclients 200 under a cut ulimit of {LOWERED_NOFILE}: {served} served, {refused} refused")
        assert refused > 0 and served < LOWERED_NOFILE and served + refused == CLIENTS
        for sock in socks:
            sock.close()
        assert r.ping() is True
        emfile_lines = [line for line in srv.log().splitlines() if "Too many open files" in line]
        assert 1 <= len(emfile_lines) <= 3, emfile_lines  # once per interval, with a count
        r.close()
    finally:
        srv.stop()
