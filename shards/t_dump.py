"""DUMP and RESTORE (Redis 7.0's cluster.c): one value in the RDB object
format, with the snapshotter's listpack, intset, ziplist, LZF and CRC64 codecs.

DUMP writes what Redis 7.0 would write for the same value and encoding, except
that strings and blobs are never LZF-compressed (a valid choice Redis makes
itself for short or incompressible data), an intset always uses the narrowest
width, and a list is split into quicklist nodes as if it had been built by
RPUSH. So a durakv payload restores on Redis and a Redis payload restores here,
but the bytes may differ from Redis' DUMP of the same value.

RESTORE chooses encodings as rdbLoadObject does with the current CONFIG
thresholds. It always validates the payload fully (as sanitize-dump-payload yes
would), and IDLETIME/FREQ are checked but have nothing to set: durakv keeps no
LRU/LFU data. Streams and module values cannot be restored until durakv has
those types.

Effect: a restored key logs `RESTORE key <absolute ms or 0> payload REPLACE
ABSTTL`, which replays to the same value; a RESTORE whose TTL has already
passed logs only the DEL of the key it replaced.
"""

from __future__ import annotations

import struct
from typing import Callable

from durakv.shards.args import ERR_SYNTAX, int_arg
from durakv.shards.context import Ctx
from durakv.shards.resp import OK, ReplyError
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.t_set import RSet, is_int
from durakv.shards.numbers import strtod
from durakv.shards.t_zset import LLONG_HALF_D, ZSet
from durakv.shards.table import command
from durakv.snapshotter.crc64 import crc64
from durakv.snapshotter.lzf import LzfError, lzf_decompress
from durakv.snapshotter.packed import (
    PackedError, intset_decode, intset_encode, lp_decode, lp_entry, lp_from_entries, ziplist_decode,
)
from durakv.snapshotter.rdb import (
    ENC_INT8, ENC_INT16, ENC_INT32, ENC_LZF, QUICKLIST_PACKED, QUICKLIST_PLAIN, RDB_VERSION, TYPE_HASH,
    TYPE_HASH_LISTPACK, TYPE_HASH_ZIPLIST, TYPE_LIST, TYPE_LIST_QUICKLIST, TYPE_LIST_QUICKLIST_2,
    TYPE_LIST_ZIPLIST, TYPE_SET, TYPE_SET_INTSET, TYPE_STRING, TYPE_ZSET, TYPE_ZSET_2, TYPE_ZSET_LISTPACK,
    TYPE_ZSET_ZIPLIST, encode_len, encode_string,
)

QUICKLIST_SIZE_LEVELS = (4096, 8192, 16384, 32768, 65536)  # list-max-listpack-size -1 .. -5
QUICKLIST_SAFETY_BYTES = 8192
QUICKLIST_ENTRY_OVERHEAD = 8  # Redis' overestimate of one entry's listpack overhead
EMPTY_LISTPACK_BYTES = 7
INTSET_MAX_LOAD = 1 << 30
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len
FOOTER_BYTES = 10  # RDB version (2) and CRC64 (8), both little-endian

ERR_BAD_FORMAT = ReplyError(b"ERR Bad data format")
ERR_PAYLOAD = ReplyError(b"ERR DUMP payload version or checksum are wrong")
ERR_BUSYKEY = ReplyError(b"BUSYKEY Target key name already exists.")
ERR_TTL = ReplyError(b"ERR Invalid TTL value, must be >= 0")
ERR_IDLETIME = ReplyError(b"ERR Invalid IDLETIME value, must be >= 0")
ERR_FREQ = ReplyError(b"ERR Invalid FREQ value, must be >= 0 and <= 255")


class RdbError(Exception):
    """The payload is not a valid RDB object."""


# --- DUMP -------------------------------------------------------------------------


def _blob(data: bytes) -> bytes:
    return encode_len(len(data)) + data


def _score_entry(score: float) -> bytes:
    """zzlInsertAt in 7.0.15: integral scores in double2ll's range (+-LLONG_MAX/2)
    as listpack integers, others as d2string text."""
    if -LLONG_HALF_D <= score <= LLONG_HALF_D and score == int(score):
        return lp_entry(int(score))
    if score in (float("inf"), float("-inf")):
        return lp_entry(b"inf" if score > 0 else b"-inf")
    return lp_entry(b"%.17g" % score)


