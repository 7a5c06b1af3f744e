"""Reading RDB files (versions 1 to 11: Redis up to 7.2) into durakv values.

Every encoding redis-server writes is understood: strings raw, integer-encoded
or LZF-compressed; lists as quicklist (ziplist or listpack nodes, plain nodes),
ziplist or linked list; hashes as listpack, ziplist or hashtable; sets as
intset, listpack or hashtable; sorted sets as listpack, ziplist, skiplist with
binary (ZSET_2) or text scores. Streams are parsed (so the file can be read
past them) and reported as unsupported: durakv has no stream type. Module
values, old zipmaps and function libraries are reported too.

The CRC-64 trailer is verified (a zero checksum means the writer disabled it,
as Redis allows). Truncation and malformed blobs raise RdbError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from durakv.shards.keyspace import Keyspace
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.t_set import SetValue
from durakv.shards.t_zset import ZSetValue
from durakv.snapshotter import rdb as R
from durakv.snapshotter.crc64 import Crc64
from durakv.snapshotter.lzf import LzfError, lzf_decompress
from durakv.snapshotter.pace import unpaced
from durakv.snapshotter.packed import PackedError, intset_decode, lp_decode, ziplist_decode

READ_CHUNK_BYTES = 1 << 20
MAX_RDB_VERSION = 11
# A length prefix larger than this is damage, not data (Redis caps strings at 512 MB
# by default; 4 GiB leaves room for large listpacks).
MAX_BLOB_BYTES = 1 << 32

_DOUBLE = struct.Struct("<d")


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A value durakv cannot hold (a stream, a module value)."""
    kind: str


@dataclass(frozen=True, slots=True)
class RdbEntry:
    db: int
    key: bytes
    value: object  # a durakv value, or Unsupported
    expire_ms: int | None
    rdb_type: int


