"""Runtime parameters behind CONFIG GET/SET, with Redis 7.0's names, defaults,
value syntax and error texts. Parameters that change how shards encode or
execute (`SHARD_PARAMS`) are forwarded to every shard when set."""

from __future__ import annotations

from shards.config import Config
from shards.glob import glob_match
from shards.resp import ReplyError
from shards.shard_settings import SHARD_DEFAULTS

BOOL, INT, MEMORY, STRING, ENUM = range(5)

_MEMORY_UNITS = {b"k": 1000, b"kb": 1024, b"m": 1000**2, b"mb": 1024**2, b"g": 1000**3, b"gb": 1024**3}


class Param:
    __slots__ = ("name", "kind", "default", "mutable", "choices", "minimum", "maximum")

    def __init__(self, name: str, kind: int, default: str, mutable: bool = True,
                 choices: tuple[str, ...] = (), minimum: int = -(2**63), maximum: int = 2**63 - 1) -> None:
        self.name = name
        self.kind = kind
        self.default = default
        self.mutable = mutable
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum


def _params(config: Config) -> list[Param]:
    p = Param
    shard_params = [p(name, INT, str(value)) for name, value in SHARD_DEFAULTS.items()]
    return shard_params + [
        p("bind", STRING, config.bind, mutable=False),
        p("port", INT, str(config.port), mutable=False),
        p("databases", INT, "1", mutable=False),
        p("cluster-enabled", BOOL, "yes", mutable=False),
        p("daemonize", BOOL, "no", mutable=False),
        p("dir", STRING, config.data_dir, mutable=False),
        p("requirepass", STRING, config.requirepass),
        p("masterauth", STRING, ""),
        p("save", STRING, ""),
        p("appendonly", BOOL, "yes"),
        p("appendfsync", ENUM, "always", choices=("always", "everysec", "no")),
        p("maxmemory", MEMORY, "0", minimum=0),
        p("maxmemory-policy", ENUM, "noeviction", choices=(
            "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl", "allkeys-lru",
            "allkeys-lfu", "allkeys-random", "noeviction")),
        p("maxmemory-samples", INT, "5", minimum=1, maximum=64),
        p("maxclients", INT, str(config.maxclients), minimum=1),
        p("timeout", INT, "0", minimum=0),
        p("tcp-keepalive", INT, "300", minimum=0),
        p("hz", INT, str(config.hz), minimum=1, maximum=500),
        p("proto-max-bulk-len", MEMORY, str(config.proto_max_bulk_len), minimum=1024 * 1024),
        p("client-query-buffer-limit", MEMORY, str(config.client_query_buffer_limit), minimum=1024 * 1024),
        p("client-output-buffer-limit", STRING, "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
        p("slowlog-log-slower-than", INT, "10000"),
        p("slowlog-max-len", INT, "128", minimum=0),
        p("latency-tracking", BOOL, "yes"),
        p("latency-monitor-threshold", INT, "0", minimum=0),
        p("lazyfree-lazy-eviction", BOOL, "no"),
        p("lazyfree-lazy-expire", BOOL, "no"),
        p("lazyfree-lazy-server-del", BOOL, "no"),
        p("lazyfree-lazy-user-del", BOOL, "no"),
        p("lazyfree-lazy-user-flush", BOOL, "no"),
        p("activerehashing", BOOL, "yes"),
        p("activedefrag", BOOL, "no"),
        p("notify-keyspace-events", STRING, ""),
        p("busy-reply-threshold", INT, "5000", minimum=0),
        p("lua-time-limit", INT, "5000", minimum=0),
        p("loglevel", ENUM, "notice", choices=("debug", "verbose", "notice", "warning")),
        p("close-on-replica-write", BOOL, "yes"),
        p("replica-read-only", BOOL, "yes"),
        p("enable-debug-command", ENUM, "no", mutable=False, choices=("no", "yes", "local")),
        p("cluster-node-timeout", INT, "15000"),
        p("min-replicas-to-write", INT, "0", minimum=0),
        p("lfu-log-factor", INT, "10", minimum=0),
        p("lfu-decay-time", INT, "1", minimum=0),
        p("active-expire-effort", INT, "1", minimum=1, maximum=10),
        p("io-threads", INT, "1", mutable=False),
        p("tracking-table-max-keys", INT, "1000000", minimum=0),
    ]


# Old names Redis still accepts (7.0 renamed ziplist to listpack).
ALIASES = {
    "hash-max-ziplist-entries": "hash-max-listpack-entries",
    "hash-max-ziplist-value": "hash-max-listpack-value",
    "zset-max-ziplist-entries": "zset-max-listpack-entries",
    "zset-max-ziplist-value": "zset-max-listpack-value",
    "list-max-ziplist-size": "list-max-listpack-size",
}


def parse_memory(text: str) -> int | None:
    raw = text.lower().encode()
    for suffix in (b"kb", b"mb", b"gb", b"k", b"m", b"g"):
        if raw.endswith(suffix):
            digits = raw[: -len(suffix)]
            return int(digits) * _MEMORY_UNITS[suffix] if digits.lstrip(b"-").isdigit() else None
    return int(raw) if raw.lstrip(b"-").isdigit() else None


class Settings:
    def __init__(self, config: Config) -> None:
        self.params = {param.name: param for param in _params(config)}
        self.values: dict[str, str] = {name: param.default for name, param in self.params.items()}

    @property
    def maxclients(self) -> int:
        return int(self.values["maxclients"])

    @property
    def requirepass(self) -> str:
        return self.values["requirepass"]

    def get(self, patterns: list[bytes]) -> list[bytes]:
        """Flat [name, value, ...] for every parameter matching any pattern."""
        found: dict[str, str] = {}
        for pattern in patterns:
            text = pattern.decode(errors="replace").lower()
            if text in ALIASES:
                found[text] = self.values[ALIASES[text]]
                continue
            for name, value in self.values.items():
                if glob_match(text.encode(), name.encode()):
                    found[name] = value
        out: list[bytes] = []
        for name, value in found.items():
            out += [name.encode(), value.encode()]
        return out

    def validate(self, pairs: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """Check a CONFIG SET request as a whole (Redis applies all or nothing)."""
        seen = set()
        result = []
        for raw_name, raw_value in pairs:
            name = raw_name.decode(errors="replace").lower()
            name = ALIASES.get(name, name)
            param = self.params.get(name)
            if param is None:
                raise ReplyError(b"ERR Unknown option or number of arguments for CONFIG SET - '%s'" % raw_name)
            if name in seen:
                raise ReplyError(b"ERR CONFIG SET failed (possibly related to argument '%s') - "
                                 b"duplicate parameter" % raw_name)
            seen.add(name)
            if not param.mutable:
                raise ReplyError(b"ERR CONFIG SET failed (possibly related to argument '%s') - "
                                 b"can't set immutable config" % raw_name)
            value = raw_value.decode(errors="replace")
            result.append((name, self._normalize(param, value, raw_name)))
        return result

    def _normalize(self, param: Param, value: str, raw_name: bytes) -> str:
        def fail(why: bytes) -> ReplyError:
            return ReplyError(b"ERR CONFIG SET failed (possibly related to argument '%s') - %s" % (raw_name, why))

        if param.kind == BOOL:
            if value.lower() not in ("yes", "no"):
                raise fail(b"argument must be 'yes' or 'no'")
            return value.lower()
        if param.kind in (INT, MEMORY):
            number = parse_memory(value) if param.kind == MEMORY else (
                int(value) if value.lstrip("-").isdigit() else None)
            if number is None:
                raise fail(b"argument couldn't be parsed into an integer")
            if not param.minimum <= number <= param.maximum:
                raise fail(b"argument must be between %d and %d inclusive" % (param.minimum, param.maximum))
            return str(number)
        if param.kind == ENUM:
            if value.lower() not in param.choices:
                raise fail(b"argument(s) must be one of the following: " + ", ".join(param.choices).encode())
            return value.lower()
        return value

    def apply(self, changes: list[tuple[str, str]]) -> None:
        for name, value in changes:
            self.values[name] = value
