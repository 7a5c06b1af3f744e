"""Print every COMMAND reply durakv gives (COMMAND, COUNT, INFO, DOCS and LIST,
per command and per ACL category, GETKEYS and GETKEYSANDFLAGS for a sample) in
RESP2 and RESP3, and the resolver's errors, computed in-process from the command
table. Run it before and after a change to the table and compare the outputs:

    python scripts/command_replies.py > before.bin   # on the old tree
    python scripts/command_replies.py > after.bin    # on the new tree
    cmp before.bin after.bin
"""

from __future__ import annotations

import sys

import durakv.server.commands  # noqa: F401  (registers the router's commands)
import durakv.shards.commands  # noqa: F401  (registers the shard's commands)
from durakv.shards.resp import ReplyError, encode, encode_error
from durakv.shards.table import TABLE, lookup

ACL_CATEGORIES = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap", "hyperloglog",
    "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous", "connection",
    "transaction", "scripting", "nosuch",
)
GETKEYS_SAMPLES = (
    "get k", "set k v", "set k v GET", "set k v EX 10 GET", "mset a 1 b 2", "mget a b c", "del a b", "rename a b",
    "lmpop 2 a b LEFT", "lmpop x a b LEFT", "blmpop 0 2 a b LEFT", "zunionstore d 2 a b", "zunionstore d x a b",
    "sintercard 2 a b", "sort k", "sort k BY w_* GET o_*", "sort k STORE dst", "sort_ro k BY x",
    "object encoding k", "memory usage k", "bitop and d a b", "lcs a b", "blpop a b 0", "ping", "get",
    "nosuch a b", "config get x", "xadd s * a b", "eval x 0", "zdiffstore d 1 a", "copy a b", "getex k",
    "setnx k v", "zinterstore d 0", "pfcount a b", "touch a", "watch a b", "exists a b",
)
BAD_REQUESTS = (
    ["nosuch"], ["nosuch", "a", "b"], ["get"], ["GET"], ["config"], ["config", "nosuch"], ["CONFIG", "GET"],
    ["object"], ["command", "nosuch"], ["command"], ["memory", "usage"], ["client", "x" * 300],
    ["x" * 300, "y" * 300],
)


class _Client:
    proto = 2


def main() -> None:
    out: list[bytes] = []

    def call(*args: str) -> None:
        argv = [a.encode() for a in args]
        for proto in (2, 3):
            try:
                reply = encode(lookup(argv).handler(_Client, argv), proto)
            except ReplyError as e:
                reply = encode_error(e.message)
            out.append(b"%r %d\n%s\n" % (argv, proto, reply))

    for sub in ((), ("COUNT",), ("INFO",), ("DOCS",), ("LIST",)):
        call("COMMAND", *sub)
    for cmd in TABLE.values():
        for c in (cmd, *cmd.subcommands.values()):
            call("COMMAND", "INFO", c.fullname)
            call("COMMAND", "DOCS", c.fullname)
    for category in ACL_CATEGORIES:
        call("COMMAND", "LIST", "FILTERBY", "ACLCAT", category)
    for sample in GETKEYS_SAMPLES:
        call("COMMAND", "GETKEYS", *sample.split())
        call("COMMAND", "GETKEYSANDFLAGS", *sample.split())
    for args in BAD_REQUESTS:
        argv = [a.encode() for a in args]
        try:
            out.append(b"%r ok %s\n" % (argv, lookup(argv).fullname.encode()))
        except ReplyError as e:
            out.append(b"%r err %s\n" % (argv, e.message))
    sys.stdout.buffer.write(b"".join(out))


if __name__ == "__main__":
    main()
