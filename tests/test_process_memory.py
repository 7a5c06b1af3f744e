"""What every process of a tree holds before it has any key (issue 11 §4): the
supervisor's imports are in the RSS of each process forked from it, so modules only
some configurations need stay out of them, as do big module-level tables; the
snapshotter, executed afresh, idles without the engine its build children load; free
heap goes back to the system; and per-link buffers cost only the pages their reads
touch. (The per-key structures: tests/test_keyspace_memory.py; the measurements:
scripts/process_memory.py and scripts/memory_per_key.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from durakv.shards.framelink import RECV_BYTES, FrameReceiver
from durakv.snapshotter.runner import read_status

# etcd3gw and requests (with urllib3, charset_normalizer, futurist, asyncio) cost ~10 MB
# of RSS in each process of a tree that does not keep its log on etcd, boto3 more, and
# trio.testing ~9 MB (it imports pytest where pytest is installed). importlib.metadata
# (with email, zipfile, csv) came with the crc32c package's __init__ (log/format.py loads
# its extension alone) and with `durakv --version` (read only when asked).
CONFIG_ONLY_MODULES = ("etcd3gw", "requests", "urllib3", "futurist", "boto3", "botocore",
                       "durakv.log.etcd_client", "durakv.log.etcd_log", "durakv.log.etcd_records",
                       "trio.testing", "pytest", "importlib.metadata", "email", "zipfile")
# What the idle snapshotter (executed afresh, snapshotter/runner.py) leaves to its build
# children: the engine with Lua, the RDB codec, trio (and ssl with it), the router's world.
SNAPSHOTTER_FREE_OF = ("trio", "lupa", "ssl", "hiredis", "durakv.shards.engine", "durakv.shards.keyspace",
                       "durakv.shards.rdb.codec", "durakv.server.settings_sync", "durakv.server.client")
# Shared objects that only the modules above map: none of them may be in the idle
# snapshotter's address space, even after it has built a snapshot.
SNAPSHOTTER_UNMAPPED = ("lupa", "hiredis", "_ssl")
RECEIVERS = 16
WAIT_S = 60.0


def test_supervisor_preloads_no_etcd_or_s3_client():
    """What the supervisor imports before forking (and the CLI every child runs) leaves
    the etcd and S3 clients out: they load where a log on etcd or an S3 store is used."""
    # Only what durakv's imports add counts: a site .pth may import e.g. zipfile at startup.
    code = ("import importlib, sys\n"
            "at_start = set(sys.modules)\n"
            "from durakv.server.supervisor import PRELOADED_MODULES\n"
            "import durakv.server.cli, durakv.snapshotter.runner, durakv.shards.replica\n"
            "for m in PRELOADED_MODULES: importlib.import_module(m)\n"
            f"print(','.join(m for m in {CONFIG_ONLY_MODULES!r} if m in sys.modules and m not in at_start))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_snapshotter_command_imports_no_engine_or_etcd_client():
    """What `durakv snapshotter` imports to run its loop (a config without etcd):
    neither the engine and trio, which only its build children need, nor the etcd
    client, nor the router's CONFIG SET propagation to follow loglevel."""
    code = ("import sys\n"
            "at_start = set(sys.modules)\n"
            "import durakv.server.cli, durakv.snapshotter.runner, durakv.server.runtime_changes\n"
            "from durakv.server import snapshot_cli\n"
            "from durakv.shards.config import DEFAULTS\n"
            "assert snapshot_cli._etcd_source(DEFAULTS) is None\n"
            f"print(','.join(m for m in {SNAPSHOTTER_FREE_OF + CONFIG_ONLY_MODULES!r}\n"
            "               if m in sys.modules and m not in at_start))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def _snapshotter_pid(srv) -> int:
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "^durakv snapshotter "],
                         capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one snapshotter, found {pids}"
    return pids[0]


