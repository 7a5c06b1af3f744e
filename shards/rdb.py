"""The binary pieces of Redis 7.0's RDB object format that DUMP and RESTORE
carry: length and string encodings (with LZF), listpacks, ziplists, intsets,
binary doubles and the CRC64 footer.

Written from the format's description (rdb.h, listpack.md, ziplist.c's header
comment), not from Redis' code. The writer produces what Redis would load; the
reader accepts every encoding a Redis 7.0 DUMP can contain, plus the older
ziplist encodings RESTORE still accepts. Malformed input raises RdbError;
every declared length is checked against the bytes actually present, and
decompressed sizes are capped, so a hostile payload cannot make us allocate
more than it could have sent.
"""

from __future__ import annotations

import struct

from shards.args import parse_ll

RDB_VERSION = 10
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len

# Object types (rdb.h).
TYPE_STRING, TYPE_LIST, TYPE_SET, TYPE_ZSET, TYPE_HASH, TYPE_ZSET_2 = 0, 1, 2, 3, 4, 5
TYPE_LIST_ZIPLIST, TYPE_SET_INTSET, TYPE_ZSET_ZIPLIST, TYPE_HASH_ZIPLIST = 10, 11, 12, 13
TYPE_LIST_QUICKLIST, TYPE_HASH_LISTPACK, TYPE_ZSET_LISTPACK, TYPE_LIST_QUICKLIST_2 = 14, 16, 17, 18

_ENC_INT8, _ENC_INT16, _ENC_INT32, _ENC_LZF = 0, 1, 2, 3
_LEN_32, _LEN_64 = 0x80, 0x81


class RdbError(Exception):
    """The payload is not a valid RDB object."""


# --- CRC64 (Jones polynomial, reflected, as Redis' crc64.c) ------------------------

_CRC64_POLY_REFLECTED = 0x95AC9329AC4BC9B5


def _crc64_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC64_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64_table()


def crc64(data: bytes, crc: int = 0) -> int:
    table = _CRC64_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


# --- writing ----------------------------------------------------------------------


def encode_len(n: int) -> bytes:
    if n < 1 << 6:
        return bytes((n,))
    if n < 1 << 14:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n <= 0xFFFFFFFF:
        return bytes((_LEN_32,)) + struct.pack(">I", n)
    return bytes((_LEN_64,)) + struct.pack(">Q", n)


def encode_string(data: bytes) -> bytes:
    """rdbSaveRawString without LZF: short integers get the integer encodings."""
    if len(data) <= 11:
        value = parse_ll(data)
        if value is not None:
            if -(1 << 7) <= value < 1 << 7:
                return struct.pack("<Bb", 0xC0 | _ENC_INT8, value)
            if -(1 << 15) <= value < 1 << 15:
                return struct.pack("<Bh", 0xC0 | _ENC_INT16, value)
            if -(1 << 31) <= value < 1 << 31:
                return struct.pack("<Bi", 0xC0 | _ENC_INT32, value)
    return encode_len(len(data)) + data


def encode_binary_double(value: float) -> bytes:
    return struct.pack("<d", value)


def dump_footer(body: bytes) -> bytes:
    """Append the RDB version and the CRC64 of everything before it."""
    body += struct.pack("<H", RDB_VERSION)
    return body + struct.pack("<Q", crc64(body))


def _lp_backlen(size: int) -> bytes:
    if size <= 127:
        return bytes((size,))
    if size < 16383:
        return bytes((size >> 7, (size & 127) | 128))
    if size < 2097151:
        return bytes((size >> 14, ((size >> 7) & 127) | 128, (size & 127) | 128))
    if size < 268435455:
        return bytes((size >> 21, ((size >> 14) & 127) | 128, ((size >> 7) & 127) | 128, (size & 127) | 128))
    return bytes((size >> 28, ((size >> 21) & 127) | 128, ((size >> 14) & 127) | 128,
                  ((size >> 7) & 127) | 128, (size & 127) | 128))


