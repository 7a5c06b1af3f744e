"""The operator-facing scripts: load generator, benchmark harness, systemd units.

They run as real processes against real servers, the way an operator runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proctools import free_port, kill_group

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
UNITS = SCRIPTS / "systemd"
UNIT_FILES = ("durakv-router.service", "durakv-shard@.service", "durakv-snapshotter.service", "durakv.target")
INSTALLED_BINARY = "/usr/local/bin/durakv"


def run_load(port: int, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPTS / "load.py"), "--port", str(port), "--json", "-q", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_load_spreads_keys_and_server_holds_them(server, r):
    result = run_load(server.port, "--duration", "2", "--ratio", "1:0", "--key-space", "100",
                      "--value-size", "32", "-c", "4")
    assert result["ops_per_s"] > 0 and result["ops"] > 0
    assert result["errors"] == 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    # Keys are drawn at random: a loaded machine may SET only ~150 times in 2 s, too few to
    # draw all 100 (75 were held in one loaded run), so the test checks what was written.
    keys = sorted(r.keys("*"))
    print(f"{result['ops']} SETs wrote {len(keys)} of the 100 keys")
    assert 0 < len(keys) <= min(result["ops"], 100)
    assert set(keys) <= {f"key:{n}".encode() for n in range(100)}
    for key, value in zip(keys, r.mget(keys)):
        assert value == (key + b"=").ljust(32, b"x")
    slots = {r.cluster("keyslot", key) for key in keys}
    assert min(slots) < 8192 <= max(slots), "keys should land on both shards"


def test_load_pinned_slot_with_processes_and_pipeline(server, r):
    result = run_load(server.port, "--duration", "1", "--pin-slot", "1234", "--processes", "2", "-c", "4",
                      "-P", "8", "--ratio", "1:3", "--key-space", "50", "--prefill")
    assert result["errors"] == 0
    assert result["ops"] > 0 and result["ops"] == result["batches"] * 8
    assert r.dbsize() == 50
    assert r.cluster("countkeysinslot", 1234) == 50
    key = result["key_prefix"].encode() + b"7"
    assert r.get(key) == (key + b"=").ljust(100, b"x")


def test_load_reports_connection_refused():
    out = subprocess.run([sys.executable, str(SCRIPTS / "load.py"), "--port", str(free_port()),
                          "--duration", "1", "-q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "ConnectionRefusedError" in out.stderr


needs_redis = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-benchmark")),
                                 reason="redis-server / redis-benchmark not installed (Debian: redis-server)")


def processes_under(path: Path, exclude: int = 0) -> list[int]:
    """Processes whose command line or working directory is inside `path`
    (durakv names its data dir, redis-server chdirs to its --dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), exclude):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(int(entry))
    return found


def bench_env(tmp_path: Path) -> dict:
    return dict(os.environ, TMPDIR=str(tmp_path))


ROW = re.compile(r"^\| (GET|SET) P(1|16) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+)× ")


