"""In-process command execution for replay tests: a keyspace and a stand-in for
the shard that owns it, with the shard's default settings."""

from __future__ import annotations

from durakv.shards.context import Ctx
from durakv.shards.engine import run_command
from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import ReplyError
from durakv.shards.shard_settings import SHARD_DEFAULTS


class StandInShard:
    def __init__(self) -> None:
        self.settings = dict(SHARD_DEFAULTS)
        self.slot_range = (0, 16383)


def new_ctx() -> Ctx:
    return Ctx(Keyspace(), StandInShard())


def call(ctx: Ctx, *args) -> object:
    """Run a command; the reply value, or the ReplyError it raised."""
    argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    try:
        return run_command(ctx, argv)
    except ReplyError as e:
        return e
