"""Stream commands (Redis 7.0's t_stream.c): XADD XLEN XRANGE XREVRANGE XDEL
XTRIM XSETID XREAD, consumer groups (XGROUP XREADGROUP XACK XPENDING XCLAIM
XAUTOCLAIM) and XINFO.

A stream is a `StreamValue`: entries in a SortedDict keyed by (ms, seq) ids
(ordered range scans in O(log n + k); appends at the tail are the common case),
plus Redis' stream metadata (last id, entries added, max deleted id) and its
consumer groups. Redis keeps entries in listpack nodes of a radix tree, and the
node boundaries are visible: approximate trimming (`~`) only removes whole
nodes. `StreamValue.nodes` models those boundaries (stream-node-max-entries and
an estimate of stream-node-max-bytes) so `~` trims like Redis; XINFO's
radix-tree-keys is the node count.

Effects (DESIGN invariant 3; the same records Redis propagates to replicas):
XADD logs the id it chose; a trim logs `XTRIM key MINID = <first kept id>` (or
MAXLEN = 0 when nothing is left), which replays exactly whatever `~`/LIMIT did;
a delivery or claim logs `XCLAIM key group consumer 0 id TIME ms RETRYCOUNT n
FORCE JUSTID LASTID id` with the delivery time and count it set, and a group
read position change logs `XGROUP SETID key group id ENTRIESREAD n`. Replay
therefore never consults the clock. Consumers' seen-times are not logged (as
Redis does not propagate them) and are not part of the compared state.
"""

from __future__ import annotations

import bisect
import re
from typing import cast

from sortedcontainers import SortedDict

from durakv.shards import notify
from durakv.shards.args import ERR_NO_SUCH_KEY, ERR_SYNTAX, ERR_WRONGTYPE, int_arg
from durakv.shards.blocking import Block
from durakv.shards.context import Ctx
from durakv.shards.keyspace import TYPE_NAMES, Keyspace
from durakv.shards.numbers import parse_ll
from durakv.shards.rdb.packed import LP_HEADER_BYTES, lp_entry
from durakv.shards.resp import NULL_ARRAY, OK, Map, ReplyError, Simple, fixed_error
from durakv.shards.t_keys import ENCODINGS
from durakv.shards.table import KeySpec, arity_error, command, container

UINT64_MAX = 2**64 - 1
StreamID = tuple[int, int]
ZERO_ID: StreamID = (0, 0)
MAX_ID: StreamID = (UINT64_MAX, UINT64_MAX)
INVALID_ENTRIES_READ = -1  # Redis' SCG_INVALID_ENTRIES_READ
STREAM_LISTPACK_MAX_SIZE = 1 << 30
XINFO_FULL_DEFAULT_COUNT = 10
XAUTOCLAIM_ATTEMPTS_FACTOR = 10

ERR_INVALID_ID = fixed_error(b"ERR Invalid stream ID specified as stream command argument")
ERR_ID_TOO_SMALL = fixed_error(b"ERR The ID specified in XADD is equal or smaller than the target stream top item")
ERR_ID_ZERO = fixed_error(b"ERR The ID specified in XADD must be greater than 0-0")
ERR_EXHAUSTED = fixed_error(b"ERR The stream has exhausted the last possible ID, unable to add more items")
ERR_START_ID = fixed_error(b"ERR invalid start ID for the interval")
ERR_END_ID = fixed_error(b"ERR invalid end ID for the interval")
ERR_TRIM_BOTH = fixed_error(b"ERR syntax error, MAXLEN and MINID options at the same time are not compatible")
ERR_MAXLEN = fixed_error(b"ERR The MAXLEN argument must be >= 0.")
ERR_LIMIT = fixed_error(b"ERR The LIMIT argument must be >= 0.")
ERR_LIMIT_NO_STRATEGY = fixed_error(b"ERR syntax error, LIMIT cannot be used without specifying a trimming strategy")
ERR_XTRIM_NO_STRATEGY = fixed_error(b"ERR syntax error, XTRIM must be called with a trimming strategy")
ERR_LIMIT_NO_APPROX = fixed_error(b"ERR syntax error, LIMIT cannot be used without the special ~ option")
ERR_TIMEOUT_NOT_INT = fixed_error(b"ERR timeout is not an integer or out of range")
ERR_TIMEOUT_NEGATIVE = fixed_error(b"ERR timeout is negative")
ERR_BUSYGROUP = fixed_error(b"BUSYGROUP Consumer Group name already exists")
ERR_ENTRIES_READ = fixed_error(b"ERR value for ENTRIESREAD must be positive or -1")
ERR_XGROUP_NO_KEY = fixed_error(
    b"ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use "
    b"the MKSTREAM option to create an empty stream automatically."
)
ERR_MISSING_GROUP = fixed_error(b"ERR Missing GROUP option for XREADGROUP")
ERR_DOLLAR_IN_GROUP = fixed_error(
    b"ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this "
    b"consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just "
    b"return an empty result set."
)
ERR_GT_IN_XREAD = fixed_error(
    b"ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option."
)
ERR_GROUP_IN_XREAD = fixed_error(b"ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead.")
ERR_NOACK_IN_XREAD = fixed_error(b"ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead.")
ERR_COUNT_POSITIVE = fixed_error(b"ERR COUNT must be > 0")
ERR_KEY_GONE = fixed_error(b"UNBLOCKED the stream key no longer exists")
ERR_GROUP_GONE = fixed_error(b"NOGROUP the consumer group this client was blocked on no longer exists")

_ID_RE = re.compile(rb"\d+\Z")


# --- the value ------------------------------------------------------------------


class Consumer:
    __slots__ = ("name", "seen_time_ms", "pel")

    def __init__(self, name: bytes, seen_time_ms: int) -> None:
        self.name = name
        self.seen_time_ms = seen_time_ms
        self.pel: SortedDict = SortedDict()  # id -> Nack, the same objects as the group's PEL


class Nack:
    """A delivered, not yet acknowledged entry (Redis' streamNACK)."""

    __slots__ = ("consumer", "delivery_time_ms", "delivery_count")

    def __init__(self, consumer: Consumer | None, delivery_time_ms: int, delivery_count: int) -> None:
        self.consumer = consumer
        self.delivery_time_ms = delivery_time_ms
        self.delivery_count = delivery_count


class Group:
    __slots__ = ("name", "last_id", "entries_read", "pel", "consumers")

    def __init__(self, name: bytes, last_id: StreamID, entries_read: int) -> None:
        self.name = name
        self.last_id = last_id
        self.entries_read = entries_read
        self.pel: SortedDict = SortedDict()  # id -> Nack
        self.consumers: dict[bytes, Consumer] = {}


class Node:
    """One of Redis' listpack nodes, as far as trimming can tell: its first (master)
    id and fields, its live and total (live + deleted) entries, its listpack size."""

    __slots__ = ("master_id", "master_fields", "live", "total", "size_bytes", "last_id")

    def __init__(self, master_id: StreamID, master_fields: tuple) -> None:
        self.master_id = master_id
        self.master_fields = master_fields
        self.live = 0
        self.total = 0
        # Header, terminator and the master entry: count, deleted, #fields, fields, 0.
        self.size_bytes = LP_HEADER_BYTES + 1 + sum(
            len(lp_entry(x)) for x in (1, 0, len(master_fields), *master_fields, 0))
        self.last_id = master_id


