"""The Lua libraries Redis 7.0 links into its interpreter that lupa's Lua lacks:
bit (LuaBitOp), cjson (lua-cjson) and cmsgpack (lua-cmsgpack), written here in
Python against their C sources' rules (number formats, array detection, the
smallest msgpack encodings, nesting limits), and struct (lua_struct.c).
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
            raise LibError("bad argument #0 to 'pack' (MessagePack pack needs input.)")
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


# --- struct ---------------------------------------------------------------------------------

STRUCT_MAX_INT_BYTES = 32  # lua_struct.c MAXINTSIZE
STRUCT_MAX_ALIGN = 8  # lua_struct.c MAXALIGN on x86-64: offsetof(struct {char c; double u;}, u)
_U64 = (1 << 64) - 1
# optsize: the bytes each option takes (i/I and c read a size after them).
_STRUCT_SIZES = {"b": 1, "B": 1, "h": 2, "H": 2, "l": 8, "L": 8, "T": 8, "f": 4, "d": 8, "x": 1}
_STRUCT_INTEGERS = frozenset("bBhHlLTiI")


class Struct:
    """Roberto Ierusalimschy's struct library as Redis 7.0 builds it (lua_struct.c):
    pack, unpack and size over the format letters, with its alignment rule, its
    64-bit integer arithmetic and its error texts. Native order is little-endian."""

    def __init__(self, lua_type: Callable[[Any], Any]) -> None:
        self.lua_type = lua_type

    def library(self) -> dict[bytes, Any]:
        return {b"pack": self.pack, b"unpack": self.unpack, b"size": self.size}

    # --- argument checks (lauxlib's texts) --------------------------------------------

    def _type_name(self, args: tuple, n: int) -> str:
        if n > len(args):
            return "no value"
        value = args[n - 1]
        if value is None:
            return "nil"
        if type(value) is bool:
            return "boolean"
        if type(value) is bytes:
            return "string"
        if type(value) in (int, float):
            return "number"
        kind = self.lua_type(value)
        return kind.decode() if isinstance(kind, bytes) else str(kind or "userdata")

    @staticmethod
    def _arg_error(fn: str, n: int, message: str) -> LibError:
        return LibError(f"bad argument #{n} to '{fn}' ({message})")

    def _number(self, fn: str, args: tuple, n: int) -> float | int:
        """luaL_checknumber: a number, or a string that reads as one."""
        value = args[n - 1] if n <= len(args) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, bytes):
            number = _lua_str2number(value)
            if number is not None:
                return number
        got = "nil" if fn == "pack" and n > len(args) else self._type_name(args, n)  # pack pushes a nil first
        raise self._arg_error(fn, n, f"number expected, got {got}")

    def _string(self, fn: str, args: tuple, n: int) -> bytes:
        """luaL_checklstring: a string, or a number in Lua's %.14g."""
        value = args[n - 1] if n <= len(args) else None
        if isinstance(value, bytes):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _lua_number(float(value))
        got = "nil" if fn == "pack" and n > len(args) > 0 else self._type_name(args, n)
        raise self._arg_error(fn, n, f"string expected, got {got}")

    # --- the format ----------------------------------------------------------------------

    @staticmethod
    def _getnum(fmt: bytes, at: int, default: int) -> tuple[int, int]:
        if at >= len(fmt) or not 48 <= fmt[at] <= 57:
            return default, at
        value = 0
        while at < len(fmt) and 48 <= fmt[at] <= 57:
            if value > (2**31 - 1) // 10 or value * 10 > 2**31 - 1 - (fmt[at] - 48):
                raise LibError("integral size overflow")
            value = value * 10 + fmt[at] - 48
            at += 1
        return value, at

    def _optsize(self, opt: str, fmt: bytes, at: int) -> tuple[int, int]:
        size = _STRUCT_SIZES.get(opt)
        if size is not None:
            return size, at
        if opt == "c":
            return self._getnum(fmt, at, 1)
        if opt in "iI":
            size, at = self._getnum(fmt, at, 4)
            if size > STRUCT_MAX_INT_BYTES:
                raise LibError(f"integral size {size} is larger than limit of {STRUCT_MAX_INT_BYTES}")
            return size, at
        return 0, at

    @staticmethod
    def _toalign(length: int, align: int, opt: str, size: int) -> int:
        if size == 0 or opt == "c":
            return 0
        size = min(size, align)
        return (size - (length & (size - 1))) & (size - 1)

    def _control(self, fn: str, opt: str, fmt: bytes, at: int, header: list) -> int:
        """Options that change the header (endianness, alignment); header is [little, align]."""
        if opt == " ":
            return at
        if opt == ">":
            header[0] = False
        elif opt == "<":
            header[0] = True
        elif opt == "!":
            align, at = self._getnum(fmt, at, STRUCT_MAX_ALIGN)
            if align & (align - 1):
                raise LibError(f"alignment {align} is not a power of 2")
            header[1] = align
        else:
            raise self._arg_error(fn, 1, f"invalid format option '{opt}'")
        return at

    # --- the functions ---------------------------------------------------------------------

    def pack(self, *args: Any) -> bytes:
        fmt = self._string("pack", args, 1)
        header = [True, 1]
        out = bytearray()
        arg = 2
        at = 0
        while at < len(fmt):
            opt = chr(fmt[at])
            at += 1
            size, at = self._optsize(opt, fmt, at)
            out += bytes(self._toalign(len(out), header[1], opt, size))
            if opt in _STRUCT_INTEGERS:
                number = self._number("pack", args, arg)
                arg += 1
                value = _c_integer(number) & _U64
                # The value's 64 bits, low bytes kept; a field wider than 8 bytes is zero beyond them.
                if header[0]:
                    out += value.to_bytes(max(size, 8), "little")[:size]
                else:
                    out += value.to_bytes(max(size, 8), "big")[-size:] if size else b""
            elif opt == "x":
                out += b"\0"
            elif opt in "fd":
                number = float(self._number("pack", args, arg))
                arg += 1
                code = ("<" if header[0] else ">") + opt
                try:
                    out += struct.pack(code, number)
                except OverflowError:  # C's double-to-float conversion saturates to infinity
                    out += struct.pack(code, math.copysign(math.inf, number))
            elif opt in "cs":
                data = self._string("pack", args, arg)
                arg += 1
                if size == 0:
                    size = len(data)
                if len(data) < size:
                    raise self._arg_error("pack", arg, "string too short")  # lua_struct.c names the next one
                out += data[:size]
                if opt == "s":
                    out += b"\0"
            else:
                at = self._control("pack", opt, fmt, at, header)
        return bytes(out)

    def unpack(self, *args: Any) -> tuple:
        fmt = self._string("unpack", args, 1)
        data = self._string("unpack", args, 2)
        pos = 1
        if len(args) >= 3 and args[2] is not None:
            pos = int(self._number("unpack", args, 3))
        if pos <= 0:
            raise self._arg_error("unpack", 3, "offset must be 1 or greater")
        pos -= 1
        header = [True, 1]
        results: list[Any] = []
        at = 0
        while at < len(fmt):
            opt = chr(fmt[at])
            at += 1
            size, at = self._optsize(opt, fmt, at)
            pos += self._toalign(pos, header[1], opt, size)
            if not (size <= len(data) and pos <= len(data) - size):
                raise self._arg_error("unpack", 2, "data string too short")
            if opt in _STRUCT_INTEGERS:
                results.append(_get_integer(data[pos:pos + size], bool(header[0]), opt.islower()))
            elif opt in "fd":
                results.append(struct.unpack(("<" if header[0] else ">") + opt, data[pos:pos + size])[0])
            elif opt == "c":
                if size == 0:
                    if not results or type(results[-1]) not in (int, float):
                        raise LibError("format 'c0' needs a previous size")
                    size = int(results.pop())
                    if not (size <= len(data) and pos <= len(data) - size):
                        raise self._arg_error("unpack", 2, "data string too short")
                results.append(data[pos:pos + size])
            elif opt == "s":
                end = data.find(b"\0", pos)
                if end < 0:
                    raise LibError("unfinished string in data")
                results.append(data[pos:end])
                size = end - pos + 1
            elif opt != "x":
                at = self._control("unpack", opt, fmt, at, header)
            pos += size
        results.append(pos + 1)
        return tuple(results)

    def size(self, *args: Any) -> int:
        fmt = self._string("size", args, 1)
        header = [True, 1]
        pos = 0
        at = 0
        while at < len(fmt):
            opt = chr(fmt[at])
            at += 1
            size, at = self._optsize(opt, fmt, at)
            pos += self._toalign(pos, header[1], opt, size)
            if opt == "s":
                raise self._arg_error("size", 1, "option 's' has no fixed size")
            if opt == "c" and size == 0:
                raise self._arg_error("size", 1, "option 'c0' has no fixed size")
            if not opt.isalnum():
                at = self._control("size", opt, fmt, at, header)
            pos += size
        return pos


