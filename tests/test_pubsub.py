"""Pub/Sub: reply shapes and subscribed-mode rules compared byte for byte with
redis-server (RESP2 and RESP3), and PUBLISH reaching subscribers on every router
and shard port, with receivers counted across processes."""

from __future__ import annotations

import time

from refserver import Err, Pair, RawConn, decode, encode_command

WAIT_S = 10.0


def both_replies(p: Pair, n: int) -> None:
    """Read n more replies (pushes) on both connections; they must be identical."""
    for _ in range(n):
        ours, theirs = p.ours.read_reply(), p.theirs.read_reply()
        assert ours == theirs, f"durakv {ours!r} != redis {theirs!r}"


def both_replies_unordered(p: Pair, n: int) -> None:
    """As both_replies, for replies in Redis' dict order (unsubscribing from all)."""
    ours = sorted(p.ours.read_reply() for _ in range(n))
    theirs = sorted(p.theirs.read_reply() for _ in range(n))
    assert [decode(r)[0][:2] for r in ours] == [decode(r)[0][:2] for r in theirs], (ours, theirs)
    assert decode(ours[-1])[0][0] == decode(theirs[-1])[0][0]


def send_both(p: Pair, *args) -> None:
    p.ours.send_raw(encode_command(args))
    p.theirs.send_raw(encode_command(args))


def test_subscribe_reply_shapes_and_subscribed_mode_resp2(pair: Pair):
    p = pair
    p.same("UNSUBSCRIBE")
    p.same("PUNSUBSCRIBE")
    send_both(p, "SUBSCRIBE", "a", "b", "a")
    both_replies(p, 3)
    send_both(p, "PSUBSCRIBE", "h?llo")
    both_replies(p, 1)
    send_both(p, "SSUBSCRIBE", "{s}x", "{s}y")
    both_replies(p, 2)
    p.same("PING")
    p.same("PING", "hi")
    p.same("GET", "k")  # refused in subscribed mode
    p.same("PUBSUB", "NUMPAT")
    send_both(p, "UNSUBSCRIBE", "b", "nope")
    both_replies(p, 2)
    send_both(p, "PUNSUBSCRIBE")
    both_replies(p, 1)
    send_both(p, "SUNSUBSCRIBE")
    both_replies_unordered(p, 2)
    send_both(p, "UNSUBSCRIBE")
    both_replies(p, 1)
    p.same("PING")  # out of subscribed mode: +PONG again
    p.same("SET", "k", "v")


def test_subscribe_resp3_pushes_and_normal_commands(pair3: Pair):
    p = pair3
    send_both(p, "SUBSCRIBE", "c1")
    both_replies(p, 1)
    p.same("SET", "k", "v")  # RESP3 subscribers may run any command
    p.same("PING")
    p.same("PUBLISH", "c1", "hello")  # the message to ourselves, then the count (Redis' order)
    both_replies(p, 1)
    send_both(p, "PSUBSCRIBE", "c*")
    both_replies(p, 1)
    p.same("PUBLISH", "c1", "two")
    both_replies(p, 2)
    p.same("RESET")
    p.same("PUBLISH", "c1", "three")  # RESET dropped every subscription: no receiver