def _int_bytes(v: int) -> int:
    """Encoded size of a listpack integer entry (encoding, data, backlen)."""
    if 0 <= v <= 127:
        return 2
    if -4096 <= v <= 4095:
        return 3
    if -32768 <= v <= 32767:
        return 4
    if -8388608 <= v <= 8388607:
        return 5
    if -2147483648 <= v <= 2147483647:
        return 6
    return 10


def _element_bytes(x: bytes) -> int:
    """Encoded size of a listpack entry for x, as packed.lp_entry would encode it,
    computed without building it (XADD's hot path)."""
    n = len(x)
    if n <= 20 and n and x[0] in _INT_START:
        v = parse_ll(x)
        if v is not None:
            return _int_bytes(v)
    if n < 64:
        return n + 2
    size = n + 2 if n < 4096 else n + 5
    return size + (1 if size <= 127 else 2 if size < 16383 else 3 if size < 2097151 else 4 if size < 268435455 else 5)


_INT_START = frozenset(b"-0123456789")


def _entry_bytes(sid: StreamID, node: Node, fields: tuple, names: tuple) -> int:
    """The listpack bytes of one entry: flags, id deltas, [#fields, fields,] values, lp-count."""
    nfields = len(names)
    size = 2 + _int_bytes(sid[0] - node.master_id[0]) + _int_bytes(sid[1] - node.master_id[1])
    if names == node.master_fields:
        return size + sum(map(_element_bytes, fields[1::2])) + _int_bytes(nfields + 3)
    return size + _int_bytes(nfields) + sum(map(_element_bytes, fields)) + _int_bytes(2 * nfields + 4)


class StreamValue:
    __slots__ = ("entries", "last_id", "entries_added", "max_deleted_id", "groups", "nodes", "node_ids")

    def __init__(self) -> None:
        self.entries: SortedDict = SortedDict()  # (ms, seq) -> tuple of field, value, ...
        self.last_id: StreamID = ZERO_ID
        self.entries_added = 0
        self.max_deleted_id: StreamID = ZERO_ID
        self.groups: dict[bytes, Group] = {}
        self.nodes: list[Node] = []
        self.node_ids: list[StreamID] = []  # nodes' master ids, for bisect

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        """(id, field, value, ...) per entry: what MEMORY USAGE samples."""
        return ((sid, *fields) for sid, fields in self.entries.items())

    def first_id(self) -> StreamID:
        return self.entries.peekitem(0)[0] if self.entries else ZERO_ID

    def __copy__(self) -> "StreamValue":
        """COPY: a deep copy (groups, PELs and consumers included)."""
        other = StreamValue()
        other.entries = SortedDict(self.entries)
        other.last_id = self.last_id
        other.entries_added = self.entries_added
        other.max_deleted_id = self.max_deleted_id
        for name, group in self.groups.items():
            copy_group = Group(name, group.last_id, group.entries_read)
            for cname, consumer in group.consumers.items():
                copy_group.consumers[cname] = Consumer(cname, consumer.seen_time_ms)
            for sid, nack in group.pel.items():
                owner = copy_group.consumers[nack.consumer.name] if nack.consumer is not None else None
                copied = Nack(owner, nack.delivery_time_ms, nack.delivery_count)
                copy_group.pel[sid] = copied
                if owner is not None:
                    owner.pel[sid] = copied
            other.groups[name] = copy_group
        for node in self.nodes:
            twin = Node(node.master_id, node.master_fields)
            twin.live, twin.total, twin.last_id, twin.size_bytes = node.live, node.total, node.last_id, node.size_bytes
            other.nodes.append(twin)
        other.node_ids = list(self.node_ids)
        return other

    def canonical(self) -> tuple:
        groups = []
        for name in sorted(self.groups):
            group = self.groups[name]
            pel = [(sid, nack.consumer.name if nack.consumer else None, nack.delivery_time_ms,
                    nack.delivery_count) for sid, nack in group.pel.items()]
            consumers = [(cname, list(group.consumers[cname].pel)) for cname in sorted(group.consumers)]
            groups.append((name, group.last_id, group.entries_read, pel, consumers))
        return (list(self.entries.items()), self.last_id, self.entries_added, self.max_deleted_id, groups)

    # --- appending and removing, with node boundaries -------------------------

    def append(self, sid: StreamID, fields: tuple, settings) -> None:
        """Add an entry at the tail, in a new node when Redis' streamAppendItem
        would start one (the tail node's listpack size plus the new elements'
        length reaching stream-node-max-bytes, or stream-node-max-entries)."""
        node = self.nodes[-1] if self.nodes else None
        if node is not None:
            max_bytes = settings["stream-node-max-bytes"]
            if max_bytes == 0 or max_bytes > STREAM_LISTPACK_MAX_SIZE:
                max_bytes = STREAM_LISTPACK_MAX_SIZE
            max_entries = settings["stream-node-max-entries"]
            if node.size_bytes + sum(map(len, fields)) >= max_bytes or (max_entries and node.total >= max_entries):
                node = None
        names = fields[0::2]
        if node is None:
            node = Node(sid, names)
            self.nodes.append(node)
            self.node_ids.append(sid)
        node.size_bytes += _entry_bytes(sid, node, fields, names)
        node.live += 1
        node.total += 1
        node.last_id = sid
        self.entries[sid] = fields
        self.last_id = sid

    def load_node(self, master_id: StreamID, names: tuple, live: list[tuple], deleted: int,
                  size_bytes: int) -> None:
        """Append a node read from an RDB: its live (id, fields) entries in order."""
        node = Node(master_id, names)
        node.live = len(live)
        node.total = len(live) + deleted
        node.size_bytes = size_bytes
        node.last_id = live[-1][0]
        self.nodes.append(node)
        self.node_ids.append(master_id)
        for sid, fields in live:
            self.entries[sid] = fields
        self.last_id = live[-1][0]

    def _node_index(self, sid: StreamID) -> int:
        i = bisect.bisect_right(self.node_ids, sid) - 1
        assert i >= 0, "an entry precedes every node"
        return i

    def remove(self, sid: StreamID) -> None:
        """Delete one entry (XDEL, exact trims); a node left with no live entry goes."""
        del self.entries[sid]
        i = self._node_index(sid)
        node = self.nodes[i]
        node.live -= 1
        if node.live == 0:
            del self.nodes[i]
            del self.node_ids[i]

    def trim(self, maxlen: int, minid: StreamID | None, approx: bool, limit: int) -> int:
        """Redis' streamTrim: remove entries from the head, whole nodes first; with
        `approx`, only whole nodes. `minid` None means trim by `maxlen`. Returns how
        many entries went."""
        deleted = 0
        entries = self.entries
        while self.nodes:
            if minid is None and len(entries) <= maxlen:
                break
            node = self.nodes[0]
            if limit and deleted + node.live > limit:
                break
            if minid is None:
                whole = len(entries) - node.live >= maxlen
            else:
                whole = node.last_id < minid
            if whole:
                next_master = self.node_ids[1] if len(self.nodes) > 1 else None
                doomed = list(entries.irange(maximum=next_master, inclusive=(True, False)))
                for sid in doomed:
                    del entries[sid]
                deleted += len(doomed)
                del self.nodes[0]
                del self.node_ids[0]
                continue
            if approx:
                break
            while entries:
                sid = entries.peekitem(0)[0]
                if (minid is None and len(entries) <= maxlen) or (minid is not None and sid >= minid):
                    break
                self.remove(sid)
                deleted += 1
            break
        return deleted


TYPE_NAMES[StreamValue] = b"stream"
ENCODINGS[StreamValue] = lambda value: b"stream"


def get_stream(db: Keyspace, key: bytes) -> StreamValue | None:
    value = db.get(key)
    if value is None or type(value) is StreamValue:
        return value
    raise ERR_WRONGTYPE


