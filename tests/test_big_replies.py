"""Big replies a shard builds (issue 11 §4): KEYS filters at C speed and sends its
array encoded, and the router concatenates the shards' arrays (merge_arrays)
instead of decoding and re-encoding every key. Byte-exact checks of the array
encoding itself are in test_resp_codec.py; KEYS against redis-server in
test_keys.py."""

from __future__ import annotations

import os

import hiredis
from engine_util import call, new_ctx

import durakv.shards.commands  # noqa: F401
from durakv.shards.resp import Raw, encode
from durakv.shards.table import merge_arrays


def decoded(reply: object) -> object:
    assert type(reply) is Raw, reply
    reader = hiredis.Reader()
    reader.feed(reply.data)
    return reader.gets()


def test_keys_skips_expired_keys_without_deleting_them():
    ctx = new_ctx()
    now = ctx.db.now()
    for i in range(100):
        call(ctx, "SET", b"k:%d" % i, "v")
    for i in range(0, 100, 3):
        call(ctx, "PEXPIREAT", b"k:%d" % i, now + 1000)
    ctx.db.frozen_ms = now + 2000  # past the deadline of every third key
    live = sorted(b"k:%d" % i for i in range(100) if i % 3)
    assert sorted(decoded(call(ctx, "KEYS", "*"))) == live
    assert sorted(decoded(call(ctx, "KEYS", "k:?"))) == [k for k in live if len(k) == 3]
    assert len(ctx.db.data) == 100, "a read must not expire keys (no effect may be written)"
    assert ctx.db.effects[-1][0] != b"DEL"


def test_keys_empty_key_only_for_the_empty_pattern():
    ctx = new_ctx()
    for key in (b"", b"a", b"ab"):
        call(ctx, "SET", key, "v")
    assert sorted(decoded(call(ctx, "KEYS", "*"))) == [b"", b"a", b"ab"]
    assert sorted(decoded(call(ctx, "KEYS", "**"))) == [b"a", b"ab"]
    assert decoded(call(ctx, "KEYS", "")) == [b""]
    assert sorted(decoded(call(ctx, "KEYS", "a*"))) == [b"a", b"ab"]


def test_merge_arrays_concatenates_encoded_parts():
    parts = [encode([b"k%d" % i for i in range(n)], 2) for n in (0, 3, 40)]
    merged = merge_arrays(parts, 2)
    assert merged == encode([b"k%d" % i for n in (0, 3, 40) for i in range(n)], 2)
    assert merge_arrays(parts, 3) == merged  # an array of bulks is spelt the same in RESP3
    assert merge_arrays([b"*0\r\n", b"*0\r\n"], 2) == b"*0\r\n"


def test_keys_through_the_router_merges_both_shards(r):
    """Many keys on both shards (the C-formatted path) and a pattern matching few
    (the per-item path), each shard's array merged into one reply."""
    r.flushall()
    keys = [f"key:{i}" for i in range(300)]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, "v")
    pipe.execute()
    assert sorted(r.keys("*")) == sorted(k.encode() for k in keys)
    assert sorted(r.keys("key:1?")) == sorted(f"key:1{i}".encode() for i in range(10))
    assert r.keys("nomatch*") == []


BIG_ELEMENT = b"e" * 1000
BIG_LIST_ELEMENTS = 60_000  # a ~60 MB reply: past glibc's 32 MB mmap threshold, so a freed one leaves RSS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_big_reply_is_not_kept_after_it_is_sent(server_factory):
    """The shard's reader and writer and the router's link receiver used to keep
    their last frame and reply bound to a local while they waited for the next
    input: after one 60 MB LRANGE the router held ~120 MB and the shard ~60 MB
    until the next request on that link."""
    srv = server_factory(shards=2)
    r = srv.client()
    for _ in range(BIG_LIST_ELEMENTS // 1000):
        r.rpush("biglist", *([BIG_ELEMENT] * 1000))  # slot 2568: shard 0
    reply_bytes = BIG_LIST_ELEMENTS * (len(b"$1000\r\n") + len(BIG_ELEMENT) + 2)
    pids = {"router": srv.child_pid("router", 0), "shard": srv.child_pid("shard", 0)}
    assert r.lrange("biglist", 0, 9) == [BIG_ELEMENT] * 10
    before = {name: rss_bytes(pid) for name, pid in pids.items()}
    assert len(r.lrange("biglist", 0, -1)) == BIG_LIST_ELEMENTS
    r.close()
    grown = {name: rss_bytes(pid) - before[name] for name, pid in pids.items()}
    print(f"reply {reply_bytes >> 20} MB; RSS growth after it was sent: "
          + ", ".join(f"{name} {size >> 20} MB" for name, size in grown.items()))
    for name, size in grown.items():
        assert size < reply_bytes // 2, f"the {name} kept {size} bytes after a {reply_bytes}-byte reply"