def _lp_int(value: int) -> bytes:
    if 0 <= value <= 127:
        return bytes((value,))
    if -4096 <= value <= 4095:
        value &= 0x1FFF
        return bytes((0xC0 | (value >> 8), value & 0xFF))
    if -(1 << 15) <= value < 1 << 15:
        return b"\xf1" + struct.pack("<h", value)
    if -(1 << 23) <= value < 1 << 23:
        return b"\xf2" + struct.pack("<i", value)[:3]
    if -(1 << 31) <= value < 1 << 31:
        return b"\xf3" + struct.pack("<i", value)
    return b"\xf4" + struct.pack("<q", value)


def lp_entry(item: bytes | int) -> bytes:
    """One listpack entry; a string that reads as an integer is stored as one."""
    if type(item) is not int:
        value = parse_ll(item)
        if value is None:
            n = len(item)
            if n < 64:
                head = bytes((0x80 | n,))
            elif n < 4096:
                head = bytes((0xE0 | (n >> 8), n & 0xFF))
            else:
                head = b"\xf0" + struct.pack("<I", n)
            body = head + item
            return body + _lp_backlen(len(body))
        item = value
    body = _lp_int(item)
    return body + _lp_backlen(len(body))


def listpack(entries: list[bytes]) -> bytes:
    """A listpack from already encoded entries (lp_entry)."""
    total = 4 + 2 + sum(len(e) for e in entries) + 1
    return struct.pack("<IH", total, min(len(entries), 65535)) + b"".join(entries) + b"\xff"


def intset(values: list[int]) -> bytes:
    """An intset blob of sorted values in the narrowest width that holds them."""
    lo, hi = (min(values), max(values)) if values else (0, 0)
    if -(1 << 15) <= lo and hi < 1 << 15:
        width, code = 2, "h"
    elif -(1 << 31) <= lo and hi < 1 << 31:
        width, code = 4, "i"
    else:
        width, code = 8, "q"
    return struct.pack("<II", width, len(values)) + struct.pack("<%d%s" % (len(values), code), *sorted(values))


# --- reading ----------------------------------------------------------------------


def verify_payload(payload: bytes) -> None:
    """verifyDumpPayload: RdbError unless the version and CRC64 footer are good."""
    if len(payload) < 10:
        raise RdbError("short payload")
    version = payload[-10] | payload[-9] << 8
    if version > RDB_VERSION or struct.unpack("<Q", payload[-8:])[0] != crc64(payload[:-8]):
        raise RdbError("version or checksum")


def lzf_decompress(data: bytes, size: int) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            run = ctrl + 1
            if i + run > n or len(out) + run > size:
                raise RdbError("lzf literal overrun")
            out += data[i:i + run]
            i += run
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise RdbError("lzf truncated")
            length += data[i]
            i += 1
        if i >= n:
            raise RdbError("lzf truncated")
        ref = len(out) - ((ctrl & 0x1F) << 8) - 1 - data[i]
        i += 1
        length += 2
        if ref < 0 or len(out) + length > size:
            raise RdbError("lzf back reference out of range")
        for _ in range(length):  # byte by byte: the copy may overlap its own output
            out.append(out[ref])
            ref += 1
    if len(out) != size:
        raise RdbError("lzf size mismatch")
    return bytes(out)


