"""Command execution shared by serving and replay (one code path, DESIGN
invariant 3), and a canonical dump of a keyspace for comparing states."""

from __future__ import annotations

from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace, type_name
from durakv.shards.table import lookup


def run_command(ctx: Ctx, argv: list[bytes]) -> object:
    """Execute one command against ctx's keyspace; returns the reply value or
    raises ReplyError (Redis' texts for an unknown command or subcommand or a
    wrong arity, from the table's one resolver), so replay and tests can call it
    directly."""
    return lookup(argv).handler(ctx, argv)


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