def _quicklist_nodes(items: ListValue, fill: int) -> list[list[bytes]]:
    """Split as _quicklistNodeAllowInsert does while RPUSHing the items, for the
    configured list-max-listpack-size (Redis clamps it at -5)."""
    fill = max(fill, -5)
    nodes: list[list[bytes]] = []
    node_bytes = 0
    for item in items:
        entry = lp_entry(bytes(item))
        if nodes:
            new_size = node_bytes + len(item) + QUICKLIST_ENTRY_OVERHEAD
            if fill < 0:
                fits = new_size <= QUICKLIST_SIZE_LEVELS[-fill - 1]
            else:
                fits = new_size <= QUICKLIST_SAFETY_BYTES and len(nodes[-1]) < fill
            if fits:
                nodes[-1].append(entry)
                node_bytes += len(entry)
                continue
        nodes.append([entry])
        node_bytes = EMPTY_LISTPACK_BYTES + len(entry)
    return nodes


def dump_value(value: object, list_fill: int) -> bytes:
    """The RDB type byte and object body of a stored value. The snapshot writer
    (snapshotter/rdb.py) encodes whole files; this follows Redis 7.0.15 more
    closely where DUMP bytes are compared: node splits by the configured list
    fill and double2ll's range for integer scores."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return bytes((TYPE_STRING,)) + encode_string(bytes(value))
    if kind is ListValue:
        nodes = _quicklist_nodes(value, list_fill)
        parts = [bytes((TYPE_LIST_QUICKLIST_2,)), encode_len(len(nodes))]
        for node in nodes:
            parts += [encode_len(QUICKLIST_PACKED), _blob(lp_from_entries(node))]
        return b"".join(parts)
    if kind is RSet:
        if value.intset:
            return bytes((TYPE_SET_INTSET,)) + _blob(intset_encode([int(m) for m in value]))
        return bytes((TYPE_SET,)) + encode_len(len(value)) + b"".join(encode_string(m) for m in value)
    if kind is HashValue:
        if not value.table:
            entries = [e for f, v in value.items() for e in (lp_entry(f), lp_entry(v))]
            return bytes((TYPE_HASH_LISTPACK,)) + _blob(lp_from_entries(entries))
        pairs = b"".join(encode_string(f) + encode_string(v) for f, v in value.items())
        return bytes((TYPE_HASH,)) + encode_len(len(value)) + pairs
    if kind is ZSet:
        if value.listpack:
            entries = [e for s, m in value.order for e in (lp_entry(m), _score_entry(s))]
            return bytes((TYPE_ZSET_LISTPACK,)) + _blob(lp_from_entries(entries))
        body = b"".join(encode_string(m) + struct.pack("<d", s) for s, m in reversed(value.order))
        return bytes((TYPE_ZSET_2,)) + encode_len(len(value)) + body
    raise ReplyError(b"ERR DUMP is not supported for this type")


def dump_payload(value: object, list_fill: int) -> bytes:
    """createDumpPayload: the object, the RDB version and a CRC64 of both."""
    body = dump_value(value, list_fill) + struct.pack("<H", RDB_VERSION)
    return body + struct.pack("<Q", crc64(body))


@command("dump", 2, "readonly", (1, 1, 1), "keyspace", tips=("nondeterministic_output",))
def dump(ctx: Ctx, argv: list[bytes]):
    value = ctx.db.get(argv[1])
    if value is None:
        return None
    return dump_payload(value, ctx.shard.settings["list-max-listpack-size"])


# --- RESTORE: reading -------------------------------------------------------------


def verify_payload(payload: bytes) -> None:
    """verifyDumpPayload: RdbError unless the version and CRC64 footer are good."""
    if len(payload) < FOOTER_BYTES:
        raise RdbError("short payload")
    version, crc = struct.unpack("<HQ", payload[-FOOTER_BYTES:])
    if version > RDB_VERSION or crc != crc64(payload[:-8]):
        raise RdbError("version or checksum")


class Reader:
    """Sequential, bounds-checked reads of rdbLoad's primitives."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RdbError("truncated payload")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> tuple[int, bool]:
        """(value, is_encoded) as rdbLoadLenByRef."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return (first & 0x3F) << 8 | self.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return int.from_bytes(self.take(4), "big"), False
        if first == 0x81:
            return int.from_bytes(self.take(8), "big"), False
        raise RdbError("unknown length encoding")

    def count(self) -> int:
        value, encoded = self.length()
        if encoded:
            raise RdbError("encoded value where a length was expected")
        return value

    def string(self) -> bytes:
        value, encoded = self.length()
        if not encoded:
            return self.take(value)
        if value in (ENC_INT8, ENC_INT16, ENC_INT32):
            return b"%d" % int.from_bytes(self.take(1 << value), "little", signed=True)
        if value == ENC_LZF:
            compressed = self.count()
            size = self.count()
            if size > MAX_DECOMPRESSED_BYTES:
                raise RdbError("lzf string too large")
            return lzf_decompress(self.take(compressed), size)
        raise RdbError("unknown string encoding")

    def binary_double(self) -> float:
        return struct.unpack("<d", self.take(8))[0]

    def text_double(self) -> float:
        """rdbLoadDoubleValue: a length byte (253 nan, 254 inf, 255 -inf) and text."""
        n = self.byte()
        if n >= 253:
            return (float("nan"), float("inf"), float("-inf"))[n - 253]
        return strtod(self.take(n))[0]


# --- RESTORE: building values -----------------------------------------------------


def _no_duplicates(items: list[bytes]) -> None:
    if len(set(items)) != len(items):
        raise RdbError("duplicate members")


def _pairs(items: list[bytes]) -> list[tuple[bytes, bytes]]:
    if len(items) % 2:
        raise RdbError("odd number of entries")
    pairs = list(zip(items[::2], items[1::2]))
    _no_duplicates([f for f, _ in pairs])
    return pairs


def _nonempty(count: int) -> int:
    if count == 0:
        raise RdbError("empty key")
    return count


def _load_list(reader: Reader, rdbtype: int, settings: dict) -> ListValue:
    if rdbtype == TYPE_LIST:
        return ListValue(reader.string() for _ in range(_nonempty(reader.count())))
    if rdbtype == TYPE_LIST_ZIPLIST:
        return ListValue(ziplist_decode(reader.string()))
    items = ListValue()
    for _ in range(_nonempty(reader.count())):
        container = reader.count() if rdbtype == TYPE_LIST_QUICKLIST_2 else QUICKLIST_PACKED
        if container not in (QUICKLIST_PACKED, QUICKLIST_PLAIN):
            raise RdbError("bad quicklist container")
        data = reader.string()
        if not data:
            raise RdbError("empty quicklist node")
        if container == QUICKLIST_PLAIN:
            items.append(data)
        elif rdbtype == TYPE_LIST_QUICKLIST_2:
            items.extend(lp_decode(data))
        else:
            items.extend(ziplist_decode(data))
    return items


def _load_set(reader: Reader, rdbtype: int, settings: dict) -> RSet:
    if rdbtype == TYPE_SET_INTSET:
        members = intset_decode(reader.string())
        return RSet(members, intset=len(members) <= settings["set-max-intset-entries"])
    members = [reader.string() for _ in range(_nonempty(reader.count()))]
    _no_duplicates(members)
    fits = len(members) <= min(settings["set-max-intset-entries"], INTSET_MAX_LOAD)
    return RSet(members, intset=fits and all(is_int(m) for m in members))


def _load_hash(reader: Reader, rdbtype: int, settings: dict) -> HashValue:
    max_entries, max_value = settings["hash-max-listpack-entries"], settings["hash-max-listpack-value"]
    h = HashValue()
    if rdbtype == TYPE_HASH:
        count = _nonempty(reader.count())
        pairs = _pairs([reader.string() for _ in range(2 * count)])
        h.table = count > max_entries or any(len(f) > max_value or len(v) > max_value for f, v in pairs)
    else:
        blob = reader.string()
        pairs = _pairs(lp_decode(blob) if rdbtype == TYPE_HASH_LISTPACK else ziplist_decode(blob))
        h.table = _nonempty(len(pairs)) > max_entries
    h.update(pairs)
    return h


def _parse_listpack_score(text: bytes) -> float:
    """zzlStrtod: strtod of the entry's text, trailing bytes ignored."""
    score, _ = strtod(text)
    if score != score:
        raise RdbError("zset NaN score")
    return score