def _c_integer(number: float | int) -> int:
    """lua_struct.c's putinteger: (Uinttype)(Inttype)n for a negative n, (Uinttype)n
    otherwise, as x86-64 converts: truncation toward zero, 0x8000000000000000 for
    what cvttsd2si cannot hold, and an unsigned conversion that subtracts 2^63 first."""
    if number != number:
        return 1 << 63
    if number < 0:
        return _cvttsd2si(number)
    if number >= 1 << 63:
        return _cvttsd2si(number - (1 << 63)) ^ (1 << 63)
    return int(number)


def _cvttsd2si(number: float | int) -> int:
    if number in (math.inf, -math.inf) or not -(1 << 63) <= number < 1 << 63:
        return 1 << 63
    return int(number)


def _get_integer(raw: bytes, little: bool, signed: bool) -> float:
    """lua_struct.c's getinteger: the low 64 bits, sign-extended from the field's top bit."""
    value = int.from_bytes(raw, "little" if little else "big") & _U64
    if signed:
        mask = (_U64 << ((len(raw) * 8 - 1) & 63)) & _U64  # x86-64 masks the shift count
        if value & mask:
            value |= mask
        if value >= 1 << 63:
            value -= 1 << 64
    return float(value) if abs(value) >= 1 << 53 else value


def _lua_str2number(text: bytes) -> float | int | None:
    """lua_str2number (strtod, or a 0x hex integer), with surrounding spaces allowed."""
    stripped = text.strip(b" \t\n\r\f\v")
    if not stripped:
        return None
    try:
        if stripped[:2].lower() in (b"0x",) or stripped[:3].lower() in (b"-0x", b"+0x"):
            return int(stripped, 16)
        value = float(stripped)
    except ValueError:
        return None
    if stripped.lower().lstrip(b"+-") in (b"inf", b"nan", b"infinity"):
        return value  # strtod reads these
    return int(value) if value.is_integer() and abs(value) < 1 << 53 else value
