"""INFO for exporters (issue 13): a redis_exporter-style scrape (INFO ALL split into
`name:value` lines, db/cmdstat/errorstat lines split on `,` and `=`) finds every
field the issue lists, with Redis' names and sane values."""

from __future__ import annotations

import os
import re
import threading
import time

import redis
from refserver import RawConn, redis_ref  # noqa: F401  (fixture)

# The fields the issue lists (and the brief adds), with Redis' names.
EXPORTER_FIELDS = (
    "instantaneous_ops_per_sec", "instantaneous_input_kbps", "instantaneous_output_kbps",
    "total_net_input_bytes", "total_net_output_bytes", "total_system_memory", "total_system_memory_human",
    "config_file", "executable", "process_id", "run_id", "tcp_port", "uptime_in_seconds", "uptime_in_days",
    "connected_clients", "blocked_clients", "total_connections_received", "rejected_connections",
    "total_commands_processed", "total_error_replies", "rdb_changes_since_last_save", "rdb_bgsave_in_progress",
    "rdb_last_save_time", "rdb_last_bgsave_status", "rdb_last_bgsave_time_sec", "aof_enabled",
    "aof_rewrite_in_progress", "aof_last_write_status", "aof_last_bgrewrite_status", "loading",
    "expired_keys", "evicted_keys", "keyspace_hits", "keyspace_misses", "latest_fork_usec",
    "used_cpu_sys", "used_cpu_user",
)
# durakv's own persistence fields (the log and the snapshots).
DURAKV_PERSISTENCE = ("log_durable_seq", "log_fsyncs", "log_size_bytes", "log_segments", "durability")


def scrape(text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """As redis_exporter's extractInfoMetrics: plain fields, and the `k=v,k=v` lines
    (db0, cmdstat_*, errorstat_*) as dicts."""
    fields: dict[str, str] = {}
    nested: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(":")
        if re.match(r"^(db\d+|cmdstat_|errorstat_)", name):
            nested[name] = dict(part.split("=", 1) for part in value.split(","))
        else:
            assert name not in fields, f"INFO reports {name} twice"  # an exporter keeps one, silently
            fields[name] = value
    return fields, nested


def info_text(port: int) -> str:
    """INFO ALL's text, unparsed (redis-py would parse it into a dict)."""
    conn = RawConn(port)
    try:
        return conn.value("INFO", "ALL").decode()
    finally:
        conn.close()


def test_exporter_scrape_finds_every_field_with_sane_values(server_factory, tmp_path, redis_ref):
    config = tmp_path / "durakv.toml"
    config.write_text("# scraped\nhz = 10\n")
    srv = server_factory(shards=2, extra_args=("--config", str(config)))
    r = srv.client()
    r.set("counter", "x")
    try:
        r.incr("counter")  # INCRBY: failed_calls and errorstat_ERR
    except redis.ResponseError:
        pass
    try:
        r.execute_command("GET")  # rejected_calls: wrong arity
    except redis.ResponseError:
        pass
    for i in range(20):
        r.set(f"k{i}", i, ex=1000 if i % 2 else None)
    blocker = srv.client()
    blocked = threading.Thread(target=lambda: blocker.blpop(["nothing"], timeout=5), daemon=True)
    blocked.start()
    before, _ = scrape(info_text(srv.port))
    value = os.urandom(100_000)
    r.set("big", value)
    assert r.get("big") == value
    pipe = r.pipeline(transaction=False)
    for _ in range(2000):
        pipe.ping()
    pipe.execute()
    deadline = time.monotonic() + 5
    while int(scrape(info_text(srv.port))[0]["blocked_clients"]) < 1:
        assert time.monotonic() < deadline, "BLPOP never counted in blocked_clients"
        time.sleep(0.05)
    time.sleep(0.25)  # the rates are sampled every 100 ms (Redis' serverCron period): let one sample see the PINGs
    fields, nested = scrape(info_text(srv.port))
    missing = [name for name in EXPORTER_FIELDS + DURAKV_PERSISTENCE if name not in fields]
    assert not missing, missing

    # Redis' names: every field listed is one redis-server 7.0 reports too.
    theirs, _ = scrape(info_text(redis_ref.port))
    assert [name for name in EXPORTER_FIELDS if name not in theirs] == []

    assert int(fields["instantaneous_ops_per_sec"]) > 0, "2000 PINGs in the last 1.6 s"
    assert float(fields["instantaneous_input_kbps"]) > 0 and float(fields["instantaneous_output_kbps"]) > 0
    assert int(fields["total_net_input_bytes"]) - int(before["total_net_input_bytes"]) >= 100_000 + 2000 * 14
    assert int(fields["total_net_output_bytes"]) - int(before["total_net_output_bytes"]) >= 100_000 + 2000 * 7
    assert int(fields["total_system_memory"]) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert re.fullmatch(r"\d+\.\d\d[KMGTP]", fields["total_system_memory_human"])
    assert fields["config_file"] == str(config.resolve())
    assert os.path.isabs(fields["executable"]) and os.access(fields["executable"], os.X_OK)
    assert int(fields["process_id"]) == srv.child_pid("router", 0)
    assert re.fullmatch(r"[0-9a-f]{40}", fields["run_id"])
    assert int(fields["tcp_port"]) == srv.port
    assert int(fields["uptime_in_seconds"]) >= 0 and fields["uptime_in_days"] == "0"
    assert int(fields["connected_clients"]) >= 2
    assert int(fields["blocked_clients"]) == 1
    assert int(fields["total_connections_received"]) >= 2
    assert fields["rejected_connections"] == "0"
    assert int(fields["total_commands_processed"]) >= 2000
    assert fields["aof_enabled"] == "1" and fields["aof_last_write_status"] == "ok"
    assert fields["rdb_last_bgsave_status"] == "ok" and fields["rdb_bgsave_in_progress"] == "0"
    assert int(fields["log_durable_seq"]) >= 22 and int(fields["log_fsyncs"]) >= 1
    assert int(fields["log_size_bytes"]) >= 100_000

    assert nested["db0"]["keys"] == "22" and nested["db0"]["expires"] == "10"
    assert int(nested["cmdstat_set"]["calls"]) == 22
    assert nested["cmdstat_incrby"]["failed_calls"] == "1" and nested["cmdstat_incrby"]["calls"] == "1"
    assert nested["cmdstat_get"]["rejected_calls"] == "1"
    assert int(nested["cmdstat_ping"]["calls"]) == 2000
    assert int(nested["errorstat_ERR"]["count"]) >= 2  # and whatever redis-py's handshake was refused
    assert int(fields["total_error_replies"]) == sum(int(v["count"]) for k, v in nested.items()
                                                     if k.startswith("errorstat_"))

    r.config_resetstat()
    fields, _ = scrape(info_text(srv.port))
    assert int(fields["total_net_input_bytes"]) < 1000  # CONFIG RESETSTAT clears them, as Redis does
    blocked.join()


def test_config_file_key_is_not_a_setting(tmp_path):
    from durakv.shards.config import load_config

    config = tmp_path / "durakv.toml"
    config.write_text('config-file = "/etc/other.toml"\n')
    try:
        load_config(str(config), {})
    except ValueError as e:
        assert "config-file is not a setting" in str(e)
    else:
        raise AssertionError("config-file accepted from the file")
    assert load_config(None, {}).config_file == ""