def _load_zset(reader: Reader, rdbtype: int, settings: dict) -> ZSet:
    max_entries, max_value = settings["zset-max-listpack-entries"], settings["zset-max-listpack-value"]
    if rdbtype in (TYPE_ZSET, TYPE_ZSET_2):
        read_score = reader.binary_double if rdbtype == TYPE_ZSET_2 else reader.text_double
        scores: dict[bytes, float] = {}
        for _ in range(_nonempty(reader.count())):
            member = reader.string()
            score = read_score()
            if score != score:
                raise RdbError("zset NaN score")
            if member in scores:
                raise RdbError("duplicate zset member")
            scores[member] = score
        fits = len(scores) <= max_entries and all(len(m) <= max_value for m in scores)
        return ZSet.from_scores(scores, fits)
    blob = reader.string()
    pairs = _pairs(lp_decode(blob) if rdbtype == TYPE_ZSET_LISTPACK else ziplist_decode(blob))
    scores = {m: _parse_listpack_score(s) for m, s in pairs}
    return ZSet.from_scores(scores, _nonempty(len(scores)) <= max_entries)


_LOADERS: dict[int, Callable[[Reader, int, dict], object]] = {
    TYPE_STRING: lambda reader, _type, _settings: reader.string(),
    TYPE_LIST: _load_list, TYPE_LIST_ZIPLIST: _load_list, TYPE_LIST_QUICKLIST: _load_list,
    TYPE_LIST_QUICKLIST_2: _load_list,
    TYPE_SET: _load_set, TYPE_SET_INTSET: _load_set,
    TYPE_HASH: _load_hash, TYPE_HASH_ZIPLIST: _load_hash, TYPE_HASH_LISTPACK: _load_hash,
    TYPE_ZSET: _load_zset, TYPE_ZSET_2: _load_zset, TYPE_ZSET_ZIPLIST: _load_zset, TYPE_ZSET_LISTPACK: _load_zset,
}


