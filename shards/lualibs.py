"""The Lua libraries Redis 7.0 links into its interpreter that lupa's Lua lacks:
bit (LuaBitOp), cjson (lua-cjson) and cmsgpack (lua-cmsgpack), written here in
Python against their C sources' rules (number formats, array detection, the
smallest msgpack encodings, nesting limits). struct is not provided.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Callable

MSGPACK_MAX_NESTING = 16  # lua_cmsgpack.c LUACMSGPACK_MAX_NESTING
CJSON_DEFAULT_DEPTH = 1000
CJSON_SPARSE_RATIO = 2
CJSON_SPARSE_SAFE = 10


class LibError(Exception):
    """A library error: raised into Lua as a plain error message."""


def _int32(x: Any) -> int:
    """LuaBitOp's barg: the number rounded (half to even) to its low 32 bits, signed."""
    n = round(x) & 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def bit_library() -> dict[bytes, Callable]:
    def tohex(x: Any, n: Any = 8) -> bytes:
        n = int(n)
        upper = n < 0
        n = min(abs(n), 8)
        text = b"%0*x" % (n, _int32(x) & ((1 << (4 * n)) - 1)) if n else b""
        return text.upper() if upper else text

    def fold(op: Callable[[int, int], int]) -> Callable:
        def run(x: Any, *rest: Any) -> int:
            acc = _int32(x)
            for y in rest:
                acc = _int32(op(acc, _int32(y)))
            return acc
        return run

    def rol(x: Any, n: Any) -> int:
        v, s = _int32(x) & 0xFFFFFFFF, _int32(n) & 31
        return _int32((v << s) | (v >> (32 - s)))

    def ror(x: Any, n: Any) -> int:
        v, s = _int32(x) & 0xFFFFFFFF, _int32(n) & 31
        return _int32((v >> s) | (v << (32 - s)))

    return {
        b"tobit": lambda x: _int32(x),
        b"tohex": tohex,
        b"bnot": lambda x: _int32(~_int32(x)),
        b"band": fold(lambda a, b: a & b),
        b"bor": fold(lambda a, b: a | b),
        b"bxor": fold(lambda a, b: a ^ b),
        b"lshift": lambda x, n: _int32((_int32(x) & 0xFFFFFFFF) << (_int32(n) & 31)),
        b"rshift": lambda x, n: _int32((_int32(x) & 0xFFFFFFFF) >> (_int32(n) & 31)),
        b"arshift": lambda x, n: _int32(_int32(x) >> (_int32(n) & 31)),
        b"rol": rol,
        b"ror": ror,
        b"bswap": lambda x: _int32(int.from_bytes((_int32(x) & 0xFFFFFFFF).to_bytes(4, "little"), "big")),
    }


# --- cjson --------------------------------------------------------------------------------

_JSON_ESCAPES = {i: b"\\u%04x" % i for i in range(32)}
_JSON_ESCAPES.update({8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r", 0x7F: b"\\u007f",
                      ord('"'): b'\\"', ord("\\"): b"\\\\", ord("/"): b"\\/"})


def _json_string(s: bytes) -> bytes:
    return b'"' + b"".join(_JSON_ESCAPES.get(c, bytes((c,))) for c in s) + b'"'


def _lua_number(d: float) -> bytes:
    """Lua 5.1's tostring of a number (LUAI_NUMFFORMAT "%.14g")."""
    return b"%.14g" % d


