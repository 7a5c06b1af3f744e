"""Operator mistakes end in one line on stderr and a non-zero exit, never a
traceback or a process that keeps running (issue 9, items 2, 3 and 8): a second
server or an offline tool on a live data dir, bad flags and config values, a
shard started with the wrong shard count, and a corrupt log (reported by the
router, repaired with `durakv log truncate`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis
from conftest import DurakvServer
from proctools import free_port
from snapshot_support import cli, manual_config

import durakv.log as wal
from durakv.log.layout import shard_failed_path, shard_log_dir
from durakv.shards.records import decode_record
from durakv.shards.slots import key_slot, slot_ranges
from durakv.log.layout import topology_path

MISTAKE_TIMEOUT_S = 60  # a mistake must end the process; old code kept serving until this
# No supervised snapshotter: these tests run snapshots themselves, or need the log
# not to be covered by a local snapshot.
FAST_STARTUP = "startup-shard-wait-ms = 500\nsnapshotter = false\n"


def durakv(*argv: str) -> subprocess.CompletedProcess:
    """Run the CLI; a process still running after MISTAKE_TIMEOUT_S fails the test."""
    try:
        return subprocess.run([sys.executable, "-m", "durakv.server.cli", *argv], capture_output=True,
                              text=True, timeout=MISTAKE_TIMEOUT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"durakv {' '.join(argv)} was still running after {MISTAKE_TIMEOUT_S} s")


def one_line(out: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (and no traceback anywhere)."""
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# --- one owner per data dir -------------------------------------------------------------------


def test_second_serve_on_same_data_dir_exits_with_one_line(server_factory):
    first = server_factory(shards=2)
    first.client().set("k", "first")
    out = durakv("serve", "--port", str(free_port()), "--shards", "2", "--data-dir", str(first.data_dir))
    line = one_line(out)
    assert out.returncode == 1
    assert line == (f"durakv: data dir {first.data_dir} is locked by pid {first.proc.pid} (durakv serve port "
                    f"{first.port}); stop that process first, or pass another --data-dir")
    assert first.client().get("k") == b"first"


def test_restore_force_into_live_data_dir_is_refused(server_factory, s3, tmp_path):  # noqa: F811
    _, _, url = s3
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    client = srv.client()
    client.set("before", "1")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    client.set("after", "2")   # acknowledged after the snapshot: a restore would lose it
    out = durakv("restore", "--from", url, "--data-dir", str(srv.data_dir), "--force")
    line = one_line(out)
    assert out.returncode == 1
    assert f"is locked by pid {srv.proc.pid} (durakv serve" in line, line
    client.set("later", "3")
    srv.stop()
    srv.start()
    assert srv.client().mget("before", "after", "later") == [b"1", b"2", b"3"]


def test_import_rdb_into_live_data_dir_is_refused(server_factory, tmp_path):
    srv = server_factory(shards=2)
    srv.client().set("k", "v")
    topology = open(topology_path(srv.data_dir), "rb").read()
    rdb = tmp_path / "dump.rdb"
    rdb.write_bytes(b"REDIS0010\xff" + bytes(8))
    out = durakv("import-rdb", str(rdb), "--data-dir", str(srv.data_dir), "--shards", "2")
    line = one_line(out)
    assert out.returncode == 1
    assert f"data dir {srv.data_dir} is locked by pid {srv.proc.pid} (durakv serve" in line, line
    assert open(topology_path(srv.data_dir), "rb").read() == topology
    assert srv.client().get("k") == b"v"


# --- bad flags and config values --------------------------------------------------------------


def test_port_out_of_range(tmp_path):
    for port in ("70000", "-1"):
        out = durakv("serve", "--port", port, "--data-dir", str(tmp_path / "d"))
        assert out.returncode == 2
        assert one_line(out) == f"durakv: bad configuration: port must be between 0 and 65535, not {port}"
    out = durakv("serve", "--port", "0", "--data-dir", str(tmp_path / "d"))  # TLS only needs a tls-port
    assert out.returncode == 2
    assert one_line(out) == ("durakv: bad configuration: port is 0 and there is no tls-port: clients could not "
                             "connect; set port or tls-port")


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a dir")
    out = durakv("serve", "--port", str(free_port()), "--data-dir", str(path))
    assert out.returncode == 2
    assert one_line(out) == f"durakv: data dir {path} is not a directory; pass --data-dir a directory path"
    out = durakv("serve", "--port", str(free_port()), "--data-dir", str(path / "sub"))
    assert out.returncode == 2
    assert one_line(out) == (f"durakv: cannot create data dir {path / 'sub'}: Not a directory; create it or "
                             "pass another --data-dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only tmpfs")
