"""LATENCY (issue 13): events kept where commands execute (the shards, and the log's
fsync in their commit threads) and merged by the router; per-command histograms
(LATENCY HISTOGRAM, INFO latencystats) with redis-server 7.0's reply shapes,
bucket labels, errors and help."""

from __future__ import annotations

import os
import re
import time

from refserver import RawConn, decode, pair, pair3, redis_ref  # noqa: F401  (fixtures)

from durakv.shards.latency import cdf, hdr_index, percentile_ns
from durakv.shards.slots import key_slot, slot_owner_table
from durakv.snapshotter.runner import read_status

# A Lua loop that keeps a shard busy for ~150+ ms of CPU (5M rounds take ~40 ms on a quiet
# machine); the threshold the tests set stays above what ordinary commands take on a loaded
# machine: at load 30 on 2 cores a command took 31 ms of wall time, past the old 30 ms.
BUSY_SCRIPT = "local i = 0 while i < 20000000 do i = i + 1 end return i"
THRESHOLD_MS = 100


def test_help_errors_and_command_info_match_redis(pair):
    for conn in (pair.ours, pair.theirs):
        conn.call("CONFIG", "SET", "latency-monitor-threshold", "0")
        conn.call("LATENCY", "RESET")
    pair.same("LATENCY", "HELP")
    pair.same("LATENCY", "HELP", "xxx")
    pair.same("LATENCY")
    pair.same("LATENCY", "NOPE")
    for sub in ("LATEST", "DOCTOR"):
        pair.same("LATENCY", sub, "x")
    for sub in ("HISTORY", "GRAPH"):
        pair.same("LATENCY", sub)
    pair.same("LATENCY", "HISTORY", "blabla")
    pair.same("LATENCY", "RESET", "blabla")
    pair.same("LATENCY", "GRAPH", "blabla")
    pair.same("LATENCY", "LATEST")
    pair.same("LATENCY", "DOCTOR")  # monitoring off and nothing kept: Redis' refusal text
    pair.same("LATENCY", "HISTOGRAM", "blabla", "blabla2")
    for sub in ("latest", "history", "reset", "doctor", "graph", "histogram", "help"):
        ours, theirs = (decode(c.call("COMMAND", "INFO", f"latency|{sub}"))[0][0] for c in (pair.ours, pair.theirs))
        assert ours == theirs, sub
    for value in ("abc", "50 101", "-1", "50 x", "", "50.0 99.50 1e1", "50 99 99.9"):
        pair.same("CONFIG", "SET", "latency-tracking-info-percentiles", value)
        pair.same("CONFIG", "GET", "latency-tracking-info-percentiles")


def test_histogram_reply_shape_and_buckets_match_redis(pair3):
    for conn in (pair3.ours, pair3.theirs):
        conn.call("CONFIG", "RESETSTAT")
        for command in (("SET", "a", "b"), ("SET", "c", "d"), ("GET", "a"), ("HSET", "f", "k", "v"),
                        ("CLIENT", "ID"), ("CLIENT", "GETNAME")):
            conn.call(*command)
    ours, theirs = (_maps(decode(c.call("LATENCY", "HISTOGRAM", "set", "get", "hset", "nope", "client"))[0])
                    for c in (pair3.ours, pair3.theirs))
    assert sorted(ours) == sorted(theirs) == sorted([b"set", b"get", b"hset", b"client|id", b"client|getname"])
    labels = {1, 2, 4, 8, 16, 33, 66, 132, 264, 528, 1056, 2113, 4227, 8454, 16908, 33816, 67633}
    for name, body in ours.items():
        assert list(body) == list(theirs[name]) == [b"calls", b"histogram_usec"]
        assert body[b"calls"] == theirs[name][b"calls"]
        buckets = list(body[b"histogram_usec"].items())
        assert buckets[-1][1] == body[b"calls"]
        assert all(label in labels for label, _ in buckets), buckets  # Redis' HDR bucket bounds
        assert [count for _, count in buckets] == sorted({count for _, count in buckets})
    everything = _maps(decode(pair3.ours.call("LATENCY", "HISTOGRAM"))[0])
    assert {b"set", b"get", b"hset", b"config|resetstat"} <= set(everything)
    ours_info, theirs_info = (decode(c.call("INFO", "latencystats"))[0] for c in (pair3.ours, pair3.theirs))
    line = re.compile(rb"latency_percentiles_usec_([a-z|]+):p50=\d+\.\d{3},p99=\d+\.\d{3},p99\.9=\d+\.\d{3}")
    names = [set(m.group(1) for m in line.finditer(text)) for text in (ours_info, theirs_info)]
    assert {b"set", b"get", b"hset", b"client|id"} <= names[0] & names[1]
    assert ours_info.startswith(b"txt:# Latencystats\r\n")


