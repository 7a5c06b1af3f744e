"""ACL users (issue 13): rules, replies and errors side by side with redis-server 7.0,
enforcement on router and shard ports, propagation to every process, durability."""

from __future__ import annotations

import hashlib

import pytest
import redis
from refserver import Pair, RawConn, decode, redis_ref  # noqa: F401  (fixture)
from test_routers import wait_routers_listening

HASH = hashlib.sha256(b"secret").hexdigest()

# ACL SETUSER rule lists whose replies, GETUSER and LIST lines must equal Redis'.
SETUSER_CASES = [
    ["on", ">p1", "#" + HASH, "~a*", "%R~b*", "%W~c*", "%RW~d*", "&ch*", "+@string", "-set"],
    ["+@all", "-@read"],
    ["-@all", "+@hash"],
    ["+@all", "-client"],
    ["+@all", "-client|kill"],
    ["-@all", "+client|id"],
    ["-@all", "+select|0"],
    ["+@all", "+client|id"],
    ["nopass", "allkeys", "allchannels", "allcommands"],
    ["resetpass", "resetkeys", "resetchannels", "nocommands"],
    ["reset"],
    ["on", "nopass", "skip-sanitize-payload", "~k", "(+get ~x* &y)", "(", "+set", "~z*", ")"],
    ["clearselectors"],
    ["%R~k", "%W~k"],
    ["off", "<p1"],
]
# Rules Redis refuses, each with its error text.
SETUSER_ERRORS = [
    ["foo"], ["+nosuch"], ["+@nosuch"], ["(foo"], ["%X~a"], ["%~a"], ["#abc"], ["!" + "A" * 64],
    ["<never-set"], ["~a", "allkeys", "~b"], ["allchannels", "&b"], ["+get|"], ["+client|id|x"],
    ["-get|x"], ["+get|a|b"], ["+config|nosuch"], ["(on)"],
]


def getuser(conn: RawConn, name: str) -> object:
    return decode(conn.call("ACL", "GETUSER", name))[0]


def list_line(conn: RawConn, name: str) -> bytes:
    lines = decode(conn.call("ACL", "LIST"))[0]
    assert isinstance(lines, list)
    return next(line for line in lines if line.startswith(b"user %s " % name.encode()))


@pytest.fixture
def acl_pair(server, redis_ref):  # noqa: F811
    p = Pair(server.port, redis_ref.port)
    p.same("FLUSHALL")
    yield p
    for name in decode(p.ours.call("ACL", "USERS"))[0]:
        if name != b"default":
            p.ours.call("ACL", "DELUSER", name)
            p.theirs.call("ACL", "DELUSER", name)
    p.close()


def test_setuser_rules_getuser_and_list_match_redis(acl_pair):
    p = acl_pair
    for rules in SETUSER_CASES:
        p.same("ACL", "SETUSER", "rules-user", *rules)
        assert getuser(p.ours, "rules-user") == getuser(p.theirs, "rules-user"), rules
        assert list_line(p.ours, "rules-user") == list_line(p.theirs, "rules-user"), rules
    for rules in SETUSER_ERRORS:
        p.same("ACL", "SETUSER", "bad-user", *rules)
    p.same("ACL", "SETUSER", "a b")
    p.same("ACL", "GETUSER", "bad-user")  # a failed SETUSER creates nothing
    p.same("ACL", "GETUSER", "default")
    p.same("ACL", "USERS")


