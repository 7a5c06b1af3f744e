"""RDB version 10 (Redis 7.0's dump format): constants and the writer.

A snapshot is an RDB file that redis-server 7.0 loads and redis-check-rdb
accepts, so a durakv dataset can always leave for Redis. The writer streams:
values are encoded one key at a time into a buffer that is flushed (and folded
into the running CRC-64) every RDB_FLUSH_BYTES, so memory stays flat whatever
the dataset size.

Each durakv value class is written in the encoding Redis 7.0 itself would use
for it, as recorded in the value's sticky encoding flag: lists as quicklist 2
(listpack nodes of at most 8 KiB, Redis' default list-max-listpack-size -2),
hashes as listpack or hashtable, sets as intset or hashtable, sorted sets as
listpack or skiplist (ZSET_2, binary doubles). Strings are written raw, except
that canonical integers that fit 32 bits use the integer encodings as Redis
does; durakv never compresses (LZF is only read).

File layout: "REDIS0010", AUX fields, SELECTDB 0, RESIZEDB, then per key
[EXPIRETIME_MS ms] type key value, and EOF followed by the CRC-64 (Jones,
little-endian) of everything before it.
"""

from __future__ import annotations

import math
import struct
from typing import BinaryIO, Callable

from durakv.shards.numbers import parse_ll
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.t_set import RSet
from durakv.shards.t_zset import ZSet
from durakv.snapshotter.crc64 import Crc64
from durakv.snapshotter.pace import unpaced
from durakv.snapshotter.packed import intset_encode, lp_entry, lp_from_entries

RDB_VERSION = 10
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
TYPE_SET_LISTPACK = 20  # Redis 7.2 (RDB 11)
TYPE_STREAM_LISTPACKS_3 = 21  # Redis 7.2 (RDB 11)

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
# Redis 7.0's default list-max-listpack-size -2: listpack nodes up to 8 KiB.
QUICKLIST_NODE_MAX_BYTES = 8192
# Elements at least this large get a node of their own (Redis' packed_threshold).
QUICKLIST_PLAIN_MIN_BYTES = 1 << 30
# Integral scores with a magnitude below this are stored as listpack integers
# (the range in which Redis' d2string prints a double as an integer).
LISTPACK_INT_SCORE_LIMIT = 4503599627370496.0

RDB_FLUSH_BYTES = 1 << 20
REDIS_VERSION_AUX = b"7.0.15"

_DOUBLE = struct.Struct("<d")
_U64 = struct.Struct("<Q")


class RdbError(ValueError):
    """An RDB file that cannot be read (damage, truncation, unknown types)."""


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


def _score_entry(score: float) -> bytes:
    """A listpack score as Redis stores it: integral values as integers."""
    if math.isinf(score):
        return lp_entry(b"inf" if score > 0 else b"-inf")
    if score.is_integer() and -LISTPACK_INT_SCORE_LIMIT < score < LISTPACK_INT_SCORE_LIMIT:
        return lp_entry(int(score))
    return lp_entry(b"%.17g" % score)


def _quicklist(value: ListValue) -> bytes:
    """Quicklist 2 body: node count, then (container, blob) per node."""
    nodes: list[bytes] = []
    entries: list[bytes] = []
    node_bytes = 0
    for element in value:
        if len(element) >= QUICKLIST_PLAIN_MIN_BYTES:
            if entries:
                nodes.append(encode_len(QUICKLIST_PACKED) + encode_string(lp_from_entries(entries)))
                entries, node_bytes = [], 0
            nodes.append(encode_len(QUICKLIST_PLAIN) + encode_len(len(element)) + bytes(element))
            continue
        entry = lp_entry(bytes(element))
        if entries and node_bytes + len(entry) > QUICKLIST_NODE_MAX_BYTES:
            nodes.append(encode_len(QUICKLIST_PACKED) + encode_string(lp_from_entries(entries)))
            entries, node_bytes = [], 0
        entries.append(entry)
        node_bytes += len(entry)
    if entries:
        nodes.append(encode_len(QUICKLIST_PACKED) + encode_string(lp_from_entries(entries)))
    return encode_len(len(nodes)) + b"".join(nodes)


def _raw_blob(blob: bytes) -> bytes:
    """A binary blob (listpack, intset) as an RDB string, never integer-encoded."""
    return encode_len(len(blob)) + blob


