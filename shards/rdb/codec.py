"""The RDB object codec: durakv values <-> Redis 7.0's RDB object bytes.

Sans-IO: encoding returns bytes, decoding reads from a Source (anything with
`take(n) -> bytes` and `byte() -> int`: BytesSource over a DUMP payload here,
or file.FileSource over a streamed file). Nothing here opens files or sockets.
DUMP/RESTORE (shards/t_dump.py), snapshots, restore, import-rdb and export-rdb
all encode and decode values through these functions, so the same bytes load
to the same value and encoding whichever way they arrive.

Writing follows what Redis 7.0.15 writes for the same value and encoding:
lists as quicklist 2, split into nodes as RPUSH would split them for the given
list-max-listpack-size (elements of 1 GiB or more in plain nodes); hashes as
listpack or hashtable, sets as intset or hashtable, sorted sets as listpack
(integral scores within double2ll's +-LLONG_MAX/2 as listpack integers, others
as %.17g text) or skiplist (ZSET_2, binary doubles). Strings are raw or
integer-encoded as rdbSaveRawString does; durakv never LZF-compresses (a valid
choice Redis makes itself for short or incompressible data).

Reading follows rdbLoadObject with deep sanitization (sanitize-dump-payload
yes): the encoding of the loaded value is chosen by the given settings (the
CONFIG thresholds), as Redis re-chooses it at load; duplicate members and NaN
scores are refused; text scores are parsed with strtod; an empty collection
raises EmptyKey (RESTORE refuses it, a file load skips the key, as Redis'
rdbLoad does). Types that only RDB 11 (Redis 7.2) knows (set listpack, stream
listpacks 3) are read only from an RDB 11 container. Streams are written as
stream listpacks 2 (Redis 7.0) and read in all three stream encodings; module
values are parsed past and returned as Unsupported: durakv has no such type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from durakv.shards.args import parse_ll
from durakv.shards.rdb.crc64 import crc64
from durakv.shards.rdb.lzf import LzfError, lzf_decompress
from durakv.shards.rdb.packed import (
    PackedError, intset_decode, intset_encode, lp_decode, lp_entry, lp_from_entries, ziplist_decode,
)
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.t_set import INTSET_MAX_ENTRIES_CAP, SetValue
from durakv.shards.t_stream import Consumer, Group, Nack, StreamValue, estimate_distance
from durakv.shards.numbers import strtod
from durakv.shards.t_zset import LLONG_HALF_D, ZSetValue

RDB_VERSION = 10  # what durakv writes (Redis 7.0)
MAX_RDB_VERSION = 11  # what a file may hold (Redis 7.2); a DUMP payload may hold RDB_VERSION at most
RDB_MAGIC = b"REDIS"

TYPE_STRING = 0
TYPE_LIST = 1
TYPE_SET = 2
TYPE_ZSET = 3
TYPE_HASH = 4
TYPE_ZSET_2 = 5
TYPE_MODULE = 6
TYPE_MODULE_2 = 7
TYPE_HASH_ZIPMAP = 9
TYPE_LIST_ZIPLIST = 10
TYPE_SET_INTSET = 11
TYPE_ZSET_ZIPLIST = 12
TYPE_HASH_ZIPLIST = 13
TYPE_LIST_QUICKLIST = 14
TYPE_STREAM_LISTPACKS = 15
TYPE_HASH_LISTPACK = 16
TYPE_ZSET_LISTPACK = 17
TYPE_LIST_QUICKLIST_2 = 18
TYPE_STREAM_LISTPACKS_2 = 19
TYPE_SET_LISTPACK = 20  # RDB 11
TYPE_STREAM_LISTPACKS_3 = 21  # RDB 11
RDB11_TYPES = (TYPE_SET_LISTPACK, TYPE_STREAM_LISTPACKS_3)

OP_FUNCTION2 = 245
OP_FUNCTION_PRE_GA = 246
OP_MODULE_AUX = 247
OP_IDLE = 248
OP_FREQ = 249
OP_AUX = 250
OP_RESIZEDB = 251
OP_EXPIRETIME_MS = 252
OP_EXPIRETIME = 253
OP_SELECTDB = 254
OP_EOF = 255

ENC_INT8 = 0
ENC_INT16 = 1
ENC_INT32 = 2
ENC_LZF = 3

QUICKLIST_PLAIN = 1
QUICKLIST_PACKED = 2
QUICKLIST_SIZE_LEVELS = (4096, 8192, 16384, 32768, 65536)  # list-max-listpack-size -1 .. -5
QUICKLIST_SAFETY_BYTES = 8192  # SIZE_SAFETY_LIMIT: a node's cap for a positive fill
QUICKLIST_ENTRY_OVERHEAD = 8  # SIZE_ESTIMATE_OVERHEAD: Redis' overestimate of one entry's overhead
QUICKLIST_PLAIN_MIN_BYTES = 1 << 30  # packed_threshold: elements this large get a plain node
EMPTY_LISTPACK_BYTES = 7
LISTPACK_SAFETY_BYTES = 1 << 30  # lpSafeToAdd: a listpack never grows past this
LISTPACK_SCORE_MAX_CHARS = 127  # zzlStrtod reads at most this much of a text score

_DOUBLE = struct.Struct("<d")
_FOOTER = struct.Struct("<HQ")
FOOTER_BYTES = _FOOTER.size  # a DUMP payload ends with the RDB version (2) and CRC64 (8)

Settings = dict  # the shard's encoding settings (shards.shard_settings.SHARD_DEFAULTS' names)


class RdbError(ValueError):
    """RDB bytes that cannot be read: damage, truncation, unknown types."""


class EmptyKey(RdbError):
    """An object with no elements: RESTORE refuses it, rdbLoad skips the key."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A value durakv cannot hold (a stream, a module value)."""
    kind: str


