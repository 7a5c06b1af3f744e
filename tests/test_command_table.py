"""The command table is the one place that resolves a command: the router's
dispatch, the shard's own execution and replay all answer an unknown command,
an unknown subcommand or a wrong arity with Redis' texts, from table.lookup."""

from __future__ import annotations

import pytest

import durakv.server.commands  # noqa: F401  (registers the router's commands)
import durakv.shards.commands  # noqa: F401  (registers the shard's commands)
from durakv.shards.config import Config
from durakv.shards.engine import run_command
from durakv.shards.resp import ReplyError
from durakv.shards.shard import Shard
from durakv.shards.table import TABLE, lookup
from engine_util import new_ctx

# (argv, Redis 7.0's error text)
BAD = [
    ([b"nosuch"], b"ERR unknown command 'nosuch', with args beginning with: "),
    ([b"nosuch", b"a", b"b"], b"ERR unknown command 'nosuch', with args beginning with: 'a' 'b' "),
    ([b"object", b"nosuch", b"k"], b"ERR unknown subcommand 'nosuch'. Try OBJECT HELP."),
    ([b"OBJECT"], b"ERR wrong number of arguments for 'object' command"),
    ([b"Object", b"Encoding"], b"ERR wrong number of arguments for 'object|encoding' command"),
    ([b"GET"], b"ERR wrong number of arguments for 'get' command"),
    ([b"set", b"k"], b"ERR wrong number of arguments for 'set' command"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_lookup_replay_and_shard_answer_redis_texts(argv, message, tmp_path):
    with pytest.raises(ReplyError) as routed:
        lookup(argv)
    assert routed.value.message == message
    with pytest.raises(ReplyError) as replayed:
        run_command(new_ctx(), argv)
    assert replayed.value.message == message
    shard = Shard(Config(data_dir=str(tmp_path), shards=1), 0)
    data, wait = shard._execute(argv, 1, 2, 1, True)
    assert (data, wait) == (b"-" + message + b"\r\n", 0)


@pytest.mark.parametrize("name", [b"get", b"GET", b"Get", b"gEt"])
def test_lookup_finds_every_spelling(name):
    assert lookup([name, b"k"]) is TABLE[b"get"]
    assert lookup([b"CONFIG", name.replace(b"t", b"T"), b"x"]).fullname == "config|get"


def test_declared_facts_reach_the_command():
    """Facts once spread over the router and the shard are read off the command."""
    assert TABLE[b"dbsize"].merge([2, 3], 2) == b":5\r\n"
    # each shard sends its KEYS array encoded; the router concatenates them
    assert TABLE[b"keys"].merge([b"*1\r\n$1\r\na\r\n", b"*1\r\n$1\r\nb\r\n"], 2) == b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    assert TABLE[b"sort"].reads_undeclared_keys([b"SORT", b"k", b"BY", b"w_*"])
    assert not TABLE[b"sort"].reads_undeclared_keys([b"SORT", b"k"])
    assert TABLE[b"exec"].runs_in_multi and not TABLE[b"get"].runs_in_multi
    assert TABLE[b"info"].refused_in_multi and not TABLE[b"ping"].refused_in_multi
    assert TABLE[b"get"].single_key and not TABLE[b"mget"].single_key and not TABLE[b"sort"].single_key
    assert TABLE[b"scan"].waits_for_all and TABLE[b"keys"].waits_for_all and not TABLE[b"get"].waits_for_all
    assert TABLE[b"set"].key_flags_fn([b"SET", b"k", b"v", b"GET"]) == "RW access update"
    assert TABLE[b"sort"].acl_categories == ("write", "set", "sortedset", "list", "slow", "dangerous")
