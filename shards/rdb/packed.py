"""Redis' packed collection blobs as they appear inside an RDB: listpack
(Redis 7 lists, small hashes and zsets), intset (small integer sets) and, for
reading RDBs of older Redis versions, ziplist.

Listpack layout: total bytes (u32 LE), element count (u16 LE, 65535 when it
does not fit), entries, 0xFF. An entry is an encoding byte (+ data) followed by
"backlen", the entry's own size in 1-5 bytes of 7 bits, most significant first,
every byte but the first with its top bit set (so it can be read backwards).
Integers are stored in the smallest of 7-bit unsigned, 13-bit, 16, 24, 32 or
64-bit signed forms; strings with a 6-bit, 12-bit or 32-bit length. Like
Redis, the encoder stores an element that is a canonical integer (string2ll)
as an integer; decoding gives back the same bytes either way.
"""

from __future__ import annotations

import struct

from durakv.shards.numbers import parse_ll

LP_HEADER_BYTES = 6
LP_EOF = 0xFF
LP_COUNT_UNKNOWN = 65535
MAX_LISTPACK_BYTES = (1 << 32) - 1

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<IH")


class PackedError(ValueError):
    """A packed blob that does not follow its format."""


# --- listpack encoding ------------------------------------------------------------


def _backlen(size: int) -> bytes:
    if size <= 127:
        return bytes((size,))
    if size < 16383:
        return bytes((size >> 7, (size & 127) | 128))
    if size < 2097151:
        return bytes((size >> 14, ((size >> 7) & 127) | 128, (size & 127) | 128))
    if size < 268435455:
        return bytes((size >> 21, ((size >> 14) & 127) | 128, ((size >> 7) & 127) | 128,
                      (size & 127) | 128))
    return bytes((size >> 28, ((size >> 21) & 127) | 128, ((size >> 14) & 127) | 128,
                  ((size >> 7) & 127) | 128, (size & 127) | 128))


