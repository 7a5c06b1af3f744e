"""Runtime parameters behind CONFIG GET/SET, with Redis 7.0's names, aliases,
defaults, value syntax and error texts (config.c). Parameters that change how
shards encode or execute (shards/shard_settings.py) are forwarded to every shard
when set.

Each numeric parameter carries the C type Redis stores it in, because that
decides both the parse (memory values through memtoull, which saturates and
wraps like C) and the wording of the bounds error (unsigned bounds print as
unsigned). A few parameters durakv cannot change at run time (bind, port, dir)
are immutable here although Redis can rebind or chdir.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from durakv.server.logsetup import REDIS_NAMES
from durakv.server.tls import TLS_SETTINGS, config_values
from durakv.shards.config import TOP_LEVEL_KEYS, Config
from durakv.shards.glob import glob_match
from durakv.shards.numbers import INT_MAX, INT_MIN, LLONG_MAX, LLONG_MIN, UINT_MAX, ULLONG_MAX, parse_ll, strtod
from durakv.shards.resp import ReplyError
from durakv.shards.notify import flags_text, parse_flags
from durakv.shards.shard_settings import SHARD_DEFAULTS

logger = logging.getLogger("durakv.router")

MIN_HZ, MAX_HZ = 1, 500
MEMTOULL_MAX_DIGITS = 127

BOOL, ENUM, STRING, NUMBER, SAVE, OUTPUT_LIMITS, KEYSPACE_EVENTS, PERCENTILES = range(8)

_MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                 "g": 1000**3, "gb": 1024**3}

# Parameters Redis 7.0 changes at run time (it rebinds, chdirs) that durakv fixes at
# start: CONFIG SET of the value they have is accepted, as it would be by Redis;
# another value fails where Redis' apply step can fail, with its error text.
REDIS_MUTABLE = {"bind": b"Failed to bind to specified addresses: durakv binds them once, at start",
                 "port": b"Unable to listen on this port: durakv listens on the port it started with",
                 "tls-port": b"Unable to listen on this port: durakv listens on the port it started with",
                 "dir": b"No such file or directory: durakv's data directory is fixed at start"}
MAX_PERCENT = 100
REPL_BACKLOG_MIN_BYTES = 16 * 1024  # Redis' CONFIG_REPL_BACKLOG_MIN_SIZE: smaller sizes are raised to it


@dataclass
class Param:
    name: str
    kind: int
    default: str
    mutable: bool = True
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()  # ENUM, in Redis' order (its error lists them)
    lo: int = LLONG_MIN
    hi: int = LLONG_MAX
    unsigned: bool = False  # a C unsigned type: bounds checked and printed as unsigned
    memory: bool = False  # MEMORY_CONFIG: "1gb" syntax
    percent: bool = False  # PERCENT_CONFIG: "10%" too (of maxmemory), shown as given
    # Accepted for configurations written for Redis, but durakv lacks the feature:
    # any value other than the default is refused with this reason.
    unsupported: bytes = b""
    on_set: Callable[[int], int] | None = field(default=None, repr=False)
    # Per machine by nature (a file path on this machine): a CONFIG SET of it stays on
    # the node it was made on instead of reaching every node (server/config_sync.py).
    per_node: bool = False

    @property
    def travels(self) -> bool:
        """Whether a CONFIG SET of it reaches the other nodes of the deployment."""
        return self.mutable and not self.per_node


def _int(name: str, default: int, lo: int, hi: int, **kw) -> Param:
    return Param(name, NUMBER, str(default), lo=lo, hi=hi, **kw)


def _size(name: str, default: int, lo: int = 0, hi: int = LLONG_MAX, **kw) -> Param:
    return Param(name, NUMBER, str(default), lo=lo, hi=hi, unsigned=True, **kw)


def _clamp_hz(value: int) -> int:
    return min(max(value, MIN_HZ), MAX_HZ)


_SHARD_PARAM_TYPES = {
    "hash-max-listpack-entries": dict(unsigned=True, lo=0, aliases=("hash-max-ziplist-entries",)),
    "hash-max-listpack-value": dict(unsigned=True, lo=0, memory=True, aliases=("hash-max-ziplist-value",)),
    "set-max-intset-entries": dict(unsigned=True, lo=0),
    "zset-max-listpack-entries": dict(unsigned=True, lo=0, aliases=("zset-max-ziplist-entries",)),
    "zset-max-listpack-value": dict(unsigned=True, lo=0, memory=True, aliases=("zset-max-ziplist-value",)),
    "list-max-listpack-size": dict(lo=INT_MIN, hi=INT_MAX, aliases=("list-max-ziplist-size",)),
    "list-compress-depth": dict(lo=0, hi=INT_MAX),
    "stream-node-max-bytes": dict(unsigned=True, lo=0, memory=True),
    "stream-node-max-entries": dict(lo=0),
    "hll-sparse-max-bytes": dict(unsigned=True, lo=0, memory=True),
    "busy-reply-threshold": dict(lo=0, aliases=("lua-time-limit",)),
    "slowlog-log-slower-than": dict(lo=-1),
    "slowlog-max-len": dict(unsigned=True, lo=0),
    "maxmemory": dict(unsigned=True, lo=0, hi=ULLONG_MAX, memory=True),
    "maxmemory-samples": dict(lo=1, hi=INT_MAX),
    "lfu-log-factor": dict(lo=0, hi=INT_MAX),
    "lfu-decay-time": dict(lo=0, hi=INT_MAX),
    "min-replicas-to-write": dict(lo=0, hi=INT_MAX, aliases=("min-slaves-to-write",)),
    "min-replicas-max-lag": dict(lo=0, hi=INT_MAX, aliases=("min-slaves-max-lag",)),
}


def _params(config: Config) -> list[Param]:
    shard_params = []
    for name, value in SHARD_DEFAULTS.items():
        if name == "maxmemory":
            value = config.maxmemory  # the config file's, which routers give every shard
        spec = dict(_SHARD_PARAM_TYPES.get(name, {}))
        hi = spec.pop("hi", LLONG_MAX)
        lo = spec.pop("lo", LLONG_MIN)
        shard_params.append(Param(name, NUMBER, str(value), lo=lo, hi=hi, **spec))
    bool_ = lambda name, default, **kw: Param(name, BOOL, default, **kw)  # noqa: E731
    return shard_params + [
        Param("bind", STRING, config.bind, mutable=False),
        _int("port", config.port, 0, 65535, mutable=False),
        _int("databases", 1, 1, INT_MAX, mutable=False),
        bool_("cluster-enabled", "yes", mutable=False),
        bool_("daemonize", "no", mutable=False),
        Param("dir", STRING, config.data_dir, mutable=False),
        Param("requirepass", STRING, config.requirepass),
        bool_("protected-mode", "yes" if config.protected_mode else "no"),
        Param("acl-pubsub-default", ENUM, "resetchannels", choices=("allchannels", "resetchannels")),
        _int("acllog-max-len", 128, 0, LLONG_MAX),
        Param("masterauth", STRING, ""),
        Param("save", SAVE, ""),
        bool_("appendonly", "yes"),
        Param("appendfsync", ENUM, "always", choices=("everysec", "always", "no")),
        Param("maxmemory-policy", ENUM, config.maxmemory_policy, choices=(
            "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl", "allkeys-lru",
            "allkeys-lfu", "allkeys-random", "noeviction")),
        _size("maxclients", config.maxclients, 1, UINT_MAX),
        _int("timeout", 0, 0, INT_MAX),
        _int("tcp-keepalive", 300, 0, INT_MAX),
        _int("hz", config.hz, 0, INT_MAX, on_set=_clamp_hz),
        _int("proto-max-bulk-len", config.proto_max_bulk_len, 1024 * 1024, LLONG_MAX, memory=True),
        _size("client-query-buffer-limit", config.client_query_buffer_limit, 1024 * 1024, LLONG_MAX,
              memory=True),
        Param("client-output-buffer-limit", OUTPUT_LIMITS,
              "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"),
        bool_("latency-tracking", "yes"),
        _int("latency-monitor-threshold", 0, 0, LLONG_MAX),
        Param("latency-tracking-info-percentiles", PERCENTILES, "50 99 99.9"),
        bool_("lazyfree-lazy-eviction", "no"),
        bool_("lazyfree-lazy-expire", "no"),
        bool_("lazyfree-lazy-server-del", "no"),
        bool_("lazyfree-lazy-user-del", "no"),
        bool_("lazyfree-lazy-user-flush", "no"),
        bool_("activerehashing", "yes"),
        bool_("activedefrag", "no"),
        Param("notify-keyspace-events", KEYSPACE_EVENTS, ""),
        Param("loglevel", ENUM, REDIS_NAMES[config.log_level], choices=("debug", "verbose", "notice", "warning")),
        Param("logfile", STRING, config.log_file, mutable=False),
        bool_("replica-read-only", "yes", aliases=("slave-read-only",)),
        Param("enable-debug-command", ENUM, "yes", mutable=False, choices=("no", "yes", "local")),
        _int("cluster-node-timeout", 15000, 0, LLONG_MAX),
        _int("active-expire-effort", 1, 1, 10),
        _int("io-threads", 1, 1, 128, mutable=False),
        _size("tracking-table-max-keys", 1000000, 0, LLONG_MAX),
        # Redis' replication backlog: durakv's replicas read the log, which is the backlog.
        _int("repl-backlog-size", 1024 * 1024, 1, LLONG_MAX, memory=True,
             on_set=lambda size: max(size, REPL_BACKLOG_MIN_BYTES)),
        Param("maxmemory-clients", NUMBER, "0", lo=-MAX_PERCENT, hi=LLONG_MAX, memory=True, percent=True,
              unsupported=b"durakv does not evict clients by their memory: only 0 (off) is accepted"),
        Param("replicaof", STRING, "", mutable=False, aliases=("slaveof",)),
        *_tls_params(config),
    ]


def _tls_params(config: Config) -> list[Param]:
    """tls-* (server/tls.py builds the context): tls-port is fixed as port is;
    the rest take effect for new connections when set, as Redis reloads them."""
    values = config_values(config)
    params = [_int("tls-port", config.tls_port, 0, 65535, mutable=False),
              Param("tls-auth-clients", ENUM, values["tls-auth-clients"], choices=("no", "yes", "optional")),
              _int("tls-session-cache-size", config.tls_session_cache_size, 0, INT_MAX),
              _int("tls-session-cache-timeout", config.tls_session_cache_timeout, 0, INT_MAX)]
    for name in ("tls-prefer-server-ciphers", "tls-session-caching"):
        params.append(Param(name, BOOL, values[name]))
    for name in ("tls-cert-file", "tls-key-file", "tls-key-file-pass", "tls-ca-cert-file", "tls-ca-cert-dir",
                 "tls-dh-params-file"):
        params.append(Param(name, STRING, values[name], per_node=True))  # files of this machine
    for name in ("tls-protocols", "tls-ciphers", "tls-ciphersuites"):
        params.append(Param(name, STRING, values[name]))
    assert {p.name for p in params} == set(TLS_SETTINGS), "every TLS setting is a CONFIG parameter"
    return params


# --- value syntax -------------------------------------------------------------------


def memtoull(text: str) -> int | None:
    """Redis 7.0's memtoull: digits then an optional unit; the digits saturate
    at ULLONG_MAX (strtoull) and the unit multiplication wraps (C arithmetic)."""
    if text[:1] == "-":
        return None
    i = 0
    while i < len(text) and text[i].isascii() and text[i].isdigit():
        i += 1
    mul = _MEMORY_UNITS.get(text[i:].lower())
    if mul is None or i > MEMTOULL_MAX_DIGITS:
        return None
    value = min(int(text[:i]), ULLONG_MAX) if i else 0
    return (value * mul) & ULLONG_MAX


def _as_signed(value: int) -> int:
    return value - 2**64 if value > LLONG_MAX else value


def _split_multi_arg(value: str) -> list[str]:
    """A multi-argument parameter's value is split on single spaces (sdssplitlen),
    so doubled or edge spaces make empty arguments."""
    return value.split(" ") if value else []


def _parse_save(value: str) -> str | None:
    """"seconds changes ..." pairs (seconds >= 1, changes >= 0), normalised."""
    args = _split_multi_arg(value)
    if len(args) % 2:
        return None
    numbers = []
    for j, raw in enumerate(args):
        number = _strtol(raw)
        if number is None or number < (1 if j % 2 == 0 else 0):
            return None
        numbers.append(number)
    return " ".join(str(n) for n in numbers)


def _strtol(text: str) -> int | None:
    """C strtoll over the whole string (leading space and '+' allowed, saturating)."""
    stripped = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if stripped[:1] in ("+", "-"):
        sign = -1 if stripped[0] == "-" else 1
        stripped = stripped[1:]
    if not stripped:
        return 0 if text == "" else None
    if not (stripped.isascii() and stripped.isdigit()):
        return None
    return max(min(sign * int(stripped), LLONG_MAX), LLONG_MIN)


_CLIENT_CLASSES = {"normal": "normal", "slave": "slave", "replica": "slave", "pubsub": "pubsub"}
_LIMIT_ORDER = ("normal", "slave", "pubsub")


def _parse_output_limits(current: str, value: str) -> tuple[str | None, bytes]:
    """client-output-buffer-limit: groups of "class hard soft seconds" merged
    into the current setting. Returns (new value, error)."""
    args = _split_multi_arg(value)
    if len(args) % 4:
        return None, b"Wrong number of arguments in buffer limit configuration."
    words = current.split()
    limits = {words[i]: words[i + 1 : i + 4] for i in range(0, len(words), 4)}
    for i in range(0, len(args), 4):
        klass = _CLIENT_CLASSES.get(args[i].lower())
        if klass is None:
            return None, b"Invalid client class specified in buffer limit configuration."
        hard, soft = memtoull(args[i + 1]), memtoull(args[i + 2])
        seconds = _strtol(args[i + 3])
        if hard is None or soft is None or seconds is None or seconds < 0:
            return None, b"Error in hard, soft or soft_seconds setting in buffer limit configuration."
        limits[klass] = [str(hard), str(soft), str(seconds)]
    return " ".join(" ".join([k] + limits[k]) for k in _LIMIT_ORDER), b""


def _parse_percentiles(value: str) -> tuple[str | None, bytes]:
    """latency-tracking-info-percentiles: numbers in [0, 100], printed as C's %f
    with trailing zeros trimmed (Redis' trimDoubleString)."""
    out = []
    for word in _split_multi_arg(value):
        raw = word.encode()
        number, consumed = strtod(raw)
        if not raw or consumed != len(raw) or number != number:
            return None, b"Invalid latency-tracking-info-percentiles parameters"
        if not 0.0 <= number <= 100.0:
            return None, b"latency-tracking-info-percentiles parameters should sit between [0.0,100.0]"
        out.append(format_percentile(number))
    return " ".join(out), b""


def format_percentile(number: float) -> str:
    text = f"{number:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _parse_keyspace_events(value: str) -> str | None:
    """notify-keyspace-events: class characters, normalised as Redis prints them."""
    flags = parse_flags(value)
    return None if flags is None else flags_text(flags)


def setting_text(value: str | int | float | bool) -> str:
    """A [settings] value as CONFIG SET takes it (TOML booleans are yes/no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Settings:
    def __init__(self, config: Config) -> None:
        self.params = {param.name: param for param in _params(config)}
        self.lookup: dict[str, Param] = {}
        for param in self.params.values():
            self.lookup[param.name] = param
            for alias in param.aliases:
                self.lookup[alias] = param
        self.values: dict[str, str] = {name: param.default for name, param in self.params.items()}
        self._limits_text: str | None = None
        self._class_limits: dict[str, tuple[int, int, int]] = {}
        # Called after every change applied, for what caches a value (the SLOWLOG threshold).
        self.on_apply: Callable[[], None] | None = None
        if config.settings:
            self._apply_config_file(config.settings)

    def _apply_config_file(self, settings: dict[str, str | int | float | bool]) -> None:
        """The config file's [settings], checked as one CONFIG SET (ValueError: one line
        naming the setting and the problem); they become this run's defaults."""
        for name in settings:
            home = TOP_LEVEL_KEYS.get(self.lookup[name.lower()].name if name.lower() in self.lookup else name)
            if home is not None:
                raise ValueError(f"[settings] {name}: set it as the top-level key {home} instead")
        try:
            changes = self.validate([(name.encode(), setting_text(value).encode())
                                     for name, value in settings.items()])
        except ReplyError as e:
            raise ValueError(f"[settings] {e.message.decode(errors='replace').removeprefix('ERR ')}") from None
        for name, value in changes:
            self.values[name] = value
            self.params[name].default = value

    @property
    def maxclients(self) -> int:
        return int(self.values["maxclients"])

    def output_limits(self, client_class: str) -> tuple[int, int, int]:
        """client-output-buffer-limit for a class ("normal", "pubsub"): (hard bytes,
        soft bytes, soft seconds), 0 meaning no limit; parsed once per value."""
        text = self.values["client-output-buffer-limit"]
        if text is not self._limits_text:
            words = text.split()
            self._class_limits = {}
            for at in range(0, len(words) - 3, 4):
                self._class_limits[words[at]] = (int(words[at + 1]), int(words[at + 2]), int(words[at + 3]))
            self._limits_text = text
        return self._class_limits[client_class]

    @property
    def requirepass(self) -> str:
        return self.values["requirepass"]

    def get(self, patterns: list[bytes]) -> list[bytes]:
        """Flat [name, value, ...]: a pattern without glob characters is looked up
        (case-insensitively, answered under the name as given); a glob matches
        every name and alias, case-insensitively."""
        found: dict[str, tuple[str, str]] = {}  # lowercased name -> (name as answered, value)
        for pattern in patterns:
            text = pattern.decode(errors="replace")
            if not any(ch in text for ch in "[*?"):
                param = self.lookup.get(text.lower())
                if param is not None and text.lower() not in found:
                    found[text.lower()] = (text, self.values[param.name])
                continue
            lowered = text.lower().encode()
            for name, param in self.lookup.items():
                if name not in found and glob_match(lowered, name.encode()):
                    found[name] = (name, self.values[param.name])
        out: list[bytes] = []
        for name, value in found.values():
            out += [name.encode(), value.encode()]
        return out

    def validate(self, pairs: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        """Check a CONFIG SET request as a whole (Redis applies all or nothing).
        Returns (canonical name, normalised value) pairs."""
        unknown: bytes | None = None
        problem: tuple[bytes, bytes] | None = None
        seen: list[Param] = []
        seen_names: set[str] = set()
        for raw_name, _ in pairs:
            name = raw_name.decode(errors="replace").lower()
            param = self.lookup.get(name)
            if param is None:
                if problem is None and unknown is None:
                    unknown = raw_name
                continue
            if problem is None and unknown is None:
                if not param.mutable and param.name not in REDIS_MUTABLE:
                    problem = (raw_name, b"can't set immutable config")
                elif name in seen_names:
                    # Redis 7.0 keeps an alias as a separate entry: a name and its
                    # alias in one CONFIG SET are not duplicates (the last wins).
                    problem = (raw_name, b"duplicate parameter")
            seen.append(param)
            seen_names.add(name)
        if unknown is not None:
            raise ReplyError(b"ERR Unknown option or number of arguments for CONFIG SET - '%s'" % unknown)
        if problem is not None:
            raise set_failed(*problem)
        result = []
        for (raw_name, raw_value), param in zip(pairs, seen):
            value, why = self._normalize(param, raw_value.decode(errors="replace"))
            if value is None:
                raise set_failed(raw_name, why)
            result.append((param.name, value))
        for (raw_name, _), (name, value) in zip(pairs, result):
            if name in REDIS_MUTABLE and value != self.values[name]:  # Redis' apply step, after every check
                raise set_failed(raw_name, REDIS_MUTABLE[name])
        return result

    def _normalize(self, param: Param, value: str) -> tuple[str | None, bytes]:
        kind = param.kind
        if kind == BOOL:
            if value.lower() not in ("yes", "no"):
                return None, b"argument must be 'yes' or 'no'"
            return value.lower(), b""
        if kind == ENUM:
            if value.lower() not in param.choices:
                return None, b"argument(s) must be one of the following: " + ", ".join(param.choices).encode()
            return value.lower(), b""
        if kind == NUMBER:
            return self._number(param, value)
        if kind == SAVE:
            saved = _parse_save(value)
            return (saved, b"") if saved is not None else (None, b"Invalid save parameters")
        if kind == OUTPUT_LIMITS:
            return _parse_output_limits(self.values[param.name], value)
        if kind == PERCENTILES:
            return _parse_percentiles(value)
        if kind == KEYSPACE_EVENTS:
            events = _parse_keyspace_events(value)
            if events is None:
                return None, b"Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
            return events, b""
        return value, b""

    @staticmethod
    def _number(param: Param, value: str) -> tuple[str | None, bytes]:
        text, why = Settings._parse_number(param, value)
        if text is not None and param.unsupported and text != param.default:
            return None, param.unsupported
        return text, why

    @staticmethod
    def _parse_number(param: Param, value: str) -> tuple[str | None, bytes]:
        if param.percent and len(value) > 1 and value.endswith("%"):
            percent = parse_ll(value[:-1].encode()) if value.isascii() else None
            if percent is not None and percent >= 0:
                if percent > MAX_PERCENT:
                    return None, b"percentage argument must be less or equal to %d" % MAX_PERCENT
                return (f"{percent}%" if percent else "0"), b""
        if param.memory:
            number = memtoull(value)
            if number is None:
                return None, (b"argument must be a memory or percent value" if param.percent
                              else b"argument must be a memory value")
            number = _as_signed(number)
        else:
            number = parse_ll(value.encode()) if value.isascii() else None
            if number is None:
                return None, b"argument couldn't be parsed into an integer"
        if param.unsigned:
            checked = number & ULLONG_MAX
            if not param.lo <= checked <= param.hi:
                return None, b"argument must be between %d and %d inclusive" % (param.lo, param.hi)
            number = checked
        elif not param.lo <= number <= param.hi:
            return None, b"argument must be between %d and %d inclusive" % (param.lo, param.hi)
        if param.on_set is not None:
            number = param.on_set(number)
        if param.memory:
            number &= ULLONG_MAX
        return str(number), b""

    def apply(self, changes: list[tuple[str, str]]) -> None:
        for name, value in changes:
            self.values[name] = value
        if self.on_apply is not None:
            self.on_apply()

    def apply_known(self, changes: dict[str, str]) -> None:
        """Apply changes validated by another router (or recorded by one): only
        mutable parameters this router knows, already normalised."""
        for name, value in changes.items():
            param = self.params.get(name)
            if param is None or not param.mutable:
                logger.warning("router: ignoring runtime setting %r: not a mutable parameter", name)
                continue
            self.values[name] = value
        if self.on_apply is not None:
            self.on_apply()


def set_failed(name: bytes, why: bytes) -> ReplyError:
    return ReplyError(b"ERR CONFIG SET failed (possibly related to argument '%s') - %s" % (name, why))