# --- ids ------------------------------------------------------------------------


def format_id(sid: StreamID) -> bytes:
    return b"%d-%d" % sid


def _u64(text: bytes) -> int | None:
    if not _ID_RE.match(text):
        return None
    value = int(text)
    return value if value <= UINT64_MAX else None


def parse_id(text: bytes, missing_seq: int = 0, strict: bool = False) -> StreamID:
    """streamGenericParseIDOrReply: `ms-seq`, `ms` (seq = missing_seq), and unless
    strict `-`/`+`."""
    if len(text) > 127:
        raise ERR_INVALID_ID
    if text == b"-" or text == b"+":
        if strict:
            raise ERR_INVALID_ID
        return ZERO_ID if text == b"-" else MAX_ID
    ms_text, dash, seq_text = text.partition(b"-")
    ms = _u64(ms_text)
    seq = _u64(seq_text) if dash else missing_seq
    if ms is None or seq is None:
        raise ERR_INVALID_ID
    return ms, seq


def parse_interval_id(text: bytes, missing_seq: int) -> tuple[StreamID, bool]:
    """An XRANGE/XPENDING bound: (id, exclusive)."""
    if len(text) > 1 and text[:1] == b"(":
        return parse_id(text[1:], missing_seq, strict=True), True
    return parse_id(text, missing_seq), False


def parse_interval(start_arg: bytes, end_arg: bytes) -> tuple[StreamID, StreamID]:
    """XRANGE/XPENDING bounds, an exclusive `(` bound moved to the next id inward."""
    start, startex = parse_interval_id(start_arg, 0)
    if startex:
        start_in = incr_id(start)
        if start_in is None:
            raise ERR_START_ID
        start = start_in
    end, endex = parse_interval_id(end_arg, UINT64_MAX)
    if endex:
        end_in = decr_id(end)
        if end_in is None:
            raise ERR_END_ID
        end = end_in
    return start, end


def incr_id(sid: StreamID) -> StreamID | None:
    ms, seq = sid
    if seq == UINT64_MAX:
        return None if ms == UINT64_MAX else (ms + 1, 0)
    return ms, seq + 1


def decr_id(sid: StreamID) -> StreamID | None:
    ms, seq = sid
    if seq == 0:
        return None if ms == 0 else (ms - 1, UINT64_MAX)
    return ms, seq - 1


def _entry_reply(sid: StreamID, fields: tuple) -> list:
    return [format_id(sid), list(fields)]


def _range(s: StreamValue, start: StreamID, end: StreamID, count: int, rev: bool = False) -> list:
    """Entries start..end inclusive, at most count (0: all), oldest first unless rev."""
    if start > end:
        return []
    out = []
    entries = s.entries
    for sid in entries.irange(start, end, reverse=rev):
        out.append(_entry_reply(sid, entries[sid]))
        if count and len(out) >= count:
            break
    return out


# --- trimming and adding ----------------------------------------------------------


class TrimArgs:
    __slots__ = ("strategy", "maxlen", "minid", "approx", "limit", "nomkstream", "id_given", "seq_given", "id")

    def __init__(self) -> None:
        self.strategy: bytes | None = None
        self.maxlen = 0
        self.minid: StreamID = ZERO_ID
        self.approx = False
        self.limit = 0
        self.nomkstream = False
        self.id_given = False
        self.seq_given = True
        self.id: StreamID = ZERO_ID


def _parse_add_or_trim(ctx: Ctx, argv: list[bytes], xadd: bool) -> tuple[TrimArgs, int]:
    """streamParseAddOrTrimArgsOrReply: the options and, for XADD, the index of the id."""
    args = TrimArgs()
    limit_given = False
    i = 2
    argc = len(argv)
    while i < argc:
        moreargs = argc - 1 - i
        opt = argv[i]
        upper = opt.upper()
        if xadd and opt == b"*":
            break
        if upper in (b"MAXLEN", b"MINID") and moreargs:
            if args.strategy is not None:
                raise ERR_TRIM_BOTH
            args.approx = False
            nxt = argv[i + 1]
            if moreargs >= 2 and nxt == b"~":
                args.approx = True
                i += 1
            elif moreargs >= 2 and nxt == b"=":
                i += 1
            if upper == b"MAXLEN":
                args.maxlen = int_arg(argv[i + 1])
                if args.maxlen < 0:
                    raise ERR_MAXLEN
            else:
                args.minid = parse_id(argv[i + 1], strict=True)
            i += 1
            args.strategy = upper
        elif upper == b"LIMIT" and moreargs:
            args.limit = int_arg(argv[i + 1])
            if args.limit < 0:
                raise ERR_LIMIT
            limit_given = True
            i += 1
        elif xadd and upper == b"NOMKSTREAM":
            args.nomkstream = True
        elif xadd:
            ms_text, dash, seq_text = opt.partition(b"-")
            if dash and seq_text == b"*":
                ms = _u64(ms_text)
                if ms is None or len(opt) > 127:
                    raise ERR_INVALID_ID
                args.id, args.seq_given = (ms, 0), False
            else:
                args.id = parse_id(opt, strict=True)
            args.id_given = True
            break
        else:
            raise ERR_SYNTAX
        i += 1
    if args.limit and args.strategy is None:
        raise ERR_LIMIT_NO_STRATEGY
    if not xadd and args.strategy is None:
        raise ERR_XTRIM_NO_STRATEGY
    if limit_given:
        if not args.approx:
            raise ERR_LIMIT_NO_APPROX
    elif args.approx:
        args.limit = 100 * ctx.shard.settings["stream-node-max-entries"]
        if args.limit <= 0 or args.limit > 1_000_000:
            args.limit = 10_000
    else:
        args.limit = 0
    return args, i


def _trim(ctx: Ctx, key: bytes, s: StreamValue, args: TrimArgs, counted: bool = True) -> int:
    """Trim and log the resulting state change as an exact trim. Redis' dirty count:
    XTRIM adds the entries deleted, XADD's own trim nothing (its XADD counted one)."""
    minid = args.minid if args.strategy == b"MINID" else None
    deleted = s.trim(args.maxlen, minid, args.approx, args.limit)
    if deleted:
        changes = deleted if counted else 0
        if s.entries:
            ctx.db.effect([b"XTRIM", key, b"MINID", b"=", format_id(s.first_id())], key, changes=changes)
        else:
            ctx.db.effect([b"XTRIM", key, b"MAXLEN", b"=", b"0"], key, changes=changes)
        ctx.db.notify(notify.STREAM, b"xtrim", key)
    return deleted


@command("xadd", -5, "write denyoom fast", (1, 1, 1), "stream", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RW update", 1, 0, 1,
                            "UPDATE instead of INSERT because of the optional trimming feature"),))