class Reader:
    """Sequential reads over a payload body; every read is bounds-checked."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
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
        if first == _LEN_32:
            return struct.unpack(">I", self.take(4))[0], False
        if first == _LEN_64:
            return struct.unpack(">Q", self.take(8))[0], False
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
        if value == _ENC_INT8:
            return b"%d" % struct.unpack("<b", self.take(1))[0]
        if value == _ENC_INT16:
            return b"%d" % struct.unpack("<h", self.take(2))[0]
        if value == _ENC_INT32:
            return b"%d" % struct.unpack("<i", self.take(4))[0]
        if value == _ENC_LZF:
            compressed = self.count()
            size = self.count()
            if size > MAX_DECOMPRESSED_BYTES:
                raise RdbError("lzf string too large")
            return lzf_decompress(self.take(compressed), size)
        raise RdbError("unknown string encoding")

    def binary_double(self) -> float:
        return struct.unpack("<d", self.take(8))[0]

    def text_double(self) -> float:
        """rdbLoadDoubleValue: a length byte (253 nan, 254 inf, 255 -inf) and ASCII."""
        n = self.byte()
        if n == 253:
            return float("nan")
        if n == 254:
            return float("inf")
        if n == 255:
            return float("-inf")
        return float(self.take(n))  # sscanf("%lg") on text Redis wrote with "%.17g"


def _lp_backlen_size(size: int) -> int:
    return 1 if size <= 127 else 2 if size < 16383 else 3 if size < 2097151 else 4 if size < 268435455 else 5


def read_listpack(blob: bytes) -> list[bytes]:
    """Every entry of a listpack, integers rendered as decimal text."""
    if len(blob) < 7:
        raise RdbError("listpack too short")
    total, count = struct.unpack_from("<IH", blob)
    if total != len(blob) or blob[-1] != 0xFF:
        raise RdbError("listpack size mismatch")
    out: list[bytes] = []
    i, end = 6, len(blob) - 1
    while i < end:
        b = blob[i]
        if b < 0x80:
            item, size = b"%d" % b, 1
        elif b < 0xC0:
            size = 1 + (b & 0x3F)
            item = blob[i + 1:i + size]
        elif b < 0xE0:
            value = (b & 0x1F) << 8 | blob[i + 1]
            item, size = b"%d" % (value - (1 << 13) if value >= 1 << 12 else value), 2
        elif b < 0xF0:
            size = 2 + ((b & 0x0F) << 8 | blob[i + 1])
            item = blob[i + 2:i + size]
        elif b == 0xF0:
            size = 5 + struct.unpack_from("<I", blob, i + 1)[0]
            item = blob[i + 5:i + size]
        elif b in (0xF1, 0xF2, 0xF3, 0xF4):
            width = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[b]
            item = b"%d" % int.from_bytes(blob[i + 1:i + 1 + width], "little", signed=True)
            size = 1 + width
        else:
            raise RdbError("bad listpack entry")
        i += size + _lp_backlen_size(size)
        if i > end:
            raise RdbError("listpack entry overruns")
        out.append(item)
    if count != 65535 and count != len(out):
        raise RdbError("listpack count mismatch")
    return out


_ZIP_INT_WIDTHS = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3, 0xFE: 1}


def read_ziplist(blob: bytes) -> list[bytes]:
    """Every entry of a (pre-7.0) ziplist, integers rendered as decimal text."""
    if len(blob) < 11:
        raise RdbError("ziplist too short")
    total, _tail, count = struct.unpack_from("<IIH", blob)
    if total != len(blob) or blob[-1] != 0xFF:
        raise RdbError("ziplist size mismatch")
    out: list[bytes] = []
    i, end = 10, len(blob) - 1
    while i < end:
        i += 5 if blob[i] == 254 else 1  # the previous entry's length
        if i >= end:
            raise RdbError("ziplist entry overruns")
        e = blob[i]
        kind = e >> 6
        if kind < 3:
            if kind == 0:
                n, i = e & 0x3F, i + 1
            elif kind == 1:
                n, i = (e & 0x3F) << 8 | blob[i + 1], i + 2
            else:
                n, i = struct.unpack_from(">I", blob, i + 1)[0], i + 5
            item = blob[i:i + n]
            i += n
        elif 0xF1 <= e <= 0xFD:
            item, i = b"%d" % ((e & 0x0F) - 1), i + 1
        elif e in _ZIP_INT_WIDTHS:
            width = _ZIP_INT_WIDTHS[e]
            item = b"%d" % int.from_bytes(blob[i + 1:i + 1 + width], "little", signed=True)
            i += 1 + width
        else:
            raise RdbError("bad ziplist entry")
        if i > end:
            raise RdbError("ziplist entry overruns")
        out.append(item)
    if count != 65535 and count != len(out):
        raise RdbError("ziplist count mismatch")
    return out


def read_intset(blob: bytes) -> list[int]:
    if len(blob) < 8:
        raise RdbError("intset too short")
    width, count = struct.unpack_from("<II", blob)
    code = {2: "h", 4: "i", 8: "q"}.get(width)
    if code is None or len(blob) != 8 + width * count:
        raise RdbError("intset size mismatch")
    values = list(struct.unpack_from("<%d%s" % (count, code), blob, 8))
    if any(a >= b for a, b in zip(values, values[1:])):
        raise RdbError("intset not sorted or has duplicates")
    return values
