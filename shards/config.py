"""The configuration schema shared by every durakv process.

Decoded from TOML into typed msgspec structs (kebab-case keys, unknown keys are
an error); command-line flags override the file. The supervisor hands the
resolved config to its children as JSON through an inherited pipe (never on
argv, where `ps` would show requirepass to every user) so that all processes agree.
"""

from __future__ import annotations

import os
import re

import msgspec

from durakv.log.layout import DEFAULT_DATA_DIR


class Config(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    bind: str = "127.0.0.1"
    port: int = 6379
    shards: int = 0  # 0: one per CPU core
    routers: int = 1
    data_dir: str = DEFAULT_DATA_DIR
    requirepass: str = ""
    protected_mode: bool = True  # no requirepass: serve loopback clients only (server/protected.py)
    aclfile: str = ""  # Redis' ACL file (ACL LOAD/SAVE); none: users kept in DIR/users.acl
    announce_ip: str = ""  # the address CLUSTER SLOTS/NODES/SHARDS and MOVED give (Redis' cluster-announce-ip)
    shard_port_base: int = 0  # shard i serves cluster clients on base + i; 0: the router's port + 1
    cluster_announce: str = "shards"  # "shards": each shard is a cluster node; "router": the router is the one node
    # TLS, as redis.conf names it (server/tls.py). tls-port 0: none; port 0 with a tls-port: TLS only.
    tls_port: int = 0
    tls_shard_port_base: int = 0  # shard i serves TLS cluster clients on base + i; 0: tls-port + 1
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_key_file_pass: str = ""
    tls_ca_cert_file: str = ""
    tls_ca_cert_dir: str = ""
    tls_dh_params_file: str = ""
    tls_auth_clients: str = "yes"  # yes, no, optional: whether clients must show a certificate
    tls_protocols: str = ""  # "": TLSv1.2 and TLSv1.3
    tls_ciphers: str = ""
    tls_ciphersuites: str = ""
    tls_prefer_server_ciphers: bool = False
    tls_session_caching: bool = True
    tls_session_cache_size: int = 20480
    tls_session_cache_timeout: int = 300
    proto_max_bulk_len: int = 512 * 1024 * 1024
    client_query_buffer_limit: int = 1024 * 1024 * 1024
    maxclients: int = 10000
    hz: int = 10
    maxmemory: int = 0  # bytes for the whole tree's data, split over the shards (shards/evict.py); 0: no limit
    maxmemory_policy: str = "noeviction"
    log_level: str = "info"  # Redis' debug/verbose/notice/warning, or Python's info/error/critical
    log_file: str = ""  # append log lines here; empty: stderr (journald under systemd)
    shard_restart_backoff_max_ms: int = 10_000
    # Replicas (shards/replica.py): processes per shard that follow its durable log and
    # serve READONLY reads on their own ports; one is promoted when the primary dies or
    # stops renewing its log lease (lease_duration_ms).
    replicas: int = 0
    replica_port_base: int = 0  # replica r of shard i on base + i * replicas + r; 0: after the shard ports
    # A replica's TLS port (with a tls-port): base + i * replicas + r; 0: after the TLS shard ports.
    tls_replica_port_base: int = 0
    lease_duration_ms: int = 2000
    startup_shard_wait_ms: int = 30_000
    durability: str = "sync"  # "sync": ack after fsync; "async": ack at once, bounded window
    max_unsynced_ms: int = 1000
    segment_size_bytes: int = 4 * 1024 * 1024  # the unit in which covered log is dropped
    # Where the shard logs live (shards/log_backend.py): "local" segment files in the data dir, or
    # "etcd": records on an etcd cluster (log/etcd_log.py), so a write survives the loss of this machine.
    log_backend: str = "local"
    etcd_endpoints: list[str] = msgspec.field(default_factory=list)  # http(s)://HOST:PORT of the members
    etcd_prefix: str = "durakv"  # keys: PREFIX/shard-NNN/...; one prefix per durakv deployment
    etcd_lease_ttl_s: int = 10  # a shard that stops renewing loses its leader key after this long
    # Nodes (log-backend = "etcd"): durakv trees on several machines sharing the etcd prefix.
    # node_id names this one in the leader keys; advertise is HOST:PORT clients reach its router at;
    # node_role "replica": it runs no primaries, only `replicas` replicas per shard, which campaign
    # for their shard's leader key whenever it is free (the primary's node died or was cut off).
    node_id: str = ""
    advertise: str = ""
    node_role: str = "primary"
    # A primary on a node accepts other nodes' routers on link-port-base + shard (0: any free
    # port); either way the address is published with its leader key (shards/link_auth.py).
    link_port_base: int = 0
    # A primary on etcd serves reads and writes only while its etcd lease is known valid for this
    # much more (shards/lease_guard.py): the clock-drift margin between this machine and etcd's.
    etcd_lease_margin_ms: int = 500
    # The snapshotter defragments a member (one at a time, when etcd is quiet) once this much of its
    # database file is free pages (0: never), at most once per interval for the whole deployment.
    etcd_defrag_free_bytes: int = 64 * 1024 * 1024
    etcd_defrag_interval_s: int = 600
    etcd_ca_file: str = ""  # TLS to etcd (https:// endpoints): the CA, and a client certificate and key
    etcd_cert_file: str = ""
    etcd_key_file: str = ""
    etcd_user: str = ""  # etcd authentication (the config file only: never on argv)
    etcd_password: str = ""
    snapshot_url: str = ""  # s3://BUCKET/PREFIX or file:///PATH (none: snapshots in DIR/snapshots only)
    snapshotter: bool = True  # false: the snapshotter runs elsewhere (its own unit, or --once from cron)
    snapshot_sse: str = ""  # S3 server-side encryption for uploads (AES256, aws:kms)
    snapshot_storage_class: str = ""  # S3 storage class for uploads (STANDARD_IA, ...)
    # S3 credentials (else boto3's chain: ~/.aws, the instance role); `serve` moves exported
    # AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN here (server/secret_sources.py).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_session_token: str = ""
    snapshot_every_bytes: int = 4 * 1024 * 1024  # build when at least this many log bytes follow a snapshot
    snapshot_every_percent: int = 100  # and this percentage of the snapshot's size (Redis' AOF rewrite rule)
    snapshot_max_age_s: float = 3600.0  # and at least this often while there are new records
    snapshot_cpu_percent: int = 25  # share of wall time a snapshot build may run (snapshotter.pace)
    log_archive_interval_ms: int = 1000  # ship each shard's durable log tail to the store this often
    log_archive_bytes: int = 4 * 1024 * 1024  # or as soon as this many bytes are new
    test_fsync_delay_ms: int = 0  # test hook: stretch every fsync to expose hazards
    test_fsync_gate_path: str = ""  # test hook: fsyncs wait until this file exists
    test_fsync_fail_path: str = ""  # test hook: fsyncs fail with EIO while this file exists
    test_durability_journal: bool = False  # test hook: journal what each sync made durable
    # [settings]: CONFIG parameters (Redis' names) applied at startup as CONFIG SET would
    # (server/settings.py checks them); CONFIG REWRITE writes runtime changes here.
    settings: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    config_file: str = ""  # set by load_config: the --config file's absolute path (never a setting of its own)

    def resolved(self) -> "Config":
        shards = self.shards or (os.cpu_count() or 1)
        return msgspec.structs.replace(self, shards=shards, data_dir=os.path.abspath(self.data_dir))


# CONFIG parameters (Redis' names) whose value is a top-level key of the file (their one
# home there): CONFIG REWRITE writes them there, and [settings] may not repeat them.
TOP_LEVEL_KEYS = {"bind": "bind", "port": "port", "dir": "data-dir", "requirepass": "requirepass",
                  "maxclients": "maxclients", "hz": "hz", "proto-max-bulk-len": "proto-max-bulk-len",
                  "client-query-buffer-limit": "client-query-buffer-limit", "loglevel": "log-level",
                  "logfile": "log-file"}
_TOML_POSITION = re.compile(r"at line (\d+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_BARE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def _decode_problem(path: str, text: bytes, error: msgspec.DecodeError) -> str:
    """One line for a config file msgspec refused: a redis.conf-style line gets a hint
    that the file is TOML (with the line rewritten), an unknown key where it belongs."""
    message = str(error)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        key = unknown.group(1)
        home = TOP_LEVEL_KEYS.get(key)
        if home is not None and home != key:
            return f"config file {path}: unknown key {key}: durakv's config calls it {home}"
        return (f"config file {path}: unknown key {key}; the keys are listed in README (Redis CONFIG "
                "parameters go in a [settings] table)")
    at = _TOML_POSITION.search(message)
    lines = text.decode(errors="replace").splitlines()
    if at and 0 < int(at.group(1)) <= len(lines):
        number = int(at.group(1))
        line = lines[number - 1].strip()
        words = line.split(None, 1)
        if len(words) == 2 and "=" not in line and _BARE_KEY.fullmatch(words[0]):
            key, value = words
            toml_value = value if value.lstrip("-").isdigit() else '"' + value.strip('"') + '"'
            where = (f"{TOP_LEVEL_KEYS[key]} = {toml_value}" if key in TOP_LEVEL_KEYS
                     else f"[settings] {key} = {toml_value}")
            return (f"config file {path} is not TOML: line {number} `{line[:80]}` is redis.conf syntax; "
                    f"durakv's config is TOML (key = value): write {where}")
    return f"config file {path}: {message}; fix that setting (names as in README)"


# Every default, for the flags and classes that take one (argparse, snapshotter.runner.Schedule,
# the tail archiver, the pacer): each is stated once, in Config above.
DEFAULTS = Config()

# Inclusive bounds of every numeric setting; a value outside is refused at startup.
LIMITS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),  # 0: no plain TCP listener (then a tls-port is required)
    "shard_port_base": (0, 65535),  # 0: port + 1
    "tls_port": (0, 65535),
    "tls_shard_port_base": (0, 65535),  # 0: tls-port + 1
    "tls_session_cache_size": (0, 1 << 31),
    "tls_session_cache_timeout": (0, 1 << 31),
    "shards": (0, 1024),  # 0: one per CPU core
    "replicas": (0, 8),
    "replica_port_base": (0, 65535),  # 0: after the shard ports
    "link_port_base": (0, 65535),  # 0: any free port, published in etcd
    "tls_replica_port_base": (0, 65535),  # 0: after the TLS shard ports
    "lease_duration_ms": (50, 600_000),
    "routers": (1, 64),
    "proto_max_bulk_len": (1, 1 << 40),
    "client_query_buffer_limit": (1, 1 << 40),
    "maxclients": (1, 1 << 20),
    "hz": (1, 500),
    "maxmemory": (0, 1 << 62),
    "shard_restart_backoff_max_ms": (1, 3_600_000),
    "startup_shard_wait_ms": (0, 3_600_000),
    "max_unsynced_ms": (1, 3_600_000),
    "segment_size_bytes": (4096, 1 << 40),
    "etcd_lease_ttl_s": (2, 3600),
    "etcd_lease_margin_ms": (0, 1_800_000),
    "etcd_defrag_free_bytes": (0, 1 << 50),
    "etcd_defrag_interval_s": (1, 30 * 24 * 3600),
    "snapshot_every_bytes": (1, 1 << 50),
    "snapshot_every_percent": (0, 1_000_000),
    "snapshot_max_age_s": (0.001, 1e9),
    "snapshot_cpu_percent": (1, 100),
    "test_fsync_delay_ms": (0, 60_000),
    "log_archive_interval_ms": (10, 3_600_000),
    "log_archive_bytes": (1, 1 << 40),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "cluster_announce": ("shards", "router"),
    "durability": ("sync", "async"),
    "log_backend": ("local", "etcd"),
    "node_role": ("primary", "replica"),
    "maxmemory_policy": ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl", "allkeys-lru",
                         "allkeys-lfu", "allkeys-random", "noeviction"),
    "log_level": ("debug", "verbose", "notice", "info", "warning", "error", "critical"),
    "tls_auth_clients": ("yes", "no", "optional"),
}


