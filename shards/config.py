"""The configuration schema shared by every durakv process.

Decoded from TOML into typed msgspec structs (kebab-case keys, unknown keys are
an error); command-line flags override the file. The supervisor hands the
resolved config to its children as JSON so that all processes agree.
"""

from __future__ import annotations

import os

import msgspec


class Config(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    bind: str = "127.0.0.1"
    port: int = 6379
    shards: int = 0  # 0: one per CPU core
    routers: int = 1
    data_dir: str = "./durakv-data"
    requirepass: str = ""
    announce_ip: str = ""
    proto_max_bulk_len: int = 512 * 1024 * 1024
    client_query_buffer_limit: int = 1024 * 1024 * 1024
    maxclients: int = 10000
    hz: int = 10
    log_level: str = "info"
    shard_restart_backoff_max_ms: int = 10_000
    startup_shard_wait_ms: int = 30_000
    durability: str = "sync"  # "sync": ack after fsync; "async": ack at once, bounded window
    max_unsynced_ms: int = 1000
    segment_size_bytes: int = 64 * 1024 * 1024
    snapshot_url: str = ""  # s3://BUCKET/PREFIX: run the snapshotter, bootstrap empty shards
    snapshot_sse: str = ""  # S3 server-side encryption for uploads (AES256, aws:kms)
    snapshot_storage_class: str = ""  # S3 storage class for uploads (STANDARD_IA, ...)
    snapshot_every_bytes: int = 64 * 1024 * 1024  # build when this many log bytes follow a snapshot
    snapshot_max_age_s: float = 3600.0  # and at least this often while there are new records
    snapshot_cpu_percent: int = 25  # share of wall time a snapshot build may run (snapshotter.pace)
    test_fsync_delay_ms: int = 0  # test hook: stretch every fsync to expose hazards
    test_fsync_gate_path: str = ""  # test hook: fsyncs wait until this file exists
    test_fsync_fail_path: str = ""  # test hook: fsyncs fail with EIO while this file exists
    test_durability_journal: bool = False  # test hook: journal what each sync made durable

    def resolved(self) -> "Config":
        shards = self.shards or (os.cpu_count() or 1)
        return msgspec.structs.replace(self, shards=shards, data_dir=os.path.abspath(self.data_dir))


def load_config(path: str | None, overrides: dict) -> Config:
    """Config from a TOML file (if any) with non-None overrides applied."""
    if path:
        with open(path, "rb") as f:
            config = msgspec.toml.decode(f.read(), type=Config)
    else:
        config = Config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        config = msgspec.structs.replace(config, **changes)
    if not 1 <= config.routers <= 64:
        raise ValueError("routers must be between 1 and 64")
    if not 0 <= config.shards <= 1024:
        raise ValueError("shards must be between 0 and 1024")
    if config.durability not in ("sync", "async"):
        raise ValueError('durability must be "sync" or "async"')
    if not 1 <= config.snapshot_cpu_percent <= 100:
        raise ValueError("snapshot-cpu-percent must be between 1 and 100")
    return config.resolved()


def config_to_json(config: Config) -> str:
    return msgspec.json.encode(config).decode()


def config_from_json(text: str) -> Config:
    return msgspec.json.decode(text, type=Config)