@dataclass
class RdbInfo:
    version: int = 0
    aux: dict[bytes, bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # function libraries, module aux data
    checksum_verified: bool = False


class _Source:
    """Buffered reads that fold every consumed byte into a running CRC-64."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._crc_pos = 0
        self._crc = Crc64()
        self.offset = 0

    def read(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            self._refill(n)
            end = self._pos + n
            if end > len(self._buf):
                raise R.RdbError(f"RDB truncated at offset {self.offset + len(self._buf) - self._pos}")
        data = self._buf[self._pos:end]
        self._pos = end
        return data

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._refill(1)
            if self._pos >= len(self._buf):
                raise R.RdbError(f"RDB truncated at offset {self.offset}")
        b = self._buf[self._pos]
        self._pos += 1
        return b

    def _refill(self, want: int) -> None:
        self._crc.update(memoryview(self._buf)[self._crc_pos:self._pos])
        self.offset += self._pos
        rest = self._buf[self._pos:]
        more = self._f.read(max(READ_CHUNK_BYTES, want))
        self._buf = rest + more
        self._pos = self._crc_pos = 0

    def crc(self) -> int:
        """CRC-64 of everything consumed so far."""
        self._crc.update(memoryview(self._buf)[self._crc_pos:self._pos])
        self._crc_pos = self._pos
        return self._crc.value


class RdbReader:
    """Iterate the keys of an RDB: `for entry in reader.entries(): ...`; after
    the iteration `reader.info` holds the version, AUX fields and what was skipped."""

    def __init__(self, f: BinaryIO) -> None:
        self._src = _Source(f)
        self.info = RdbInfo()

    # --- primitives ----------------------------------------------------------------

    def _len(self) -> tuple[int, bool]:
        """(length, is_encoded): is_encoded means a special string encoding."""
        src = self._src
        b = src.byte()
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | src.byte(), False
        if kind == 3:
            return b & 0x3F, True
        if b == 0x80:
            return int.from_bytes(src.read(4), "big"), False
        if b == 0x81:
            return int.from_bytes(src.read(8), "big"), False
        raise R.RdbError(f"bad length encoding byte {b:#x} at offset {src.offset}")

    def _length(self) -> int:
        n, encoded = self._len()
        if encoded:
            raise R.RdbError("an encoded string where a length was expected")
        return n

    def _string(self) -> bytes:
        n, encoded = self._len()
        src = self._src
        if not encoded:
            if n > MAX_BLOB_BYTES:
                raise R.RdbError(f"string length {n} exceeds {MAX_BLOB_BYTES} bytes")
            return src.read(n)
        if n == R.ENC_INT8:
            return b"%d" % int.from_bytes(src.read(1), "little", signed=True)
        if n == R.ENC_INT16:
            return b"%d" % int.from_bytes(src.read(2), "little", signed=True)
        if n == R.ENC_INT32:
            return b"%d" % int.from_bytes(src.read(4), "little", signed=True)
        if n == R.ENC_LZF:
            compressed = self._length()
            expanded = self._length()
            if compressed > MAX_BLOB_BYTES or expanded > MAX_BLOB_BYTES:
                raise R.RdbError("LZF string too large")
            try:
                return lzf_decompress(src.read(compressed), expanded)
            except LzfError as e:
                raise R.RdbError(f"bad LZF string: {e}") from None
        raise R.RdbError(f"unknown string encoding {n}")

    def _double_text(self) -> float:
        """Old ZSET scores: a length byte (253 nan, 254 inf, 255 -inf) and text."""
        n = self._src.byte()
        if n == 253:
            return float("nan")
        if n == 254:
            return float("inf")
        if n == 255:
            return float("-inf")
        return float(self._src.read(n))

    # --- values --------------------------------------------------------------------

    def _pairs(self, elements: list[bytes], what: str) -> list[tuple[bytes, bytes]]:
        if len(elements) % 2:
            raise R.RdbError(f"{what} with an odd number of elements")
        return list(zip(elements[::2], elements[1::2]))

    @staticmethod
    def _hash(pairs, table: bool) -> HashValue:
        h = HashValue()
        h.update(pairs)
        h.table = table
        return h

    @staticmethod
    def _zset(pairs, listpack: bool) -> ZSetValue:
        scores = {}
        for member, score in pairs:
            scores[member] = float(score) if type(score) is not float else score
        return ZSetValue.from_scores(scores, listpack)

    def _value(self, t: int) -> object:
        s = self._string
        if t == R.TYPE_STRING:
            return s()
        if t == R.TYPE_LIST:
            return ListValue(s() for _ in range(self._length()))
        if t == R.TYPE_SET:
            n = self._length()
            return SetValue((s() for _ in range(n)), intset=False)
        if t == R.TYPE_ZSET_2:
            n = self._length()
            read = self._src.read
            return self._zset([(s(), _DOUBLE.unpack(read(8))[0]) for _ in range(n)], False)
        if t == R.TYPE_ZSET:
            n = self._length()
            return self._zset([(s(), self._double_text()) for _ in range(n)], False)
        if t == R.TYPE_HASH:
            n = self._length()
            return self._hash([(s(), s()) for _ in range(n)], True)
        if t in (R.TYPE_LIST_QUICKLIST, R.TYPE_LIST_QUICKLIST_2):
            return self._quicklist(t)
        if t == R.TYPE_SET_INTSET:
            return SetValue(intset_decode(s()), intset=True)
        if t == R.TYPE_SET_LISTPACK:
            return SetValue(lp_decode(s()), intset=False)
        if t == R.TYPE_LIST_ZIPLIST:
            return ListValue(ziplist_decode(s()))
        if t == R.TYPE_HASH_LISTPACK:
            return self._hash(self._pairs(lp_decode(s()), "hash listpack"), False)
        if t == R.TYPE_HASH_ZIPLIST:
            return self._hash(self._pairs(ziplist_decode(s()), "hash ziplist"), False)
        if t == R.TYPE_ZSET_LISTPACK:
            return self._zset(self._pairs(lp_decode(s()), "zset listpack"), True)
        if t == R.TYPE_ZSET_ZIPLIST:
            return self._zset(self._pairs(ziplist_decode(s()), "zset ziplist"), True)
        if t in (R.TYPE_STREAM_LISTPACKS, R.TYPE_STREAM_LISTPACKS_2, R.TYPE_STREAM_LISTPACKS_3):
            self._skip_stream(t)
            return Unsupported("stream")
        if t == R.TYPE_MODULE_2:
            self._skip_module_value()
            return Unsupported("module")
        if t == R.TYPE_HASH_ZIPMAP:
            raise R.RdbError("zipmap-encoded hashes (RDB of Redis < 2.6) are not supported")
        raise R.RdbError(f"unknown RDB value type {t}")

    def _quicklist(self, t: int) -> ListValue:
        out = ListValue()
        for _ in range(self._length()):
            container = R.QUICKLIST_PACKED
            if t == R.TYPE_LIST_QUICKLIST_2:
                container = self._length()
            blob = self._string()
            if container == R.QUICKLIST_PLAIN:
                out.append(blob)
            elif container == R.QUICKLIST_PACKED:
                out.extend(lp_decode(blob) if t == R.TYPE_LIST_QUICKLIST_2 else ziplist_decode(blob))
            else:
                raise R.RdbError(f"quicklist node with unknown container {container}")
        return out

    def _skip_stream(self, t: int) -> None:
        s, n = self._string, self._length
        for _ in range(n()):
            s()  # master ID
            s()  # listpack
        n(), n(), n()  # length, last id
        if t != R.TYPE_STREAM_LISTPACKS:
            n(), n(), n(), n(), n()  # first id, max deleted id, entries added
        for _ in range(n()):  # consumer groups
            s()
            n(), n()
            if t != R.TYPE_STREAM_LISTPACKS:
                n()  # entries read
            for _ in range(n()):  # group PEL
                self._src.read(16 + 8)
                n()
            for _ in range(n()):  # consumers
                s()
                self._src.read(8)  # seen time
                if t == R.TYPE_STREAM_LISTPACKS_3:
                    self._src.read(8)  # active time
                for _ in range(n()):
                    self._src.read(16)

    def _skip_module_value(self) -> None:
        self._length()  # module id
        while True:
            opcode = self._length()
            if opcode == 0:
                return
            if opcode in (1, 2):
                self._length()
            elif opcode == 3:
                self._src.read(4)
            elif opcode == 4:
                self._src.read(8)
            elif opcode == 5:
                self._string()
            else:
                raise R.RdbError(f"unknown module value opcode {opcode}")

    # --- the file ------------------------------------------------------------------

    def entries(self) -> Iterator[RdbEntry]:
        """Every key in file order; verifies the checksum at the end."""
        try:
            yield from self._entries()
        except (PackedError, IndexError, struct.error, ValueError) as e:
            if isinstance(e, R.RdbError):
                raise
            raise R.RdbError(f"malformed RDB near offset {self._src.offset}: {e}") from None

    def _entries(self) -> Iterator[RdbEntry]:
        src = self._src
        header = src.read(9)
        if header[:5] != R.RDB_MAGIC or not header[5:].isdigit():
            raise R.RdbError("not an RDB file (no REDIS magic)")
        version = int(header[5:])
        if not 1 <= version <= MAX_RDB_VERSION:
            raise R.RdbError(f"unsupported RDB version {version}")
        self.info.version = version
        db = 0
        expire_ms = None
        while True:
            t = src.byte()
            if t == R.OP_EXPIRETIME_MS:
                expire_ms = int.from_bytes(src.read(8), "little")
                continue
            if t == R.OP_EXPIRETIME:
                expire_ms = int.from_bytes(src.read(4), "little") * 1000
                continue
            if t == R.OP_SELECTDB:
                db = self._length()
                continue
            if t == R.OP_RESIZEDB:
                self._length(), self._length()
                continue
            if t == R.OP_AUX:
                name = self._string()
                self.info.aux[name] = self._string()
                continue
            if t == R.OP_IDLE:
                self._length()
                continue
            if t == R.OP_FREQ:
                src.byte()
                continue
            if t == R.OP_FUNCTION2:
                code = self._string()
                self.info.skipped.append(f"function library ({len(code)} bytes of code)")
                continue
            if t == R.OP_MODULE_AUX:
                self._skip_module_value()
                self.info.skipped.append("module aux data")
                continue
            if t == R.OP_FUNCTION_PRE_GA:
                raise R.RdbError("function data of a Redis 7.0 release candidate is not supported")
            if t == R.OP_EOF:
                break
            key = self._string()
            value = self._value(t)
            yield RdbEntry(db, key, value, expire_ms, t)
            expire_ms = None
        computed = src.crc()
        if version >= 5:
            stored = int.from_bytes(src.read(8), "little")
            if stored != 0:
                if stored != computed:
                    raise R.RdbError(f"RDB checksum mismatch: file says {stored:016x}, "
                                     f"content gives {computed:016x}")
                self.info.checksum_verified = True


def load_rdb(f: BinaryIO, db: Keyspace, pace: Callable[[], None] = unpaced) -> RdbInfo:
    """Load an RDB holding only database 0 and durakv's types into a Keyspace,
    keeping every key (expired ones included: the keyspace expires them).
    Raises RdbError on anything it cannot hold. pace() is called for each key."""
    reader = RdbReader(f)
    for entry in reader.entries():
        pace()
        if entry.db != 0:
            raise R.RdbError(f"key {entry.key[:64]!r} is in database {entry.db}; durakv has database 0 only")
        if type(entry.value) is Unsupported:
            raise R.RdbError(f"key {entry.key[:64]!r} is a {entry.value.kind}, which durakv cannot hold")
        if entry.key in db.data:
            raise R.RdbError(f"key {entry.key[:64]!r} appears twice in the RDB")
        db.put(entry.key, entry.value)
        if entry.expire_ms is not None:
            db.set_expire(entry.key, entry.expire_ms)
    return reader.info
