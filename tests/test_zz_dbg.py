import time
from refserver import Pair, decode, redis_ref  # noqa: F401


def test_dbg(server, redis_ref):  # noqa: F811
    p = Pair(server.port, redis_ref.port)
    p.same("FLUSHALL")
    p.same("MULTI")
    p.same("ACL", "SETUSER", "queued", "on", ">pw")
    p.same("ACL", "DELUSER", "queued", "nosuch")
    p.same("ACL", "SETUSER", "other", "on")
    p.same("CONFIG", "SET", "acllog-max-len", "128")
    p.same("EXEC")
    p.same("ACL", "GETUSER", "other")
    users = decode(p.ours.call("ACL", "USERS"))[0]
    print("users at teardown", users)
    for name in users:
        if name != b"default":
            print("del", name, p.ours.call("ACL", "DELUSER", name), p.theirs.call("ACL", "DELUSER", name))
    for i in range(5):
        print(i, decode(p.ours.call("ACL", "USERS"))[0])
        time.sleep(0.2)