class Source(Protocol):
    def take(self, n: int) -> bytes: ...
    def byte(self) -> int: ...


# --- writing ----------------------------------------------------------------------


def encode_len(n: int) -> bytes:
    """Redis' length encoding: 6, 14, 32 or 64 bits."""
    if n < 64:
        return bytes((n,))
    if n < 16384:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n <= 0xFFFFFFFF:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def encode_string(s: bytes) -> bytes:
    """A string, integer-encoded when Redis would (string2ll, fits 32 bits)."""
    n = len(s)
    if n <= 11:
        v = parse_ll(s)
        if v is not None:
            if -128 <= v <= 127:
                return bytes((0xC0 | ENC_INT8, v & 0xFF))
            if -32768 <= v <= 32767:
                return bytes((0xC0 | ENC_INT16,)) + (v & 0xFFFF).to_bytes(2, "little")
            if -2147483648 <= v <= 2147483647:
                return bytes((0xC0 | ENC_INT32,)) + (v & 0xFFFFFFFF).to_bytes(4, "little")
    if n < 64:
        return bytes((n,)) + s
    return encode_len(n) + s


def _blob(data: bytes) -> bytes:
    """A binary blob (listpack, intset, plain node) as an RDB string, never integer-encoded."""
    return encode_len(len(data)) + data


def _score_entry(score: float) -> bytes:
    """zzlInsertAt: integral scores in double2ll's range (+-LLONG_MAX/2) as
    listpack integers, others as d2string text."""
    if -LLONG_HALF_D <= score <= LLONG_HALF_D and score == int(score):
        return lp_entry(int(score))
    if score in (float("inf"), float("-inf")):
        return lp_entry(b"inf" if score > 0 else b"-inf")
    return lp_entry(b"%.17g" % score)