def test_pubsub_introspection_matches_redis(pair: Pair):
    p = pair
    sub_ours, sub_theirs = RawConn(p.ours.sock.getpeername()[1]), RawConn(p.theirs.sock.getpeername()[1])
    try:
        for conn in (sub_ours, sub_theirs):
            conn.call("SUBSCRIBE", "news.1")
            conn.send_raw(b"*3\r\n$10\r\nPSUBSCRIBE\r\n$4\r\nn*.*\r\n$2\r\nx*\r\n")
            conn.read_reply()
            conn.read_reply()
            conn.send_raw(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$2\r\nsc\r\n")
            conn.read_reply()
        p.same("PUBSUB", "CHANNELS")
        p.same("PUBSUB", "CHANNELS", "news.*")
        p.same("PUBSUB", "CHANNELS", "zz*")
        p.same("PUBSUB", "NUMSUB", "news.1", "other")
        p.same("PUBSUB", "NUMSUB")
        p.same("PUBSUB", "NUMPAT")
        p.same("PUBSUB", "SHARDCHANNELS")
        p.same("PUBSUB", "SHARDNUMSUB", "sc", "none")
        p.same("PUBSUB", "CHANNELS", "a", "b")
        p.same("PUBLISH", "news.1", "m")  # 1 channel subscriber + 1 pattern (n*.*)
        p.same("SPUBLISH", "sc", "m")
        p.same("PUBSUB", "HELP")
        for conn in (sub_ours, sub_theirs):
            assert decode(conn.read_reply())[0] == [b"message", b"news.1", b"m"]
            assert decode(conn.read_reply())[0] == [b"pmessage", b"n*.*", b"news.1", b"m"]
            assert decode(conn.read_reply())[0] == [b"smessage", b"sc", b"m"]
    finally:
        sub_ours.close()
        sub_theirs.close()


def _subscriber(port: int, channel: str) -> RawConn:
    conn = RawConn(port)
    reply = conn.call("SUBSCRIBE", channel)
    assert decode(reply)[0] == [b"subscribe", channel.encode(), 1]
    return conn


def _router_of(conn: RawConn) -> int:
    return (decode(conn.call("CLIENT", "ID"))[0] - 1) % 2  # id = seq * routers + index + 1 (RESP2, not yet subscribed)


def _one_per_router(port: int) -> tuple[dict[int, RawConn], list[RawConn]]:
    """Connect until each of the two routers took one connection: (router -> it, the others)."""
    by_router: dict[int, RawConn] = {}
    spare: list[RawConn] = []
    deadline = time.monotonic() + WAIT_S
    while len(by_router) < 2 and time.monotonic() < deadline:
        conn = RawConn(port)
        router = _router_of(conn)
        if router in by_router:
            spare.append(conn)
        else:
            by_router[router] = conn
    assert len(by_router) == 2, "both routers must take a connection"
    return by_router, spare


def test_publish_reaches_every_router_and_shard_port(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    # One subscriber on each router and one on each shard port.
    by_router, spare = _one_per_router(srv.port)
    for conn in by_router.values():
        assert decode(conn.call("SUBSCRIBE", "ch"))[0] == [b"subscribe", b"ch", 1]
    on_shards = [_subscriber(srv.shard_port(i), "ch") for i in range(2)]
    pattern = RawConn(srv.shard_port(1))
    assert decode(pattern.call("PSUBSCRIBE", "c*"))[0] == [b"psubscribe", b"c*", 1]
    receivers = [*by_router.values(), *on_shards]
    publisher = srv.client()
    try:
        assert publisher.pubsub_numsub("ch") == [(b"ch", 4)]
        assert publisher.execute_command("PUBSUB", "NUMPAT") == 1
        assert publisher.publish("ch", "m1") == 5
        assert srv.shard_client(0).publish("ch", "m2") == 5
        for conn in receivers:
            assert decode(conn.read_reply())[0] == [b"message", b"ch", b"m1"]
            assert decode(conn.read_reply())[0] == [b"message", b"ch", b"m2"]
        assert decode(pattern.read_reply())[0] == [b"pmessage", b"c*", b"ch", b"m1"]
        assert decode(pattern.read_reply())[0] == [b"pmessage", b"c*", b"ch", b"m2"]
        # A closed subscriber is forgotten everywhere it was counted.
        on_shards[0].close()
        deadline = time.monotonic() + WAIT_S
        while publisher.pubsub_numsub("ch") != [(b"ch", 3)] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.publish("ch", "m3") == 4
    finally:
        publisher.close()
        for conn in [*receivers[:2], on_shards[1], pattern, *spare]:
            conn.close()


def test_sharded_channels_follow_cluster_rules_on_a_shard_port(server_factory):
    srv = server_factory(shards=2)
    node = RawConn(srv.shard_port(0))
    try:
        # Two channels in different slots: CROSSSLOT, as Redis Cluster.
        reply = decode(node.call("SSUBSCRIBE", "a", "b"))[0]
        assert isinstance(reply, Err) and reply.message.startswith(b"CROSSSLOT"), reply
        moved = 0
        for n in range(20):
            value = decode(node.call("SSUBSCRIBE", f"chan{n}"))[0]
            if isinstance(value, list):
                assert value[0] == b"ssubscribe"
            else:
                assert isinstance(value, Err) and value.message.startswith(b"MOVED"), value
                moved += 1
        assert 0 < moved < 20, "some channels' slots belong to the other shard"
    finally:
        node.close()


KEYSPACE_COMMANDS = [
    ("SET", "{t}s", "v"), ("SET", "{t}s", "v", "EX", "100"), ("SETEX", "{t}s", "100", "v"), ("APPEND", "{t}s", "x"),
    ("INCRBY", "{t}n", "5"), ("INCRBYFLOAT", "{t}n", "1.5"), ("MSET", "{t}a", "1", "{t}b", "2"), ("GETDEL", "{t}a"),
    ("EXPIRE", "{t}b", "100"), ("PERSIST", "{t}b"), ("RENAME", "{t}b", "{t}c"), ("DEL", "{t}c", "{t}nope"),
    ("LPUSH", "{t}l", "a", "b"), ("RPUSH", "{t}l", "c"), ("LPOP", "{t}l"), ("RPOP", "{t}l", "5"),
    ("RPUSH", "{t}l", "a", "b", "a"), ("LREM", "{t}l", "0", "a"), ("LMOVE", "{t}l", "{t}l2", "LEFT", "RIGHT"),
    ("HSET", "{t}h", "f", "1", "g", "2"), ("HINCRBY", "{t}h", "f", "2"), ("HDEL", "{t}h", "f", "g"),
    ("SADD", "{t}S", "m", "n"), ("SREM", "{t}S", "m", "n"),
    ("ZADD", "{t}z", "1", "m"), ("ZINCRBY", "{t}z", "2", "m"), ("ZREM", "{t}z", "m"),
    ("SET", "{t}gone", "v", "PX", "1"),
]


def test_keyspace_events_match_redis(server, redis_ref):
    """notify-keyspace-events KEA: the messages a series of commands produces,
    in order, as redis-server publishes them (the shard generates them and its
    routers deliver them); `x` (expired) included; none while off."""
    p = Pair(server.port, redis_ref.port, 2)
    subs = (RawConn(server.port), RawConn(redis_ref.port))
    try:
        p.same("FLUSHALL")
        p.same("CONFIG", "SET", "notify-keyspace-events", "KEA")
        p.same("CONFIG", "GET", "notify-keyspace-events")
        for conn in subs:
            assert decode(conn.call("PSUBSCRIBE", "__key*__:*"))[0][0] == b"psubscribe"
        for args in KEYSPACE_COMMANDS:
            p.same(*args)
        time.sleep(0.01)
        p.same("GET", "{t}gone")  # expired on access: "expired" events
        p.same("CONFIG", "SET", "notify-keyspace-events", "")
        p.same("SET", "{t}quiet", "v")  # no event
        p.same("CONFIG", "SET", "notify-keyspace-events", "Kx")  # the end marker: only K and expired
        p.same("SET", "{t}end", "v", "PX", "1")
        time.sleep(0.01)
        p.same("GET", "{t}end")
        ours: list = []
        theirs: list = []
        for conn, got in ((subs[0], ours), (subs[1], theirs)):
            while not got or got[-1] != [b"pmessage", b"__key*__:*", b"__keyspace@0__:{t}end", b"expired"]:
                got.append(decode(conn.read_reply())[0])
        assert ours == theirs
        print(f"{len(ours)} keyspace messages, identical to redis-server's; last events: {ours[-4:]}")
        assert len(ours) > 2 * len(KEYSPACE_COMMANDS)
    finally:
        p.ours.call("CONFIG", "SET", "notify-keyspace-events", "")
        p.theirs.call("CONFIG", "SET", "notify-keyspace-events", "")
        p.close()
        for conn in subs:
            conn.close()


def test_replay_generates_no_notifications():
    """The live commands publish their events; replaying their log into a keyspace
    with every class enabled publishes none (a restarted shard, DEBUG RELOAD)."""
    from engine_util import call, new_ctx

    import durakv.shards.commands  # noqa: F401  (registers every shard command)
    from durakv.shards.engine import replay
    from durakv.shards.notify import parse_flags

    flags = parse_flags("KEA")
    assert flags is not None
    live = new_ctx()
    live.db.notify_flags = flags
    for args in KEYSPACE_COMMANDS:
        call(live, *args)
    assert len(live.db.events) > 2 * len(KEYSPACE_COMMANDS)
    replayed = new_ctx()
    replayed.db.notify_flags = flags
    replay(replayed, live.db.effects)
    assert replayed.db.events == []
    assert len(replayed.db.data) == len(live.db.data)


def test_slow_subscriber_is_disconnected_at_the_pubsub_output_limit(server_factory):
    """A subscriber that does not read is closed once its queued output passes the
    pubsub class's hard limit (client-output-buffer-limit), and forgotten."""
    srv = server_factory(shards=1)
    client = srv.client()
    client.config_set("client-output-buffer-limit", "pubsub 1mb 0 0")
    sub = RawConn(srv.port)
    sub.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 64 * 1024)
    assert decode(sub.call("SUBSCRIBE", "flood"))[0] == [b"subscribe", b"flood", 1]
    payload = b"x" * (256 * 1024)
    published = 0
    deadline = time.monotonic() + WAIT_S
    while client.pubsub_numsub("flood") == [(b"flood", 1)] and time.monotonic() < deadline:
        client.publish("flood", payload)
        published += 1
    assert client.pubsub_numsub("flood") == [(b"flood", 0)], "the slow subscriber must be disconnected"
    print(f"slow subscriber closed after {published} messages of {len(payload)} bytes")
    assert "output buffer limits" in srv.log()
    sub.close()
    client.close()


def test_client_info_and_info_stats_count_subscriptions(pair3: Pair):
    """CLIENT INFO's flags/sub/psub/ssub, CLIENT LIST TYPE pubsub and INFO's
    pubsub_channels/pubsub_patterns, as redis-server reports them."""
    import re

    p = pair3
    send_both(p, "SUBSCRIBE", "i1", "i2")
    both_replies(p, 2)
    send_both(p, "PSUBSCRIBE", "i*")
    both_replies(p, 1)

    def fields(conn: RawConn, *args) -> list:
        text = decode(conn.call(*args))[0]
        return re.findall(rb"(?:flags|sub|psub|ssub|pubsub_channels|pubsub_patterns)[=:]\w+", text)

    for args in (("CLIENT", "INFO"), ("CLIENT", "LIST", "TYPE", "pubsub"), ("INFO", "stats")):
        assert fields(p.ours, *args) == fields(p.theirs, *args), args
    p.same("RESET")
    assert fields(p.ours, "CLIENT", "LIST", "TYPE", "pubsub") == fields(p.theirs, "CLIENT", "LIST", "TYPE", "pubsub")


def test_publish_answers_when_a_peer_is_stopped(server_factory):
    """A router that does not answer (SIGSTOP) holds a PUBLISH for at most the
    peer reply bound, and counts as no receivers; once it runs again its
    subscriber gets the message it missed meanwhile, in order."""
    import os
    import signal

    srv = server_factory(shards=1, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    for conn in by_router.values():
        conn.call("SUBSCRIBE", "ch")
    publisher = srv.shard_client(0)
    stopped = srv.child_pid("router", 1)
    os.kill(stopped, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert publisher.publish("ch", "while-stopped") == 1
        print(f"PUBLISH with a stopped peer answered in {(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert publisher.publish("ch", "after") == 2
    for conn in by_router.values():
        assert decode(conn.read_reply())[0] == [b"message", b"ch", b"while-stopped"]
        assert decode(conn.read_reply())[0] == [b"message", b"ch", b"after"]
    publisher.close()
    for conn in [*by_router.values(), *spare]:
        conn.close()


def test_messages_behind_a_blocked_reply_are_bounded(server_factory):
    """A RESP3 subscriber blocked in BLPOP gets its messages after BLPOP's reply;
    they wait in its reply queue, so past MAX_QUEUED_MESSAGES it is closed."""
    from durakv.server.pubsub import MAX_QUEUED_MESSAGES

    srv = server_factory(shards=1)
    sub = RawConn(srv.port, proto=3)
    sub.call("SUBSCRIBE", "q")
    sub.send_raw(encode_command(("BLPOP", "nothing", "0")))
    client = srv.client()
    deadline = time.monotonic() + WAIT_S
    while b"cmd=blpop" not in client.execute_command("CLIENT", "LIST") and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe = client.pipeline(transaction=False)
    for n in range(MAX_QUEUED_MESSAGES + 10):
        pipe.publish("q", b"%d" % n)
    pipe.execute()
    sub.read_until_closed()  # closed, without BLPOP's reply ever coming
    assert "messages queued behind a pending reply" in srv.log()
    assert client.pubsub_numsub("q") == [(b"q", 0)]
    client.close()


def _reply_off_keeps_pushes(p: Pair) -> None:
    send_both(p, "CLIENT", "REPLY", "OFF")
    send_both(p, "SUBSCRIBE", "ch")
    both_replies(p, 1)
    send_both(p, "CLIENT", "REPLY", "SKIP")
    send_both(p, "PSUBSCRIBE", "c*")
    both_replies(p, 1)
    send_both(p, "UNSUBSCRIBE")
    both_replies(p, 1)
    send_both(p, "PUNSUBSCRIBE")
    both_replies(p, 1)
    send_both(p, "CLIENT", "REPLY", "ON")
    both_replies(p, 1)
    p.same("PING")


def test_client_reply_off_does_not_silence_subscription_pushes(pair: Pair):
    """(Un)subscribe confirmations and messages are pushes: CLIENT REPLY OFF or SKIP
    does not silence them (Redis' CLIENT_PUSHING), in RESP2..."""
    _reply_off_keeps_pushes(pair)


def test_client_reply_off_does_not_silence_resp3_pushes(pair3: Pair):
    """...and in RESP3."""
    _reply_off_keeps_pushes(pair3)
