"""Lua's `struct` library (lua_struct.c as Redis 7.0 builds it): pack, unpack
and size compared byte for byte with redis-server, errors included, plus a
seeded sweep of random formats and values."""

from __future__ import annotations

import random

SCRIPTS = [
    "return struct.pack('>i2', 3)",
    "return struct.pack('<i2 >i2 i', 3, 3, -3)",
    "return struct.pack('bBhHlLTiI', -1, 255, -2, 65535, -3, 7, 8, -9, 10)",
    "return struct.pack('i3 I5 i12 I12', -2, 2^39 - 1, -5, 5)",
    "return struct.pack('>i3 I5 i12 I12', -2, 2^39 - 1, -5, 5)",
    "return struct.pack('!4 b i !2 b h d', 1, 2, 3, 4, 0.5)",
    "return struct.pack('! b d', 1, 2)",
    "return struct.pack('bxxb', 1, 2)",
    "return struct.pack('f d >f >d', 1.5, -2.25, 1e300, 1/3)",
    "return struct.pack('s', 'abc')",
    "return struct.pack('c3 c0 c', 'abcdef', 'xy', 'z')",
    "return struct.pack('s i', 12.5, '12')",
    "return struct.pack('i', 1e30)",
    "return struct.pack('i', -1e30)",
    "return struct.pack('I', -1)",
    "return struct.pack('L', 2^64)",
    "return struct.pack('i', 0x7fffffff + 1)",
    "return struct.pack('i', 3.99)",
    "return struct.pack('i', -3.99)",
    "return struct.pack('I0', 5)",
    "return struct.pack('', 5)",
    "return struct.pack('  ')",
    "return {struct.unpack('<i', struct.pack('<i', -123456))}",
    "return {struct.unpack('>I3 i3', struct.pack('>I3 i3', 70000, -70000))}",
    "return {struct.unpack('i12', struct.pack('i12', -5))}",
    "return {struct.unpack('I12', string.rep('\\255', 12))}",
    "return {struct.unpack('i16', string.rep('\\255', 16))}",
    "return {struct.unpack('l', string.rep('\\255', 8))}",
    "return {struct.unpack('L', '\\0\\0\\0\\0\\0\\0\\16\\0')}",
    "return {struct.unpack('b B', '\\200\\200')}",
    "return {struct.unpack('!4 b i', struct.pack('!4 b i', -1, 7))}",
    "return {struct.unpack('s s', 'ab\\0cd\\0rest')}",
    "return {struct.unpack('B c0', '\\3abcdef')}",
    "return {struct.unpack('c2 c2', 'abcd', 1)}",
    "return {struct.unpack('c2', 'abcd', 3)}",
    "return {struct.unpack('c2', 'abcd', '2')}",
    "return {struct.unpack('x x c1', 'abc')}",
    "return tostring(({struct.unpack('d', struct.pack('d', 1.5))})[1])",
    "return tostring(({struct.unpack('>f', struct.pack('>f', 0.1))})[1])",
    "return struct.size('bBhHlLTiIfdx')",
    "return struct.size('!8 b d')",
    "return struct.size('!8 b i2 c5')",
    "return struct.size('zi')",
    "return struct.size('i32 c10')",
    # errors
    "return struct.pack('=i', 3)",
    "return struct.pack('z', 3)",
    "return struct.pack('i', 'x')",
    "return struct.pack('i')",
    "return struct.pack('i', nil)",
    "return struct.pack('i', {})",
    "return struct.pack('i', true)",
    "return struct.pack('s', {})",
    "return struct.pack('c3', 'ab')",
    "return struct.pack('!3i', 1)",
    "return struct.pack('I40', 1)",
    "return struct.pack('i99999999999', 1)",
    "return struct.pack()",
    "return struct.pack({})",
    "return {struct.unpack('<i', 'ab')}",
    "return {struct.unpack('c0', 'abc')}",
    "return {struct.unpack('s', 'abc')}",
    "return {struct.unpack('i', 'abcd', 0)}",
    "return {struct.unpack('i', 'abcd', 2)}",
    "return {struct.unpack('i')}",
    "return {struct.unpack('B c0', '\\9abc')}",
    "return struct.size('s')",
    "return struct.size('c0')",
    "return struct.size('!3')",
    "return struct.size('<>!')",
    "return struct.size('=')",
    "struct.foo = 1",
]


def test_struct_matches_redis(pair):
    for script in SCRIPTS:
        pair.same("EVAL", script, 0)


def _random_case(rng: random.Random) -> tuple[str, list[str]]:
    parts: list[str] = []
    values: list[str] = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice("<>!bBhHlLiIfdxsc")
        if kind in "<>":
            parts.append(kind)
        elif kind == "!":
            parts.append("!" + rng.choice(["", "1", "2", "4", "8", "16"]))
        elif kind in "iI":
            parts.append(kind + rng.choice(["", "1", "2", "3", "4", "6", "8"]))
            values.append(str(rng.choice([0, 1, -1, 127, -128, 2**31 - 1, -(2**31), rng.randint(-(2**40), 2**40)])))
        elif kind in "bBhHlL":
            parts.append(kind)
            values.append(str(rng.randint(-(2**20), 2**20)))
        elif kind in "fd":
            parts.append(kind)
            values.append(repr(rng.uniform(-1e6, 1e6)))
        elif kind == "x":
            parts.append("x")
        elif kind == "s":
            parts.append("s")
            values.append("'" + "".join(rng.choice("abc") for _ in range(rng.randint(0, 4))) + "'")
        else:
            n = rng.randint(1, 4)
            parts.append(f"c{n}")
            values.append("'" + "z" * n + "'")
    return " ".join(parts), values


def test_struct_random_round_trips_match_redis(pair):
    rng = random.Random(1234)
    for _ in range(150):
        fmt, values = _random_case(rng)
        args = ", ".join(values)
        pair.same("EVAL", f"return struct.pack('{fmt}'{', ' if args else ''}{args})", 0)
        pair.same("EVAL", f"local s = struct.pack('{fmt}'{', ' if args else ''}{args}) "
                          f"local t = {{struct.unpack('{fmt}', s)}} for i = 1, #t do t[i] = tostring(t[i]) end "
                          f"return t", 0)
        if "s" not in fmt:
            pair.same("EVAL", f"return struct.size('{fmt}')", 0)