def _quicklist(items: ListValue, fill: int) -> bytes:
    """Quicklist 2 body, split as quicklistPushTail splits while RPUSHing the
    items for list-max-listpack-size `fill` (Redis clamps it at -5)."""
    fill = max(fill, -5)
    nodes: list[bytes] = []
    entries: list[bytes] = []
    node_bytes = 0

    def seal() -> None:
        if entries:
            nodes.append(encode_len(QUICKLIST_PACKED) + _blob(lp_from_entries(entries)))

    for item in items:
        item = bytes(item)
        if len(item) >= QUICKLIST_PLAIN_MIN_BYTES:
            seal()
            entries = []
            nodes.append(encode_len(QUICKLIST_PLAIN) + _blob(item))
            continue
        entry = lp_entry(item)
        if entries:
            new_size = node_bytes + len(item) + QUICKLIST_ENTRY_OVERHEAD
            if fill < 0:
                fits = new_size <= QUICKLIST_SIZE_LEVELS[-fill - 1]
            else:
                fits = new_size <= QUICKLIST_SAFETY_BYTES and len(entries) < fill
            if fits:
                entries.append(entry)
                node_bytes += len(entry)
                continue
        seal()
        entries = [entry]
        node_bytes = EMPTY_LISTPACK_BYTES + len(entry)
    seal()
    return encode_len(len(nodes)) + b"".join(nodes)


def encode_value(value: object, list_fill: int) -> tuple[int, bytes]:
    """(RDB type, object body) of a stored value; list_fill is list-max-listpack-size."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return TYPE_STRING, encode_string(bytes(value))
    if kind is ListValue:
        return TYPE_LIST_QUICKLIST_2, _quicklist(value, list_fill)
    if kind is SetValue:
        if value.intset:
            ints = [parse_ll(m) for m in value]
            if None not in ints:
                return TYPE_SET_INTSET, _blob(intset_encode(ints))
        return TYPE_SET, encode_len(len(value)) + b"".join(map(encode_string, value))
    if kind is HashValue:
        if not value.table:
            entries = [e for f, v in value.items() for e in (lp_entry(f), lp_entry(v))]
            return TYPE_HASH_LISTPACK, _blob(lp_from_entries(entries))
        pairs = b"".join(encode_string(f) + encode_string(v) for f, v in value.items())
        return TYPE_HASH, encode_len(len(value)) + pairs
    if kind is ZSetValue:
        if value.listpack:
            entries = [e for s, m in value.order for e in (lp_entry(m), _score_entry(s))]
            return TYPE_ZSET_LISTPACK, _blob(lp_from_entries(entries))
        pack = _DOUBLE.pack
        body = b"".join(encode_string(m) + pack(s) for s, m in reversed(value.order))
        return TYPE_ZSET_2, encode_len(len(value)) + body
    if kind is StreamValue:
        return TYPE_STREAM_LISTPACKS_2, _encode_stream(value)
    raise RdbError(f"cannot write a value of type {kind.__name__} to an RDB")


def dump_payload(value: object, list_fill: int) -> bytes:
    """createDumpPayload: type, object, RDB version and a CRC64 of all that."""
    rdb_type, body = encode_value(value, list_fill)
    data = bytes((rdb_type,)) + body + struct.pack("<H", RDB_VERSION)
    return data + struct.pack("<Q", crc64(data))


# --- reading: primitives ----------------------------------------------------------


class BytesSource:
    """Bounds-checked sequential reads from bytes in memory."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RdbError(f"truncated at offset {len(self.data)}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise RdbError(f"truncated at offset {self.pos}")
        self.pos += 1
        return self.data[self.pos - 1]


def read_len(src: Source) -> tuple[int, bool]:
    """(value, is_encoded) as rdbLoadLenByRef; is_encoded marks a special string encoding."""
    first = src.byte()
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, False
    if kind == 1:
        return (first & 0x3F) << 8 | src.byte(), False
    if kind == 3:
        return first & 0x3F, True
    if first == 0x80:
        return int.from_bytes(src.take(4), "big"), False
    if first == 0x81:
        return int.from_bytes(src.take(8), "big"), False
    raise RdbError(f"bad length encoding byte {first:#x}")


def read_count(src: Source) -> int:
    value, encoded = read_len(src)
    if encoded:
        raise RdbError("an encoded string where a length was expected")
    return value