def test_acl_subcommands_match_redis(acl_pair):
    p = acl_pair
    p.same("ACL", "SETUSER", "dry", "on", "nopass", "~k*", "&ch", "+get", "+publish", "+client|id")
    for args in [
        ("WHOAMI",), ("CAT", "nosuch"), ("CAT", "a", "b"), ("GENPASS", "0"), ("GENPASS", "5000"),
        ("GENPASS", "x"), ("DELUSER", "default"), ("DELUSER", "nobody"), ("GETUSER", "nobody"), ("HELP",),
        ("LOAD",), ("SAVE",), ("LOG", "x"), ("DRYRUN", "nobody", "get", "x"), ("DRYRUN", "dry", "nocmd"),
        ("DRYRUN", "dry", "get"), ("DRYRUN", "dry", "get", "k1"), ("DRYRUN", "dry", "get", "x"),
        ("DRYRUN", "dry", "set", "k", "v"), ("DRYRUN", "dry", "publish", "ch", "m"),
        ("DRYRUN", "dry", "publish", "other", "m"), ("DRYRUN", "dry", "client", "id"),
        ("DRYRUN", "dry", "client", "kill", "x"), ("DRYRUN", "dry", "auth", "x"),
    ]:
        p.same("ACL", *args)
    p.same_unordered("ACL", "CAT")
    known = set(decode(p.theirs.call("COMMAND", "LIST"))[0])
    for category in ("string", "keyspace", "connection", "scripting", "pubsub", "dangerous"):
        ours, theirs = (set(decode(c.call("ACL", "CAT", category))[0]) for c in (p.ours, p.theirs))
        # Of the commands Redis 7.0 has, durakv lists those Redis lists.
        ours = {name for name in ours if name.split(b"|")[0] in known
                and decode(p.theirs.call("COMMAND", "INFO", name))[0] != [None]}
        assert ours and ours <= theirs, (category, ours - theirs)
    assert len(decode(p.ours.call("ACL", "GENPASS"))[0]) == 64
    assert len(decode(p.ours.call("ACL", "GENPASS", "5"))[0]) == 2


def test_enforcement_errors_and_log_match_redis(acl_pair, server, redis_ref):  # noqa: F811
    p = acl_pair
    p.same("ACL", "SETUSER", "lim", "on", ">pw", "~k*", "&ch", "+get", "+set", "+eval", "+publish",
           "+subscribe", "+multi", "+exec", "+sort", "+acl|whoami")
    p.same("ACL", "LOG", "RESET")
    user = Pair(server.port, redis_ref.port)
    try:
        user.same("AUTH", "lim", "wrong")
        user.same("HELLO", "3", "AUTH", "lim", "wrong")
        user.same("AUTH", "nobody", "pw")
        user.same("AUTH", "lim", "pw")
        user.same("ACL", "WHOAMI")
        user.same("GET", "x")  # a key outside ~k*
        user.same("DEL", "k")  # a command not allowed
        user.same("PUBLISH", "other", "m")  # a channel not allowed
        user.same("PUBLISH", "ch", "m")
        user.same("SET", "k1", "v")
        user.same("EVAL", "return redis.call('get','x')", "0")
        user.same("EVAL", "return redis.call('del','k1')", "0")
        user.same("SORT", "k1", "BY", "w*")
        user.same("SORT", "k1", "GET", "w*")
        user.same("MULTI")
        user.same("GET", "x")
        user.same("GET", "k1")
        user.same("EXEC")
        user.same("SUBSCRIBE", "ch", "other")
    finally:
        user.close()

    def entries(conn: RawConn) -> list:
        fields = (b"count", b"reason", b"context", b"object", b"username")
        return [[v for k, v in zip(e[::2], e[1::2]) if k in fields] for e in decode(conn.call("ACL", "LOG"))[0]]

    assert entries(p.ours) == entries(p.theirs)
    p.same("ACL", "LOG", "RESET")
    p.same("ACL", "LOG")


def test_deleted_user_is_disconnected_on_router_and_shard_port(server):
    admin = RawConn(server.port)
    assert admin.call("ACL", "SETUSER", "gone", "on", ">pw", "+@all", "~*") == b"+OK\r\n"
    victims = [RawConn(server.port), RawConn(server.shard_port(0)), RawConn(server.shard_port(1))]
    for victim in victims:
        assert victim.call("AUTH", "gone", "pw") == b"+OK\r\n"
    deleter = RawConn(server.port)
    assert deleter.call("AUTH", "gone", "pw") == b"+OK\r\n"
    # The caller gets its reply, then is closed like every other client of the user.
    assert deleter.call("ACL", "DELUSER", "gone") == b":1\r\n"
    assert deleter.read_until_closed() == b""
    for victim in victims:
        assert victim.read_until_closed() == b""
    # Other users may exist on this module's server (other tests' users): only `gone` must be gone.
    assert b"gone" not in decode(admin.call("ACL", "USERS"))[0]


