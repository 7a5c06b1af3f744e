"""Parameters that change how a shard encodes or executes commands, with Redis
7.0's defaults. The router forwards CONFIG SET of these to every shard."""

SHARD_DEFAULTS: dict[str, int] = {
    "hash-max-listpack-entries": 512,
    "hash-max-listpack-value": 64,
    "set-max-intset-entries": 512,
    "zset-max-listpack-entries": 128,
    "zset-max-listpack-value": 64,
    "list-max-listpack-size": -2,
    "list-compress-depth": 0,
    "stream-node-max-bytes": 4096,
    "stream-node-max-entries": 100,
    "hll-sparse-max-bytes": 3000,
    # A script running longer than this (ms; 0: never) lets the shard answer others with BUSY.
    "busy-reply-threshold": 5000,
    # SLOWLOG (shards/slowlog.py): microseconds (-1: off, 0: every command), entries kept.
    "slowlog-log-slower-than": 10000,
    "slowlog-max-len": 128,
    # maxmemory (shards/evict.py): bytes for the whole tree (0: no limit), split evenly
    # over the shards; keys sampled per eviction; the LFU counter's parameters.
    "maxmemory": 0,
    "maxmemory-samples": 5,
    "lfu-log-factor": 10,
    "lfu-decay-time": 1,
    # Writes refused (NOREPLICAS) while fewer good replicas, and acknowledged once that
    # many applied them (shards/min_replicas.py); 0 (either): off.
    "min-replicas-to-write": 0,
    "min-replicas-max-lag": 10,
}
# Text parameters the shard needs too: which keyspace notifications its commands
# generate (shards/notify.py; "" none), and what maxmemory evicts (shards/evict.py).
SHARD_TEXT_DEFAULTS: dict[str, str] = {
    "notify-keyspace-events": "",
    "maxmemory-policy": "noeviction",
    # LATENCY (shards/latency.py): event threshold in ms (0: off), per-command histograms.
    "latency-monitor-threshold": "0",
    "latency-tracking": "yes",
}
SHARD_PARAMS = frozenset(SHARD_DEFAULTS) | frozenset(SHARD_TEXT_DEFAULTS)