def _int_entry(v: int) -> bytes:
    if 0 <= v <= 127:
        return bytes((v, 1))
    if -4096 <= v <= 4095:
        u = v & 0x1FFF
        return bytes((0xC0 | (u >> 8), u & 0xFF, 2))
    if -32768 <= v <= 32767:
        return b"\xf1" + (v & 0xFFFF).to_bytes(2, "little") + b"\x03"
    if -8388608 <= v <= 8388607:
        return b"\xf2" + (v & 0xFFFFFF).to_bytes(3, "little") + b"\x04"
    if -2147483648 <= v <= 2147483647:
        return b"\xf3" + (v & 0xFFFFFFFF).to_bytes(4, "little") + b"\x05"
    return b"\xf4" + (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + b"\x09"


def lp_entry(element: bytes | int) -> bytes:
    """One listpack entry (encoding, data, backlen) for a bytes element (stored
    as an integer when it is a canonical one) or an int."""
    if type(element) is int:
        return _int_entry(element)
    n = len(element)
    if n <= 20:
        v = parse_ll(element)
        if v is not None:
            return _int_entry(v)
    if n < 64:
        return bytes((0x80 | n,)) + element + bytes((n + 1,))
    if n < 4096:
        return bytes((0xE0 | (n >> 8), n & 0xFF)) + element + _backlen(n + 2)
    return b"\xf0" + _U32.pack(n) + element + _backlen(n + 5)


def lp_from_entries(entries: list[bytes]) -> bytes:
    """A listpack from already encoded entries (see lp_entry)."""
    body_bytes = sum(map(len, entries))
    total = LP_HEADER_BYTES + body_bytes + 1
    if total > MAX_LISTPACK_BYTES:
        raise PackedError(f"listpack of {total} bytes exceeds the 4 GiB format limit")
    count = len(entries) if len(entries) < LP_COUNT_UNKNOWN else LP_COUNT_UNKNOWN
    return _HEADER.pack(total, count) + b"".join(entries) + b"\xff"


def lp_encode(elements) -> bytes:
    return lp_from_entries([lp_entry(e) for e in elements])


# --- listpack decoding ------------------------------------------------------------


def lp_decode(blob: bytes) -> list[bytes]:
    """Every element of a listpack as bytes (integers in decimal), validating
    the header, each entry's backlen and the terminator."""
    if len(blob) < LP_HEADER_BYTES + 1:
        raise PackedError("listpack shorter than its header")
    total, count = _HEADER.unpack_from(blob, 0)
    if total != len(blob):
        raise PackedError(f"listpack header says {total} bytes, blob has {len(blob)}")
    out: list[bytes] = []
    i = LP_HEADER_BYTES
    end = total - 1
    while i < end:
        start = i
        b = blob[i]
        if b < 0x80:
            out.append(b"%d" % b)
            i += 1
        elif b < 0xC0:
            n = b & 0x3F
            out.append(blob[i + 1:i + 1 + n])
            i += 1 + n
        elif b < 0xE0:
            v = ((b & 0x1F) << 8) | blob[i + 1]
            out.append(b"%d" % (v - 8192 if v >= 4096 else v))
            i += 2
        elif b < 0xF0:
            n = ((b & 0x0F) << 8) | blob[i + 1]
            out.append(blob[i + 2:i + 2 + n])
            i += 2 + n
        elif b == 0xF0:
            n = _U32.unpack_from(blob, i + 1)[0]
            out.append(blob[i + 5:i + 5 + n])
            i += 5 + n
        elif 0xF1 <= b <= 0xF4:
            width = (2, 3, 4, 8)[b - 0xF1]
            out.append(b"%d" % int.from_bytes(blob[i + 1:i + 1 + width], "little", signed=True))
            i += 1 + width
        else:
            raise PackedError(f"listpack entry with bad encoding byte {b:#x} at offset {i}")
        size = i - start
        back = _backlen(size)
        if blob[i:i + len(back)] != back:
            raise PackedError(f"listpack entry at offset {start}: bad backlen")
        i += len(back)
    if i != end or blob[end] != LP_EOF:
        raise PackedError("listpack does not end with its terminator where its header says")
    if count != LP_COUNT_UNKNOWN and count != len(out):
        raise PackedError(f"listpack header counts {count} elements, found {len(out)}")
    return out


# --- intset ------------------------------------------------------------------------

_INTSET_FORMATS = {2: "h", 4: "i", 8: "q"}


def intset_encode(values: list[int]) -> bytes:
    """An intset of distinct integers (sorted here), in the narrowest width."""
    values = sorted(values)
    lo, hi = (values[0], values[-1]) if values else (0, 0)
    if -32768 <= lo and hi <= 32767:
        width = 2
    elif -2147483648 <= lo and hi <= 2147483647:
        width = 4
    else:
        width = 8
    return struct.pack(f"<II{len(values)}{_INTSET_FORMATS[width]}", width, len(values), *values)


def intset_decode(blob: bytes) -> list[bytes]:
    if len(blob) < 8:
        raise PackedError("intset shorter than its header")
    width, count = struct.unpack_from("<II", blob, 0)
    fmt = _INTSET_FORMATS.get(width)
    if fmt is None:
        raise PackedError(f"intset with invalid encoding {width}")
    if len(blob) != 8 + width * count:
        raise PackedError(f"intset of {count} x {width} bytes has {len(blob) - 8} bytes of data")
    values = struct.unpack_from(f"<{count}{fmt}", blob, 8)
    if any(values[k] >= values[k + 1] for k in range(count - 1)):
        raise PackedError("intset members are not sorted and unique")
    return [b"%d" % v for v in values]


# --- ziplist (reading only) ---------------------------------------------------------


def ziplist_decode(blob: bytes) -> list[bytes]:
    """Elements of a ziplist (RDBs of Redis < 7): zlbytes u32, zltail u32, zllen
    u16, entries of (prevlen, encoding, data), 0xFF."""
    if len(blob) < 11:
        raise PackedError("ziplist shorter than its header")
    total = _U32.unpack_from(blob, 0)[0]
    if total != len(blob):
        raise PackedError(f"ziplist header says {total} bytes, blob has {len(blob)}")
    out: list[bytes] = []
    i = 10
    while blob[i] != 0xFF:
        i += 5 if blob[i] == 0xFE else 1
        b = blob[i]
        kind = b >> 6
        if kind == 0:
            n, i = b & 0x3F, i + 1
        elif kind == 1:
            n, i = ((b & 0x3F) << 8) | blob[i + 1], i + 2
        elif kind == 2:
            n, i = int.from_bytes(blob[i + 1:i + 5], "big"), i + 5
        else:
            n = -1
        if n >= 0:
            out.append(blob[i:i + n])
            i += n
            continue
        if b == 0xC0:
            width = 2
        elif b == 0xD0:
            width = 4
        elif b == 0xE0:
            width = 8
        elif b == 0xF0:
            width = 3
        elif b == 0xFE:
            width = 1
        elif 0xF1 <= b <= 0xFD:
            out.append(b"%d" % ((b & 0x0F) - 1))
            i += 1
            continue
        else:
            raise PackedError(f"ziplist entry with bad encoding byte {b:#x} at offset {i}")
        out.append(b"%d" % int.from_bytes(blob[i + 1:i + 1 + width], "little", signed=True))
        i += 1 + width
        if i >= len(blob):
            raise PackedError("ziplist runs past its end")
    if i != len(blob) - 1:
        raise PackedError("ziplist terminator before the end of the blob")
    return out
