"""MEMORY MALLOC-STATS (the allocators' figures of every process, where redis-server
prints jemalloc's) and MEMORY DOCTOR's rules (server/memory_commands.py)."""

from __future__ import annotations

import re

from refserver import RawConn

from durakv.server.memory_commands import (
    DOCTOR_BIG_CLIENT_BUFFERS, DOCTOR_CLOSING, DOCTOR_EMPTY, DOCTOR_FINE, DOCTOR_HIGH_RSS, DOCTOR_ISSUES,
    DOCTOR_MANY_SCRIPTS_TEXT, DOCTOR_PEAK, doctor_report,
)

MB = 1 << 20


def in_use_bytes(text: str, process: str) -> int:
    """A process's bytes in use by malloc: its mallinfo2 uordblks plus mmapped regions."""
    section = text.split(f"\n{process} (pid ", 1)[1].split("\n\n", 1)[0]
    fields = dict(re.findall(r"mallinfo2\.(\w+): (\d+)", section))
    return int(fields["uordblks"]) + int(fields["hblkhd"])


def test_malloc_stats_reports_every_process_and_moves_with_the_data(server_factory, redis_ref):
    theirs = RawConn(redis_ref.port, proto=3).call("MEMORY", "MALLOC-STATS")
    srv = server_factory(shards=2)
    conn = RawConn(srv.port, proto=3)
    ours = conn.call("MEMORY", "MALLOC-STATS")
    # Both a verbatim text in RESP3 (a bulk string in RESP2), as Redis built with jemalloc answers.
    assert theirs[:1] == ours[:1] == b"="
    assert theirs.split(b"\r\n", 1)[1][:4] == ours.split(b"\r\n", 1)[1][:4] == b"txt:"
    text = ours.split(b"\r\n", 1)[1][4:].decode()
    pids = {"router 0": srv.child_pid("router", 0), "shard 0": srv.child_pid("shard", 0),
            "shard 1": srv.child_pid("shard", 1)}
    for process, pid in pids.items():
        assert f"\n{process} (pid {pid})\n" in text, text
    assert text.startswith("___ Begin durakv malloc statistics ___") and "--- End durakv malloc statistics ---" in text
    before = in_use_bytes(text, "shard 0")
    # 32 MB on shard 0 (its slots: the keys' hash tag is chosen by CLUSTER KEYSLOT below 8192).
    tag = next(t for t in (f"t{i}" for i in range(100)) if int(conn.call("CLUSTER", "KEYSLOT", t)[1:-2]) < 8192)
    value = b"x" * 100_000
    for i in range(320):
        assert conn.call("SET", f"{{{tag}}}k{i}", value) == b"+OK\r\n"
    after_text = RawConn(srv.port).call("MEMORY", "MALLOC-STATS").split(b"\r\n", 1)[1].decode()
    after = in_use_bytes(after_text, "shard 0")
    print(f"shard 0 malloc in use: {before / MB:.1f} MB, after 32 MB of values {after / MB:.1f} MB")
    assert after - before >= 30 * MB
    assert RawConn(srv.port).call("MEMORY", "MALLOC-STATS", "x") == RawConn(redis_ref.port).call(
        "MEMORY", "MALLOC-STATS", "x")


def figures(total_mb: float, startup_mb: float = 60, peak_mb: float | None = None, rss_mb: float | None = None,
            clients_mb: float = 0) -> dict:
    return {"total": int(total_mb * MB), "startup": int(startup_mb * MB), "peak": int((peak_mb or total_mb) * MB),
            "rss": int((rss_mb or total_mb) * MB), "clients": int(clients_mb * MB), "keys": 1, "expires": 0}


def test_doctor_applies_redis_rules_to_durakvs_figures():
    assert doctor_report(figures(62), clients=1, scripts=0) == DOCTOR_EMPTY  # under 5 MB past startup
    assert doctor_report(figures(100, rss_mb=130), clients=1, scripts=0) == DOCTOR_FINE
    report = doctor_report(figures(100, peak_mb=160, rss_mb=160, clients_mb=1), clients=2, scripts=1001)
    assert report == (DOCTOR_ISSUES + DOCTOR_PEAK + DOCTOR_HIGH_RSS + DOCTOR_BIG_CLIENT_BUFFERS
                      + DOCTOR_MANY_SCRIPTS_TEXT + DOCTOR_CLOSING)
    # Each rule's bounds, as Redis': a ratio over 1.4 but under 10 MB of overhead is no issue.
    assert doctor_report(figures(20, startup_mb=0, rss_mb=29), clients=1, scripts=1000) == DOCTOR_FINE