def xadd(ctx: Ctx, argv: list[bytes]):
    args, idpos = _parse_add_or_trim(ctx, argv, True)
    nfields = len(argv) - idpos - 1
    if nfields < 2 or nfields % 2:
        raise arity_error(b"xadd")
    if args.id_given and args.seq_given and args.id == ZERO_ID:
        raise ERR_ID_ZERO
    key = argv[1]
    db = ctx.db
    s = get_stream(db, key)
    created = False
    if s is None:
        if args.nomkstream:
            return None
        s = StreamValue()
        created = True
    last = s.last_id
    if last == MAX_ID:
        raise ERR_EXHAUSTED
    if not args.id_given:
        now = db.now()
        next_id = (now, 0) if now > last[0] else incr_id(last)
        assert next_id is not None, "MAX_ID was refused above"
        sid = next_id
    elif not args.seq_given:
        ms = args.id[0]
        if ms == last[0]:
            if last[1] == UINT64_MAX:
                raise ERR_ID_TOO_SMALL
            sid = (ms, last[1] + 1)
        else:
            sid = (ms, 0)
    else:
        sid = args.id
    if sid <= last:
        raise ERR_ID_TOO_SMALL
    if created:
        db.put(key, s)
    fields = tuple(argv[idpos + 1:])
    s.append(sid, fields, ctx.shard.settings)
    s.entries_added += 1
    reply = format_id(sid)
    db.effect([b"XADD", key, reply, *fields], key)
    db.notify(notify.STREAM, b"xadd", key)
    if args.strategy is not None:
        _trim(ctx, key, s, args, counted=False)
    return reply


