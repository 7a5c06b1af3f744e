"""DUMP and RESTORE (Redis 7.0's cluster.c): one value in the RDB object
format, through the one RDB codec (shards/rdb/codec.py) that snapshots,
import-rdb and export-rdb use too.

DUMP writes what Redis 7.0 would write for the same value and encoding, except
that strings and blobs are never LZF-compressed (a valid choice Redis makes
itself for short or incompressible data), an intset always uses the narrowest
width, and a list is split into quicklist nodes as if it had been built by
RPUSH with the current list-max-listpack-size. So a durakv payload restores on
Redis and a Redis payload restores here, but the bytes may differ from Redis'
DUMP of the same value.

RESTORE chooses encodings as rdbLoadObject does with the current CONFIG
thresholds. It always validates the payload fully (as sanitize-dump-payload yes
would); IDLETIME/FREQ set the key's access stamp (shards/access.py) as Redis'
objectSetLRUOrLFU does, and are not logged (replay does not track access). Streams
are read in all three of Redis' stream encodings and
written as Redis 7.0's; module values cannot be restored (durakv has none).

Effect: a restored key logs `RESTORE key <absolute ms or 0> payload REPLACE
ABSTTL`, which replays to the same value; a RESTORE whose TTL has already
passed logs only the DEL of the key it replaced.
"""

from __future__ import annotations

from durakv.shards import notify
from durakv.shards.args import ERR_SYNTAX, int_arg
from durakv.shards.access import LRU_CLOCK_MAX
from durakv.shards.context import Ctx
from durakv.shards.keyspace import Keyspace
from durakv.shards.rdb.codec import RdbError, dump_payload, load_payload, verify_payload
from durakv.shards.resp import OK, ReplyError, fixed_error
from durakv.shards.table import KeySpec, command

MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len

ERR_BAD_FORMAT = fixed_error(b"ERR Bad data format")
ERR_PAYLOAD = fixed_error(b"ERR DUMP payload version or checksum are wrong")
ERR_BUSYKEY = fixed_error(b"BUSYKEY Target key name already exists.")
ERR_TTL = fixed_error(b"ERR Invalid TTL value, must be >= 0")
ERR_IDLETIME = fixed_error(b"ERR Invalid IDLETIME value, must be >= 0")
ERR_FREQ = fixed_error(b"ERR Invalid FREQ value, must be >= 0 and <= 255")


@command("dump", 2, "readonly", (1, 1, 1), "keyspace", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RO access", 1, 0, 1),))
def dump(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.get(argv[1])
    if value is None:
        return None
    try:
        return dump_payload(value, ctx.shard.settings["list-max-listpack-size"])
    except RdbError:
        raise ReplyError(b"ERR DUMP is not supported for this type") from None


# --- RESTORE ----------------------------------------------------------------------


def _restore_options(argv: list[bytes]) -> tuple[bool, bool, int, int]:
    """(replace, absttl, idle seconds, freq; -1 when not given), checking IDLETIME/FREQ as Redis does."""
    replace = absttl = False
    idle = freq = -1
    i = 4
    while i < len(argv):
        opt = argv[i].lower()
        more = len(argv) - i - 1
        if opt == b"replace":
            replace = True
        elif opt == b"absttl":
            absttl = True
        elif opt == b"idletime" and more >= 1 and freq < 0:
            idle = int_arg(argv[i + 1])
            if idle < 0:
                raise ERR_IDLETIME
            i += 1
        elif opt == b"freq" and more >= 1 and idle < 0:
            freq = int_arg(argv[i + 1])
            if not 0 <= freq <= 255:
                raise ERR_FREQ
            i += 1
        else:
            raise ERR_SYNTAX
        i += 1
    return replace, absttl, idle, freq


def _set_access(db: Keyspace, key: bytes, idle_s: int, freq: int) -> None:
    """objectSetLRUOrLFU: FREQ under an LFU policy, IDLETIME under any other."""
    if db.replaying:
        return
    if db.lfu is not None:
        if freq >= 0:
            db.set_stamp(key, db.lfu.stamps[freq])
    elif idle_s >= 0:
        db.set_stamp(key, (db.access_stamp - idle_s) % (LRU_CLOCK_MAX + 1))


@command("restore", -4, "write denyoom", (1, 1, 1), "keyspace",
         key_specs=(KeySpec("OW update", 1, 0, 1),), acl="keyspace dangerous")
def restore(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    replace, absttl, idle_s, freq = _restore_options(argv)
    db = ctx.db
    if not replace and db.get(key) is not None:
        raise ERR_BUSYKEY
    ttl = int_arg(argv[2])
    if ttl < 0:
        raise ERR_TTL
    try:
        version = verify_payload(argv[3])
    except RdbError:
        raise ERR_PAYLOAD from None
    try:
        value = load_payload(argv[3], version, ctx.shard.settings, MAX_DECOMPRESSED_BYTES)
    except RdbError:
        raise ERR_BAD_FORMAT from None
    existed = replace and db.get(key) is not None
    if ttl and not absttl:
        ttl += db.now()
    if ttl and ttl <= db.now() and not db.replaying:
        if existed:
            db.delete(key)
            db.effect([b"DEL", key], key)
            db.notify(notify.GENERIC, b"del", key)
        return OK
    if existed:
        db.delete(key)
    db.put(key, value)
    _set_access(db, key, idle_s, freq)
    if ttl:
        db.set_expire(key, ttl)
    db.effect([b"RESTORE", key, b"%d" % ttl, argv[3], b"REPLACE", b"ABSTTL"], key)
    db.notify(notify.GENERIC, b"restore", key)
    return OK