@needs_redis
def test_bench_quick_writes_both_systems_and_ratios(tmp_path):
    output = tmp_path / "BENCH.md"
    out = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--quick", "--shards", "2", "-q",
                          "--output", str(output)], capture_output=True, text=True, timeout=120,
                         env=bench_env(tmp_path))
    assert out.returncode == 0, out.stderr
    text = output.read_text()
    for needle in ("durakv", "redis-server without persistence", "appendfsync always",
                   "Command: `python scripts/bench.py", "redis-server | Redis server v=", "## Where durakv's CPU goes"):
        assert needle in text
    rows = [m.groups() for m in map(ROW.match, text.splitlines()) if m]
    # 4 workloads against plain redis, 2 SET workloads against redis-aof
    assert len(rows) == 6
    for _, _, durakv, redis, ratio in rows:
        durakv_rps, redis_rps = float(durakv.replace(",", "")), float(redis.replace(",", ""))
        assert durakv_rps > 0 and redis_rps > 0
        assert abs(float(ratio) - durakv_rps / redis_rps) < 0.01
    # The CPU table found the router and the shards (by their process titles). A quick
    # run is short enough for one row to round to 0 ticks, but not every row.
    cpu_section = text.split("## Where durakv's CPU goes", 1)[1].split("\n## ", 1)[0]
    cpu_rows = [line.split("|")[2:4] for line in cpu_section.splitlines() if line.startswith("| GET") or
                line.startswith("| SET")]
    assert len(cpu_rows) == 4
    assert sum(float(router_us) for router_us, _ in cpu_rows) > 0, cpu_section
    assert sum(float(shards_us) for _, shards_us in cpu_rows) > 0, cpu_section
    # The shard-port path (redis-benchmark --cluster) has its own rows, next to the router's.
    cluster_rows = [line for line in text.splitlines() if re.match(r"^\| cluster (GET|SET) P(1|16) \| ", line)]
    assert len(cluster_rows) == 8, text  # 4 throughput rows, 4 CPU rows
    assert all(float(row.split("|")[2].replace(",", "")) > 0 for row in cluster_rows[:4])
    assert processes_under(tmp_path) == []


@needs_redis
def test_bench_ctrl_c_stops_every_server(tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "bench.py"), "--rounds", "50", "--requests", "100000",
                             "--shards", "2", "-q", "--output", str(tmp_path / "never.md")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bench_env(tmp_path))
    deadline = time.monotonic() + 60
    # durakv (supervisor, 2 shards, router) and both redis-servers are up once 6 processes live there
    while len(processes_under(tmp_path, proc.pid)) < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert len(processes_under(tmp_path, proc.pid)) >= 6, proc.stderr.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)  # a hang guard: cleanup stops each server in turn
    assert proc.returncode == 130, err
    # A process that dies with its parent (a snapshot build child, shards/lifeline.py) gets
    # its signal as the parent ends: give such deaths a moment, not a leak.
    deadline = time.monotonic() + 10
    while processes_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_under(tmp_path) == []
    assert not (tmp_path / "never.md").exists()


CTRL_C_DURING_FORK = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import bench
signal.signal(signal.SIGINT, signal.default_int_handler)
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
groups = bench.ProcessGroups()
try:
    groups.start(["sleep", "30"])
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted with", len(groups.procs), "started")
finally:
    groups.stop_all()
"""


def test_bench_ctrl_c_while_it_forks_a_server_is_not_lost():
    """A Ctrl-C while bench.py forks (Python runs its at-fork callbacks: a handler's
    KeyboardInterrupt there is printed and ignored) stops it, with the child stopped too:
    the lost Ctrl-C left test_bench_ctrl_c_stops_every_server benchmarking for minutes."""
    out = subprocess.run([sys.executable, "-c", CTRL_C_DURING_FORK, str(SCRIPTS)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "interrupted with 1 started\n", out.stdout + out.stderr
    assert "Exception ignored" not in out.stderr, out.stderr


@pytest.fixture
def unit_copies(tmp_path) -> Path:
    """The unit files, with ExecStart pointed at the installed durakv if it is
    not where the units expect it (verify checks the binary exists)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    binary = INSTALLED_BINARY if os.access(INSTALLED_BINARY, os.X_OK) else shutil.which("durakv")
    if binary is None:
        pytest.skip("durakv is not installed (pip install -e .)")
    for name in UNIT_FILES:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED_BINARY, binary))
    return tmp_path


def test_units_pass_systemd_analyze_verify(unit_copies):
    paths = [str(unit_copies / name) for name in ("durakv-router.service", "durakv.target", "durakv-shard@0.service")]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and bad values; it only prints them
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "durakv" in line]
    assert out.returncode == 0 and ours == [], out.stdout + out.stderr


