"""Command execution shared by serving and replay (one code path, DESIGN
invariant 3), and a canonical dump of a keyspace for comparing states."""

from __future__ import annotations

from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace, type_name
from durakv.shards.resp import ReplyError
from durakv.shards.table import TABLE


def run_command(ctx: Ctx, argv: list[bytes]) -> object:
    """Execute one command against ctx's keyspace; returns the reply value or
    raises ReplyError. Arity and subcommand checks are the router's job; this
    repeats the cheap ones so replay and tests can call it directly."""
    name = argv[0]
    cmd = TABLE.get(name) or TABLE.get(name.lower())
    if cmd is None or (cmd.handler is None and not cmd.subcommands):
        raise ReplyError(b"ERR unknown command '%s'" % name[:128])
    if cmd.subcommands:
        cmd = cmd.subcommands.get(argv[1].lower()) if len(argv) > 1 else None
        if cmd is None:
            raise ReplyError(b"ERR unknown subcommand")
    if not cmd.arity_ok(len(argv)):
        raise ReplyError(b"ERR wrong number of arguments for '%s' command" % cmd.fullname.encode())
    return cmd.handler(ctx, argv)


def replay(ctx: Ctx, effects: list[list[bytes]]) -> None:
    """Apply logged effects: no clock, no randomness, no lazy expiry."""
    db = ctx.db
    db.replaying = True
    db.lazy_expire_disabled = True
    try:
        for argv in effects:
            run_command(ctx, argv)
    finally:
        db.replaying = False
        db.lazy_expire_disabled = False


def canonical_value(value: object) -> object:
    """A comparable, order-independent rendering of a stored value."""
    dump = getattr(value, "canonical", None)
    if dump is not None:
        return dump()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        return sorted((bytes(k), canonical_value(v)) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return sorted(bytes(m) for m in value)
    return [canonical_value(v) if not isinstance(v, (bytes, bytearray)) else bytes(v) for v in value]


def state_of(db: Keyspace) -> dict[bytes, tuple]:
    """Every key with its type, canonical value and absolute expiry."""
    return {
        key: (type_name(value), canonical_value(value), db.expires.get(key))
        for key, value in db.data.items()
    }
