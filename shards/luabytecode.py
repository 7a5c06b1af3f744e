"""Turn a compiled Lua 5.1 chunk's tail calls into plain calls.

Why: redis.call is a Lua function in durakv's sandbox (lua_boot.lua), because lupa
cannot hand more than about 7,997 arguments to a Python callable (its C-stack
checks hit Lua's 8,000-slot limit), while Redis' scripts may pass 8,001
(`redis.call("lpush", "l", unpack(a))`). In Redis redis.call is a C function, and a
script's `return redis.call(...)` keeps the script's frame, so an error names the
script's line. A Lua callee is tail-called instead and the frame is gone. Lua 5.1
compiles `return f(...)` to TAILCALL A B 0 followed by RETURN A 0; CALL A B 0 with
that same RETURN returns the same values, so rewriting the opcode keeps the
semantics and the frame. The one difference: tail recursion now uses a call level
per step, and Lua's limit on them answers "stack overflow" (after about 16,700).

The format is lundump.c's for the header lupa's Lua 5.1 writes (checked below).
"""

from __future__ import annotations

import struct

HEADER = b"\x1bLuaQ\x00\x01\x04\x08\x04\x08\x00"  # Lua 5.1, little endian, int 4, size_t 8, double
OP_MASK = 0x3F
OP_CALL = 28
OP_TAILCALL = 29
MAX_PROTO_DEPTH = 250  # Lua 5.1 nests at most LUAI_MAXCCALLS (200) functions
_INT = struct.Struct("<i")
_SIZE = struct.Struct("<Q")
_T_NIL, _T_BOOLEAN, _T_NUMBER, _T_STRING = 0, 1, 3, 4


class BytecodeError(ValueError):
    """The chunk is not in the format this module knows (a lupa built another way)."""


def without_tail_calls(chunk: bytes) -> bytes:
    """The chunk (string.dump's output) with every TAILCALL of every function a CALL."""
    if not chunk.startswith(HEADER):
        raise BytecodeError(f"unexpected Lua bytecode header {chunk[:len(HEADER)]!r}")
    out = bytearray(chunk)
    end = _function(out, len(HEADER), 0)
    if end != len(out):
        raise BytecodeError(f"{len(out) - end} bytes after the main function")
    return bytes(out)


def _int(buf: bytearray, pos: int) -> tuple[int, int]:
    return _INT.unpack_from(buf, pos)[0], pos + _INT.size


def _string(buf: bytearray, pos: int) -> int:
    size = _SIZE.unpack_from(buf, pos)[0]
    return pos + _SIZE.size + size


def _function(buf: bytearray, pos: int, depth: int) -> int:
    """Patch one function prototype in place; returns the position after it."""
    if depth > MAX_PROTO_DEPTH:
        raise BytecodeError("functions nested deeper than Lua allows")
    pos = _string(buf, pos)  # source
    pos += 2 * _INT.size + 4  # linedefined, lastlinedefined, nups, numparams, is_vararg, maxstacksize
    count, pos = _int(buf, pos)
    for at in range(pos, pos + 4 * count, 4):
        if buf[at] & OP_MASK == OP_TAILCALL:
            buf[at] = (buf[at] & ~OP_MASK) | OP_CALL
    pos += 4 * count
    count, pos = _int(buf, pos)  # constants
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind == _T_BOOLEAN:
            pos += 1
        elif kind == _T_NUMBER:
            pos += 8
        elif kind == _T_STRING:
            pos = _string(buf, pos)
        elif kind != _T_NIL:
            raise BytecodeError(f"unknown constant type {kind}")
    count, pos = _int(buf, pos)  # nested functions
    for _ in range(count):
        pos = _function(buf, pos, depth + 1)
    count, pos = _int(buf, pos)  # line info
    pos += _INT.size * count
    count, pos = _int(buf, pos)  # local variables: name, startpc, endpc
    for _ in range(count):
        pos = _string(buf, pos) + 2 * _INT.size
    count, pos = _int(buf, pos)  # upvalue names
    for _ in range(count):
        pos = _string(buf, pos)
    if pos > len(buf):
        raise BytecodeError("truncated chunk")
    return pos
