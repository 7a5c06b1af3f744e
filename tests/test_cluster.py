"""Cluster emulation and cross-shard routing: the hash-slot function against an
independent CRC16 implementation, the CLUSTER commands, CROSSSLOT, split
multi-key commands, pipelines whose commands hit both shards, and a real
redis.cluster.RedisCluster client."""

from __future__ import annotations

import random

import pytest
from redis.cluster import RedisCluster

from refserver import RawConn, decode, encode_command

SLOTS = 16384
CROSSSLOT = "Keys in request don't hash to the same slot"


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def reference_slot(key: bytes) -> int:
    """Redis Cluster's rule: hash the part between the first '{' and the first
    '}' after it, if that part is not empty; otherwise the whole key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            key = key[start + 1 : end]
    return crc16_xmodem(key) % SLOTS


def keyslot(conn: RawConn, key) -> int:
    return decode(conn.call("CLUSTER", "KEYSLOT", key))[0]


def test_crc16_reference_check_value():
    assert crc16_xmodem(b"123456789") == 0x31C3  # the published XMODEM check value


def test_keyslot_known_values(server):
    conn = RawConn(server.port)
    assert keyslot(conn, "foo") == 12182
    assert keyslot(conn, "bar") == 5061
    assert keyslot(conn, "") == 0
    assert keyslot(conn, "{user1000}.following") == keyslot(conn, "{user1000}.followers") \
        == keyslot(conn, "user1000")
    assert keyslot(conn, "foo{}{bar}") == reference_slot(b"foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % SLOTS
    assert keyslot(conn, "foo{{bar}}zap") == keyslot(conn, "{bar")
    assert keyslot(conn, "foo{bar}{zap}") == keyslot(conn, "bar")
    assert keyslot(conn, "{}") == crc16_xmodem(b"{}") % SLOTS
    assert keyslot(conn, "}{a}") == keyslot(conn, "a")
    assert keyslot(conn, "{a") == crc16_xmodem(b"{a") % SLOTS
    conn.close()


def test_keyslot_of_random_keys_matches_crc16(server):
    rng = random.Random(16384)
    conn = RawConn(server.port)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 24))) for _ in range(300)]
    keys += [b"".join(rng.choice([b"{", b"}", b"a", b"b", b"\x00"]) for _ in range(rng.randint(0, 8)))
             for _ in range(300)]
    replies = conn.pipeline([("CLUSTER", "KEYSLOT", key) for key in keys])
    for key, reply in zip(keys, replies):
        assert decode(reply)[0] == reference_slot(key), key
    conn.close()


def test_cluster_commands_describe_the_shards_as_nodes(server):
    """The default (cluster-announce "shards"): each shard is a master node on its
    own port (the router port + 1 + shard); the router is none of them. The old
    one-node answer (cluster-announce "router") is in test_shard_ports.py."""
    conn = RawConn(server.port)
    myid = decode(conn.call("CLUSTER", "MYID"))[0]
    assert len(myid) == 40 and all(c in b"0123456789abcdef" for c in myid)
    slots = decode(conn.call("CLUSTER", "SLOTS"))[0]
    ids = [entry[2][2] for entry in slots]
    assert slots == [[0, 8191, [b"127.0.0.1", server.shard_port(0), ids[0], []]],
                     [8192, SLOTS - 1, [b"127.0.0.1", server.shard_port(1), ids[1], []]]]
    assert len(set(ids + [myid])) == 3 and all(len(i) == 40 for i in ids)
    nodes = decode(conn.call("CLUSTER", "NODES"))[0].decode()
    assert nodes == "".join(
        f"{ids[i].decode()} 127.0.0.1:{server.shard_port(i)}@{server.shard_port(i) + 10000} master - 0 0 {i + 1} "
        f"connected {first}-{last}\n" for i, (first, last) in enumerate([(0, 8191), (8192, SLOTS - 1)]))
    info = dict(line.split(":") for line in decode(conn.call("CLUSTER", "INFO"))[0].decode().split("\r\n") if line)
    assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == "16384"
    assert info["cluster_slots_ok"] == "16384" and info["cluster_known_nodes"] == "2"
    shards = decode(conn.call("CLUSTER", "SHARDS"))[0]
    assert [shard[:2] for shard in shards] == [[b"slots", [0, 8191]], [b"slots", [8192, SLOTS - 1]]]
    for i, shard in enumerate(shards):
        node = dict(zip(shard[3][0][::2], shard[3][0][1::2]))
        assert node[b"id"] == ids[i] and node[b"port"] == server.shard_port(i) and node[b"role"] == b"master"
        assert node[b"health"] == b"online" and node[b"ip"] == b"127.0.0.1"
    for cmd in ("READONLY", "READWRITE", "ASKING"):
        assert conn.call(cmd) == b"+OK\r\n"
    conn.close()


def test_cluster_replies_in_resp3(server):
    conn = RawConn(server.port, proto=3)
    assert conn.call("CLUSTER", "INFO").startswith(b"=")
    assert conn.call("CLUSTER", "NODES").startswith(b"=")
    slots = conn.call("CLUSTER", "SLOTS")
    assert slots.endswith(b"%0\r\n")
    conn.close()


def test_keys_in_slot(r, server):
    conn = RawConn(server.port)
    low = [f"{{lo}}{i}" for i in range(5)]
    high = [f"{{hi}}{i}" for i in range(7)]
    lo_slot, hi_slot = reference_slot(b"lo"), reference_slot(b"hi")
    assert (lo_slot < 8192) != (hi_slot < 8192)
    for key in low + high:
        r.set(key, "v")
    assert conn.value("CLUSTER", "COUNTKEYSINSLOT", lo_slot) == 5
    assert conn.value("CLUSTER", "COUNTKEYSINSLOT", hi_slot) == 7
    assert conn.value("CLUSTER", "COUNTKEYSINSLOT", 1) == 0
    assert sorted(conn.value("CLUSTER", "GETKEYSINSLOT", hi_slot, 100)) == sorted(k.encode() for k in high)
    assert len(conn.value("CLUSTER", "GETKEYSINSLOT", lo_slot, 3)) == 3
    assert conn.value("CLUSTER", "GETKEYSINSLOT", lo_slot, 0) == []
    conn.close()


def _arity(name: str) -> bytes:
    return b"-ERR wrong number of arguments for '%s' command\r\n" % name.encode()


NOT_INT = b"-ERR value is not an integer or out of range\r\n"
CLUSTER_ERRORS = [
    (("CLUSTER", "KEYSLOT"), _arity("cluster|keyslot")),
    (("CLUSTER", "KEYSLOT", "a", "b"), _arity("cluster|keyslot")),
    (("CLUSTER", "COUNTKEYSINSLOT", "abc"), NOT_INT),
    (("CLUSTER", "COUNTKEYSINSLOT", "-1"), b"-ERR Invalid slot\r\n"),
    (("CLUSTER", "COUNTKEYSINSLOT", "16384"), b"-ERR Invalid slot\r\n"),
    (("CLUSTER", "GETKEYSINSLOT", "abc", "1"), NOT_INT),
    (("CLUSTER", "GETKEYSINSLOT", "1", "abc"), NOT_INT),
    (("CLUSTER", "GETKEYSINSLOT", "16384", "1"), b"-ERR Invalid slot or number of keys\r\n"),
    (("CLUSTER", "GETKEYSINSLOT", "1", "-1"), b"-ERR Invalid slot or number of keys\r\n"),
    (("CLUSTER", "GETKEYSINSLOT", "1"), _arity("cluster|getkeysinslot")),
    (("CLUSTER", "MYID", "x"), _arity("cluster|myid")),
    (("CLUSTER", "NOSUCH"), b"-ERR unknown subcommand 'NOSUCH'. Try CLUSTER HELP.\r\n"),
    (("CLUSTER",), _arity("cluster")),
    (("READONLY", "x"), _arity("readonly")),
    (("ASKING", "x"), _arity("asking")),
]


@pytest.mark.parametrize("args,expected", CLUSTER_ERRORS, ids=[" ".join(a) for a, _ in CLUSTER_ERRORS])
def test_cluster_command_errors(server, args, expected):
    """Redis 7.0 cluster.c's texts (the reference server cannot run these
    without cluster mode, so the texts are spelled out)."""
    conn = RawConn(server.port)
    assert conn.call(*args) == expected
    conn.close()


def two_shard_keys() -> tuple[str, str]:
    names = [f"x{i}" for i in range(100)]
    low = next(k for k in names if reference_slot(k.encode()) < 8192)
    high = next(k for k in names if reference_slot(k.encode()) >= 8192)
    return low, high


@pytest.mark.parametrize("args", [
    ("MSET", "{a}", "1", "{b}", "2"), ("MSETNX", "{a}", "1", "{b}", "2"), ("RENAME", "{a}", "{b}"),
    ("RENAMENX", "{a}", "{b}"), ("COPY", "{a}", "{b}"), ("LCS", "{a}", "{b}"),
])
def test_multi_key_commands_across_shards_run_as_on_one_redis(pair, args):
    """Through the router, keys on two shards run atomically (server/txn.py), with
    redis-server's replies; on a shard's own port they stay CROSSSLOT
    (tests/test_shard_ports.py)."""
    low, high = two_shard_keys()
    argv = [a.replace("{a}", low).replace("{b}", high) for a in args]
    pair.same("SET", low, "1")
    pair.same(*argv)
    pair.same("MGET", low, high)


def test_split_commands_across_shards_match_redis(pair):
    keys = [f"split:{i}" for i in range(30)]
    assert {reference_slot(k.encode()) < 8192 for k in keys} == {True, False}
    script = [("SET", key, str(i)) for i, key in enumerate(keys[::2])]
    script += [
        ("RPUSH", keys[1], "x"),
        ("MGET", *keys, "absent"),
        ("MGET", keys[5], keys[5], keys[0]),
        ("EXISTS", *keys, keys[0]),
        ("TOUCH", *keys),
        ("DEL", *keys[:10], keys[0]),
        ("UNLINK", *keys[10:20]),
        ("EXISTS", *keys),
        ("MGET", *keys),
        ("DEL", *keys),
        ("MGET", *keys),
    ]
    for cmd in script:
        pair.same(*cmd)


def test_pipeline_across_shards_with_errors_matches_redis(pair):
    """One pipeline of single-key commands on both shards, errors interleaved:
    durakv must return the replies in request order, byte for byte."""
    rng = random.Random(77)
    keys = [f"pipe:{i}" for i in range(40)]
    commands: list[tuple] = []
    for i in range(600):
        key = rng.choice(keys)
        kind = rng.randrange(12)
        if kind == 0:
            commands.append(("SET", key, str(i)))
        elif kind == 1:
            commands.append(("GET", key))
        elif kind == 2:
            commands.append(("INCR", key))
        elif kind == 3:
            commands.append(("RPUSH", key, "x"))
        elif kind == 4:
            commands.append(("APPEND", key, "z"))
        elif kind == 5:
            commands.append(("NOSUCHCMD", key))
        elif kind == 6:
            commands.append(("GET",))
        elif kind == 7:
            commands.append(("MGET", key, rng.choice(keys), rng.choice(keys)))
        elif kind == 8:
            commands.append(("DEL", key, rng.choice(keys)))
        elif kind == 9:
            commands.append(("EXPIRE", key, "abc"))
        elif kind == 10:
            commands.append(("SET", key, "v", "BADOPT"))
        else:
            commands.append(("PING", key))
    ours = pair.ours.pipeline(commands)
    theirs = pair.theirs.pipeline(commands)
    for command, a, b in zip(commands, ours, theirs):
        assert a == b, command
    assert len(ours) == len(commands)


def test_many_clients_pipelining_across_shards(server):
    conns = [RawConn(server.port) for _ in range(8)]
    batches = []
    for n, conn in enumerate(conns):
        commands = [("SET", f"c{n}:{i}", f"{n}-{i}") for i in range(100)]
        commands += [("GET", f"c{n}:{i}") for i in range(100)]
        conn.send_raw(b"".join(encode_command(c) for c in commands))
        batches.append(commands)
    for n, conn in enumerate(conns):
        replies = [conn.read_reply() for _ in batches[n]]
        assert replies[:100] == [b"+OK\r\n"] * 100
        assert replies[100:] == [b"$%d\r\n%d-%d\r\n" % (len(f"{n}-{i}"), n, i) for i in range(100)]
        conn.close()


def test_redis_cluster_client(server):
    rc = RedisCluster(host="127.0.0.1", port=server.port)
    try:
        assert rc.set("foo", "bar") and rc.get("foo") == b"bar"
        rc.mset_nonatomic({"a": 1, "b": 2, "{t}x": 3})
        assert rc.mget(["{t}x", "{t}y"]) == [b"3", None]
        assert rc.mget_nonatomic(["a", "b", "foo"]) == [b"1", b"2", b"bar"]
        pipe = rc.pipeline()
        for i in range(50):
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        replies = pipe.execute()
        assert replies[1::2] == [str(i).encode() for i in range(50)]
        assert rc.delete("a", "b") == 2
        assert rc.keyslot("foo") == 12182
        assert sorted(node.port for node in rc.get_nodes()) == [server.shard_port(0), server.shard_port(1)]
    finally:
        rc.close()
