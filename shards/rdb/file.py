"""RDB files, streamed, on top of the object codec (shards/rdb/codec.py).

Writing: "REDIS0010", AUX fields, one FUNCTION2 entry per function library
(its code, as rdbSaveFunctions writes it), SELECTDB 0, RESIZEDB, then per key
[EXPIRETIME_MS ms] type key value, and EOF followed by the CRC-64 (Jones,
little-endian) of everything before it. Values are encoded one key at a time
into a buffer that is flushed (and folded into the running CRC-64) every
RDB_FLUSH_BYTES, so memory stays flat whatever the dataset size. The files
load into redis-server 7.0 and pass redis-check-rdb.

Reading: versions 1 to 11 (Redis up to 7.2), every key through the codec (so
a file loads exactly as a DUMP payload of the same value does), the CRC-64
trailer verified (a zero checksum means the writer disabled it, as Redis
allows). Empty collections are skipped, as rdbLoad skips them; module AUX
data is skipped and listed in RdbInfo. Function libraries are collected in
RdbInfo.functions; load_rdb makes them the keyspace's library set.

This module reads and writes file objects it is given; it opens nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from durakv.shards.keyspace import Keyspace
from durakv.shards.resp import ReplyError
from durakv.shards.t_function import restore_libraries
from durakv.shards.rdb import codec as C
from durakv.shards.rdb.crc64 import Crc64
from durakv.shards.shard_settings import SHARD_DEFAULTS

READ_CHUNK_BYTES = 1 << 20
RDB_FLUSH_BYTES = 1 << 20
# A length prefix larger than this is damage, not data (Redis caps strings at 512 MB
# by default; 4 GiB leaves room for large listpacks).
MAX_FILE_BLOB_BYTES = 1 << 32
EMPTY_KEYS_NAMED = 10  # empty keys skipped are counted; this many are named (rdbLoad logs 10)
REDIS_VERSION_AUX = b"7.0.15"

_U64 = struct.Struct("<Q")


def _unpaced() -> None:
    """The default pace(): no throttling."""


@dataclass(frozen=True, slots=True)
class RdbEntry:
    db: int
    key: bytes
    value: object  # a durakv value, or codec.Unsupported
    expire_ms: int | None
    rdb_type: int


@dataclass
class RdbInfo:
    version: int = 0
    aux: dict[bytes, bytes] = field(default_factory=dict)
    functions: list[bytes] = field(default_factory=list)  # each function library's code, in file order
    skipped: list[str] = field(default_factory=list)  # module aux data, empty keys
    empty_keys_skipped: int = 0
    checksum_verified: bool = False


# --- writing ----------------------------------------------------------------------


class RdbWriter:
    """Streams an RDB to a binary file object. Use: RdbWriter(f, aux, functions),
    then select_db(), write_key() per key, finish(). `functions` is the code of
    every function library (t_function.library_codes); list_fill is the
    list-max-listpack-size the quicklist nodes are split for."""

    def __init__(self, f: BinaryIO, aux: dict[str, bytes | int | str], functions: Iterable[bytes] = (),
                 list_fill: int = SHARD_DEFAULTS["list-max-listpack-size"]) -> None:
        self._f = f
        self._buf = bytearray()
        self._crc = Crc64()
        self._list_fill = list_fill
        self.bytes_written = 0
        self.keys_written = 0
        self._buf += C.RDB_MAGIC + b"%04d" % C.RDB_VERSION
        for name, value in aux.items():
            if isinstance(value, int):
                value = b"%d" % value
            elif isinstance(value, str):
                value = value.encode()
            self._buf += bytes((C.OP_AUX,)) + C.encode_string(name.encode()) + C.encode_string(value)
        for code in functions:
            self._buf += bytes((C.OP_FUNCTION2,)) + C.encode_string(code)

    def select_db(self, db: int, keys: int, expires: int) -> None:
        self._buf += bytes((C.OP_SELECTDB,)) + C.encode_len(db)
        self._buf += bytes((C.OP_RESIZEDB,)) + C.encode_len(keys) + C.encode_len(expires)

    def write_key(self, key: bytes, value: object, expire_ms: int | None) -> None:
        buf = self._buf
        if expire_ms is not None:
            buf += bytes((C.OP_EXPIRETIME_MS,)) + _U64.pack(expire_ms)
        rdb_type, body = C.encode_value(value, self._list_fill)
        buf.append(rdb_type)
        buf += C.encode_string(key)
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
        self._buf.append(C.OP_EOF)
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
                   pace: Callable[[], None] = _unpaced, keys: Iterable[bytes] | None = None,
                   functions: Iterable[bytes] = ()) -> RdbWriter:
    """Write every key of one keyspace (a Keyspace's data and expires) as db 0,
    in the order of `keys` (all of data's keys; default: data's own order),
    after the function libraries' code; pace() is called for each key."""
    writer = RdbWriter(f, aux, functions)
    writer.select_db(0, len(data), len(expires))
    get_expire = expires.get
    for key in data if keys is None else keys:
        pace()
        writer.write_key(key, data[key], get_expire(key))
    writer.finish()
    return writer


def settle_keyspace(db: Keyspace, settings: dict | None = None, pace: Callable[[], None] = _unpaced) -> None:
    """Replace every value by what a write and a load of it give (codec.reloaded),
    so a snapshot's state digest is the digest of the state it loads to."""
    settings = SHARD_DEFAULTS if settings is None else settings
    data = db.data
    for key, value in data.items():
        pace()
        settled = C.reloaded(value, settings)
        if settled is not value:
            data[key] = settled


# --- reading ----------------------------------------------------------------------


class FileSource:
    """A codec Source over a file: buffered reads that fold every consumed byte
    into a running CRC-64."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._crc_pos = 0
        self._crc = Crc64()
        self.offset = 0  # file offset of _buf[0]

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            self._refill(n)
            end = self._pos + n
            if end > len(self._buf):
                raise C.RdbError(f"RDB truncated at offset {self.offset + len(self._buf)}")
        data = self._buf[self._pos:end]
        self._pos = end
        return data

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._refill(1)
            if self._pos >= len(self._buf):
                raise C.RdbError(f"RDB truncated at offset {self.offset}")
        b = self._buf[self._pos]
        self._pos += 1
        return b

    def position(self) -> int:
        return self.offset + self._pos

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
    the iteration `reader.info` holds the version, AUX fields and what was
    skipped. Values get the encodings `settings` (the CONFIG thresholds; a
    starting shard's defaults unless given) choose, as rdbLoad chooses them."""

    def __init__(self, f: BinaryIO, settings: dict | None = None) -> None:
        self._src = FileSource(f)
        self._settings = SHARD_DEFAULTS if settings is None else settings
        self.info = RdbInfo()

    def _string(self) -> bytes:
        return C.read_string(self._src, MAX_FILE_BLOB_BYTES)

    def entries(self) -> Iterator[RdbEntry]:
        """Every non-empty key in file order; verifies the checksum at the end."""
        src = self._src
        try:
            yield from self._entries()
        except C.RdbError as e:
            raise C.RdbError(f"{e} (near offset {src.position()})") from None

    def _entries(self) -> Iterator[RdbEntry]:
        src = self._src
        info = self.info
        header = src.take(9)
        if header[:5] != C.RDB_MAGIC or not header[5:].isdigit():
            raise C.RdbError("not an RDB file (no REDIS magic)")
        version = int(header[5:])
        if not 1 <= version <= C.MAX_RDB_VERSION:
            raise C.RdbError(f"unsupported RDB version {version}")
        info.version = version
        db = 0
        expire_ms = None
        while True:
            t = src.byte()
            if t == C.OP_EXPIRETIME_MS:
                expire_ms = int.from_bytes(src.take(8), "little")
                continue
            if t == C.OP_EXPIRETIME:
                expire_ms = int.from_bytes(src.take(4), "little") * 1000
                continue
            if t == C.OP_SELECTDB:
                db = C.read_count(src)
                continue
            if t == C.OP_RESIZEDB:
                C.read_count(src), C.read_count(src)
                continue
            if t == C.OP_AUX:
                name = self._string()
                info.aux[name] = self._string()
                continue
            if t == C.OP_IDLE:
                C.read_count(src)
                continue
            if t == C.OP_FREQ:
                src.byte()
                continue
            if t == C.OP_FUNCTION2:
                info.functions.append(self._string())
                continue
            if t == C.OP_MODULE_AUX:
                C.skip_module_value(src, MAX_FILE_BLOB_BYTES)
                info.skipped.append("module aux data")
                continue
            if t == C.OP_FUNCTION_PRE_GA:
                raise C.RdbError("function data of a Redis 7.0 release candidate is not supported")
            if t == C.OP_EOF:
                break
            key = self._string()
            try:
                value = C.decode_object(src, t, self._settings, version, MAX_FILE_BLOB_BYTES)
            except C.EmptyKey:
                info.empty_keys_skipped += 1
                if info.empty_keys_skipped <= EMPTY_KEYS_NAMED:
                    info.skipped.append(f"empty key {key[:64]!r}")
                expire_ms = None
                continue
            yield RdbEntry(db, key, value, expire_ms, t)
            expire_ms = None
        computed = src.crc()
        if version >= 5:
            stored = int.from_bytes(src.take(8), "little")
            if stored != 0:
                if stored != computed:
                    raise C.RdbError(f"RDB checksum mismatch: file says {stored:016x}, "
                                     f"content gives {computed:016x}")
                info.checksum_verified = True


def keyspace_entries(reader: RdbReader) -> Iterator[RdbEntry]:
    """The reader's entries, refusing what a durakv keyspace cannot hold."""
    for entry in reader.entries():
        if entry.db != 0:
            raise C.RdbError(f"key {entry.key[:64]!r} is in database {entry.db}; durakv has database 0 only")
        if type(entry.value) is C.Unsupported:
            raise C.RdbError(f"key {entry.key[:64]!r} is a {entry.value.kind}, which durakv cannot hold")
        yield entry


def load_rdb(f: BinaryIO, db: Keyspace, pace: Callable[[], None] = _unpaced,
             settings: dict | None = None) -> RdbInfo:
    """Load an RDB holding only database 0 and durakv's types into a Keyspace,
    keeping every key (expired ones included: the keyspace expires them), and
    make its function libraries the keyspace's whole library set (none if it
    has none). Raises RdbError on anything it cannot hold. pace() is called
    for each key."""
    reader = RdbReader(f, settings)
    for entry in keyspace_entries(reader):
        pace()
        if entry.key in db.data:
            raise C.RdbError(f"key {entry.key[:64]!r} appears twice in the RDB")
        db.put(entry.key, entry.value)
        if entry.expire_ms is not None:
            db.set_expire(entry.key, entry.expire_ms)
    try:
        restore_libraries(db, reader.info.functions)
    except ReplyError as e:
        raise C.RdbError(f"function library: {e.message.decode(errors='replace')}") from None
    return reader.info