def test_idle_snapshotter_maps_no_engine_after_a_build(server_factory):
    """The snapshotter is executed afresh, not forked from the supervisor's imports, and
    a build's engine lives and dies in its forked child: after BGSAVE built a snapshot,
    the snapshotter maps none of the engine's extension modules and stays small."""
    srv = server_factory(shards=1)
    client = srv.client()
    client.set("k", "v")
    client.bgsave()
    deadline = time.monotonic() + WAIT_S
    while read_status(str(srv.data_dir)).shards.get(0) is None or read_status(str(srv.data_dir)).shards[0].last_seq < 1:
        assert time.monotonic() < deadline, f"no snapshot built:\n{srv.log()}"
        time.sleep(0.05)
    pid = _snapshotter_pid(srv)
    with open(f"/proc/{pid}/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    mapped = [p for p in paths if any(f"/{name}" in p for name in SNAPSHOTTER_UNMAPPED)]
    with open(f"/proc/{pid}/status") as f:
        rss = next(line for line in f if line.startswith("VmRSS:"))
    print(f"idle snapshotter after a build: {rss.strip()}")
    assert mapped == [], f"the idle snapshotter maps {mapped}"


def anon_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def test_idle_link_receivers_do_not_hold_their_read_buffer():
    """A FrameReceiver's 1 MiB read buffer is resident only where reads wrote it: a
    router holds one per shard link and a shard one per router link, most of them only
    ever carrying small frames."""
    pairs = [socket.socketpair() for _ in range(RECEIVERS)]
    try:
        before = anon_rss_bytes()
        receivers = [FrameReceiver(a, lambda items: None) for a, _ in pairs]
        grown = anon_rss_bytes() - before
        print(f"{RECEIVERS} receivers: {grown / RECV_BYTES:.2f} MiB of resident memory")
        assert grown < RECV_BYTES, "the receivers' read buffers are resident before any read"
        assert len(receivers) == RECEIVERS
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_release_free_heap_returns_fragmented_free_memory():
    """What a start frees between what it keeps (imports, a shard's replay) stays
    resident in malloc's heap until release_free_heap, which every process of a tree
    calls once (before the supervisor forks; where a child says it is ready)."""
    code = ("from durakv.shards.malloc_stats import release_free_heap\n"
            "def anon():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon:'))\n"
            "chunks = [bytes(2000) + bytes([i % 256]) for i in range(40000)]\n"
            "kept = chunks[::16]\n"
            "del chunks\n"
            "before = anon()\n"
            "release_free_heap()\n"
            "print(before - anon(), len(kept))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    released_kb, kept = (int(x) for x in out.stdout.split())
    print(f"released {released_kb} kB of ~{40000 * 2 * 15 // 16} kB freed")
    assert released_kb > 40000 * 2 // 2, "malloc kept the freed chunks resident"


# A module-level table is in the supervisor's preload, so in the RSS of every process
# forked from it: a table this big is built where it is used, or packed (geo's unzip
# table was 65536 int objects, ~3 MB; an array of 64-bit cells is 512 KiB).
MODULE_TABLE_MAX_BYTES = 1 << 20


def test_preload_holds_no_big_module_tables():
    code = ("import importlib, sys\n"
            "at_start = set(sys.modules)\n"
            "from durakv.server.supervisor import PRELOADED_MODULES\n"
            "for m in PRELOADED_MODULES: importlib.import_module(m)\n"
            "def size(o, seen, depth=0):\n"
            "    if id(o) in seen or depth > 4: return 0\n"
            "    seen.add(id(o))\n"
            "    n = sys.getsizeof(o)\n"
            "    if isinstance(o, dict): n += sum(size(k, seen, depth + 1) + size(v, seen, depth + 1)"
            " for k, v in list(o.items()))\n"
            "    elif isinstance(o, (list, tuple, set, frozenset)):\n"
            "        n += sum(size(v, seen, depth + 1) for v in list(o))\n"
            "    return n\n"
            "seen = set()\n"
            "for name, module in sorted(sys.modules.items()):\n"
            "    if name.startswith('durakv.') and module is not None:\n"
            "        for attr, value in list(vars(module).items()):\n"
            "            if (isinstance(value, (dict, list, tuple, set, frozenset))\n"
            "                    or type(value).__name__ == 'array'):\n"
            f"                if size(value, seen) > {MODULE_TABLE_MAX_BYTES}: print(f'{{name}}.{{attr}}')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