def _host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def validate(config: Config) -> None:
    """Raise ValueError naming the first setting that is out of range, and the fix."""
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise ValueError(f"{name.replace('_', '-')} must be between {low} and {high}, not {value}")
    for name, allowed in CHOICES.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {value!r}")
    if not config.data_dir:
        raise ValueError("data-dir must not be empty")
    if config.log_backend == "etcd" and not config.etcd_endpoints:
        raise ValueError('log-backend = "etcd" needs etcd-endpoints (e.g. ["http://10.0.0.1:2379", ...])')
    if (config.node_id or config.node_role != "primary") and config.log_backend != "etcd":
        raise ValueError('node-id and node-role need log-backend = "etcd": nodes share the shard logs there')
    if config.node_role == "replica" and not config.replicas:
        raise ValueError('node-role = "replica" runs only replicas: set replicas to 1 or more')
    if config.advertise and not _host_port(config.advertise):
        raise ValueError(f"advertise must be HOST:PORT (where clients reach this node), not {config.advertise!r}")
    if config.node_id and not config.advertise and config.bind.split()[0] in ("0.0.0.0", "::", "*"):
        raise ValueError(f"node-id with bind {config.bind!r}: set --advertise HOST:PORT, the address other "
                         "nodes and clients reach this node at")
    if config.etcd_lease_margin_ms * 2 > config.etcd_lease_ttl_s * 1000:
        raise ValueError(f"etcd-lease-margin-ms ({config.etcd_lease_margin_ms}) must be at most half of "
                         f"etcd-lease-ttl-s ({config.etcd_lease_ttl_s} s); lower it or raise the TTL")
    if not config.port and not config.tls_port:
        raise ValueError("port is 0 and there is no tls-port: clients could not connect; set port or tls-port")
    shards = config.shards or (os.cpu_count() or 1)
    taken: dict[int, str] = {}
    for kind, base_name, router_port, port_of, replica_port_of in (
            ("", "shard-port-base", config.port, shard_port, replica_port),
            ("tls-", "tls-shard-port-base", config.tls_port, tls_shard_port, tls_replica_port)):
        if not router_port:
            continue
        last_port = port_of(config, shards - 1)
        if last_port > LIMITS["port"][1]:
            raise ValueError(f"shard {kind}ports run up to {last_port} ({base_name}, or {kind}port + 1, plus "
                             f"{shards - 1}), past {int(LIMITS['port'][1])}; lower {kind}port or {base_name}")
        if config.replicas and replica_port_of(config, shards - 1, config.replicas - 1) > LIMITS["port"][1]:
            raise ValueError(f"replica {kind}ports run past {int(LIMITS['port'][1])}; lower {kind}port or "
                             f"{kind}replica-port-base")
        for port, what in [(router_port, f"{kind}port"),
                           *((port_of(config, i), f"shard {i}'s {kind}port") for i in range(shards)),
                           *((replica_port_of(config, i, r), f"shard {i} replica {r}'s {kind}port")
                             for i in range(shards) for r in range(config.replicas))]:
            if port in taken:
                raise ValueError(f"{what} {port} is also {taken[port]}; choose ports that do not overlap "
                                 f"(the shards take the {shards} ports after port and after tls-port)")
            taken[port] = what


