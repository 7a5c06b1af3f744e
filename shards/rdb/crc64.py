"""CRC-64 as Redis computes it for RDB files ("Jones" polynomial
0xad93d23594c935a9, reflected input and output, initial value 0, no final
xor; check value e9c6d914c4b8d9ca for b"123456789").

Table-driven. A pure-Python loop manages a few MB/s, far too slow for a
snapshot of millions of keys, so large inputs use numpy when it is installed:
the data is cut into many equal lanes whose CRCs advance together (one
vectorised 16-bit table step per pair of bytes for all lanes at once), then the
lane CRCs are chained with the "append n zero bytes" operator, which is linear
over GF(2) and so is itself applied through lookup tables. Without numpy (or
for small inputs) the classic byte-wise table loop runs.
"""

from __future__ import annotations

from functools import lru_cache

np = None  # numpy, imported by _has_numpy() on the first input large enough to use it

JONES_POLY = 0xAD93D23594C935A9
_MASK64 = (1 << 64) - 1
# Below this many bytes the plain loop is as fast as setting up the lanes.
VECTOR_MIN_BYTES = 256 * 1024
_LANE_BYTES = 2048  # bytes each lane covers (even, so lanes hold whole 16-bit words)


def _reflect64(value: int) -> int:
    return int(f"{value:064b}"[::-1], 2)


def _byte_table() -> list[int]:
    poly = _reflect64(JONES_POLY)
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_T8 = _byte_table()


def _crc64_loop(view: memoryview, crc: int) -> int:
    t8 = _T8
    for b in view:
        crc = t8[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# --- linear operators on the 64-bit register ----------------------------------
# An operator is the tuple of images of the 64 unit vectors; applying it to x
# xors the images of x's set bits.


def _apply(op: tuple[int, ...], x: int) -> int:
    out = 0
    bit = 0
    while x:
        if x & 1:
            out ^= op[bit]
        x >>= 1
        bit += 1
    return out


def _compose(outer: tuple[int, ...], inner: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_apply(outer, image) for image in inner)


_ONE_ZERO_BYTE = tuple(_T8[(1 << b) & 0xFF] ^ ((1 << b) >> 8) for b in range(64))


@lru_cache(maxsize=16)
def _zero_bytes_op(n: int) -> tuple[int, ...]:
    """The operator that advances the register over n zero bytes."""
    result = tuple(1 << b for b in range(64))
    power = _ONE_ZERO_BYTE
    while n:
        if n & 1:
            result = _compose(power, result)
        n >>= 1
        if n:
            power = _compose(power, power)
    return result


@lru_cache(maxsize=1)
def _pair_table():
    """numpy table: register change of feeding 16 bits (first byte low) into a
    zero register."""
    t8 = np.array(_T8, dtype=np.uint64)
    w = np.arange(65536, dtype=np.uint64)
    first = t8[w & np.uint64(0xFF)]
    return t8[(first ^ (w >> np.uint64(8))) & np.uint64(0xFF)] ^ (first >> np.uint64(8))


@lru_cache(maxsize=16)
def _op_tables(n: int) -> list[list[int]]:
    """Four 65536-entry tables applying the n-zero-bytes operator 16 bits at a time."""
    op = _zero_bytes_op(n)
    tables = []
    for chunk in range(4):
        table = np.zeros(65536, dtype=np.uint64)
        for b in range(16):
            size = 1 << b
            table[size:2 * size] = table[:size] ^ np.uint64(op[16 * chunk + b])
        tables.append(table.tolist())
    return tables


def _crc64_lanes(view: memoryview, crc: int) -> tuple[int, int]:
    """CRC over the largest whole number of lanes at the start of view; returns
    (crc, bytes consumed)."""
    lanes = len(view) // _LANE_BYTES
    used = lanes * _LANE_BYTES
    words = np.frombuffer(view[:used], dtype="<u2").reshape(lanes, _LANE_BYTES // 2).T.copy()
    t16 = _pair_table()
    regs = np.zeros(lanes, dtype=np.uint64)
    mask = np.uint64(0xFFFF)
    sixteen = np.uint64(16)
    for column in words:
        regs = t16[(regs ^ column) & mask] ^ (regs >> sixteen)
    a, b, c, d = _op_tables(_LANE_BYTES)
    for lane_crc in regs.tolist():
        crc = a[crc & 0xFFFF] ^ b[(crc >> 16) & 0xFFFF] ^ c[(crc >> 32) & 0xFFFF] ^ d[crc >> 48] ^ lane_crc
    return crc, used


@lru_cache(maxsize=1)
def _has_numpy() -> bool:
    """Import numpy (an accelerator, not a requirement) on first need, not at
    import: a shard imports this module for DUMP/RESTORE, and numpy's import
    would be a large part of every shard's start."""
    global np
    try:
        import numpy
    except ImportError:
        return False
    np = numpy
    return True


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Continue the Redis CRC-64 `crc` over `data` (start with 0)."""
    view = memoryview(data).cast("B")
    if len(view) >= VECTOR_MIN_BYTES and _has_numpy():
        crc, used = _crc64_lanes(view, crc)
        view = view[used:]
    return _crc64_loop(view, crc) & _MASK64


class Crc64:
    """Running CRC-64 over data fed in pieces (the RDB writer's checksum)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = crc64(data, self.value)
