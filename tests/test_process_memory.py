"""What every process of a tree holds before it has any key (issue 11 §4): the
supervisor's imports are in the RSS of each process forked from it, so modules only
some configurations need stay out of them, and per-link buffers cost only the pages
their reads touch. (The per-key structures: tests/test_keyspace_memory.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys

from durakv.shards.framelink import RECV_BYTES, FrameReceiver

# etcd3gw and requests (with urllib3, charset_normalizer, futurist, asyncio) cost ~10 MB
# of RSS in each process of a tree that does not keep its log on etcd, boto3 more, and
# trio.testing ~9 MB (it imports pytest where pytest is installed).
CONFIG_ONLY_MODULES = ("etcd3gw", "requests", "urllib3", "futurist", "boto3", "botocore",
                       "durakv.log.etcd_client", "durakv.log.etcd_log", "durakv.log.etcd_records",
                       "trio.testing", "pytest")
RECEIVERS = 16


def test_supervisor_preloads_no_etcd_or_s3_client():
    """What the supervisor imports before forking (and the CLI every child runs) leaves
    the etcd and S3 clients out: they load where a log on etcd or an S3 store is used."""
    code = ("import importlib, sys\n"
            "from durakv.server.supervisor import PRELOADED_MODULES\n"
            "import durakv.server.cli, durakv.snapshotter.runner, durakv.shards.replica\n"
            "for m in PRELOADED_MODULES: importlib.import_module(m)\n"
            f"print(','.join(m for m in {CONFIG_ONLY_MODULES!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


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