def shard_port(config: Config, shard: int) -> int:
    """The TCP port on which shard `shard` serves cluster clients (0: none, as port is 0)."""
    if not config.port:
        return 0
    return (config.shard_port_base or config.port + 1) + shard


def replica_port(config: Config, shard: int, number: int) -> int:
    """The TCP port of replica `number` of shard `shard` (0: none, as port is 0)."""
    if not config.port:
        return 0
    base = config.replica_port_base or (config.shard_port_base or config.port + 1) + (config.shards or 1)
    return base + shard * config.replicas + number


def tls_shard_port(config: Config, shard: int) -> int:
    """The TCP port on which shard `shard` serves TLS cluster clients (0: none, as tls-port is 0)."""
    if not config.tls_port:
        return 0
    return (config.tls_shard_port_base or config.tls_port + 1) + shard


def tls_replica_port(config: Config, shard: int, number: int) -> int:
    """The TLS port of replica `number` of shard `shard` (0: none, as tls-port is 0)."""
    if not config.tls_port:
        return 0
    base = config.tls_replica_port_base or (config.tls_shard_port_base or config.tls_port + 1) + (config.shards or 1)
    return base + shard * config.replicas + number


def load_config(path: str | None, overrides: dict) -> Config:
    """Config from a TOML file (if any) with non-None overrides applied. ValueError
    (one line, naming the file or setting) for anything unreadable or out of range."""
    if path:
        try:
            with open(path, "rb") as f:
                text = f.read()
            config = msgspec.toml.decode(text, type=Config)
        except OSError as e:
            raise ValueError(f"cannot read config file {path}: {e.strerror}; pass --config a readable "
                             "TOML file") from None
        except msgspec.DecodeError as e:
            raise ValueError(_decode_problem(path, text, e)) from None
        if config.config_file:
            raise ValueError(f"config file {path}: config-file is not a setting (durakv records the --config "
                             "path itself); remove it")
        config = msgspec.structs.replace(config, config_file=os.path.abspath(path))
    else:
        config = Config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        config = msgspec.structs.replace(config, **changes)
    validate(config)
    return config.resolved()


def config_to_json(config: Config) -> str:
    return msgspec.json.encode(config).decode()


def config_from_json(text: str | bytes) -> Config:
    return msgspec.json.decode(text, type=Config)


# A pipe holds this much before write() blocks (Linux default); the config is a
# few hundred bytes, so one write fills the pipe before the child even starts.
CONFIG_PIPE_MAX_BYTES = 64 * 1024


def config_pipe(config: Config) -> int:
    """A pipe holding the config as JSON: returns the read end, for a child to
    inherit (pass_fds) and read with config_from_fd. The write end is closed."""
    data = config_to_json(config).encode()
    if len(data) > CONFIG_PIPE_MAX_BYTES:
        raise ValueError(f"configuration is {len(data)} bytes; at most {CONFIG_PIPE_MAX_BYTES} fit the pipe")
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os.close(write_fd)
    return read_fd


def config_from_fd(fd: int) -> Config:
    """Read (to EOF) and close the config pipe made by config_pipe."""
    with os.fdopen(fd, "rb") as f:
        return config_from_json(f.read(CONFIG_PIPE_MAX_BYTES + 1))