def _maps(value):
    """RESP3 maps as RawConn decodes them (lists of pairs) into dicts, recursively."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {k: _maps(v) for k, v in value}
    return value


def test_hdr_buckets_and_percentiles_as_redis():
    # Redis records whole microseconds times 1000 in an HdrHistogram of 2 significant figures.
    counts: dict[int, int] = {}
    for usec in (5, 5, 6, 15, 28, 91):
        index = hdr_index(usec * 1000)
        counts[index] = counts.get(index, 0) + 1
    assert cdf(counts) == [(8, 3), (16, 4), (33, 5), (132, 6)]
    assert percentile_ns(counts, 50) == 6015  # the 3rd of 6 values (hdr_value_at_percentile)
    assert percentile_ns(counts, 99.9) == 91135
    assert percentile_ns({hdr_index(6000): 1}, 50) == 6015


def _busy_on(r, shard: int, shards: int) -> None:
    owner = slot_owner_table(shards)
    key = next(f"k{i}" for i in range(10000) if owner[key_slot(f"k{i}".encode())] == shard)
    r.eval(BUSY_SCRIPT, 1, key)


def test_command_events_kept_by_shards_and_merged(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    r.config_set("latency-monitor-threshold", THRESHOLD_MS)
    _busy_on(r, 1, 2)
    latest = r.execute_command("LATENCY", "LATEST")
    assert [row[0] for row in latest] == [b"command"], latest
    name, at_s, last_ms, max_ms = latest[0]
    assert last_ms >= THRESHOLD_MS and max_ms >= last_ms
    print(f"EVAL busy loop on shard 1: {last_ms} ms")
    assert r.execute_command("LATENCY", "HISTORY", "command") == [[at_s, last_ms]]
    # The event is the shard's: its own port answers with it, the other shard's does not.
    assert [row[0] for row in srv.shard_client(1).execute_command("LATENCY", "LATEST")] == [b"command"]
    assert srv.shard_client(0).execute_command("LATENCY", "LATEST") == []
    before_s = int(time.time())
    graph = r.execute_command("LATENCY", "GRAPH", "command").decode()
    after_s = int(time.time())
    assert graph.startswith(f"command - high {last_ms} ms, low {last_ms} ms (all time high {max_ms} ms)\n" +
                            "-" * 80 + "\n")
    # The event's age in seconds, labelled downwards: a loaded machine may take seconds to get here.
    ages = range(before_s - at_s, after_s - at_s + 1)
    assert any(graph.endswith("_\n \n" + "".join(f"{c}\n" for c in f"{age}s")) for age in ages), (graph, ages)
    doctor = r.execute_command("LATENCY", "DOCTOR").decode()
    assert "1. command: 1 latency spikes" in doctor
    assert "Check your Slow Log" in doctor
    hist = RawConn(srv.port).value("LATENCY", "HISTOGRAM", "eval")
    assert hist[0] == b"eval" and hist[1][:2] == [b"calls", 1]
    assert r.execute_command("LATENCY", "RESET") == 1
    assert r.execute_command("LATENCY", "LATEST") == []
    r.config_set("latency-monitor-threshold", 0)
    _busy_on(r, 0, 2)
    assert r.execute_command("LATENCY", "LATEST") == []  # threshold 0: monitoring off


def test_log_fsync_is_an_event(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text("test-fsync-delay-ms = 3\n")
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    r = srv.client()
    r.config_set("latency-monitor-threshold", 2)
    for i in range(3):
        r.set(f"k{i}", "v")
    events = {row[0]: row for row in r.execute_command("LATENCY", "LATEST")}
    assert b"aof-fsync-always" in events, events
    assert events[b"aof-fsync-always"][2] >= 2
    assert "- Your fsync policy is set to 'always'." in r.execute_command("LATENCY", "DOCTOR").decode()
    assert r.execute_command("LATENCY", "RESET", "AOF-FSYNC-ALWAYS", "nope") == 1
    assert b"aof-fsync-always" not in {row[0] for row in r.execute_command("LATENCY", "LATEST")}


def test_snapshot_upload_is_an_event(server_factory, tmp_path):
    store = tmp_path / "store"
    srv = server_factory(shards=1, extra_args=("--snapshot-url", f"file://{store}"))
    r = srv.client()
    r.set("big", os.urandom(4 * 1024 * 1024))
    before = r.lastsave()
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    r.bgsave()
    deadline = time.monotonic() + 60
    while r.lastsave() <= before:
        assert time.monotonic() < deadline, "no snapshot published"
        time.sleep(0.05)
    uploads = read_status(str(srv.data_dir)).shards[0].upload_samples
    assert len(uploads) == 1, uploads
    print(f"4 MiB snapshot upload to a file:// store: {uploads[0][1]} ms")
    assert r.execute_command("LATENCY", "HISTORY", "snapshot-upload") == []  # threshold 0: off
    r.config_set("latency-monitor-threshold", 1)
    expected = [[second, ms] for second, ms in uploads if ms >= 1]
    assert r.execute_command("LATENCY", "HISTORY", "snapshot-upload") == expected
    assert srv.shard_client(0).execute_command("LATENCY", "HISTORY", "snapshot-upload") == expected
    assert r.execute_command("LATENCY", "RESET", "snapshot-upload") == (1 if expected else 0)
    assert r.execute_command("LATENCY", "HISTORY", "snapshot-upload") == []