def read_string(src: Source, max_bytes: int) -> bytes:
    """rdbGenericLoadStringObject: raw, integer-encoded or LZF-compressed;
    max_bytes bounds a raw or decompressed length (a larger one is damage)."""
    value, encoded = read_len(src)
    if not encoded:
        if value > max_bytes:
            raise RdbError(f"string length {value} exceeds {max_bytes} bytes")
        return src.take(value)
    if value in (ENC_INT8, ENC_INT16, ENC_INT32):
        return b"%d" % int.from_bytes(src.take(1 << value), "little", signed=True)
    if value == ENC_LZF:
        compressed = read_count(src)
        size = read_count(src)
        if compressed > max_bytes or size > max_bytes:
            raise RdbError("LZF string too large")
        try:
            return lzf_decompress(src.take(compressed), size)
        except LzfError as e:
            raise RdbError(f"bad LZF string: {e}") from None
    raise RdbError(f"unknown string encoding {value}")


def _text_double(src: Source) -> float:
    """rdbLoadDoubleValue: a length byte (253 nan, 254 inf, 255 -inf) and text
    read as sscanf("%lg") does (strtod of a prefix; no number is an error)."""
    n = src.byte()
    if n >= 253:
        return (float("nan"), float("inf"), float("-inf"))[n - 253]
    value, consumed = strtod(src.take(n))
    if consumed == 0:
        raise RdbError("zset score is not a number")
    return value


def _listpack_score(text: bytes) -> float:
    """zzlStrtod: strtod of at most 127 bytes, trailing bytes ignored."""
    return strtod(text[:LISTPACK_SCORE_MAX_CHARS])[0]


# --- reading: objects -------------------------------------------------------------


def _distinct(items: list[bytes], what: str) -> None:
    if len(set(items)) != len(items):
        raise RdbError(f"{what} with duplicate members")


def _pairs(items: list[bytes], what: str) -> list[tuple[bytes, bytes]]:
    if len(items) % 2:
        raise RdbError(f"{what} with an odd number of elements")
    pairs = list(zip(items[::2], items[1::2]))
    _distinct([f for f, _ in pairs], what)
    if not pairs:
        raise EmptyKey(f"empty {what}")
    return pairs


def _nonempty(count: int, what: str) -> int:
    if count == 0:
        raise EmptyKey(f"empty {what}")
    return count


