"""Durability: acknowledged writes survive kill -9, reads never see writes that
could still be lost, the log recovers torn tails and refuses damage, a failed
fsync stops writes. Real processes, real clients, SIGKILL for crashes."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from refserver import dump_keyspace

from durakv.log import simulate_power_loss
from durakv.log.layout import durability_journal_path
from durakv.log.layout import shard_log_dir
from durakv.log.reader import DataEnds
from durakv.log.writer import ZERO_AHEAD_BYTES

CRASH_TRIALS = int(os.environ.get("DURAKV_CRASH_TRIALS", "3"))
WRITERS = 6
PROGRESS_TIMEOUT_S = 30


def write_config(tmp_path: Path, **settings) -> str:
    """A config file; a durability journal (simulated power loss) turns the supervised
    snapshotter off: only the shard's own syncs are journaled, so a local snapshot
    and the segments it let the shard drop could not be cut back consistently."""
    if settings.get("test_durability_journal"):
        settings.setdefault("snapshotter", False)
    path = tmp_path / "durakv.toml"
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = f'"{value}"' if isinstance(value, str) else str(value)
        lines.append(f"{key.replace('_', '-')} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class Writer(threading.Thread):
    """Writes until the server dies; remembers what was acknowledged and what
    was attempted."""

    def __init__(self, port: int, index: int, prefix: str = "") -> None:
        super().__init__(daemon=True)
        # No retry: redis-py would resend a write whose connection closed (outcome unknown).
        self.client = redis.Redis(port=port, socket_timeout=10, retry=None)
        self.stop = threading.Event()
        self.index = index
        self.prefix = prefix
        self.acked_sets: dict[bytes, bytes] = {}
        self.acked_incrs = 0
        self.attempted_incrs = 0
        self.acked_pushes: list[bytes] = []
        self.attempted_pushes: list[bytes] = []

    def run(self) -> None:
        n = 0
        counter = f"{self.prefix}counter:{self.index}"
        plist = f"{self.prefix}list:{self.index}"
        try:
            while not self.stop.is_set():
                n += 1
                key = f"{self.prefix}w{self.index}:{n}".encode()
                value = f"v{n}".encode()
                self.client.set(key, value)
                self.acked_sets[key] = value
                self.attempted_incrs += 1
                self.client.incr(counter)
                self.acked_incrs += 1
                item = f"i{n}".encode()
                self.attempted_pushes.append(item)
                self.client.rpush(plist, item)
                self.acked_pushes.append(item)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return



class AckedSets:
    """SET writers on threads through one port, for failover tests: a SET whose call
    raised (refused, or its outcome unknown) is not acknowledged; `acked` holds those
    that were. A writer goes on after an error (the shard fails over), or with
    end_on_error stops at its first error (its server is gone)."""

    def __init__(self, port: int, writers: int, socket_timeout_s: float, end_on_error: bool = False) -> None:
        self.acked: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._port = port
        self._socket_timeout_s = socket_timeout_s
        self._end_on_error = end_on_error
        self._threads = [threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(writers)]
        for thread in self._threads:
            thread.start()

    def _write(self, index: int) -> None:
        # No retry: redis-py would resend a write whose connection closed (outcome unknown).
        client = redis.Redis(port=self._port, socket_timeout=self._socket_timeout_s, retry=None)
        n = 0
        while not self._stop.is_set():
            n += 1
            key, value = f"w{index}:{n}".encode(), f"v{n}".encode()
            try:
                client.set(key, value)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                if self._end_on_error:
                    return
                continue
            except redis.RedisError:
                if self._end_on_error:
                    return
                raise
            with self._lock:
                self.acked[key] = value

    def stop(self, join_timeout_s: float) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(join_timeout_s)

    def missing(self, mget) -> list[bytes]:
        """The acknowledged keys whose value `mget` (a client's MGET) does not answer."""
        keys = list(self.acked)
        lost = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            lost += [k for k, got in zip(chunk, mget(chunk)) if got != self.acked[k]]
        return lost


def wait_for_progress(writers: list[Writer]) -> None:
    """Every writer has had writes acknowledged: a kill now tests something."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while any(w.acked_incrs == 0 for w in writers) and time.monotonic() < deadline:
        time.sleep(0.01)
    stalled = [w.index for w in writers if w.acked_incrs == 0]
    assert not stalled, f"writers {stalled} had no write acknowledged before the kill"


def run_writers_then_crash(srv, rng: random.Random, prefix: str) -> list[Writer]:
    writers = [Writer(srv.port, i, prefix) for i in range(WRITERS)]
    for w in writers:
        w.start()
    time.sleep(rng.uniform(0.2, 1.2))
    wait_for_progress(writers)
    srv.kill9()
    for w in writers:
        w.join(30)
    return writers


def check_writers(client: redis.Redis, writers: list[Writer]) -> None:
    for w in writers:
        if w.acked_sets:
            keys = list(w.acked_sets)
            assert client.mget(keys) == [w.acked_sets[k] for k in keys], f"writer {w.index} lost SETs"
        counter = int(client.get(f"{w.prefix}counter:{w.index}") or 0)
        assert w.acked_incrs <= counter <= w.attempted_incrs, (w.index, w.acked_incrs, counter)
        items = client.lrange(f"{w.prefix}list:{w.index}", 0, -1)
        assert items[: len(w.acked_pushes)] == w.acked_pushes, f"writer {w.index} lost RPUSHes"
        assert items == w.attempted_pushes[: len(items)]


def test_acked_writes_survive_kill9_of_whole_tree(server_factory, tmp_path):
    rng = random.Random(int(os.environ.get("DURAKV_CRASH_SEED", "1234")))
    data_dir = tmp_path / "crash"
    history: list[list[Writer]] = []
    for trial in range(CRASH_TRIALS):
        srv = server_factory(data_dir=data_dir)
        client = srv.client()
        for writers in history:  # every earlier trial's acknowledged writes, after every restart
            check_writers(client, writers)
        client.close()
        history.append(run_writers_then_crash(srv, rng, prefix=f"t{trial}:"))
    srv = server_factory(data_dir=data_dir)
    client = srv.client()
    for writers in history:
        check_writers(client, writers)


@pytest.mark.parametrize("replicas", [0, 1])
def test_acked_writes_survive_kill9_of_one_shard(server_factory, tmp_path, replicas):
    """With a replica, the kill -9 is a failover (the replica is promoted) instead of a restart."""
    srv = server_factory(shards=2, extra_args=("--replicas", str(replicas)))
    writers = [Writer(srv.port, i) for i in range(WRITERS)]
    for w in writers:
        w.start()
    time.sleep(0.5)
    wait_for_progress(writers)
    os.kill(srv.child_pid("shard", 1), 9)
    if replicas:  # the promoted replica serves at once: writers that saw no error go on
        time.sleep(0.5)
        for w in writers:
            w.stop.set()
    for w in writers:
        w.join(30)
    srv.wait_ready()
    client = srv.client()
    deadline = time.monotonic() + 30
    while True:
        try:
            check_writers(client, writers)
            break
        except redis.ResponseError:
            assert time.monotonic() < deadline, "shard 1 did not come back"
            time.sleep(0.1)


def test_acked_writes_survive_simulated_power_loss(server_factory, tmp_path):
    """kill -9 keeps the page cache, so it cannot notice a missing fsync. Here each
    shard journals what each of its syncs made durable (test-durability-journal);
    after the kill every segment is cut back to its synced length and every
    directory entry no directory fsync covered is removed, as a power cut would.
    Small segments make the writers roll (new files, directory fsyncs) often."""
    rng = random.Random(int(os.environ.get("DURAKV_CRASH_SEED", "4321")))
    data_dir = tmp_path / "powerloss"
    config = write_config(tmp_path, test_durability_journal=True, segment_size_bytes=8192)
    srv = server_factory(shards=2, data_dir=data_dir, extra_args=("--config", config))
    writers = run_writers_then_crash(srv, rng, prefix="p:")
    # One simulation over both journals: both shards fsync the data dir they share.
    report = simulate_power_loss(*(durability_journal_path(str(data_dir), shard) for shard in range(2)))
    cut_bytes = sum(before - after for before, after in report.truncated.values())
    print(f"power loss cut {cut_bytes} unsynced bytes, removed {report.removed}")
    client = server_factory(shards=2, data_dir=data_dir, extra_args=("--config", config)).client()
    check_writers(client, writers)


def test_shard_directories_survive_power_loss(server_factory, tmp_path):
    """DIR/shard-NNN and its log/ count only once their parent directory is fsync'd:
    each shard fsyncs the data dir (through its log's Disk, so the journal records it)
    and its own dir, and the simulated power cut keeps both shards and their data."""
    data_dir = tmp_path / "fresh"
    config = write_config(tmp_path, test_durability_journal=True)
    srv = server_factory(shards=2, data_dir=data_dir, extra_args=("--config", config))
    client = srv.client()
    client.set("a", "1")  # slot 15495: shard 1
    client.set("b", "2")  # slot 3300: shard 0
    srv.kill9()
    journals = [durability_journal_path(str(data_dir), shard) for shard in range(2)]
    for shard, journal in enumerate(journals):
        with open(journal) as f:
            entries = [json.loads(line) for line in f]
        covered = [e["entries"] for e in entries if e.get("dir") == str(data_dir)]
        assert any(f"shard-{shard:03d}" in c for c in covered), f"shard {shard} never fsync'd the data dir"
        own = [e["entries"] for e in entries if e.get("dir") == str(data_dir / f"shard-{shard:03d}")]
        assert any("log" in c for c in own), f"shard {shard} never fsync'd its dir after making log/"
    report = simulate_power_loss(*journals)
    assert not [p for p in report.removed if os.path.basename(p).startswith("shard-")], report.removed
    client = server_factory(shards=2, data_dir=data_dir, extra_args=("--config", config)).client()
    assert client.mget(["a", "b"]) == [b"1", b"2"]


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _no_reply_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)


def test_read_of_dirty_key_waits_for_its_fsync(server_factory, tmp_path):
    gate = tmp_path / "fsync-gate"
    config = write_config(tmp_path, test_fsync_gate_path=str(gate))
    srv = server_factory(shards=1, extra_args=("--config", config))
    clean = srv.client()
    gate.touch()
    clean.set("clean", "old")
    gate.unlink()

    writer = _raw(srv.port)
    writer.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\ndirty\r\n$3\r\nnew\r\n")
    assert _no_reply_within(writer, 0.5), "a write was acknowledged before its fsync"
    reader = _raw(srv.port)
    reader.sendall(b"*2\r\n$3\r\nGET\r\n$5\r\ndirty\r\n")
    assert _no_reply_within(reader, 0.5), "a read saw a write that could still be lost"
    # A read of a clean key is not held behind the pending fsync.
    assert clean.get("clean") == b"old"
    gate.touch()
    assert _read_reply(writer) == b"+OK\r\n"
    assert _read_reply(reader) == b"$3\r\nnew\r\n"


def test_keyless_read_waits_for_everything_pending(server_factory, tmp_path):
    gate = tmp_path / "fsync-gate"
    config = write_config(tmp_path, test_fsync_gate_path=str(gate))
    srv = server_factory(shards=1, extra_args=("--config", config))
    writer = _raw(srv.port)
    writer.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
    assert _no_reply_within(writer, 0.3)
    reader = _raw(srv.port)
    reader.sendall(b"*1\r\n$6\r\nDBSIZE\r\n")
    assert _no_reply_within(reader, 0.5), "DBSIZE counted a key that could still be lost"
    gate.touch()
    assert _read_reply(writer) == b"+OK\r\n"
    assert _read_reply(reader) == b":1\r\n"


def test_async_durability_acks_before_fsync(server_factory, tmp_path):
    gate = tmp_path / "fsync-gate"
    config = write_config(tmp_path, durability="async", max_unsynced_ms=60000,
                          test_fsync_gate_path=str(gate))
    srv = server_factory(shards=1, extra_args=("--config", config))
    client = srv.client()
    assert client.set("k", "v") is True  # acknowledged with the fsync still gated
    assert client.info("persistence")["durability"] == "async"
    gate.touch()


def _wait_info(client: redis.Redis, field: str, value: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        info = client.info("persistence")
        if info[field] == value:
            return info
        assert time.monotonic() < deadline, f"INFO {field} stayed {info[field]!r}"
        time.sleep(0.02)


def test_fsync_failure_refuses_writes_until_a_rewrite_is_durable(server_factory, tmp_path):
    """A failing fdatasync: writes get MISCONF, the pending write's reply and reads of
    its key are held (not failed: the write may yet become durable), reads of durable
    data work. Once the disk works, the shard rewrites the pending record from memory,
    releases the held replies and takes writes again. After kill -9 and a simulated
    power loss, every acknowledged write is there."""
    fail = tmp_path / "fsync-fail"
    data_dir = tmp_path / "failing"
    config = write_config(tmp_path, test_fsync_fail_path=str(fail), test_durability_journal=True)
    srv = server_factory(shards=1, data_dir=data_dir, extra_args=("--config", config))
    client = srv.client()
    client.set("durable", "yes")
    fail.touch()
    writer = _raw(srv.port)
    writer.sendall(b"*3\r\n$3\r\nSET\r\n$7\r\npending\r\n$1\r\nv\r\n")
    info = _wait_info(client, "aof_last_write_status", "err")
    assert "Input/output error" in info["log_write_error"]
    with pytest.raises(redis.ResponseError, match="MISCONF"):
        client.set("refused", "no")
    assert client.get("durable") == b"yes"
    reader = _raw(srv.port)
    reader.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\npending\r\n")
    assert _no_reply_within(writer, 0.5), "a write was acknowledged while its fsync failed"
    assert _no_reply_within(reader, 0.1), "a read saw a write that could still be lost"
    fail.unlink()
    assert _read_reply(writer) == b"+OK\r\n"
    assert _read_reply(reader) == b"$1\r\nv\r\n"
    _wait_info(client, "aof_last_write_status", "ok")
    assert client.set("after", "yes") is True
    assert "shard 0: log write failed" in srv.log() and "log writable again" in srv.log()
    srv.kill9()
    simulate_power_loss(durability_journal_path(str(data_dir), 0))
    client = server_factory(shards=1, data_dir=data_dir, extra_args=("--config", config)).client()
    assert client.mget(["durable", "pending", "refused", "after"]) == [b"yes", b"v", None, b"yes"]


def _segments(data_dir: Path) -> list[Path]:
    return sorted(Path(shard_log_dir(data_dir, 0)).glob("*.seg"))


def test_torn_tail_is_truncated_and_reported(server_factory, tmp_path):
    data_dir = tmp_path / "torn"
    srv = server_factory(shards=1, data_dir=data_dir)
    client = srv.client()
    for i in range(20):
        client.set(f"k{i}", f"v{i}")
    srv.kill9()
    segment = _segments(data_dir)[-1]
    size = DataEnds().of(str(segment))   # the active segment is preallocated: its records end sooner
    with open(segment, "r+b") as f:
        f.truncate(size - 5)
    srv2 = server_factory(shards=1, data_dir=data_dir)
    client = srv2.client()
    assert client.mget([f"k{i}" for i in range(19)]) == [f"v{i}".encode() for i in range(19)]
    assert client.get("k19") is None
    assert "torn log tail: truncated" in srv2.log()


def test_log_dump_shows_each_record_with_the_time_its_shard_wrote_it(server_factory, tmp_path):
    srv = server_factory(shards=1, data_dir=tmp_path / "dumped")
    before_ms = time.time_ns() // 1_000_000
    srv.client().set("dumped-key", "dumped-value")
    after_ms = time.time_ns() // 1_000_000
    out = subprocess.run(
        [sys.executable, "-m", "durakv.server.cli", "log", "dump", "--data-dir", str(tmp_path / "dumped")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    match = re.search(r"payload='@(\d+) set dumped-key dumped-value'", out.stdout, re.IGNORECASE)
    assert match, out.stdout
    assert before_ms <= int(match.group(1)) <= after_ms


def test_mid_log_corruption_refuses_to_start_and_is_reported(server_factory, tmp_path):
    data_dir = tmp_path / "corrupt"
    srv = server_factory(shards=1, data_dir=data_dir)
    client = srv.client()
    for i in range(20):
        client.set(f"k{i}", "x" * 50)
    srv.kill9()
    segment = _segments(data_dir)[-1]
    raw = bytearray(segment.read_bytes())
    raw[DataEnds().of(str(segment)) // 3] ^= 0xFF   # inside the records, not the preallocated zeros
    segment.write_bytes(bytes(raw))
    verify = subprocess.run([sys.executable, "-m", "durakv.server.cli", "log", "verify", "--data-dir", str(data_dir)],
                            capture_output=True, text=True)
    assert verify.returncode == 1
    assert segment.name in verify.stdout + verify.stderr
    shard = subprocess.run([sys.executable, "-m", "durakv.server.cli", "shard", "--index", "0", "--shards", "1",
                            "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert shard.returncode == 3
    assert "log corrupt" in shard.stderr and segment.name in shard.stderr and "offset" in shard.stderr


def test_replay_equals_live_for_string_and_key_commands(server_factory, tmp_path):
    """The state rebuilt from the log after kill -9 equals the live state."""
    rng = random.Random(7)
    data_dir = tmp_path / "replay"
    srv = server_factory(shards=2, data_dir=data_dir)
    client = srv.client()
    keys = [f"{{t}}k{i}" for i in range(12)]
    for _ in range(600):
        k, k2 = rng.choice(keys), rng.choice(keys)
        op = rng.randrange(12)
        try:
            if op == 0:
                client.set(k, rng.randrange(100), ex=rng.choice([None, 100, 1000]))
            elif op == 1:
                client.incrbyfloat(k, rng.choice(["0.1", "1.5", "-2.25"]))
            elif op == 2:
                client.append(k, "ab")
            elif op == 3:
                client.delete(k)
            elif op == 4:
                client.expire(k, rng.randrange(1, 500))
            elif op == 5:
                client.persist(k)
            elif op == 6:
                client.rename(k, k2)
            elif op == 7:
                client.setrange(k, rng.randrange(5), "zz")
            elif op == 8:
                client.getex(k, px=rng.randrange(60_000, 90_000))  # must outlive the restart
            elif op == 9:
                client.copy(k, k2, replace=True)
            elif op == 10:
                client.incr(k)
            else:
                client.msetnx({k: "m", k2: "n"})
        except redis.ResponseError:
            pass
    before = dump_keyspace(client)
    srv.kill9()
    after = dump_keyspace(server_factory(shards=2, data_dir=data_dir).client())
    assert after == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MiB tmpfs (a disk that fills up), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here (needs root): {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem is full; return the bytes written."""
    chunk = bytes(64 * 1024)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno == 28:  # ENOSPC
                    return written
                raise
    finally:
        os.close(fd)


def test_full_disk_refuses_writes_then_recovers_when_space_is_freed(small_tmpfs, tmp_path):
    """ENOSPC on a real tmpfs: the pending write is held, new writes get MISCONF;
    once space is freed the shard rewrites the pending record into a fresh segment,
    releases its reply, takes writes again, and after kill -9 has every
    acknowledged write."""
    from conftest import DurakvServer
    data_dir = small_tmpfs / "data"
    servers = []

    def start() -> DurakvServer:
        srv = DurakvServer(data_dir, shards=1)
        srv.log_path = tmp_path / f"server{len(servers)}.log"   # the log must not fill up too
        servers.append(srv)
        return srv.start()

    try:
        srv = start()
        client = srv.client()
        acked = {f"before:{i}": f"v{i}" for i in range(50)}
        client.mset(acked)
        filler = small_tmpfs / "filler"
        filled = _fill(filler)
        big = "x" * (2 * ZERO_AHEAD_BYTES)   # more than the log zeroes ahead: it must grow the file
        writer = _raw(srv.port)
        writer.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n" % (len(big), big.encode()))
        info = _wait_info(client, "aof_last_write_status", "err")
        assert "No space left on device" in info["log_write_error"]
        with pytest.raises(redis.ResponseError, match="MISCONF"):
            client.set("refused", "no")
        assert client.get("before:7") == b"v7"
        assert _no_reply_within(writer, 0.5), "a write was acknowledged while the disk was full"
        filler.unlink()
        assert _read_reply(writer) == b"+OK\r\n"
        acked["big"] = big
        _wait_info(client, "aof_last_write_status", "ok")
        after = {f"after:{i}": f"w{i}" for i in range(50)}
        client.mset(after)
        acked.update(after)
        print(f"filled {filled} bytes; recovered after freeing them")
        assert "log writable again" in srv.log()
        srv.kill9()
        client = start().client()
        keys = sorted(acked)
        assert client.mget(keys) == [acked[k].encode() for k in keys]
        assert client.get("refused") is None
    finally:
        for srv in servers:
            srv.stop()
