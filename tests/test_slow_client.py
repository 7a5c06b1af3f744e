"""One slow client must not stall a shard or the other clients (issue 9, item 11):
backpressure acts on the client whose output piles up (its further requests wait
unread), never on the shared router <-> shard link, and each reply is held once.
scripts/slow_client.py runs the same load at full size and against redis-server."""

from __future__ import annotations

import socket
import threading
import time

import redis

VALUE_BYTES = 100_000
SLOW_GETS = 6000  # 600 MB of replies asked for and never read
LOAD_SECONDS = 2.0
MAX_GET_S = 2.0  # generous: redis-server stalls others for up to ~0.8 s under this load
MAX_RSS_GROWTH_MB = 300


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def latencies(port: int, key: str, seconds: float) -> list[float]:
    client = redis.Redis(port=port, socket_timeout=30)
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        assert client.get(key) == b"v"
        out.append(time.perf_counter() - t0)
    client.close()
    return out


def p99_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)] * 1000


def test_a_client_that_never_reads_stalls_only_itself(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    # "{a}" and "{b}" hash to slots 15495 and 3300: different shards of two.
    r.set("{a}big", b"x" * VALUE_BYTES)
    r.set("{a}small", b"v")
    r.set("{b}small", b"v")
    pids = {"router": srv.child_pid("router", 0), "shard 0": srv.child_pid("shard", 0),
            "shard 1": srv.child_pid("shard", 1)}
    idle = {key: latencies(srv.port, key, 0.5) for key in ("{a}small", "{b}small")}
    before = {name: rss_mb(pid) for name, pid in pids.items()}

    slow = socket.create_connection(("127.0.0.1", srv.port))
    request = b"*2\r\n$3\r\nGET\r\n$6\r\n{a}big\r\n" * 100
    sent = [0]

    def pump() -> None:
        try:
            for _ in range(SLOW_GETS // 100):
                slow.sendall(request)
                sent[0] += 100
        except OSError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    loaded: dict[str, list[float]] = {}
    workers = [threading.Thread(target=lambda k=k: loaded.__setitem__(k, latencies(srv.port, k, LOAD_SECONDS)))
               for k in ("{a}small", "{b}small")]
    for w in workers:
        w.start()
    peak = dict(before)
    while any(w.is_alive() for w in workers):
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_mb(pid))
        time.sleep(0.05)
    for w in workers:
        w.join()
    for key in ("{a}small", "{b}small"):
        print(f"{key}: p99 idle {p99_ms(idle[key]):.2f} ms, under load {p99_ms(loaded[key]):.2f} ms, "
              f"slowest {max(loaded[key]) * 1000:.1f} ms, {len(loaded[key])} GETs")
    print(f"slow client sent {sent[0]} GETs; RSS MB before {before}, peak {peak}")
    assert sent[0] >= 1000, "the slow client must have pipelined a real load"
    for key in ("{a}small", "{b}small"):
        assert max(loaded[key]) < MAX_GET_S, f"a GET of {key} waited {max(loaded[key]):.1f} s"
    for name in pids:
        assert peak[name] - before[name] < MAX_RSS_GROWTH_MB, f"{name} grew by {peak[name] - before[name]:.0f} MB"
    slow.close()
    assert r.get("{a}small") == b"v"
    r.close()


def test_output_buffer_hard_limit_closes_the_slow_client(server_factory):
    """client-output-buffer-limit for normal clients (Redis' default 0 0 0 is no
    limit): with a hard limit, a client whose queued output passes it is closed."""
    srv = server_factory(shards=1)
    r = srv.client()
    r.set("big", b"x" * VALUE_BYTES)
    assert r.config_set("client-output-buffer-limit", "normal 1mb 0 0") is True
    slow = socket.create_connection(("127.0.0.1", srv.port))
    slow.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 200)  # 20 MB of replies
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.client_list() and len(r.client_list()) > 1:
        time.sleep(0.05)
    assert len(r.client_list()) == 1, "the client over its hard limit must be closed"
    assert "overcoming of output buffer limits" in srv.log()
    slow.settimeout(10)
    received = 0
    try:
        while chunk := slow.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    assert received < 200 * VALUE_BYTES, "it must not have got every reply"
    slow.close()
    assert r.get("big") == b"x" * VALUE_BYTES
    r.close()
