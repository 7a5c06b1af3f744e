"""BGSAVE and LASTSAVE on top of the snapshotter process (always running: with
no snapshot URL it keeps snapshots under the data dir): the serving processes
never save; they ask the snapshotter process (through its control files in the
data dir) and report what it has published."""

from __future__ import annotations

from durakv.server.client import Client
from durakv.shards.resp import ReplyError, Simple
from durakv.shards.table import ROUTER, command
from durakv.snapshotter.runner import read_status, request_snapshot


@command("bgsave", -1, "admin noscript no_async_loading", group="server", where=ROUTER)
def bgsave(client: Client, argv: list[bytes]):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() != b"SCHEDULE"):
        raise ReplyError(b"ERR syntax error")
    request_snapshot(client.router.config.data_dir)
    return Simple(b"Background saving started")


def newest_snapshot_time_s(data_dir: str) -> int:
    """When the newest snapshot was published (0: never)."""
    return read_status(data_dir).newest_published_ms() // 1000