@command("xtrim", -4, "write", (1, 1, 1), "stream", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def xtrim(ctx: Ctx, argv: list[bytes]):
    args, _ = _parse_add_or_trim(ctx, argv, False)
    key = argv[1]
    s = get_stream(ctx.db, key)
    if s is None:
        return 0
    return _trim(ctx, key, s, args)


@command("xdel", -3, "write fast", (1, 1, 1), "stream", key_specs=(KeySpec("RW delete", 1, 0, 1),))
def xdel(ctx: Ctx, argv: list[bytes]):
    ids = [parse_id(a, strict=True) for a in argv[2:]]
    key = argv[1]
    s = get_stream(ctx.db, key)
    if s is None:
        return 0
    deleted = []
    for sid in ids:
        if sid in s.entries:
            s.remove(sid)
            if sid > s.max_deleted_id:
                s.max_deleted_id = sid
            deleted.append(format_id(sid))
    if deleted:
        ctx.db.effect([b"XDEL", key, *deleted], key)
        ctx.db.notify(notify.STREAM, b"xdel", key)
    return len(deleted)


@command("xsetid", -3, "write denyoom fast", (1, 1, 1), "stream", key_specs=(KeySpec("RW update", 1, 0, 1),))
def xsetid(ctx: Ctx, argv: list[bytes]):
    sid = parse_id(argv[2], strict=True)
    max_xdel: StreamID = ZERO_ID
    entries_added = -1
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"ENTRIESADDED" and i + 1 < len(argv):
            entries_added = int_arg(argv[i + 1])
            if entries_added < 0:
                raise ReplyError(b"ERR entries_added must be positive")
        elif opt == b"MAXDELETEDID" and i + 1 < len(argv):
            max_xdel = parse_id(argv[i + 1], strict=True)
            if sid < max_xdel:
                raise ReplyError(b"ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id")
        else:
            raise ERR_SYNTAX
        i += 2
    key = argv[1]
    s = get_stream(ctx.db, key)
    if s is None:
        raise ERR_NO_SUCH_KEY
    if s.entries:
        if sid < s.entries.peekitem(-1)[0]:
            raise ReplyError(b"ERR The ID specified in XSETID is smaller than the target stream top item")
        if entries_added != -1 and len(s) > entries_added:
            raise ReplyError(b"ERR The entries_added specified in XSETID is smaller than the target stream length")
    if sid < s.max_deleted_id:
        raise ReplyError(b"ERR The ID specified in XSETID is smaller than current max_deleted_entry_id")
    s.last_id = sid
    if entries_added != -1:
        s.entries_added = entries_added
    if max_xdel != ZERO_ID:
        s.max_deleted_id = max_xdel
    ctx.db.effect(argv, key)
    ctx.db.notify(notify.STREAM, b"xsetid", key)
    return OK


# --- reads ----------------------------------------------------------------------


@command("xlen", 2, "readonly fast", (1, 1, 1), "stream", key_specs=(KeySpec("RO", 1, 0, 1),))
def xlen(ctx: Ctx, argv: list[bytes]):
    s = get_stream(ctx.db, argv[1])
    return 0 if s is None else len(s)


def _xrange(ctx: Ctx, argv: list[bytes], rev: bool):
    start_arg, end_arg = (argv[3], argv[2]) if rev else (argv[2], argv[3])
    start, end = parse_interval(start_arg, end_arg)
    count = -1
    i = 4
    while i < len(argv):
        if argv[i].upper() == b"COUNT" and i + 1 < len(argv):
            count = max(int_arg(argv[i + 1]), 0)
            i += 2
        else:
            raise ERR_SYNTAX
    s = get_stream(ctx.db, argv[1])
    if s is None:
        return []
    if count == 0:
        return NULL_ARRAY
    return _range(s, start, end, max(count, 0), rev)


@command("xrange", -4, "readonly", (1, 1, 1), "stream")
def xrange(ctx: Ctx, argv: list[bytes]):
    return _xrange(ctx, argv, False)


@command("xrevrange", -4, "readonly", (1, 1, 1), "stream")
def xrevrange(ctx: Ctx, argv: list[bytes]):
    return _xrange(ctx, argv, True)


# --- XREAD and XREADGROUP ---------------------------------------------------------


def _xread_keys(argv: list[bytes]) -> list[int]:
    """The keys after STREAMS (the first half of what follows it); [] when the
    arguments are malformed, so the command answers with its own error."""
    i = 1
    argc = len(argv)
    while i < argc:
        opt = argv[i].upper()
        if opt == b"STREAMS":
            n = argc - i - 1
            if n == 0 or n % 2:
                return []
            return list(range(i + 1, i + 1 + n // 2))
        i += {b"BLOCK": 2, b"COUNT": 2, b"GROUP": 3}.get(opt, 1)
    return []


# Redis' key specs: the keys are the first half of what follows STREAMS (searched
# from argv[1], XREADGROUP from argv[4], past GROUP g c), as _xread_keys routes.
_XREAD_SPECS = (KeySpec("RO access", 1, -1, 1, keyword="STREAMS", limit=2),)
_XREADGROUP_SPECS = (KeySpec("RO access", 4, -1, 1, keyword="STREAMS", limit=2),)


class ReadArgs:
    __slots__ = ("block_ms", "count", "keys", "ids", "group", "consumer", "noack")

    def __init__(self) -> None:
        self.block_ms = -1
        self.count = 0
        self.keys: list[bytes] = []
        self.ids: list[bytes] = []
        self.group: bytes | None = None
        self.consumer = b""
        self.noack = False


def _parse_read(argv: list[bytes], xreadgroup: bool) -> ReadArgs:
    args = ReadArgs()
    name = b"XREADGROUP" if xreadgroup else b"XREAD"
    argc = len(argv)
    streams_arg = 0
    i = 1
    while i < argc:
        moreargs = argc - i - 1
        opt = argv[i].upper()
        if opt == b"BLOCK" and moreargs:
            i += 1
            value = int_arg(argv[i], ERR_TIMEOUT_NOT_INT)
            if value < 0:
                raise ERR_TIMEOUT_NEGATIVE
            args.block_ms = value
        elif opt == b"COUNT" and moreargs:
            i += 1
            args.count = max(int_arg(argv[i]), 0)
        elif opt == b"STREAMS" and moreargs:
            streams_arg = i + 1
            n = argc - streams_arg
            if n % 2:
                raise ReplyError(b"ERR Unbalanced %s list of streams: for each stream key an ID or '$' "
                                 b"must be specified." % name)
            args.keys = argv[streams_arg:streams_arg + n // 2]
            args.ids = argv[streams_arg + n // 2:]
            break
        elif opt == b"GROUP" and moreargs >= 2:
            if not xreadgroup:
                raise ERR_GROUP_IN_XREAD
            args.group, args.consumer = argv[i + 1], argv[i + 2]
            i += 2
        elif opt == b"NOACK":
            if not xreadgroup:
                raise ERR_NOACK_IN_XREAD
            args.noack = True
        else:
            raise ERR_SYNTAX
        i += 1
    if streams_arg == 0:
        raise ERR_SYNTAX
    if xreadgroup and args.group is None:
        raise ERR_MISSING_GROUP
    return args


def _read_reply(ctx: Ctx, served: list) -> object:
    """XREAD's reply: an array of [key, entries] (RESP3: a map), a null array if empty."""
    if not served:
        return NULL_ARRAY
    if ctx.proto == 3:
        return Map([x for pair in served for x in pair])
    return served


@command("xread", -4, "readonly blocking movablekeys", (0, 0, 0), "stream", keys_fn=_xread_keys,
         key_specs=_XREAD_SPECS)
def xread(ctx: Ctx, argv: list[bytes]):
    args = _parse_read(argv, False)
    db = ctx.db
    after: list[StreamID] = []
    streams: list[StreamValue | None] = []
    for key, id_arg in zip(args.keys, args.ids):
        s = get_stream(db, key)
        streams.append(s)
        if id_arg == b"$":
            after.append(s.last_id if s is not None else ZERO_ID)
        elif id_arg == b">":
            raise ERR_GT_IN_XREAD
        else:
            after.append(parse_id(id_arg, strict=True))
    served = []
    for key, s, gt in zip(args.keys, streams, after):
        if s is not None and s.entries and s.last_id > gt:
            start = incr_id(gt)
            entries = _range(s, start, MAX_ID, args.count) if start is not None else []
            if entries:
                served.append([key, entries])
    if served or args.block_ms < 0 or ctx.in_multi:
        return _read_reply(ctx, served)
    after_by_key = dict(zip(args.keys, after))
    count = args.count

    def serve(serve_ctx: object, key: bytes) -> object:
        ctx = cast(Ctx, serve_ctx)
        s = ctx.db.get(key)
        if type(s) is not StreamValue:
            return None
        start = incr_id(after_by_key[key])
        entries = _range(s, start, MAX_ID, count) if start is not None else []
        return _read_reply(ctx, [[key, entries]]) if entries else None

    return Block(list(dict.fromkeys(args.keys)), _deadline(db, args.block_ms), NULL_ARRAY, serve)


def _deadline(db: Keyspace, block_ms: int) -> int:
    return db.now() + block_ms if block_ms else 0


def _nogroup(key: bytes, group: bytes) -> ReplyError:
    return ReplyError(b"NOGROUP No such key '%s' or consumer group '%s'" % (key, group))


def _nogroup_for_key(key: bytes, group: bytes) -> ReplyError:
    return ReplyError(b"NOGROUP No such consumer group '%s' for key name '%s'" % (group, key))


def _lookup_consumer(ctx: Ctx, key: bytes, group: Group, name: bytes, create: bool) -> Consumer | None:
    """The named consumer, its seen-time refreshed; created (and logged) when asked."""
    consumer = group.consumers.get(name)
    now = ctx.db.now()
    if consumer is None:
        if not create:
            return None
        consumer = group.consumers[name] = Consumer(name, now)
        ctx.db.effect([b"XGROUP", b"CREATECONSUMER", key, group.name, name], key)
        ctx.db.notify(notify.STREAM, b"xgroup-createconsumer", key)
    else:
        consumer.seen_time_ms = now
    return consumer


def _log_claim(ctx: Ctx, key: bytes, group: Group, sid: StreamID, nack: Nack) -> None:
    """Redis' streamPropagateXCLAIM: the NACK's state, with its explicit time and count."""
    assert nack.consumer is not None, "a logged NACK has an owner"
    ctx.db.effect([b"XCLAIM", key, group.name, nack.consumer.name, b"0", format_id(sid),
                   b"TIME", b"%d" % nack.delivery_time_ms, b"RETRYCOUNT", b"%d" % nack.delivery_count,
                   b"FORCE", b"JUSTID", b"LASTID", format_id(group.last_id)], key)


def _log_group_position(ctx: Ctx, key: bytes, group: Group) -> None:
    ctx.db.effect([b"XGROUP", b"SETID", key, group.name, format_id(group.last_id),
                   b"ENTRIESREAD", b"%d" % group.entries_read], key)


def range_has_tombstones(s: StreamValue, start: StreamID | None) -> bool:
    """streamRangeHasTombstones for [start, +]."""
    if not s.entries or s.max_deleted_id == ZERO_ID:
        return False
    if s.first_id() > s.max_deleted_id:
        return False
    return (start or ZERO_ID) <= s.max_deleted_id


def estimate_distance(s: StreamValue, sid: StreamID) -> int:
    """streamEstimateDistanceFromFirstEverEntry: the logical read counter of sid."""
    if not s.entries_added:
        return 0
    if not s.entries and sid <= s.last_id:
        return s.entries_added
    if sid == s.last_id:
        return s.entries_added
    if sid > s.last_id:
        return INVALID_ENTRIES_READ
    first = s.first_id()
    if s.max_deleted_id == ZERO_ID or s.max_deleted_id < first:
        if sid < first:
            return s.entries_added - len(s)
        if sid == first:
            return s.entries_added - len(s) + 1
    return INVALID_ENTRIES_READ


def _deliver_new(ctx: Ctx, key: bytes, s: StreamValue, group: Group, consumer: Consumer,
                 count: int, noack: bool) -> list:
    """XREADGROUP `>`: entries after the group's last id, into the PEL unless noack."""
    start = incr_id(group.last_id)
    if start is None:
        return []
    now = ctx.db.now()
    out = []
    entries = s.entries
    for sid in entries.irange(start, None):
        if group.entries_read != INVALID_ENTRIES_READ and not range_has_tombstones(s, sid):
            group.entries_read += 1
        elif s.entries_added:
            group.entries_read = estimate_distance(s, sid)
        group.last_id = sid
        out.append(_entry_reply(sid, entries[sid]))
        if not noack:
            nack = group.pel.get(sid)
            if nack is None:
                nack = group.pel[sid] = Nack(consumer, now, 1)
            else:
                if nack.consumer is not None and nack.consumer is not consumer:
                    del nack.consumer.pel[sid]
                nack.consumer, nack.delivery_time_ms, nack.delivery_count = consumer, now, 1
            consumer.pel[sid] = nack
            _log_claim(ctx, key, group, sid, nack)
        if count and len(out) >= count:
            break
    if out:
        _log_group_position(ctx, key, group)
    return out


def _deliver_history(ctx: Ctx, key: bytes, s: StreamValue, group: Group, consumer: Consumer,
                     after: StreamID, count: int) -> list:
    """XREADGROUP with an id: the consumer's pending entries after it, redelivered.
    An entry deleted since delivery is reported as [id, nil] and its NACK is left
    as it is (Redis 7.0's streamReplyWithRangeFromConsumerPEL): only entries that
    are really redelivered get a new delivery time and count, and a logged claim."""
    start = incr_id(after)
    if start is None:
        return []
    now = ctx.db.now()
    out: list = []
    for sid in list(consumer.pel.irange(start, None)):
        nack = consumer.pel[sid]
        fields = s.entries.get(sid)
        if fields is None:
            out.append([format_id(sid), NULL_ARRAY])
        else:
            out.append(_entry_reply(sid, fields))
            nack.delivery_time_ms = now
            nack.delivery_count += 1
            _log_claim(ctx, key, group, sid, nack)
        if count and len(out) >= count:
            break
    return out


@command("xreadgroup", -7, "write blocking movablekeys", (0, 0, 0), "stream", keys_fn=_xread_keys,
         key_specs=_XREADGROUP_SPECS)
def xreadgroup(ctx: Ctx, argv: list[bytes]):
    args = _parse_read(argv, True)
    assert args.group is not None
    db = ctx.db
    targets = []
    for key, id_arg in zip(args.keys, args.ids):
        s = get_stream(db, key)
        group = s.groups.get(args.group) if s is not None else None
        if s is None or group is None:
            raise ReplyError(b"NOGROUP No such key '%s' or consumer group '%s' in XREADGROUP with GROUP option"
                             % (key, args.group))
        if id_arg == b"$":
            raise ERR_DOLLAR_IN_GROUP
        after = None if id_arg == b">" else parse_id(id_arg, strict=True)
        targets.append((key, s, group, after))
    served = []
    for key, s, group, after in targets:
        consumer = _lookup_consumer(ctx, key, group, args.consumer, True)
        assert consumer is not None
        if after is None:
            if s.last_id > group.last_id:
                entries = _deliver_new(ctx, key, s, group, consumer, args.count, args.noack)
                if entries:
                    served.append([key, entries])
        else:
            served.append([key, _deliver_history(ctx, key, s, group, consumer, after, args.count)])
    blocking_keys = [key for key, _, _, after in targets if after is None]
    if served or args.block_ms < 0 or ctx.in_multi or not blocking_keys:
        return _read_reply(ctx, served)
    group_name, consumer_name, count, noack = args.group, args.consumer, args.count, args.noack

    def serve(serve_ctx: object, key: bytes) -> object:
        ctx = cast(Ctx, serve_ctx)
        s = ctx.db.get(key)
        if type(s) is not StreamValue:
            raise ERR_KEY_GONE
        group = s.groups.get(group_name)
        if group is None:
            raise ERR_GROUP_GONE
        if s.last_id <= group.last_id:
            return None
        consumer = _lookup_consumer(ctx, key, group, consumer_name, True)
        assert consumer is not None
        entries = _deliver_new(ctx, key, s, group, consumer, count, noack)
        return _read_reply(ctx, [[key, entries]]) if entries else None

    return Block(list(dict.fromkeys(blocking_keys)), _deadline(db, args.block_ms), NULL_ARRAY, serve)


# --- XGROUP ---------------------------------------------------------------------

container("xgroup", "stream")


def _xgroup_target(ctx: Ctx, argv: list[bytes], need_group: bool, mkstream: bool = False
                   ) -> tuple[StreamValue | None, Group | None]:
    s = get_stream(ctx.db, argv[2])
    if s is None:
        if mkstream:
            return None, None
        raise ERR_XGROUP_NO_KEY
    group = s.groups.get(argv[3])
    if group is None and need_group:
        raise _nogroup_for_key(argv[2], argv[3])
    return s, group


def _subcommand_syntax(argv: list[bytes]) -> ReplyError:
    return ReplyError(b"ERR unknown subcommand or wrong number of arguments for '%s'. Try XGROUP HELP."
                      % argv[1][:128])


def _entries_read_arg(text: bytes) -> int:
    value = int_arg(text)
    if value < 0 and value != INVALID_ENTRIES_READ:
        raise ERR_ENTRIES_READ
    return value


@command("xgroup|create", -5, "write denyoom", (2, 2, 1), "stream", key_specs=(KeySpec("RW insert", 2, 0, 1),))
def xgroup_create(ctx: Ctx, argv: list[bytes]):
    mkstream = False
    entries_read = INVALID_ENTRIES_READ
    i = 5
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"MKSTREAM":
            mkstream = True
            i += 1
        elif opt == b"ENTRIESREAD" and i + 1 < len(argv):
            entries_read = _entries_read_arg(argv[i + 1])
            i += 2
        else:
            raise _subcommand_syntax(argv)
    key, name = argv[2], argv[3]
    s, group = _xgroup_target(ctx, argv, False, mkstream)
    if len(argv) > 8:
        raise _subcommand_syntax(argv)
    if argv[4] == b"$":
        sid = s.last_id if s is not None else ZERO_ID
    else:
        sid = parse_id(argv[4])
    if s is None:
        s = StreamValue()
        ctx.db.put(key, s)
    elif group is not None:
        raise ERR_BUSYGROUP
    s.groups[name] = Group(name, sid, entries_read)
    ctx.db.effect([b"XGROUP", b"CREATE", key, name, format_id(sid), b"MKSTREAM",
                   b"ENTRIESREAD", b"%d" % entries_read], key)
    ctx.db.notify(notify.STREAM, b"xgroup-create", key)
    return OK


@command("xgroup|setid", -5, "write", (2, 2, 1), "stream", key_specs=(KeySpec("RW update", 2, 0, 1),))
def xgroup_setid(ctx: Ctx, argv: list[bytes]):
    s, group = _xgroup_target(ctx, argv, True)
    assert s is not None and group is not None
    if len(argv) not in (5, 7):
        raise _subcommand_syntax(argv)
    sid = s.last_id if argv[4] == b"$" else parse_id(argv[4])
    entries_read = INVALID_ENTRIES_READ
    if len(argv) == 7:
        if argv[5].upper() != b"ENTRIESREAD":
            raise _subcommand_syntax(argv)
        entries_read = _entries_read_arg(argv[6])
    group.last_id = sid
    group.entries_read = entries_read
    _log_group_position(ctx, argv[2], group)
    ctx.db.notify(notify.STREAM, b"xgroup-setid", argv[2])
    return OK


@command("xgroup|destroy", 4, "write", (2, 2, 1), "stream", key_specs=(KeySpec("RW delete", 2, 0, 1),))
def xgroup_destroy(ctx: Ctx, argv: list[bytes]):
    s, group = _xgroup_target(ctx, argv, False)
    assert s is not None
    if group is None:
        return 0
    del s.groups[argv[3]]
    ctx.db.effect(argv, argv[2])
    ctx.db.notify(notify.STREAM, b"xgroup-destroy", argv[2])
    return 1


@command("xgroup|createconsumer", 5, "write denyoom", (2, 2, 1), "stream",
         key_specs=(KeySpec("RW insert", 2, 0, 1),))
def xgroup_createconsumer(ctx: Ctx, argv: list[bytes]):
    _, group = _xgroup_target(ctx, argv, True)
    assert group is not None
    if argv[4] in group.consumers:
        return 0
    _lookup_consumer(ctx, argv[2], group, argv[4], True)
    return 1


@command("xgroup|delconsumer", 5, "write", (2, 2, 1), "stream", key_specs=(KeySpec("RW delete", 2, 0, 1),))
def xgroup_delconsumer(ctx: Ctx, argv: list[bytes]):
    _, group = _xgroup_target(ctx, argv, True)
    assert group is not None
    consumer = group.consumers.pop(argv[4], None)
    if consumer is None:
        return 0
    for sid in consumer.pel:
        del group.pel[sid]
    ctx.db.effect(argv, argv[2])
    ctx.db.notify(notify.STREAM, b"xgroup-delconsumer", argv[2])
    return len(consumer.pel)


_XGROUP_HELP = [
    b"XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CREATE <key> <groupname> <id|$> [option]",
    b"    Create a new consumer group. Options are:",
    b"    * MKSTREAM",
    b"      Create the empty stream if it does not exist.",
    b"    * ENTRIESREAD entries_read",
    b"      Set the group's entries_read counter (internal use).",
    b"CREATECONSUMER <key> <groupname> <consumer>",
    b"    Create a new consumer in the specified group.",
    b"DELCONSUMER <key> <groupname> <consumer>",
    b"    Remove the specified consumer.",
    b"DESTROY <key> <groupname>",
    b"    Remove the specified group.",
    b"SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
    b"    Set the current group ID and entries_read counter.",
    b"HELP",
    b"    Prints this help.",
]


@command("xgroup|help", 2, "loading stale", (0, 0, 0), "stream")
def xgroup_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in _XGROUP_HELP]


# --- acknowledging, pending entries and claiming ---------------------------------


@command("xack", -4, "write fast", (1, 1, 1), "stream", key_specs=(KeySpec("RW update", 1, 0, 1),))
def xack(ctx: Ctx, argv: list[bytes]):
    ids = [parse_id(a, strict=True) for a in argv[3:]]
    key = argv[1]
    s = get_stream(ctx.db, key)
    group = s.groups.get(argv[2]) if s is not None else None
    if group is None:
        return 0
    acked = []
    for sid in ids:
        nack = group.pel.pop(sid, None)
        if nack is not None:
            if nack.consumer is not None:
                del nack.consumer.pel[sid]
            acked.append(format_id(sid))
    if acked:
        ctx.db.effect([b"XACK", key, argv[2], *acked], key)
    return len(acked)


def _group_or_nogroup(ctx: Ctx, key: bytes, name: bytes) -> tuple[StreamValue, Group]:
    s = get_stream(ctx.db, key)
    group = s.groups.get(name) if s is not None else None
    if s is None or group is None:
        raise _nogroup(key, name)
    return s, group


@command("xpending", -3, "readonly", (1, 1, 1), "stream", tips=("nondeterministic_output",))
def xpending(ctx: Ctx, argv: list[bytes]):
    argc = len(argv)
    if argc != 3 and not 6 <= argc <= 9:
        raise ERR_SYNTAX
    min_idle_ms = 0
    consumer_name = None
    if argc >= 6:
        start_index = 3
        if argv[3].upper() == b"IDLE":
            min_idle_ms = int_arg(argv[4])
            if argc < 8:
                raise ERR_SYNTAX
            start_index += 2
        count = max(int_arg(argv[start_index + 2]), 0)
        start, end = parse_interval(argv[start_index], argv[start_index + 1])
        if start_index + 3 < argc:
            consumer_name = argv[start_index + 3]
    s, group = _group_or_nogroup(ctx, argv[1], argv[2])
    if argc == 3:
        if not group.pel:
            return [0, None, None, NULL_ARRAY]
        owners = [[name, b"%d" % len(group.consumers[name].pel)]
                  for name in sorted(group.consumers) if group.consumers[name].pel]
        return [len(group.pel), format_id(group.pel.peekitem(0)[0]), format_id(group.pel.peekitem(-1)[0]), owners]
    pel = group.pel
    if consumer_name is not None:
        consumer = group.consumers.get(consumer_name)
        if consumer is None:
            return []
        pel = consumer.pel
    now = ctx.db.now()
    out: list = []
    if not count or start > end:
        return out
    for sid in pel.irange(start, end):
        nack = pel[sid]
        if min_idle_ms and now - nack.delivery_time_ms < min_idle_ms:
            continue
        out.append([format_id(sid), nack.consumer.name, max(now - nack.delivery_time_ms, 0), nack.delivery_count])
        if len(out) >= count:
            break
    return out


def _claim_reply(s: StreamValue, sid: StreamID, justid: bool) -> object:
    if justid:
        return format_id(sid)
    return _entry_reply(sid, s.entries[sid])


@command("xclaim", -6, "write fast", (1, 1, 1), "stream", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RW update", 1, 0, 1),))
def xclaim(ctx: Ctx, argv: list[bytes]):
    key, group_name = argv[1], argv[2]
    s, group = _group_or_nogroup(ctx, key, group_name)
    min_idle_ms = max(int_arg(argv[4], fixed_error(b"ERR Invalid min-idle-time argument for XCLAIM")), 0)
    ids = []
    j = 5
    while j < len(argv):
        try:
            ids.append(parse_id(argv[j], strict=True))
        except ReplyError:
            break
        j += 1
    db = ctx.db
    now = db.now()
    delivery_time_ms = -1
    retrycount = -1
    force = justid = False
    last_id: StreamID = ZERO_ID
    while j < len(argv):
        moreargs = len(argv) - 1 - j
        opt = argv[j].upper()
        if opt == b"FORCE":
            force = True
        elif opt == b"JUSTID":
            justid = True
        elif opt == b"IDLE" and moreargs:
            j += 1
            delivery_time_ms = now - int_arg(argv[j], fixed_error(b"ERR Invalid IDLE option argument for XCLAIM"))
        elif opt == b"TIME" and moreargs:
            j += 1
            delivery_time_ms = int_arg(argv[j], fixed_error(b"ERR Invalid TIME option argument for XCLAIM"))
        elif opt == b"RETRYCOUNT" and moreargs:
            j += 1
            retrycount = int_arg(argv[j], fixed_error(b"ERR Invalid RETRYCOUNT option argument for XCLAIM"))
        elif opt == b"LASTID" and moreargs:
            j += 1
            last_id = parse_id(argv[j], strict=True)
        else:
            raise ReplyError(b"ERR Unrecognized XCLAIM option '%s'" % argv[j])
        j += 1
    if delivery_time_ms != -1:
        # Redis clamps a delivery time in the future to now; a replayed record
        # carries a past time and must not read the clock.
        if delivery_time_ms < 0 or (delivery_time_ms > now and not db.replaying):
            delivery_time_ms = now
    else:
        delivery_time_ms = now
    propagate_last_id = False
    if last_id > group.last_id:
        group.last_id = last_id
        propagate_last_id = True
    consumer = None
    out = []
    for sid in ids:
        nack = group.pel.get(sid)
        if sid not in s.entries:
            if nack is not None:
                _log_claim(ctx, key, group, sid, nack)
                propagate_last_id = False
                _drop_nack(group, sid, nack)
            continue
        if force and nack is None:
            nack = group.pel[sid] = Nack(None, now, 0)
        if nack is None:
            continue
        if nack.consumer is not None and min_idle_ms and now - nack.delivery_time_ms < min_idle_ms:
            continue
        if consumer is None:
            consumer = _lookup_consumer(ctx, key, group, argv[3], True)
            assert consumer is not None
        _assign(group, sid, nack, consumer)
        nack.delivery_time_ms = delivery_time_ms
        if retrycount >= 0:
            nack.delivery_count = retrycount
        elif not justid:
            nack.delivery_count += 1
        out.append(_claim_reply(s, sid, justid))
        _log_claim(ctx, key, group, sid, nack)
        propagate_last_id = False
    if propagate_last_id:
        _log_group_position(ctx, key, group)
    return out


def _drop_nack(group: Group, sid: StreamID, nack: Nack) -> None:
    del group.pel[sid]
    if nack.consumer is not None:
        nack.consumer.pel.pop(sid, None)


def _assign(group: Group, sid: StreamID, nack: Nack, consumer: Consumer) -> None:
    if nack.consumer is not consumer:
        if nack.consumer is not None:
            del nack.consumer.pel[sid]
        consumer.pel[sid] = nack
        nack.consumer = consumer


@command("xautoclaim", -6, "write fast", (1, 1, 1), "stream", tips=("nondeterministic_output",),
         key_specs=(KeySpec("RW delete", 1, 0, 1),))
def xautoclaim(ctx: Ctx, argv: list[bytes]):
    key, group_name = argv[1], argv[2]
    s = get_stream(ctx.db, key)
    group = s.groups.get(group_name) if s is not None else None
    min_idle_ms = max(int_arg(argv[4], fixed_error(b"ERR Invalid min-idle-time argument for XAUTOCLAIM")), 0)
    start, _ = parse_interval_id(argv[5], 0)
    count = 100
    justid = False
    j = 6
    while j < len(argv):
        moreargs = len(argv) - 1 - j
        opt = argv[j].upper()
        if opt == b"COUNT" and moreargs:
            j += 1
            value = int_arg(argv[j])
            if not 1 <= value <= (2**63 - 1) // 16:
                raise ERR_COUNT_POSITIVE
            count = value
        elif opt == b"JUSTID":
            justid = True
        else:
            raise ERR_SYNTAX
        j += 1
    if s is None or group is None:
        raise _nogroup(key, group_name)
    now = ctx.db.now()
    attempts = count * XAUTOCLAIM_ATTEMPTS_FACTOR
    pending = list(group.pel.irange(start, None))
    consumer = None
    claimed: list = []
    deleted: list = []
    i = 0
    while attempts and count and i < len(pending):
        attempts -= 1
        sid = pending[i]
        i += 1
        nack = group.pel[sid]
        if sid not in s.entries:
            _log_claim(ctx, key, group, sid, nack)
            _drop_nack(group, sid, nack)
            deleted.append(format_id(sid))
            count -= 1
            continue
        if min_idle_ms and now - nack.delivery_time_ms < min_idle_ms:
            continue
        if consumer is None:
            consumer = _lookup_consumer(ctx, key, group, argv[3], True)
            assert consumer is not None
        _assign(group, sid, nack, consumer)
        nack.delivery_time_ms = now
        if not justid:
            nack.delivery_count += 1
        claimed.append(_claim_reply(s, sid, justid))
        count -= 1
        _log_claim(ctx, key, group, sid, nack)
    next_id = format_id(pending[i]) if i < len(pending) else b"0-0"
    return [next_id, claimed, deleted]


# --- XINFO ----------------------------------------------------------------------

container("xinfo", "stream")


def _stream_or_nokey(ctx: Ctx, key: bytes) -> StreamValue:
    s = get_stream(ctx.db, key)
    if s is None:
        raise ERR_NO_SUCH_KEY
    return s


def _lag(s: StreamValue, group: Group) -> int | None:
    """XINFO's lag: entries not yet delivered to the group, None when unknown."""
    if not s.entries_added:
        return 0
    if group.entries_read != INVALID_ENTRIES_READ and not range_has_tombstones(s, group.last_id):
        return s.entries_added - group.entries_read
    entries_read = estimate_distance(s, group.last_id)
    if entries_read != INVALID_ENTRIES_READ:
        return s.entries_added - entries_read
    return None


def _entries_read(group: Group) -> int | None:
    return None if group.entries_read == INVALID_ENTRIES_READ else group.entries_read


def _edge_entry(s: StreamValue, index: int) -> list | None:
    if not s.entries:
        return None
    sid, fields = s.entries.peekitem(index)
    return _entry_reply(sid, fields)


@command("xinfo|stream", -3, "readonly", (2, 2, 1), "stream")
def xinfo_stream(ctx: Ctx, argv: list[bytes]):
    full = False
    count = XINFO_FULL_DEFAULT_COUNT
    if len(argv) > 3:
        if argv[3].upper() != b"FULL" or len(argv) not in (4, 6) or (len(argv) == 6 and argv[4].upper() != b"COUNT"):
            raise ReplyError(b"ERR unknown subcommand or wrong number of arguments for '%s'. Try XINFO HELP."
                             % argv[1][:128])
        full = True
        if len(argv) == 6:
            count = int_arg(argv[5])
            if count < 0:
                count = XINFO_FULL_DEFAULT_COUNT
    s = _stream_or_nokey(ctx, argv[2])
    head = [b"length", len(s), b"radix-tree-keys", len(s.nodes), b"radix-tree-nodes", _rax_nodes(s),
            b"last-generated-id", format_id(s.last_id), b"max-deleted-entry-id", format_id(s.max_deleted_id),
            b"entries-added", s.entries_added, b"recorded-first-entry-id", format_id(s.first_id())]
    if not full:
        return Map(head + [b"groups", len(s.groups), b"first-entry", _edge_entry(s, 0),
                           b"last-entry", _edge_entry(s, -1)])
    groups = []
    for name in sorted(s.groups):
        group = s.groups[name]
        pel = [[format_id(sid), nack.consumer.name if nack.consumer else b"", nack.delivery_time_ms,
                nack.delivery_count] for sid, nack in _first(group.pel.items(), count)]
        consumers = []
        for cname in sorted(group.consumers):
            consumer = group.consumers[cname]
            cpel = [[format_id(sid), nack.delivery_time_ms, nack.delivery_count]
                    for sid, nack in _first(consumer.pel.items(), count)]
            consumers.append(Map([b"name", cname, b"seen-time", consumer.seen_time_ms,
                                  b"pel-count", len(consumer.pel), b"pending", cpel]))
        groups.append(Map([b"name", name, b"last-delivered-id", format_id(group.last_id),
                           b"entries-read", _entries_read(group), b"lag", _lag(s, group),
                           b"pel-count", len(group.pel), b"pending", pel, b"consumers", consumers]))
    entries = [_entry_reply(sid, fields) for sid, fields in _first(s.entries.items(), count)]
    return Map(head + [b"entries", entries, b"groups", groups])


def _first(items, count: int) -> list:
    out: list = []
    for item in items:
        if count and len(out) >= count:
            break
        out.append(item)
    return out


def _rax_nodes(s: StreamValue) -> int:
    """Redis reports its radix tree's internal node count, which depends on how the
    128-bit keys share prefixes; one node per key plus the root is the estimate."""
    return len(s.nodes) + 1 if s.nodes else 1


_XINFO_HELP = [
    b"XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CONSUMERS <key> <groupname>",
    b"    Show consumers of <groupname>.",
    b"GROUPS <key>",
    b"    Show the stream consumer groups.",
    b"STREAM <key> [FULL [COUNT <count>]",
    b"    Show information about the stream.",
    b"HELP",
    b"    Prints this help.",
]


@command("xinfo|help", 2, "loading stale", (0, 0, 0), "stream")
def xinfo_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in _XINFO_HELP]


@command("xinfo|groups", 3, "readonly", (2, 2, 1), "stream")
def xinfo_groups(ctx: Ctx, argv: list[bytes]):
    s = _stream_or_nokey(ctx, argv[2])
    out = []
    for name in sorted(s.groups):
        group = s.groups[name]
        out.append(Map([b"name", name, b"consumers", len(group.consumers), b"pending", len(group.pel),
                        b"last-delivered-id", format_id(group.last_id),
                        b"entries-read", _entries_read(group), b"lag", _lag(s, group)]))
    return out


@command("xinfo|consumers", 4, "readonly", (2, 2, 1), "stream", tips=("nondeterministic_output",))
def xinfo_consumers(ctx: Ctx, argv: list[bytes]):
    s = _stream_or_nokey(ctx, argv[2])
    group = s.groups.get(argv[3])
    if group is None:
        raise _nogroup_for_key(argv[2], argv[3])
    now = ctx.db.now()
    return [Map([b"name", name, b"pending", len(c.pel), b"idle", max(now - c.seen_time_ms, 0)])
            for name, c in sorted(group.consumers.items())]

