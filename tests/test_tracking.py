"""Client-side caching (CLIENT TRACKING): each scenario runs against durakv (2
shards, through the router) and against redis-server 7.0, and the transcripts of
reply and push bytes must be identical; then invalidations across processes (a
write on a shard's own port invalidating a key read through the router, and the
reverse), which only durakv has."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Callable

import pytest
from refserver import RawConn, decode, encode_command

from durakv.shards.slots import key_slot, slot_owner_table

Transcript = list[bytes]


def same_on_both(server, redis_ref, scenario: Callable[[int], Transcript]) -> Transcript:
    ours = scenario(server.port)
    theirs = scenario(redis_ref.port)
    assert ours == theirs, "\n".join(f"{o!r}\n  vs redis {t!r}" for o, t in zip(ours, theirs) if o != t) or \
        f"lengths {len(ours)} != {len(theirs)}"
    return ours


def client_id(conn: RawConn) -> int:
    return decode(conn.call("CLIENT", "ID"))[0]


def fresh(port: int, proto: int = 2) -> RawConn:
    conn = RawConn(port, proto)
    assert conn.call("FLUSHALL") == b"+OK\r\n"
    return conn


def redirect_target(port: int, proto: int = 2) -> tuple[RawConn, int]:
    """A client subscribed to __redis__:invalidate, and its id."""
    conn = RawConn(port, proto)
    cid = client_id(conn)
    conn.call("SUBSCRIBE", "__redis__:invalidate")
    return conn, cid


def closing(*conns: RawConn) -> None:
    for conn in conns:
        conn.close()


def test_tracking_errors_and_state_replies_match_redis(server, redis_ref):
    def scenario(port: int) -> Transcript:
        c = fresh(port)
        other = RawConn(port)
        out = [c.call(*args) for args in [
            ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "FOOBAR", "PREFIX", "FOO"),
            ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "FOO", "PREFIX", "FOOBAR"),
            ("CLIENT", "TRACKING", "on", "PREFIX", "a"),
            ("CLIENT", "TRACKING", "on", "BCAST", "OPTIN"),
            ("CLIENT", "TRACKING", "on", "OPTIN", "OPTOUT"),
            ("CLIENT", "TRACKING", "on", "REDIRECT", "99999999"),
            ("CLIENT", "TRACKING", "on", "REDIRECT", "x"),
            ("CLIENT", "TRACKING", "on", "REDIRECT", client_id(other), "REDIRECT", client_id(other)),
            ("CLIENT", "TRACKING", "maybe"),
            ("CLIENT", "TRACKING", "on", "NOPE"),
            ("CLIENT", "CACHING", "yes"),
            ("CLIENT", "GETREDIR"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "FOO", "PREFIX", "BAR"),
            ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "FO"),
            ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "BARB"),
            ("CLIENT", "TRACKING", "on"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "GETREDIR"),
            ("CLIENT", "TRACKING", "off"),
            ("CLIENT", "TRACKING", "on", "OPTIN"),
            ("CLIENT", "CACHING", "no"),
            ("CLIENT", "CACHING", "maybe"),
            ("CLIENT", "CACHING", "yes"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "TRACKING", "on", "OPTOUT"),
            ("CLIENT", "TRACKING", "on", "BCAST"),
            ("CLIENT", "TRACKING", "off"),
            ("CLIENT", "TRACKING", "on", "OPTOUT", "NOLOOP"),
            ("CLIENT", "CACHING", "no"),
            ("HELLO", "3"),
            ("CLIENT", "TRACKINGINFO"),
            ("CLIENT", "TRACKING", "off"),
            ("CLIENT", "TRACKINGINFO"),
        ]]
        closing(c, other)
        return [reply for reply in out if not reply.startswith(b"%7")]  # HELLO's map names the server

    same_on_both(server, redis_ref, scenario)


def test_resp3_pushes_own_writes_noloop_and_transactions_match_redis(server, redis_ref):
    def scenario(port: int) -> Transcript:
        r = fresh(port, 3)
        sg = RawConn(port)
        out = [r.call("CLIENT", "TRACKING", "on")]
        sg.call("SET", "k1", "1")
        out.append(r.call("GET", "k1"))
        sg.call("SET", "k1", "2")
        out.append(r.read_reply())  # invalidate k1
        out.append(r.call("GET", "k2"))
        out.append(r.call("PING"))  # nothing pending: k2 was not written
        # Its own write: the reply first, then the push.
        r.call("HSET", "h", "f", "1")
        out.append(r.call("HGET", "h", "f"))
        out.append(r.call("HDEL", "h", "f"))
        out.append(r.read_reply())
        # A transaction's reply is not interleaved with the invalidation it causes.
        r.call("MSET", "a{t}", "1", "b{t}", "2")
        r.call("GET", "a{t}")
        r.call("MULTI")
        r.call("INCR", "a{t}")
        r.call("GET", "b{t}")
        out.append(r.call("EXEC"))
        out.append(r.read_reply())
        # NOLOOP: its own writes are not reported, others' are.
        out.append(r.call("CLIENT", "TRACKING", "on", "NOLOOP"))
        out.append(r.call("MGET", "x{t}", "y{t}"))
        out.append(r.call("SET", "x{t}", "1"))
        sg.call("SET", "y{t}", "1")
        out.append(r.read_reply())
        out.append(r.call("PING"))
        closing(r, sg)
        return out

    transcript = same_on_both(server, redis_ref, scenario)
    assert b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\nk1\r\n" in transcript


def test_resp2_redirect_flushall_and_broken_redirect_match_redis(server, redis_ref):
    def scenario(port: int) -> Transcript:
        r = fresh(port)
        sg = RawConn(port)
        red, red_id = redirect_target(port)
        out = [r.call("CLIENT", "TRACKING", "on", "REDIRECT", red_id)]
        sg.call("SET", "k", "1")
        out.append(r.call("GET", "k"))
        sg.call("INCR", "k")
        out.append(red.read_reply())  # message __redis__:invalidate [k]
        r.call("GET", "k")
        out.append(sg.call("FLUSHALL"))
        out.append(red.read_reply())  # one null invalidation per FLUSHALL, whatever the shard count
        out.append(red.call("PING"))
        info = r.call("CLIENT", "INFO").decode()
        out.append(re.search(r"flags=\S+ ", info).group().encode())
        out.append(b"redir matches" if f"redir={red_id} " in info else info.encode())
        # The target goes away: a RESP3 client hears tracking-redir-broken, with the target's id.
        out.append(r.call("HELLO", "3")[:2])
        r.call("GET", "k")
        red.call("QUIT")
        red.close()
        sg.call("SET", "k", "2")
        out.append(r.read_reply().replace(b":%d\r\n" % red_id, b":<id>\r\n"))
        out.append(r.call("CLIENT", "TRACKINGINFO").replace(b":%d\r\n" % red_id, b":<id>\r\n"))
        out.append(re.search(r"flags=\S+ ", r.call("CLIENT", "INFO").decode()).group().encode())
        closing(r, sg)
        return out

    transcript = same_on_both(server, redis_ref, scenario)
    assert b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n" in transcript


def test_bcast_prefixes_optin_optout_match_redis(server, redis_ref):
    def scenario(port: int) -> Transcript:
        r = fresh(port)
        sg = RawConn(port)
        red, red_id = redirect_target(port)
        out = [r.call("CLIENT", "TRACKING", "on", "BCAST", "REDIRECT", red_id, "PREFIX", "a:", "PREFIX", "b:")]
        r.call("MULTI")
        for key in ("a:1{t}", "a:2{t}", "b:1{t}", "c:1{t}"):
            r.call("INCR", key)
        out.append(r.call("EXEC"))
        out.append(red.read_reply())  # one message per prefix: a:1 a:2
        out.append(red.read_reply())  # b:1
        out.append(r.call("CLIENT", "TRACKING", "on", "BCAST", "REDIRECT", red_id, "PREFIX", "c:"))
        sg.call("SET", "c:9", "x")
        out.append(red.read_reply())
        out.append(red.call("PING"))
        # BCAST with NOLOOP: the client's own writes are left out.
        r.call("CLIENT", "TRACKING", "off")
        r.call("CLIENT", "TRACKING", "on", "BCAST", "REDIRECT", red_id, "NOLOOP")
        r.call("SET", "mine", "1")
        sg.call("SET", "theirs", "1")
        out.append(red.read_reply())
        out.append(red.call("PING"))
        # OPTIN: only reads after CLIENT CACHING yes are tracked.
        r.call("CLIENT", "TRACKING", "off")
        out.append(r.call("CLIENT", "TRACKING", "on", "OPTIN", "REDIRECT", red_id))
        r.call("GET", "o1")
        r.call("CLIENT", "CACHING", "yes")
        r.call("GET", "o2")
        r.call("GET", "o3")  # the flag lasted one command
        sg.call("MSET", "o1", "1")
        sg.call("MSET", "o2", "1")
        sg.call("MSET", "o3", "1")
        out.append(red.read_reply())
        out.append(red.call("PING"))
        # OPTOUT: every read is tracked but the one after CLIENT CACHING no.
        r.call("CLIENT", "TRACKING", "off")
        r.call("CLIENT", "TRACKING", "on", "OPTOUT", "REDIRECT", red_id)
        r.call("CLIENT", "CACHING", "no")
        r.call("GET", "p1")
        r.call("GET", "p2")
        sg.call("SET", "p1", "1")
        sg.call("SET", "p2", "1")
        out.append(red.read_reply())
        out.append(red.call("PING"))
        closing(r, sg, red)
        return out

    same_on_both(server, redis_ref, scenario)


def test_expiry_scripts_and_table_limit_match_redis(server, redis_ref):
    def scenario(port: int) -> Transcript:
        r = fresh(port)
        sg = RawConn(port)
        red, red_id = redirect_target(port)
        # An expired key is reported even with NOLOOP: no client changed it.
        out = [r.call("CLIENT", "TRACKING", "on", "BCAST", "REDIRECT", red_id, "NOLOOP")]
        r.call("SET", "gone", "v", "PX", "1")
        r.call("SET", "stays", "v")
        out.append(red.read_reply())
        # Scripts: a script that writes invalidates; one that reads tracks its declared keys.
        r.call("CLIENT", "TRACKING", "off")
        r.call("CLIENT", "TRACKING", "on", "REDIRECT", red_id)
        r.call("EVAL", "return redis.call('set', KEYS[1], 'x')", "1", "s1{t}")  # writes only: tracks nothing
        r.call("EVAL", "return redis.call('get', 'other{t}')", "2", "s1{t}", "s2{t}")
        sg.call("EVAL", "redis.call('set', KEYS[1], 'y') return redis.call('set', KEYS[2], 'y')", "2", "s2{t}",
                "s1{t}")
        out.append(red.read_reply())
        out.append(red.read_reply())
        out.append(red.call("PING"))
        # tracking-table-max-keys: going over it invalidates keys until it holds.
        r.call("MGET", "m1{t}", "m2{t}", "m3{t}")
        out.append(sg.call("CONFIG", "SET", "tracking-table-max-keys", "1"))
        try:  # the servers are the module's: the limit is put back whatever happens
            out.append(decode(red.read_reply())[0][2][0][:1])  # Redis picks which keys at random
            out.append(decode(red.read_reply())[0][2][0][:1])
            out.append(red.call("PING"))
            info = sg.call("INFO", "stats").decode()
            out.extend(line.encode() for line in info.split("\r\n") if line.startswith("tracking_total"))
            clients = sg.call("INFO", "clients").decode()
            out.extend(line.encode() for line in clients.split("\r\n") if line.startswith("tracking_clients"))
        finally:
            sg.call("CONFIG", "SET", "tracking-table-max-keys", "1000000")
        closing(r, sg, red)
        return out

    transcript = same_on_both(server, redis_ref, scenario)
    assert b"tracking_total_keys:1" in transcript and b"tracking_clients:1" in transcript


NULL_INVALIDATION = b">2\r\n$10\r\ninvalidate\r\n_\r\n"


def read_push(conn: RawConn) -> object:
    return decode(conn.read_reply())[0]


@pytest.mark.parametrize("reader_on_node", [False, True])
def test_write_on_one_front_invalidates_a_read_on_another(server_factory, reader_on_node):
    """The router and each shard port keep their own tracking tables, and hear the
    changed keys of the shards they reach: a write through a shard's own port
    invalidates a key read through the router, and the reverse."""
    srv = server_factory(shards=2)
    key = "k"
    owner = 0 if RawConn(srv.shard_port(0)).call("GET", key)[:1] == b"$" else 1
    reader_port, writer_port = srv.port, srv.shard_port(owner)
    if reader_on_node:
        reader_port, writer_port = writer_port, reader_port
    reader = RawConn(reader_port, 3)
    writer = RawConn(writer_port)
    assert reader.call("CLIENT", "TRACKING", "on") == b"+OK\r\n"
    reader.call("GET", key)
    bcast = RawConn(reader_port, 3)
    bcast.call("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "k")
    assert writer.call("SET", key, "v") == b"+OK\r\n"
    assert read_push(reader) == [b"invalidate", [key.encode()]]
    assert read_push(bcast) == [b"invalidate", [key.encode()]]
    assert reader.call("PING") == b"+PONG\r\n"
    # The shards report only while some client of the front tracks.
    reader.call("CLIENT", "TRACKING", "off")
    bcast.call("CLIENT", "TRACKING", "off")
    info = reader.call("INFO", "clients").decode()
    assert "tracking_clients:0" in info
    writer.send_raw(encode_command(("SET", key, "w")))
    assert writer.read_reply() == b"+OK\r\n"
    assert reader.call("PING") == b"+PONG\r\n"


def test_a_shard_crash_tells_tracking_clients_to_drop_their_caches(server_factory):
    """A write made durable just before its shard died may never have been reported:
    every tracking client of the router gets a null invalidation (drop everything),
    as after FLUSHALL, and tracking goes on once the shard is back."""
    srv = server_factory(shards=2)
    owner = slot_owner_table(2)[key_slot(b"k")]
    reader = RawConn(srv.port, 3)
    assert reader.call("CLIENT", "TRACKING", "on") == b"+OK\r\n"
    reader.call("GET", "k")
    os.kill(srv.child_pid("shard", owner), signal.SIGKILL)  # its restart must learn that the router tracks
    assert read_push(reader) == [b"invalidate", None]
    srv.wait_ready()
    writer = RawConn(srv.port)
    # The router may see the link drop more than once while the shard restarts (each
    # drop: one more null invalidation, which costs a client nothing but a refill,
    # and CLUSTERDOWN meanwhile): read k until the shard answers it.
    deadline = time.monotonic() + 10
    reply = b""
    while reply != b"_\r\n":
        assert time.monotonic() < deadline, reply
        reader.send_raw(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        while (reply := reader.read_reply()) == NULL_INVALIDATION:
            pass
        if reply.startswith(b"-CLUSTERDOWN"):
            time.sleep(0.05)
    assert writer.call("SET", "k", "v") == b"+OK\r\n"
    while (reply := reader.read_reply()) == NULL_INVALIDATION:
        pass
    assert decode(reply)[0] == [b"invalidate", [b"k"]]


def test_redirect_to_a_client_of_another_front_matches_redis(server, redis_ref):
    """CLIENT TRACKING REDIRECT to a client of a shard port from the router, and the
    reverse: the invalidations, FLUSHALL's null and the broken redirect as Redis sends
    them to a target on its one node."""
    owner = slot_owner_table(2)[key_slot(b"k")]

    def scenario(tracker_port: int, target_port: int, writer_port: int) -> Transcript:
        r = fresh(tracker_port)
        sg = RawConn(writer_port)
        red, red_id = redirect_target(target_port)
        out = [r.call("CLIENT", "TRACKING", "on", "REDIRECT", red_id),
               r.call("CLIENT", "GETREDIR") == b":%d\r\n" % red_id]
        sg.call("SET", "k", "1")
        out.append(r.call("GET", "k"))
        sg.call("INCR", "k")
        out.append(red.read_reply())  # message __redis__:invalidate [k]
        r.call("GET", "k")
        out.append(sg.call("FLUSHALL"))
        out.append(red.read_reply())
        out.append(red.call("PING"))
        out.append(r.call("HELLO", "3")[:2])
        r.call("GET", "k")
        red.call("QUIT")
        red.close()
        sg.call("SET", "k", "2")
        out.append(r.read_reply().replace(b":%d\r\n" % red_id, b":<id>\r\n"))
        out.append(r.call("CLIENT", "TRACKINGINFO").replace(b":%d\r\n" % red_id, b":<id>\r\n"))
        # An id no process has is refused, and the tracking state stays what it was.
        out.append(r.call("CLIENT", "TRACKING", "on", "REDIRECT", str(red_id + 10**9)))
        out.append(r.call("CLIENT", "TRACKINGINFO").replace(b":%d\r\n" % red_id, b":<id>\r\n"))
        out.append(r.call("CLIENT", "TRACKING", "off"))
        closing(r, sg)
        return out

    theirs = scenario(redis_ref.port, redis_ref.port, redis_ref.port)
    assert b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n" in theirs
    for ports in [(server.port, server.shard_port(owner), server.port),
                  (server.shard_port(owner), server.port, server.shard_port(owner))]:
        ours = scenario(*ports)
        assert ours == theirs, "\n".join(f"{o!r}\n  vs redis {t!r}" for o, t in zip(ours, theirs) if o != t)


def test_redirect_elsewhere_tracks_reads_pipelined_behind_it(server):
    """Tracking is on before the other front confirms the target: a GET sent in the
    same write as CLIENT TRACKING is tracked; an unknown id leaves tracking off."""
    owner = slot_owner_table(2)[key_slot(b"k")]
    red, red_id = redirect_target(server.shard_port(owner), proto=3)
    r = fresh(server.port)
    r.call("SET", "k", "v")
    r.send_raw(encode_command(("CLIENT", "TRACKING", "on", "REDIRECT", str(red_id))) + encode_command(("GET", "k")))
    assert (r.read_reply(), r.read_reply()) == (b"+OK\r\n", b"$1\r\nv\r\n")
    RawConn(server.port).call("SET", "k", "w")
    assert red.read_reply() == b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    r.call("CLIENT", "TRACKING", "off")
    assert r.call("CLIENT", "TRACKING", "on", "REDIRECT", str(red_id + 10**9)) == \
        b"-ERR The client ID you want redirect to does not exist\r\n"
    assert decode(r.call("CLIENT", "TRACKINGINFO"))[0][:2] == [b"flags", [b"off"]]
    closing(r, red)
