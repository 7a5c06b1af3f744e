"""In-process command execution for replay tests: a keyspace and a stand-in for
the shard that owns it, with the shard's default settings, and the one
replay-equals-live check every type's property test makes (DESIGN invariant 3)."""

from __future__ import annotations

from durakv.shards.context import Ctx
from durakv.shards.engine import replay, run_command, state_of
from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import ReplyError
from durakv.shards.shard_settings import SHARD_DEFAULTS


class StandInShard:
    def __init__(self, settings: dict | None = None) -> None:
        self.settings = dict(SHARD_DEFAULTS)
        self.settings.update(settings or {})
        self.slot_range = (0, 16383)


def new_ctx(settings: dict | None = None) -> Ctx:
    """A fresh keyspace; settings override the shard defaults (e.g. encoding limits)."""
    return Ctx(Keyspace(), StandInShard(settings))


def call(ctx: Ctx, *args) -> object:
    """Run a command; the reply value, or the ReplyError it raised."""
    argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    try:
        return run_command(ctx, argv)
    except ReplyError as e:
        return e


def assert_replay_equals_live(live: Ctx, replayed: Ctx | None = None) -> Ctx:
    """Replay the effects live logged into `replayed` (default: a fresh keyspace with
    live's settings) and check that both hold the same state. Returns the replica."""
    if replayed is None:
        replayed = new_ctx(live.shard.settings)
    replay(replayed, live.db.effects)
    assert state_of(replayed.db) == state_of(live.db)
    return replayed


def run_and_replay(commands, settings: dict | None = None, replay_settings: dict | None = None) -> tuple[Ctx, Ctx]:
    """Run commands (tuples of arguments) on a fresh keyspace, then
    assert_replay_equals_live on a second one (replay_settings: other limits for
    the replica, to show replay does not depend on them). Returns (live, replayed)."""
    live = new_ctx(settings)
    for command in commands:
        call(live, *command)
    replayed = new_ctx(settings if replay_settings is None else replay_settings)
    return live, assert_replay_equals_live(live, replayed)