def test_requirepass_is_the_default_users_password(server_factory):
    srv = server_factory(shards=1)
    admin = srv.client()
    assert admin.config_set("requirepass", "s3cret")
    hashed = hashlib.sha256(b"s3cret").hexdigest().encode()
    conn = RawConn(srv.port)
    assert conn.call("AUTH", "s3cret") == b"+OK\r\n"
    assert decode(conn.call("ACL", "GETUSER", "default"))[0][:4] == [b"flags", [b"on"], b"passwords", [hashed]]
    for port in (srv.port, srv.shard_port(0)):
        conn = RawConn(port)
        assert conn.call("GET", "x").startswith(b"-NOAUTH")
        assert conn.call("AUTH", "wrong") == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        assert conn.call("AUTH", "default", "s3cret") == b"+OK\r\n"
        conn.close()
    assert admin.config_set("requirepass", "")
    assert RawConn(srv.port).call("AUTH", "x").startswith(b"-ERR AUTH <password> called without")


def test_acl_changes_reach_every_router_and_shard_port(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    wait_routers_listening(srv, 2)
    first = RawConn(srv.port)
    assert first.call("ACL", "SETUSER", "everywhere", "on", ">pw", "+get", "~k*") == b"+OK\r\n"
    routers = set()
    for _ in range(60):
        conn = RawConn(srv.port)
        routers.add((int(conn.call("CLIENT", "ID")[1:]) - 1) % 2)
        assert conn.call("AUTH", "everywhere", "pw") == b"+OK\r\n"
        assert conn.call("SET", "k", "v").startswith(b"-NOPERM")
        conn.close()
        if routers == {0, 1}:
            break
    assert routers == {0, 1}, "the connections must land on both routers"
    for shard in range(2):
        conn = RawConn(srv.shard_port(shard))
        assert conn.call("AUTH", "everywhere", "pw") == b"+OK\r\n"
        # A change made on a shard port reaches the routers too.
        assert conn.call("ACL", "SETUSER", f"from-shard-{shard}", "on", "nopass") == b"-NOPERM this user has no " \
            b"permissions to run the 'acl|setuser' command\r\n"
        conn.close()
        admin = RawConn(srv.shard_port(shard))
        assert admin.call("ACL", "SETUSER", f"from-shard-{shard}", "on", "nopass", "+ping") == b"+OK\r\n"
        admin.close()
    for port in (srv.port, srv.shard_port(0), srv.shard_port(1)):
        users = decode(RawConn(port).call("ACL", "USERS"))[0]
        assert users == [b"default", b"everywhere", b"from-shard-0", b"from-shard-1"], (port, users)


def test_acknowledged_users_survive_kill9(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    srv = server_factory(shards=2, data_dir=data_dir)
    conn = RawConn(srv.port)
    assert conn.call("ACL", "SETUSER", "durable", "on", ">pw", "~k*", "+@read", "(+set ~w*)") == b"+OK\r\n"
    assert conn.call("ACL", "SETUSER", "temporary", "on") == b"+OK\r\n"
    assert conn.call("ACL", "DELUSER", "temporary") == b":1\r\n"
    before = conn.call("ACL", "LIST")
    srv.kill9()
    srv = server_factory(shards=2, data_dir=data_dir)
    for port in (srv.port, srv.shard_port(1)):
        conn = RawConn(port)
        assert conn.call("ACL", "LIST") == before
        assert conn.call("AUTH", "durable", "pw") == b"+OK\r\n"
        conn.close()


def test_aclfile_load_and_save(server_factory, tmp_path):
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("user alice on >alice ~* &* +@all\nuser bob on >bob -@all +@set ~set* &*\n")
    config = tmp_path / "durakv.toml"
    config.write_text(f'aclfile = "{aclfile}"\n')
    data_dir = tmp_path / "data"
    srv = server_factory(shards=1, data_dir=data_dir, extra_args=("--config", str(config)))
    conn = RawConn(srv.port)
    assert conn.call("AUTH", "bob", "bob") == b"+OK\r\n"
    assert conn.call("SADD", "set1", "a") == b":1\r\n"
    assert conn.call("SET", "x", "y").startswith(b"-NOPERM")
    admin = RawConn(srv.shard_port(0))
    assert admin.call("ACL", "SETUSER", "eve", "on", ">eve", "+get", "allkeys") == b"+OK\r\n"
    assert admin.call("ACL", "SAVE") == b"+OK\r\n"
    assert "user eve on #" in aclfile.read_text()
    assert admin.call("ACL", "SETUSER", "unsaved", "on") == b"+OK\r\n"
    assert admin.call("ACL", "LOAD") == b"+OK\r\n"
    assert decode(admin.call("ACL", "USERS"))[0] == [b"alice", b"bob", b"default", b"eve"]
    with pytest.raises(ConnectionError):  # ACL LOAD closes the clients of every user but default
        conn.call("PING")
    # Unsaved changes end with the run; what ACL SAVE wrote is loaded again.
    assert admin.call("ACL", "SETUSER", "unsaved2", "on") == b"+OK\r\n"
    srv.stop()
    srv = server_factory(shards=1, data_dir=data_dir, extra_args=("--config", str(config)))
    conn = RawConn(srv.port)
    assert decode(conn.call("ACL", "USERS"))[0] == [b"alice", b"bob", b"default", b"eve"]
    aclfile.write_text("user carol on bogus\n")
    assert conn.call("ACL", "LOAD").startswith(b"-ERR Error loading ACLs")


def test_missing_aclfile_stops_the_start(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "durakv.toml"
    config.write_text(f'aclfile = "{tmp_path / "absent.acl"}"\n')
    done = subprocess.run([sys.executable, "-m", "durakv.server.cli", "serve", "--config", str(config),
                           "--data-dir", str(tmp_path / "data"), "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "aclfile" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_restricted_script_calls_are_checked_on_the_shard(server):
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "scripter", "reset", "on", ">pw", "+eval", "+evalsha", "+get", "~{s}*")
    try:
        admin.set("{s}ok", "v")
        user = server.client(username="scripter", password="pw")
        assert user.eval("return redis.call('get', KEYS[1])", 1, "{s}ok") == b"v"
        with pytest.raises(redis.ResponseError, match="can't run this command or subcommand"):
            user.eval("return redis.call('set', KEYS[1], 'x')", 1, "{s}ok")
        with pytest.raises(redis.ResponseError, match="can't access at least one of the keys"):
            user.eval("return redis.call('get', 'other')", 1, "{s}ok")
        log = [dict(zip(e[::2], e[1::2])) for e in decode(RawConn(server.port).call("ACL", "LOG", "2"))[0]]
        assert [(e[b"context"], e[b"object"]) for e in log] == [(b"lua", b"other"), (b"lua", b"set")]
        admin.execute_command("ACL", "SETUSER", "scripter", "+multi", "+exec")
        with pytest.raises(redis.ResponseError, match="can't run this command or subcommand"):
            pipe = user.pipeline(transaction=True)  # inside MULTI the rules travel with the script too
            pipe.eval("return redis.call('set', KEYS[1], 'x')", 1, "{s}ok")
            pipe.execute()
        assert admin.get("{s}ok") == b"v"
    finally:
        admin.execute_command("ACL", "DELUSER", "scripter")


def test_default_user_set_by_acl_survives_restart_requirepass_does_not(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    srv = server_factory(shards=1, data_dir=data_dir)
    admin = RawConn(srv.port)
    assert admin.call("CONFIG", "SET", "requirepass", "runtime-only") == b"+OK\r\n"
    assert admin.call("ACL", "SETUSER", "other", "on") == b"+OK\r\n"  # stores the users, not requirepass
    srv.stop()
    srv = server_factory(shards=1, data_dir=data_dir)
    admin = RawConn(srv.port)
    assert admin.call("PING") == b"+PONG\r\n", "CONFIG SET requirepass lasts until the restart, as in Redis"
    assert admin.call("ACL", "SETUSER", "default", "resetpass", ">kept") == b"+OK\r\n"
    srv.kill9()
    srv = server_factory(shards=1, data_dir=data_dir)
    for port in (srv.port, srv.shard_port(0)):
        conn = RawConn(port)
        assert conn.call("PING").startswith(b"-NOAUTH")
        assert conn.call("AUTH", "kept") == b"+OK\r\n"
        assert decode(conn.call("ACL", "USERS"))[0] == [b"default", b"other"]
        conn.close()


def test_acl_changes_queued_in_multi_answer_as_redis(acl_pair):
    p = acl_pair
    p.same("MULTI")
    p.same("ACL", "SETUSER", "queued", "on", ">pw")
    p.same("ACL", "DELUSER", "queued", "nosuch")
    p.same("ACL", "SETUSER", "other", "on")
    p.same("CONFIG", "SET", "acllog-max-len", "128")
    p.same("EXEC")  # OK, 1, OK, OK
    p.same("ACL", "GETUSER", "queued")
    p.same("ACL", "GETUSER", "other")


def test_script_denial_inside_multi_reaches_acl_log_as_in_redis(acl_pair, server, redis_ref):  # noqa: F811
    p = acl_pair
    p.same("ACL", "SETUSER", "scr", "on", ">pw", "~k*", "+eval", "+get", "+multi", "+exec")
    p.same("ACL", "LOG", "RESET")
    user = Pair(server.port, redis_ref.port)
    try:
        user.same("AUTH", "scr", "pw")
        user.same("MULTI")
        user.same("EVAL", "return redis.call('set','k1','v')", "0")  # a command it may not run
        user.same("EVAL", "return redis.call('get','x')", "0")  # a key outside ~k*
        user.same("GET", "k1")
        user.same("EXEC")
    finally:
        user.close()
    fields = (b"count", b"reason", b"context", b"object", b"username")

    def entries(conn: RawConn) -> list:
        return [[v for k, v in zip(e[::2], e[1::2]) if k in fields] for e in decode(conn.call("ACL", "LOG"))[0]]

    assert entries(p.ours) == entries(p.theirs)
    assert len(entries(p.ours)) == 2


def test_acl_and_config_changes_are_stored_in_the_order_they_were_made(acl_pair):
    """A user made in an EXEC (whose reply does not wait for the change to be stored and
    propagated) and deleted right after stays deleted, and a CONFIG SET in an EXEC does
    not win over the one after it, as on redis-server. Before, each change raced for
    the settings lock: the later one could be stored first, and the file (which every
    process reloads) ended with the earlier state: the user came back."""
    p = acl_pair
    try:
        for n in range(5):
            p.same("MULTI")
            p.same("ACL", "SETUSER", "flip", "on")
            p.same("CONFIG", "SET", "maxmemory-samples", str(10 + n))
            p.same("EXEC")
            p.same("ACL", "DELUSER", "flip")
            p.same("CONFIG", "SET", "maxmemory-samples", str(20 + n))
            # Answered once its own change is stored and everywhere (after the earlier ones now).
            p.same("ACL", "SETUSER", "marker", "on")
            p.same("ACL", "USERS")
            p.same("CONFIG", "GET", "maxmemory-samples")
    finally:
        p.same("CONFIG", "SET", "maxmemory-samples", "5")