def test_data_dir_not_writable(tmp_path):
    """A read-only file system: root cannot write there either (a mode-0755 dir would
    not stop root, and `nobody` may not be able to reach the interpreter)."""
    mount = tmp_path / "ro"
    data = mount / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        data.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        out = durakv("serve", "--port", str(free_port()), "--data-dir", str(data))
        assert out.returncode == 2
        assert one_line(out) == (f"durakv: data dir {data} is not writable (Read-only file system); give uid "
                                 f"{os.getuid()} write access to it or pass another --data-dir")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_bad_config_file_values(tmp_path):
    cases = {
        "prot = 6380\n": "unknown key prot; the keys are listed in README",
        'loglevel = "verbose"\n': "unknown key loglevel: durakv's config calls it log-level",
        'log-level = "verbos"\n': "log-level must be one of debug, verbose, notice, info, warning, error, "
                                  "critical, not 'verbos'",
        "# redis.conf\nport 6379\n": "is not TOML: line 2 `port 6379` is redis.conf syntax; durakv's config is "
                                     "TOML (key = value): write port = 6379",
        "maxmemory-policy allkeys-lru\n": 'write [settings] maxmemory-policy = "allkeys-lru"',
        '[settings]\nmaxmemory-policy = "lru"\n': "argument(s) must be one of the following: volatile-lru",
        'port = "high"\n': "Expected `int`, got `str` - at `$.port`",
        'log-level = "loud"\n': "log-level must be one of debug, verbose, notice, info, warning, error, "
                                 "critical, not 'loud'",
        "hz = 0\n": "hz must be between 1 and 500, not 0",
        "maxclients = -5\n": "maxclients must be between 1 and 1048576, not -5",
        'durability = "maybe"\n': "durability must be one of sync, async, not 'maybe'",
    }
    for n, (text, problem) in enumerate(cases.items()):
        path = tmp_path / f"c{n}.toml"
        path.write_text(text)
        out = durakv("serve", "--port", str(free_port()), "--config", str(path), "--data-dir", str(tmp_path / "d"))
        assert out.returncode == 2, text
        line = one_line(out)
        assert problem in line and line.startswith("durakv: bad configuration: "), line
        if "must be" not in problem and "[settings]\n" not in text:
            assert str(path) in line, line
    out = durakv("serve", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2
    assert one_line(out) == (f"durakv: bad configuration: cannot read config file {tmp_path / 'missing.toml'}: "
                             "No such file or directory; pass --config a readable TOML file")


def test_shard_index_out_of_range(tmp_path):
    out = durakv("shard", "--index", "2", "--shards", "2", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert one_line(out) == ("durakv: shard --index 2 is out of range: with 2 shards the index is 0..1; fix "
                             "--index or --shards")
    assert not (tmp_path / "d").exists()


def test_shard_or_serve_with_another_shard_count(server_factory):
    srv = server_factory(shards=2)
    data_dir = srv.data_dir
    srv.stop()
    out = durakv("shard", "--index", "1", "--shards", "3", "--data-dir", str(data_dir))
    assert out.returncode == 3     # permanent: the supervisor does not restart it
    line = one_line(out)
    assert line.endswith(f"CRITICAL shard 1 cannot start: {topology_path(data_dir)} says this data dir has 2 "
                         "shards, not 3; start with --shards 2"), line
    assert not os.path.exists(shard_failed_path(str(data_dir), 1))  # its flags are wrong, not its data
    out = durakv("serve", "--port", str(free_port()), "--shards", "3", "--data-dir", str(data_dir))
    assert out.returncode == 2
    assert one_line(out) == (f"durakv: {topology_path(data_dir)} says this data dir has 2 shards, not 3; start "
                             "with --shards 2")


# --- a corrupt log: reported, not served, repaired by `durakv log truncate` -------------------


class StartedServer(DurakvServer):
    """Ready once the router answers, even while a shard is down."""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                redis.Redis(port=self.port, socket_timeout=2).ping()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"router not listening:\n{self.log()}")


def shard_of(key: str, shards: int) -> int:
    slot = key_slot(key.encode())
    return next(i for i, (first, last) in enumerate(slot_ranges(shards)) if first <= slot <= last)


def test_corrupt_log_is_reported_and_truncate_repairs_it(server_factory, tmp_path):
    config = tmp_path / "fast.toml"
    config.write_text(FAST_STARTUP)
    srv = server_factory(shards=2, extra_args=("--config", str(config)))
    client = srv.client()
    keys = [f"key{i}" for i in range(40)]
    for key in keys:                       # one SET at a time: one log record each
        client.set(key, key.upper())
    srv.stop()
    data_dir = str(srv.data_dir)
    log_dir = shard_log_dir(data_dir, 1)
    records = list(wal.dump(log_dir))
    bad = records[len(records) // 2]
    with open(bad.segment, "r+b") as f:    # flip a payload byte: bad checksum before the tail
        f.seek(bad.offset_bytes + wal.HEADER_BYTES + 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    kept = {effect[1].decode() for r in records[:records.index(bad)]
            for effect in decode_record(r.payload).effects}
    lost = {key for key in keys if shard_of(key, 2) == 1} - kept
    seg_size = os.path.getsize(bad.segment)

    # The shard alone: EXIT_PERMANENT, one line naming segment, offset and the fix, FAILED written.
    out = durakv("shard", "--index", "1", "--shards", "2", "--data-dir", data_dir)
    assert out.returncode == 3
    line = one_line(out)
    reason = (f"log corrupt: {bad.segment} at offset {bad.offset_bytes}: checksum mismatch (expected seq "
              f"{bad.seq})")
    assert reason in line and f"durakv log truncate --data-dir {data_dir} --shard 1" in line, line
    with open(shard_failed_path(data_dir, 1)) as f:
        assert reason in f.read()

    # Served: shard 0's slots work, INFO and CLUSTER INFO name the slots that are down and why.
    down = StartedServer(srv.data_dir, 2, ("--config", str(config)))
    try:
        down.start()
        c = down.client()
        info = c.info("cluster")
        assert info["cluster_state"] == "fail" and info["cluster_slots_fail"] == 8192
        assert info["cluster_shard0"] == {"state": "ok", "slots": "0-8191"}
        assert info["cluster_shard1"]["state"] == "down" and info["cluster_shard1"]["slots"] == "8192-16383"
        assert reason in info["cluster_shard1"]["reason"]
        text = c.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:fail" in text and "cluster_slots_ok:8192" in text
        assert f"cluster_shard1:state=down,slots=8192-16383,reason={reason}" in text
        assert "cluster_shard0" not in text
        shard0_key = next(k for k in keys if shard_of(k, 2) == 0)
        assert c.get(shard0_key) == shard0_key.upper().encode()
        shard0_keys = sum(1 for k in keys if shard_of(k, 2) == 0)
        assert c.info("keyspace")["db0"]["keys"] == shard0_keys   # INFO answers with a shard down
        refused = durakv("log", "truncate", "--data-dir", data_dir, "--shard", "1", "--yes")
        assert refused.returncode == 1
        assert f"is locked by pid {down.proc.pid} (durakv serve" in one_line(refused)
    finally:
        down.stop()
    assert os.path.getsize(bad.segment) == seg_size

    # Dry run says exactly what goes and changes nothing; --yes drops it.
    dry = durakv("log", "truncate", "--data-dir", data_dir, "--shard", "1")
    assert dry.returncode == 0, dry.stderr
    later = len(records) - records.index(bad) - 1
    assert f"last good record: seq {bad.seq - 1}; kept: {bad.seq - 1} records" in dry.stdout
    assert f"drop: {bad.segment}: cut at offset {bad.offset_bytes} ({seg_size - bad.offset_bytes} bytes)" \
        in dry.stdout
    assert (f"records dropped: {later + 1}: the damaged record (seq {bad.seq}) and {later} intact records "
            f"after it (seq {bad.seq + 1}..{records[-1].seq})") in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert os.path.getsize(bad.segment) == seg_size
    done = durakv("log", "truncate", "--data-dir", data_dir, "--shard", "1", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"truncated: shard 1 log now ends at seq {bad.seq - 1}" in done.stdout

    repaired = server_factory(shards=2, data_dir=srv.data_dir)   # waits for cluster_state:ok
    c = repaired.client()
    for key in keys:
        assert c.get(key) == (None if key in lost else key.upper().encode()), key
    assert lost and not os.path.exists(shard_failed_path(data_dir, 1))