def test_units_match_example_config():
    from durakv.shards.config import load_config

    config = load_config(str(UNITS / "durakv.toml"), {})
    assert config.shards >= 1, "shards must be explicit: one unit instance per shard"
    for name in ("durakv-router.service", "durakv-shard@.service"):
        text = (UNITS / name).read_text()
        assert f"ReadWritePaths={config.data_dir}\n" in text
        assert "--config /etc/durakv/durakv.toml" in text
        assert "Type=notify" in text and "Restart=on-failure" in text


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    return sock, path


def _unit_config(tmp_path: Path) -> Path:
    text = (UNITS / "durakv.toml").read_text()
    text = text.replace('data-dir = "/var/lib/durakv"', f'data-dir = "{tmp_path / "data"}"')
    text = re.sub(r"^port = \d+", f"port = {free_port()}", text, flags=re.M)
    text = re.sub(r"^shards = \d+", "shards = 1", text, flags=re.M)
    path = tmp_path / "durakv.toml"
    path.write_text(text)
    return path


def _start_unit_process(args: list[str], env: dict, tmp_path: Path, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "durakv.server.cli", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        kill_group(proc)


def test_router_unit_readiness_notification(tmp_path):
    """What Type=notify relies on: the router sends READY=1 to $NOTIFY_SOCKET
    once it listens, started exactly as the unit starts it."""
    config = _unit_config(tmp_path)
    sock, path = _notify_socket(tmp_path)
    plain = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    procs = [_start_unit_process(["shard", "--index", "0", "--config", str(config)], plain, tmp_path, "shard")]
    try:
        procs.append(_start_unit_process(["router", "--config", str(config)], dict(plain, NOTIFY_SOCKET=path),
                                         tmp_path, "router"))
        assert b"READY=1" in sock.recv(4096).split(b"\n")
    finally:
        _stop(procs)
        sock.close()


def test_shard_unit_readiness_notification(tmp_path):
    config = _unit_config(tmp_path)
    sock, path = _notify_socket(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    procs = [_start_unit_process(["shard", "--index", "0", "--config", str(config)], env, tmp_path, "shard")]
    try:
        deadline = time.monotonic() + 30
        while b" ready" not in (tmp_path / "shard.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.settimeout(2)  # the shard logs "ready" right before it should notify
        assert b"READY=1" in sock.recv(4096).split(b"\n")
    finally:
        _stop(procs)
        sock.close()


@needs_redis
def test_large_values_quick_run_reports_both_systems(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPTS / "large_values.py"), "--sizes-mb", "1",
                          "--list-elements", "1000", "--keys", "2000",
                          "--idle-s", "0.5"], capture_output=True, text=True, timeout=120,
                         env=bench_env(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| ") and "MiB" in line
            or line.startswith(("| LRANGE", "| KEYS", "| idle"))]
    assert [row[0].strip() for row in rows] == ["idle, 0.5 s (probe baseline)", "SET 1 MiB", "GET 1 MiB",
                                               "LRANGE 0 -1 of 1000 elements", "KEYS * over 2000 keys"]
    for row in rows:  # seconds, ratio, then max and p99 of each probe (durakv other/same shard, redis)
        assert len(row) == 10 and all(float(cell.strip().rstrip("x")) >= 0 for cell in row[1:])
    assert "peak RSS: durakv" in out.stdout
    # Each phase starts on a settled tree and names what ran during each probe's worst stall.
    assert out.stdout.count(": settled in ") == 5 and out.stdout.count("  same-shard worst ") == 5
    assert processes_under(tmp_path) == []


def test_commit_bench_compares_durable_set_with_get() -> None:
    """scripts/commit_bench.py runs a shard in-process and prints both workloads' CPU."""
    out = subprocess.run([sys.executable, str(SCRIPTS / "commit_bench.py"), "--requests", "300", "--rounds", "1",
                          "--keys", "100", "--fake-fsync-us", "200"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "GET: " in out.stdout and "cmds/fsync" in out.stdout and "durable SET / GET: " in out.stdout