def encode_value(value: object) -> tuple[int, bytes]:
    """(RDB type, serialized value) for a durakv value."""
    t = type(value)
    if t is bytes or t is bytearray:
        return TYPE_STRING, encode_string(bytes(value))
    if t is ListValue:
        return TYPE_LIST_QUICKLIST_2, _quicklist(value)
    if t is HashValue:
        if not value.table:
            entries = []
            for field, v in value.items():
                entries.append(lp_entry(field))
                entries.append(lp_entry(v))
            return TYPE_HASH_LISTPACK, _raw_blob(lp_from_entries(entries))
        parts = [encode_len(len(value))]
        for field, v in value.items():
            parts.append(encode_string(field))
            parts.append(encode_string(v))
        return TYPE_HASH, b"".join(parts)
    if t is RSet:
        if value.intset:
            ints = [parse_ll(m) for m in value]
            if None not in ints:
                return TYPE_SET_INTSET, _raw_blob(intset_encode(ints))
        return TYPE_SET, encode_len(len(value)) + b"".join(map(encode_string, value))
    if t is ZSet:
        if value.listpack:
            entries = []
            for score, member in value.order:
                entries.append(lp_entry(member))
                entries.append(_score_entry(score))
            return TYPE_ZSET_LISTPACK, _raw_blob(lp_from_entries(entries))
        parts = [encode_len(len(value))]
        pack = _DOUBLE.pack
        for score, member in reversed(value.order):
            parts.append(encode_string(member))
            parts.append(pack(score))
        return TYPE_ZSET_2, b"".join(parts)
    raise RdbError(f"cannot write a value of type {t.__name__} to an RDB")


class RdbWriter:
    """Streams an RDB to a binary file object. Use: RdbWriter(f, aux), then
    select_db(), write_key() per key, finish()."""

    def __init__(self, f: BinaryIO, aux: dict[str, bytes | int | str]) -> None:
        self._f = f
        self._buf = bytearray()
        self._crc = Crc64()
        self.bytes_written = 0
        self.keys_written = 0
        self._buf += RDB_MAGIC + b"%04d" % RDB_VERSION
        for name, value in aux.items():
            if isinstance(value, int):
                value = b"%d" % value
            elif isinstance(value, str):
                value = value.encode()
            self._buf += bytes((OP_AUX,)) + encode_string(name.encode()) + encode_string(value)

    def select_db(self, db: int, keys: int, expires: int) -> None:
        self._buf += bytes((OP_SELECTDB,)) + encode_len(db)
        self._buf += bytes((OP_RESIZEDB,)) + encode_len(keys) + encode_len(expires)

    def write_key(self, key: bytes, value: object, expire_ms: int | None) -> None:
        buf = self._buf
        if expire_ms is not None:
            buf += bytes((OP_EXPIRETIME_MS,)) + _U64.pack(expire_ms)
        rdb_type, body = encode_value(value)
        buf.append(rdb_type)
        buf += encode_string(key)
        buf += body
        self.keys_written += 1
        if len(buf) >= RDB_FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        self._crc.update(data)
        self._f.write(data)
        self.bytes_written += len(data)

    def finish(self) -> int:
        """Write EOF and the checksum; returns the file size in bytes."""
        self._buf.append(OP_EOF)
        self._flush()
        tail = _U64.pack(self._crc.value)
        self._f.write(tail)
        self.bytes_written += len(tail)
        return self.bytes_written


def default_aux(ctime_s: int, extra: dict[str, bytes | int | str] | None = None) -> dict:
    """Redis 7.0's AUX fields, plus durakv's own (Redis skips unknown ones)."""
    aux: dict[str, bytes | int | str] = {
        "redis-ver": REDIS_VERSION_AUX, "redis-bits": 64, "ctime": ctime_s, "used-mem": 0,
        "aof-base": 0,
    }
    if extra:
        aux.update(extra)
    return aux


def write_keyspace(f: BinaryIO, data: dict, expires: dict[bytes, int], aux: dict,
                   pace: Callable[[], None] = unpaced) -> RdbWriter:
    """Write every key of one keyspace (a Keyspace's data and expires) as db 0;
    pace() is called for each key."""
    writer = RdbWriter(f, aux)
    writer.select_db(0, len(data), len(expires))
    get_expire = expires.get
    for key, value in data.items():
        pace()
        writer.write_key(key, value, get_expire(key))
    writer.finish()
    return writer