def _load_list(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> ListValue:
    if rdb_type == TYPE_LIST:
        return ListValue(read_string(src, max_bytes) for _ in range(_nonempty(read_count(src), "list")))
    if rdb_type == TYPE_LIST_ZIPLIST:
        items = ListValue(ziplist_decode(read_string(src, max_bytes)))
        _nonempty(len(items), "list")
        return items
    items = ListValue()
    for _ in range(_nonempty(read_count(src), "list")):
        container = read_count(src) if rdb_type == TYPE_LIST_QUICKLIST_2 else QUICKLIST_PACKED
        if container not in (QUICKLIST_PACKED, QUICKLIST_PLAIN):
            raise RdbError(f"quicklist node with unknown container {container}")
        data = read_string(src, max_bytes)
        if not data:
            raise RdbError("empty quicklist node")
        if container == QUICKLIST_PLAIN:
            items.append(data)
        elif rdb_type == TYPE_LIST_QUICKLIST_2:
            items.extend(lp_decode(data))
        else:
            items.extend(ziplist_decode(data))
    _nonempty(len(items), "list")  # empty nodes are skipped, an empty list is not
    return items


def _set_of(members: list[bytes], settings: Settings) -> SetValue:
    """A set loaded from its members (rdbLoadObject for RDB_TYPE_SET): an
    intset while every member is an integer and the count fits the setting."""
    _distinct(members, "set")
    _nonempty(len(members), "set")
    fits = len(members) <= min(settings["set-max-intset-entries"], INTSET_MAX_ENTRIES_CAP)
    return SetValue(members, intset=fits and all(parse_ll(m) is not None for m in members))


def _load_set(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> SetValue:
    if rdb_type == TYPE_SET_INTSET:
        members = intset_decode(read_string(src, max_bytes))
        if not members:
            raise RdbError("empty intset")  # intsetValidateIntegrity refuses it
        return SetValue(members, intset=len(members) <= settings["set-max-intset-entries"])
    if rdb_type == TYPE_SET_LISTPACK:
        return _set_of(lp_decode(read_string(src, max_bytes)), settings)
    count = _nonempty(read_count(src), "set")
    return _set_of([read_string(src, max_bytes) for _ in range(count)], settings)


def _load_hash(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> HashValue:
    max_entries, max_value = settings["hash-max-listpack-entries"], settings["hash-max-listpack-value"]
    h = HashValue()
    if rdb_type == TYPE_HASH:
        count = _nonempty(read_count(src), "hash")
        pairs = _pairs([read_string(src, max_bytes) for _ in range(2 * count)], "hash")
        h.table = (count > max_entries or any(len(f) > max_value or len(v) > max_value for f, v in pairs)
                   or sum(len(f) + len(v) for f, v in pairs) > LISTPACK_SAFETY_BYTES)
    else:
        blob = read_string(src, max_bytes)
        pairs = _pairs(lp_decode(blob) if rdb_type == TYPE_HASH_LISTPACK else ziplist_decode(blob), "hash")
        h.table = len(pairs) > max_entries
    h.update(pairs)
    return h


def _zset_fits_listpack(scores: dict[bytes, float], settings: Settings) -> bool:
    """zsetConvert's test after loading a skiplist zset (ZSET or ZSET_2)."""
    return (len(scores) <= settings["zset-max-listpack-entries"]
            and all(len(m) <= settings["zset-max-listpack-value"] for m in scores)
            and sum(map(len, scores)) <= LISTPACK_SAFETY_BYTES)


def _load_zset(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> ZSetValue:
    scores: dict[bytes, float] = {}
    if rdb_type in (TYPE_ZSET, TYPE_ZSET_2):
        for _ in range(_nonempty(read_count(src), "zset")):
            member = read_string(src, max_bytes)
            score = _DOUBLE.unpack(src.take(8))[0] if rdb_type == TYPE_ZSET_2 else _text_double(src)
            if score != score:
                raise RdbError("zset with a NaN score")
            if member in scores:
                raise RdbError("zset with duplicate members")
            scores[member] = score
        return ZSetValue.from_scores(scores, _zset_fits_listpack(scores, settings))
    blob = read_string(src, max_bytes)
    for member, text in _pairs(lp_decode(blob) if rdb_type == TYPE_ZSET_LISTPACK else ziplist_decode(blob), "zset"):
        score = _listpack_score(text)
        if score != score:
            raise RdbError("zset with a NaN score")
        scores[member] = score
    return ZSetValue.from_scores(scores, len(scores) <= settings["zset-max-listpack-entries"])


_STREAM_ID = struct.Struct(">QQ")  # a radix tree key / PEL id: ms, seq big-endian
_MS_TIME = struct.Struct("<q")  # rdbSaveMillisecondTime
STREAM_ITEM_FLAG_NONE = 0
STREAM_ITEM_FLAG_DELETED = 1
STREAM_ITEM_FLAG_SAMEFIELDS = 2
UINT64_MASK = (1 << 64) - 1


def _encode_stream(value: StreamValue) -> bytes:
    """RDB_TYPE_STREAM_LISTPACKS_2 as rdbSaveObject writes it: one listpack per
    node (master entry, then entries delta-encoded against the master id; the
    deleted entries Redis would still carry are left out), the stream's ids and
    counters, then each group with its PEL and its consumers' PELs."""
    out = [encode_len(len(value.nodes))]
    entries = value.entries
    node_ids = value.node_ids
    for i, node in enumerate(value.nodes):
        master_ms, master_seq = node.master_id
        names = node.master_fields
        upper = node_ids[i + 1] if i + 1 < len(node_ids) else None
        ids = list(entries.irange(node.master_id, upper, inclusive=(True, False)))
        elements: list = [len(ids), 0, len(names), *names, 0]
        for sid in ids:
            fields = entries[sid]
            nfields = len(fields) // 2
            head = (sid[0] - master_ms, sid[1] - master_seq)
            if fields[0::2] == names:
                elements += [STREAM_ITEM_FLAG_SAMEFIELDS, *head, *fields[1::2], nfields + 3]
            else:
                elements += [STREAM_ITEM_FLAG_NONE, *head, nfields, *fields, 2 * nfields + 4]
        out.append(_blob(_STREAM_ID.pack(*node.master_id)))
        out.append(_blob(lp_from_entries([lp_entry(e) for e in elements])))
    first = value.first_id()
    out += [encode_len(n) for n in (len(value), *value.last_id, *first, *value.max_deleted_id,
                                    value.entries_added, len(value.groups))]
    for name in sorted(value.groups):
        group = value.groups[name]
        out += [encode_string(name), encode_len(group.last_id[0]), encode_len(group.last_id[1]),
                encode_len(group.entries_read & UINT64_MASK), encode_len(len(group.pel))]
        for sid, nack in group.pel.items():
            out += [_STREAM_ID.pack(*sid), _MS_TIME.pack(nack.delivery_time_ms), encode_len(nack.delivery_count)]
        out.append(encode_len(len(group.consumers)))
        for cname in sorted(group.consumers):
            consumer = group.consumers[cname]
            out += [encode_string(cname), _MS_TIME.pack(consumer.seen_time_ms), encode_len(len(consumer.pel))]
            out += [_STREAM_ID.pack(*sid) for sid in consumer.pel]
    return b"".join(out)



def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _node_entries(lp: list[bytes], master_id: tuple[int, int]) -> tuple[tuple, list[tuple], int]:
    """A node listpack's (master fields, live entries as (id, fields), deleted count),
    checking its structure as streamValidateListpackIntegrity does."""
    def integer(i: int) -> int:
        v = parse_ll(lp[i]) if i < len(lp) else None
        if v is None:
            raise RdbError("stream listpack: an integer field is not an integer")
        return v

    count, deleted, nmaster = integer(0), integer(1), integer(2)
    if nmaster < 1 or count < 0 or deleted < 0:
        raise RdbError("stream listpack: bad master entry")
    names = tuple(lp[3:3 + nmaster])
    i = 3 + nmaster
    if integer(i) != 0:
        raise RdbError("stream listpack: master entry not terminated")
    i += 1
    live: list[tuple] = []
    seen_deleted = 0
    while i < len(lp):
        start = i
        flags, ms_diff, seq_diff = integer(i), integer(i + 1), integer(i + 2)
        i += 3
        if flags & STREAM_ITEM_FLAG_SAMEFIELDS:
            values = lp[i:i + nmaster]
            fields = tuple(x for pair in zip(names, values) for x in pair)
            nfields = nmaster
            i += nmaster
        else:
            nfields = integer(i)
            fields = tuple(lp[i + 1:i + 1 + 2 * nfields])
            i += 1 + 2 * nfields
        if nfields < 1 or len(fields) != 2 * nfields:
            raise RdbError("stream listpack: truncated entry")
        if integer(i) != i - start:
            raise RdbError("stream listpack: entry lp-count mismatch")
        i += 1
        sid = (master_id[0] + ms_diff, master_id[1] + seq_diff)
        if not (0 <= sid[0] <= UINT64_MASK and 0 <= sid[1] <= UINT64_MASK):
            raise RdbError("stream listpack: entry id out of range")
        if flags & STREAM_ITEM_FLAG_DELETED:
            seen_deleted += 1
        else:
            live.append((sid, fields))
    if len(live) != count or seen_deleted != deleted:
        raise RdbError("stream listpack: master entry counts do not match its entries")
    if not live and not deleted:
        raise RdbError("Empty listpack inside stream")
    return names, live, deleted


def _read_stream_id(src: Source) -> tuple[int, int]:
    ms, seq = _STREAM_ID.unpack(src.take(16))
    return ms, seq


def _load_stream(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> StreamValue:
    """rdbLoadObject for the three stream types, with deep sanitization."""
    n = read_count
    s = StreamValue()
    previous: tuple[int, int] | None = None
    for _ in range(n(src)):
        key = read_string(src, max_bytes)
        if len(key) != 16:
            raise RdbError("Stream node key entry is not the size of a stream ID")
        master_id = _STREAM_ID.unpack(key)
        blob = read_string(src, max_bytes)
        names, live, deleted = _node_entries(lp_decode(blob), master_id)
        if not live:
            continue  # only deleted entries: Redis would have freed the node
        if (previous is not None and master_id <= previous) or master_id > live[0][0]:
            raise RdbError("stream node key out of order")
        for sid, _ in live:
            if previous is not None and sid <= previous:
                raise RdbError("stream entries out of order")
            previous = sid
        s.load_node(master_id, names, live, deleted, len(blob))
    length = n(src)
    s.last_id = (n(src), n(src))
    if rdb_type != TYPE_STREAM_LISTPACKS:
        n(src), n(src)  # first id: recomputed from the entries
        s.max_deleted_id = (n(src), n(src))
        s.entries_added = n(src)
    else:
        s.entries_added = length
    if length != len(s):
        raise RdbError("stream length does not match its entries")
    if s.entries and s.entries.peekitem(-1)[0] > s.last_id:
        raise RdbError("stream last id is smaller than its last entry")
    for _ in range(n(src)):
        name = read_string(src, max_bytes)
        last_id = (n(src), n(src))
        entries_read = _signed64(n(src)) if rdb_type != TYPE_STREAM_LISTPACKS else estimate_distance(s, last_id)
        if name in s.groups:
            raise RdbError(f"Duplicated consumer group name {name[:64]!r}")
        group = s.groups[name] = Group(name, last_id, entries_read)
        for _ in range(n(src)):
            sid = _read_stream_id(src)
            delivery_time_ms = _MS_TIME.unpack(src.take(8))[0]
            if sid in group.pel:
                raise RdbError("Duplicated global PEL entry loading stream consumer group")
            group.pel[sid] = Nack(None, delivery_time_ms, n(src))
        for _ in range(n(src)):
            cname = read_string(src, max_bytes)
            if cname in group.consumers:
                raise RdbError("Duplicate stream consumer detected.")
            consumer = group.consumers[cname] = Consumer(cname, _MS_TIME.unpack(src.take(8))[0])
            if rdb_type == TYPE_STREAM_LISTPACKS_3:
                src.take(8)  # active time (Redis 7.2): durakv keeps seen-time only
            for _ in range(n(src)):
                sid = _read_stream_id(src)
                nack = group.pel.get(sid)
                if nack is None:
                    raise RdbError("Consumer entry not found in group global PEL")
                if nack.consumer is not None:
                    raise RdbError("Duplicated consumer PEL entry loading a stream consumer group")
                nack.consumer = consumer
                consumer.pel[sid] = nack
        if any(nack.consumer is None for nack in group.pel.values()):
            raise RdbError("Stream CG PEL entry without consumer")
    return s


def skip_module_value(src: Source, max_bytes: int) -> None:
    """A module value or module AUX field, opcode by opcode."""
    read_count(src)  # module id
    while True:
        opcode = read_count(src)
        if opcode == 0:
            return
        if opcode in (1, 2):
            read_count(src)
        elif opcode == 3:
            src.take(4)
        elif opcode == 4:
            src.take(8)
        elif opcode == 5:
            read_string(src, max_bytes)
        else:
            raise RdbError(f"unknown module value opcode {opcode}")


def _skip_module(src: Source, rdb_type: int, settings: Settings, max_bytes: int) -> Unsupported:
    skip_module_value(src, max_bytes)
    return Unsupported("module")


_LOADERS: dict[int, Callable[[Source, int, Settings, int], object]] = {
    TYPE_STRING: lambda src, _type, _settings, max_bytes: read_string(src, max_bytes),
    TYPE_LIST: _load_list, TYPE_LIST_ZIPLIST: _load_list, TYPE_LIST_QUICKLIST: _load_list,
    TYPE_LIST_QUICKLIST_2: _load_list,
    TYPE_SET: _load_set, TYPE_SET_INTSET: _load_set, TYPE_SET_LISTPACK: _load_set,
    TYPE_HASH: _load_hash, TYPE_HASH_ZIPLIST: _load_hash, TYPE_HASH_LISTPACK: _load_hash,
    TYPE_ZSET: _load_zset, TYPE_ZSET_2: _load_zset, TYPE_ZSET_ZIPLIST: _load_zset, TYPE_ZSET_LISTPACK: _load_zset,
    TYPE_STREAM_LISTPACKS: _load_stream, TYPE_STREAM_LISTPACKS_2: _load_stream,
    TYPE_STREAM_LISTPACKS_3: _load_stream,
    TYPE_MODULE_2: _skip_module,
}


def decode_object(src: Source, rdb_type: int, settings: Settings, version: int, max_bytes: int) -> object:
    """rdbLoadObject: the value of type rdb_type read from src, its encoding
    chosen by settings; Unsupported for streams and module values. Raises
    EmptyKey for an empty collection and RdbError for anything malformed."""
    if rdb_type in RDB11_TYPES and version < 11:
        raise RdbError(f"RDB type {rdb_type} in an RDB of version {version} (it needs version 11)")
    loader = _LOADERS.get(rdb_type)
    if loader is None:
        if rdb_type == TYPE_HASH_ZIPMAP:
            raise RdbError("zipmap-encoded hashes (RDB of Redis < 2.6) are not supported")
        raise RdbError(f"unknown RDB value type {rdb_type}")
    try:
        return loader(src, rdb_type, settings, max_bytes)
    except (LzfError, PackedError, struct.error, IndexError) as e:
        raise RdbError(f"malformed RDB type {rdb_type} object: {e}") from None


def reloaded(value: object, settings: Settings) -> object:
    """The value that writing `value` and loading it back with `settings`
    gives, when that differs from `value` itself (otherwise `value`): a
    skiplist zset that fits the listpack thresholds becomes a listpack, and a
    listpack stores an integral score as an integer, so -0 comes back as 0
    (Redis' DEBUG RELOAD does the same). Encodings aside, that is the only
    value a load changes; a snapshot applies it before its state digest."""
    if type(value) is ZSetValue and not value.listpack and _zset_fits_listpack(value.scores, settings):
        return ZSetValue.from_scores(dict(value.scores), True)
    return value


# --- DUMP payloads ----------------------------------------------------------------


def verify_payload(payload: bytes) -> int:
    """verifyDumpPayload: the payload's RDB version; RdbError unless the version
    is one Redis 7.0 reads and the CRC64 footer matches."""
    if len(payload) < FOOTER_BYTES:
        raise RdbError("short payload")
    version, crc = _FOOTER.unpack(payload[-FOOTER_BYTES:])
    if version > RDB_VERSION or crc != crc64(payload[:-8]):
        raise RdbError("version or checksum")
    return version


def load_payload(payload: bytes, version: int, settings: Settings, max_bytes: int) -> object:
    """rdbLoadObjectType + rdbLoadObject over a verified payload. Like Redis,
    the reader runs over the whole payload, footer included: a length that
    runs into the footer reads it, and trailing bytes are ignored. Values
    durakv cannot hold and empty collections are RdbErrors here."""
    src = BytesSource(payload)
    value = decode_object(src, src.byte(), settings, version, max_bytes)
    if type(value) is Unsupported:
        raise RdbError(f"a {value.kind} value, which durakv cannot hold")
    return value