class CJson:
    """lua-cjson's encode/decode with its settings (the ones Redis' tests touch)."""

    def __init__(self, runtime: Any, is_table: Callable[[Any], bool], null: Any) -> None:
        self.runtime = runtime
        self.is_table = is_table
        self.null = null
        self.encode_depth = CJSON_DEFAULT_DEPTH
        self.decode_depth = CJSON_DEFAULT_DEPTH
        self.invalid_numbers = False

    def library(self) -> dict[bytes, Any]:
        def setting(attr: str) -> Callable:
            def set_value(value: Any = None) -> Any:
                if value is not None:
                    setattr(self, attr, value if type(value) is bool else int(value))
                return getattr(self, attr)
            return set_value

        return {
            b"encode": self.encode, b"decode": self.decode, b"null": self.null,
            b"encode_max_depth": setting("encode_depth"), b"decode_max_depth": setting("decode_depth"),
            b"encode_invalid_numbers": setting("invalid_numbers"),
            b"encode_keep_buffer": lambda *a: True, b"encode_sparse_array": lambda *a: True,
            b"encode_number_precision": lambda *a: 14, b"decode_invalid_numbers": lambda *a: True,
            b"_NAME": b"cjson", b"_VERSION": b"2.1.0",
        }

    def encode(self, *args: Any) -> bytes:
        if len(args) != 1:
            raise LibError("bad argument #1 to 'encode' (expected 1 argument)")
        out: list[bytes] = []
        self._encode(args[0], out, 1)
        return b"".join(out)

    def _encode(self, value: Any, out: list[bytes], depth: int) -> None:
        t = type(value)
        if t is bytes:
            out.append(_json_string(value))
        elif t is bool:
            out.append(b"true" if value else b"false")
        elif t is int or t is float:
            if t is float and (math.isnan(value) or math.isinf(value)):
                if not self.invalid_numbers:
                    raise LibError("Cannot serialise number: must not be NaN or Inf")
                out.append(b"nan" if math.isnan(value) else (b"inf" if value > 0 else b"-inf"))
            else:
                out.append(_lua_number(value))
        elif value is None or value is self.null:
            out.append(b"null")
        elif self.is_table(value):
            if depth > self.encode_depth:
                raise LibError(f"Cannot serialise, excessive nesting ({depth})")
            self._encode_table(value, out, depth)
        else:
            raise LibError(f"Cannot serialise {self.runtime.eval('type')(value).decode()}: type not supported")

    def _encode_table(self, table: Any, out: list[bytes], depth: int) -> None:
        items = list(table.items())
        size = 0
        is_array = True
        for key, _ in items:
            if type(key) in (int, float) and key >= 1 and key == int(key):
                size = max(size, int(key))
            else:
                is_array = False
                break
        if is_array and size > 0:
            if size > len(items) * CJSON_SPARSE_RATIO and size > CJSON_SPARSE_SAFE:
                raise LibError("Cannot serialise table: excessively sparse array")
            out.append(b"[")
            for i in range(1, size + 1):
                if i > 1:
                    out.append(b",")
                self._encode(table[i], out, depth + 1)
            out.append(b"]")
            return
        out.append(b"{")
        for n, (key, value) in enumerate(items):
            if n:
                out.append(b",")
            if type(key) is bytes:
                out.append(_json_string(key))
            elif type(key) in (int, float):
                out.append(b'"' + _lua_number(key) + b'"')
            else:
                raise LibError("Cannot serialise table: table key must be a number or string")
            out.append(b":")
            self._encode(value, out, depth + 1)
        out.append(b"}")

    def decode(self, *args: Any) -> Any:
        if len(args) != 1 or type(args[0]) is not bytes:
            raise LibError("bad argument #1 to 'decode' (expected 1 argument)")
        try:
            value = json.loads(args[0].decode("utf-8", "surrogateescape"))
        except ValueError as e:
            raise LibError(f"Expected value but found invalid token at character {getattr(e, 'pos', 0) + 1}") from None
        return self._to_lua(value, 1)

    def _to_lua(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if value is None:
            return self.null
        if isinstance(value, (list, dict)):
            if depth > self.decode_depth:
                raise LibError(f"Found too many nested data structures ({depth})")
            if isinstance(value, list):
                return self.runtime.table_from([self._to_lua(v, depth + 1) for v in value])
            return self.runtime.table_from({k.encode("utf-8", "surrogateescape"): self._to_lua(v, depth + 1)
                                            for k, v in value.items()})
        return value


# --- cmsgpack -------------------------------------------------------------------------------


class CMsgpack:
    """lua-cmsgpack's pack/unpack (the smallest encoding for each value)."""

    def __init__(self, runtime: Any, is_table: Callable[[Any], bool]) -> None:
        self.runtime = runtime
        self.is_table = is_table

    def library(self) -> dict[bytes, Any]:
        return {
            b"pack": self.pack, b"unpack": self.unpack, b"unpack_one": self.unpack_one,
            b"unpack_limit": self.unpack_limit, b"_NAME": b"cmsgpack", b"_VERSION": b"lua-cmsgpack 0.4.0",
        }

    def pack(self, *args: Any) -> bytes:
        if not args:
            raise LibError("MessagePack pack needs input.")
        out: list[bytes] = []
        for value in args:
            self._pack(value, out, 0)
        return b"".join(out)

    def _pack(self, value: Any, out: list[bytes], level: int) -> None:
        t = type(value)
        if t is bytes:
            n = len(value)
            if n < 32:
                out.append(bytes((0xA0 | n,)))
            elif n <= 0xFF:
                out.append(b"\xd9" + bytes((n,)))
            elif n <= 0xFFFF:
                out.append(b"\xda" + struct.pack(">H", n))
            else:
                out.append(b"\xdb" + struct.pack(">I", n))
            out.append(value)
        elif t is bool:
            out.append(b"\xc3" if value else b"\xc2")
        elif t is int or t is float:
            if value == value and not math.isinf(value) and value == int(value) \
                    and -(1 << 63) <= value < (1 << 64):
                out.append(_msgpack_int(int(value)))
            elif struct.unpack(">f", struct.pack(">f", value))[0] == value or value != value:
                out.append(b"\xca" + struct.pack(">f", value))
            else:
                out.append(b"\xcb" + struct.pack(">d", value))
        elif level < MSGPACK_MAX_NESTING and value is not None and self.is_table(value):
            self._pack_table(value, out, level + 1)
        else:
            out.append(b"\xc0")

    def _pack_table(self, table: Any, out: list[bytes], level: int) -> None:
        items = list(table.items())
        count = len(items)
        max_key = 0
        is_array = True
        for key, _ in items:
            if type(key) in (int, float) and key >= 1 and key == int(key):
                max_key = max(max_key, int(key))
            else:
                is_array = False
                break
        if is_array and max_key == count:
            out.append(_msgpack_header(count, 0x90, b"\xdc", b"\xdd"))
            for i in range(1, count + 1):
                self._pack(table[i], out, level)
            return
        out.append(_msgpack_header(count, 0x80, b"\xde", b"\xdf"))
        for key, value in items:
            self._pack(key, out, level)
            self._pack(value, out, level)

    def unpack(self, *args: Any) -> tuple:
        data = self._data(args)
        values = []
        pos = 0
        while pos < len(data):
            value, pos = self._unpack(data, pos)
            values.append(value)
        return tuple(values)

    def unpack_one(self, *args: Any) -> tuple:
        return self.unpack_limit(args[0] if args else None, 1, *args[1:2])

    def unpack_limit(self, *args: Any) -> tuple:
        data = self._data(args[:1])
        limit = int(args[1]) if len(args) > 1 and args[1] is not None else 0
        pos = int(args[2]) if len(args) > 2 and args[2] is not None else 0
        if pos < 0 or limit < 0:
            raise LibError("Invalid request to unpack with offset of %d and limit of %d." % (pos, limit))
        values: list[Any] = []
        while pos < len(data) and (limit == 0 or len(values) < limit):
            value, pos = self._unpack(data, pos)
            values.append(value)
        return (pos if pos < len(data) else -1, *values)

    def _data(self, args: tuple) -> bytes:
        if not args or type(args[0]) is not bytes:
            raise LibError("MessagePack unpack needs a string input.")
        return args[0]

    def _unpack(self, data: bytes, pos: int) -> tuple[Any, int]:
        try:
            return self._decode(data, pos)
        except (IndexError, struct.error):
            raise LibError("Missing bytes in input.") from None

    def _decode(self, data: bytes, pos: int) -> tuple[Any, int]:
        c = data[pos]
        pos += 1
        if c <= 0x7F:
            return c, pos
        if c >= 0xE0:
            return c - 0x100, pos
        if 0xA0 <= c <= 0xBF:
            return data[pos:pos + (c & 0x1F)], pos + (c & 0x1F)
        if 0x90 <= c <= 0x9F:
            return self._array(data, pos, c & 0x0F)
        if 0x80 <= c <= 0x8F:
            return self._map(data, pos, c & 0x0F)
        if c == 0xC0:
            return None, pos
        if c in (0xC2, 0xC3):
            return c == 0xC3, pos
        fixed = _MSGPACK_FIXED.get(c)
        if fixed is not None:
            fmt, size = fixed
            return struct.unpack_from(fmt, data, pos)[0], pos + size
        sized = _MSGPACK_SIZED.get(c)
        if sized is not None:
            fmt, size, kind = sized
            n = struct.unpack_from(fmt, data, pos)[0]
            pos += size
            if kind == "str":
                if pos + n > len(data):
                    raise IndexError
                return data[pos:pos + n], pos + n
            if kind == "array":
                return self._array(data, pos, n)
            return self._map(data, pos, n)
        raise LibError("Bad data format in input.")

    def _array(self, data: bytes, pos: int, n: int) -> tuple[Any, int]:
        items = []
        for _ in range(n):
            item, pos = self._decode(data, pos)
            items.append(item)
        table = self.runtime.table()
        for i, item in enumerate(items, 1):
            table[i] = item
        return table, pos

    def _map(self, data: bytes, pos: int, n: int) -> tuple[Any, int]:
        table = self.runtime.table()
        for _ in range(n):
            key, pos = self._decode(data, pos)
            value, pos = self._decode(data, pos)
            if key is not None:
                table[key] = value
        return table, pos


_MSGPACK_FIXED = {
    0xCA: (">f", 4), 0xCB: (">d", 8), 0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}
_MSGPACK_SIZED = {
    0xD9: (">B", 1, "str"), 0xDA: (">H", 2, "str"), 0xDB: (">I", 4, "str"),
    0xC4: (">B", 1, "str"), 0xC5: (">H", 2, "str"), 0xC6: (">I", 4, "str"),
    0xDC: (">H", 2, "array"), 0xDD: (">I", 4, "array"), 0xDE: (">H", 2, "map"), 0xDF: (">I", 4, "map"),
}


def _msgpack_int(n: int) -> bytes:
    if n >= 0:
        if n <= 0x7F:
            return bytes((n,))
        if n <= 0xFF:
            return b"\xcc" + bytes((n,))
        if n <= 0xFFFF:
            return b"\xcd" + struct.pack(">H", n)
        if n <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", n)
        return b"\xcf" + struct.pack(">Q", n)
    if n >= -32:
        return bytes((n & 0xFF,))
    if n >= -128:
        return b"\xd0" + struct.pack(">b", n)
    if n >= -32768:
        return b"\xd1" + struct.pack(">h", n)
    if n >= -(1 << 31):
        return b"\xd2" + struct.pack(">i", n)
    return b"\xd3" + struct.pack(">q", n)


def _msgpack_header(n: int, fix: int, code16: bytes, code32: bytes) -> bytes:
    if n <= 15:
        return bytes((fix | n,))
    if n <= 0xFFFF:
        return code16 + struct.pack(">H", n)
    return code32 + struct.pack(">I", n)