def load_value(payload: bytes, settings: dict) -> object:
    """rdbLoadObjectType + rdbLoadObject; RdbError for anything malformed. Like
    Redis, the reader runs over the whole payload, footer included: a length
    that runs into the footer reads it, and trailing bytes are ignored."""
    reader = Reader(payload)
    loader = _LOADERS.get(reader.byte())
    if loader is None:
        raise RdbError("unsupported object type")
    try:
        value = loader(reader, payload[0], settings)
    except (LzfError, PackedError, struct.error, IndexError, ValueError) as e:
        raise RdbError(str(e)) from None
    if type(value) is not bytes and len(value) == 0:
        raise RdbError("empty key")
    return value


# --- RESTORE ----------------------------------------------------------------------


def _restore_options(argv: list[bytes]) -> tuple[bool, bool]:
    """(replace, absttl), checking IDLETIME/FREQ as Redis does."""
    replace = absttl = False
    idle = freq = False
    i = 4
    while i < len(argv):
        opt = argv[i].lower()
        more = len(argv) - i - 1
        if opt == b"replace":
            replace = True
        elif opt == b"absttl":
            absttl = True
        elif opt == b"idletime" and more >= 1 and not freq:
            if int_arg(argv[i + 1]) < 0:
                raise ERR_IDLETIME
            idle = True
            i += 1
        elif opt == b"freq" and more >= 1 and not idle:
            if not 0 <= int_arg(argv[i + 1]) <= 255:
                raise ERR_FREQ
            freq = True
            i += 1
        else:
            raise ERR_SYNTAX
        i += 1
    return replace, absttl


@command("restore", -4, "write denyoom", (1, 1, 1), "keyspace")
def restore(ctx: Ctx, argv: list[bytes]):
    key = argv[1]
    replace, absttl = _restore_options(argv)
    db = ctx.db
    if not replace and db.get(key) is not None:
        raise ERR_BUSYKEY
    ttl = int_arg(argv[2])
    if ttl < 0:
        raise ERR_TTL
    try:
        verify_payload(argv[3])
    except RdbError:
        raise ERR_PAYLOAD from None
    try:
        value = load_value(argv[3], ctx.shard.settings)
    except RdbError:
        raise ERR_BAD_FORMAT from None
    existed = replace and db.get(key) is not None
    if ttl and not absttl:
        ttl += db.now()
    if ttl and ttl <= db.now() and not db.replaying:
        if existed:
            db.delete(key)
            db.effect([b"DEL", key], key)
        return OK
    if existed:
        db.delete(key)
    db.put(key, value)
    if ttl:
        db.set_expire(key, ttl)
    db.effect([b"RESTORE", key, b"%d" % ttl, argv[3], b"REPLACE", b"ABSTTL"], key)
    return OK
