"""HyperLogLog commands (Redis' hyperloglog.c), wire-compatible with Redis.

A HyperLogLog is a string: a 16-byte header ("HYLL", encoding byte, 3 unused
bytes, 8-byte little-endian cached cardinality whose top bit marks it stale)
followed by 16384 6-bit registers, either dense (12288 packed bytes) or sparse
(run-length opcodes ZERO 00xxxxxx, XZERO 01xxxxxx yyyyyyyy, VAL 1vvvvvxx).
Values copied from Redis work here and back: the sparse encoder reproduces
Redis' in-place opcode splitting and local merging step by step, because the
bytes a sparse HLL ends up with depend on the order of updates, not only on the
register values.

Whole-register work (merges, histograms, sparse-to-dense) unpacks the 6-bit
registers to one byte each with a few big-integer operations instead of a
Python loop over 16384 registers.

Effects (DESIGN invariant 3). Sparse updates depend on the hll-sparse-max-bytes
setting, which is not in the log, so a command that touched a sparse value is
logged as `SET key <resulting bytes> KEEPTTL`; a command that only worked on
dense registers is logged as sent (dense updates depend on nothing else).
PFCOUNT stores the cardinality it computes in the header, as Redis does (GET
then returns the same bytes as Redis); that write is logged as
`SETRANGE key 8 <8 bytes>`.
"""

from __future__ import annotations

import math
import re
import struct
from bisect import bisect_right

from durakv.shards import notify
from durakv.shards.args import ERR_WRONGTYPE
from durakv.shards.context import Ctx
from durakv.shards.resp import OK, fixed_error
from durakv.shards.table import KeySpec, command

HLL_P = 14
HLL_Q = 64 - HLL_P
REGISTERS = 1 << HLL_P
HEADER_BYTES = 16
DENSE_BYTES = HEADER_BYTES + REGISTERS * 6 // 8
DENSE, SPARSE = 0, 1
CARD_OFFSET = 8
STALE_BIT = 0x80  # in the last cached-cardinality byte
MURMUR_SEED = 0xADC83B19
ALPHA_INF = 0.721347520444481703680  # 0.5 / ln(2)

SPARSE_VAL_MAX = 32
SPARSE_VAL_MAX_RUN = 4
SPARSE_ZERO_MAX_RUN = 64
SPARSE_XZERO_MAX_RUN = 16384
MERGE_WINDOW_OPCODES = 5

ERR_INVALID = fixed_error(b"INVALIDOBJ Corrupted HLL object detected")
ERR_NOT_HLL = fixed_error(b"WRONGTYPE Key is not a valid HyperLogLog string value.")

_U64 = (1 << 64) - 1
_MURMUR_M = 0xC6A4A7935BD1E995
# Masks over registers unpacked to one byte each, 4 registers per 32-bit group.
_GROUPS = REGISTERS // 4
_LOW6 = int.from_bytes(b"\x3f\x00\x00\x00" * _GROUPS, "little")
_HIGH_BITS = int.from_bytes(b"\x80" * REGISTERS, "little")
_NONZERO = re.compile(rb"[^\x00]")


# --- hashing ----------------------------------------------------------------------


def murmur64a(data: bytes, seed: int = MURMUR_SEED) -> int:
    """Austin Appleby's MurmurHash64A, 64-bit little-endian, as Redis uses it."""
    m = _MURMUR_M
    n = len(data)
    h = (seed ^ (n * m)) & _U64
    blocks = n >> 3
    if blocks:
        for k in struct.unpack_from("<%dQ" % blocks, data):
            k = (k * m) & _U64
            k ^= k >> 47
            k = (k * m) & _U64
            h = ((h ^ k) * m) & _U64
    if n & 7:
        h = ((h ^ int.from_bytes(data[blocks * 8 :], "little")) * m) & _U64
    h ^= h >> 47
    h = (h * m) & _U64
    return h ^ (h >> 47)


def pattern(element: bytes) -> tuple[int, int]:
    """(register index, run length of zeros + 1) for an element."""
    h = murmur64a(element)
    rest = (h >> HLL_P) | (1 << HLL_Q)
    return h & (REGISTERS - 1), (rest & -rest).bit_length()


# --- register packing ---------------------------------------------------------------


def dense_to_raw(registers: bytes | bytearray | memoryview) -> int:
    """12288 packed register bytes -> an integer whose little-endian byte i is
    register i (3 packed bytes hold 4 registers)."""
    spread = bytearray(REGISTERS)
    spread[0::4] = registers[0::3]
    spread[1::4] = registers[1::3]
    spread[2::4] = registers[2::3]
    x = int.from_bytes(spread, "little")
    return (x & _LOW6) | ((x >> 6) & _LOW6) << 8 | ((x >> 12) & _LOW6) << 16 | ((x >> 18) & _LOW6) << 24


def raw_to_dense(raw: int) -> bytearray:
    """Inverse of dense_to_raw."""
    x = (raw & _LOW6) | ((raw >> 8) & _LOW6) << 6 | ((raw >> 16) & _LOW6) << 12 | ((raw >> 24) & _LOW6) << 18
    spread = x.to_bytes(REGISTERS, "little")
    registers = bytearray(REGISTERS * 3 // 4)
    registers[0::3] = spread[0::4]
    registers[1::3] = spread[1::4]
    registers[2::3] = spread[2::4]
    return registers


def raw_max(a: int, b: int) -> int:
    """Per-register maximum of two unpacked register sets (values < 128): a
    borrow-free byte-wise subtraction leaves each byte's top bit set where a >= b."""
    ge = (((a | _HIGH_BITS) - b) & _HIGH_BITS) >> 7
    ge = (ge << 8) - ge  # 0xff in every byte where a >= b
    return b ^ ((a ^ b) & ge)


def dense_get(value: bytearray, index: int) -> int:
    bit = index * 6
    pos = HEADER_BYTES + (bit >> 3)
    shift = bit & 7
    reg = value[pos] >> shift
    if shift > 2:
        reg |= value[pos + 1] << (8 - shift)
    return reg & 63


def dense_set(value: bytearray, index: int, reg: int) -> None:
    bit = index * 6
    pos = HEADER_BYTES + (bit >> 3)
    shift = bit & 7
    value[pos] = (value[pos] & ~(63 << shift) & 0xFF) | ((reg << shift) & 0xFF)
    if shift > 2:
        value[pos + 1] = (value[pos + 1] & ~(63 >> (8 - shift))) | (reg >> (8 - shift))


# --- the sparse representation --------------------------------------------------------
#
# A sparse HLL is edited as Redis edits it, byte by byte: `raw` is the list of the
# opcode bytes after the header and `firsts` gives, for each byte, the first
# register of its opcode (the second byte of an XZERO gets that value + 0.5), so the
# opcode covering a register is found by bisection instead of a scan. `bytes(raw)`
# turns it back into the string at C speed. A corrupt value may end in half an
# XZERO; Redis reads the missing byte as 0, and so does this (updates to it are
# refused as corrupt).


def _is_val(b: int) -> bool:
    return b >= 0x80


def _is_xzero(b: int) -> bool:
    return 0x40 <= b < 0x80


def _zero_bytes(run: int) -> list[int]:
    if run <= SPARSE_ZERO_MAX_RUN:
        return [run - 1]
    return [0x40 | (run - 1) >> 8, (run - 1) & 0xFF]


def _val_byte(value: int, run: int) -> int:
    return 0x80 | (value - 1) << 2 | (run - 1)


def _val_value(b: int) -> int:
    return ((b >> 2) & 0x1F) + 1


class Corrupt(Exception):
    """The value's registers cannot be decoded (Redis' INVALIDOBJ)."""


class Sparse:
    """A sparse HLL being edited: its header and its opcode bytes."""

    __slots__ = ("header", "raw", "firsts")

    def __init__(self, value: bytes | bytearray) -> None:
        self.header = bytearray(value[:HEADER_BYTES])
        raw = list(memoryview(value)[HEADER_BYTES:])
        firsts: list[int | float] = []
        first = 0
        i = 0
        n = len(raw)
        while i < n:
            b = raw[i]
            firsts.append(first)
            if b >= 0x80:
                first += (b & 3) + 1
                i += 1
            elif b < 0x40:
                first += b + 1
                i += 1
            else:
                if i + 1 < n:
                    firsts.append(first + 0.5)
                first += ((b & 0x3F) << 8 | (raw[i + 1] if i + 1 < n else 0)) + 1
                i += 2
        self.raw = raw
        self.firsts = firsts

    @classmethod
    def empty(cls) -> "Sparse":
        body = bytearray()
        run = REGISTERS
        while run:
            chunk = min(run, SPARSE_XZERO_MAX_RUN)
            body += bytes(_zero_bytes(chunk))
            run -= chunk
        return cls(b"HYLL" + bytes([SPARSE]) + bytes(11) + body)

    def to_bytes(self) -> bytearray:
        return self.header + bytes(self.raw)

    def _opcodes(self):
        """(first byte, run, is_val) for each opcode."""
        raw = self.raw
        n = len(raw)
        i = 0
        while i < n:
            b = raw[i]
            if b >= 0x80:
                yield b, (b & 3) + 1, True
                i += 1
            elif b < 0x40:
                yield b, b + 1, False
                i += 1
            else:
                yield b, ((b & 0x3F) << 8 | (raw[i + 1] if i + 1 < n else 0)) + 1, False
                i += 2

    def histogram(self) -> list[int]:
        """Register histogram; Corrupt unless the runs cover exactly 16384 registers."""
        hist = [0] * 64
        total = 0
        for b, run, is_val in self._opcodes():
            total += run
            hist[_val_value(b) if is_val else 0] += run
        if total != REGISTERS:
            raise Corrupt
        return hist

    def registers(self) -> int:
        """Unpacked registers; Corrupt unless the runs cover exactly 16384 registers."""
        pieces = []
        total = 0
        for b, run, is_val in self._opcodes():
            total += run
            if total > REGISTERS:
                raise Corrupt
            pieces.append(bytes((_val_value(b),)) * run if is_val else bytes(run))
        if total != REGISTERS:
            raise Corrupt
        return int.from_bytes(b"".join(pieces), "little")

    def to_dense(self) -> bytearray:
        """The dense value with the same header (magic, unused bytes, cache)."""
        registers = self.registers()
        header = bytearray(self.header)
        header[4] = DENSE
        return header + raw_to_dense(registers)

    def _opcode_at(self, k: int) -> int:
        """The start of the opcode that byte k belongs to."""
        return k - 1 if type(self.firsts[k]) is float else k

    def set(self, index: int, count: int, max_bytes: int) -> int | None:
        """Raise register `index` to `count` in place, as Redis' hllSparseSet does:
        1 changed, 0 already as high, -1 corrupt, None: must become dense first."""
        if count > SPARSE_VAL_MAX:
            return None
        raw, firsts = self.raw, self.firsts
        n = len(raw)
        if not n:
            return -1
        k = self._opcode_at(bisect_right(firsts, index) - 1)
        b = raw[k]
        first = firsts[k]
        if b >= 0x80:
            run, oplen = (b & 3) + 1, 1
        elif b < 0x40:
            run, oplen = b + 1, 1
        elif k + 1 < n:
            run, oplen = ((b & 0x3F) << 8 | raw[k + 1]) + 1, 2
        else:
            return -1  # the cut XZERO at the end of a corrupt value
        if index > first + run - 1:
            return -1
        prev = self._opcode_at(k - 1) if k > 0 else 0
        if b >= 0x80:
            current = _val_value(b)
            if current >= count:
                return 0
            if run == 1:
                raw[k] = _val_byte(count, 1)
                self._merge(prev)
                return 1
        elif oplen == 1 and run == 1:
            raw[k] = _val_byte(count, 1)
            self._merge(prev)
            return 1
        last = first + run - 1
        seq: list[int] = []
        seq_firsts: list[int | float] = []
        if b >= 0x80:
            if index != first:
                seq.append(_val_byte(current, index - first))
                seq_firsts.append(first)
            seq.append(_val_byte(count, 1))
            seq_firsts.append(index)
            if index != last:
                seq.append(_val_byte(current, last - index))
                seq_firsts.append(index + 1)
        else:
            if index != first:
                zeros = _zero_bytes(index - first)
                seq += zeros
                seq_firsts += [first, first + 0.5][: len(zeros)]
            seq.append(_val_byte(count, 1))
            seq_firsts.append(index)
            if index != last:
                zeros = _zero_bytes(last - index)
                seq += zeros
                seq_firsts += [index + 1, index + 1.5][: len(zeros)]
        delta = len(seq) - oplen
        if delta > 0 and HEADER_BYTES + n + delta > max_bytes:
            return None
        raw[k : k + oplen] = seq
        firsts[k : k + oplen] = seq_firsts
        self._merge(prev)
        return 1

    def _merge(self, p: int) -> None:
        """Join adjacent equal VAL runs, looking at a few opcodes from the one
        before the change (Redis does not normalise the whole string)."""
        raw, firsts = self.raw, self.firsts
        window = MERGE_WINDOW_OPCODES
        while p < len(raw) and window > 0:
            window -= 1
            b = raw[p]
            if b < 0x80:
                p += 2 if b >= 0x40 else 1
                continue
            if p + 1 < len(raw):
                nxt = raw[p + 1]
                if nxt >= 0x80 and (b >> 2) == (nxt >> 2):
                    run = (b & 3) + (nxt & 3) + 2
                    if run <= SPARSE_VAL_MAX_RUN:
                        raw[p] = _val_byte(_val_value(b), run)
                        del raw[p + 1]
                        del firsts[p + 1]
                        continue
            p += 1


class _SparseCache:
    """Decoded sparse values of recently updated keys, so that a run of PFADDs
    to one key does not decode the string each time. An entry is used only for
    the very object it was made from and only while that object still holds
    the same opcodes (a SETRANGE or APPEND in between invalidates it)."""

    MAX_ENTRIES = 256

    def __init__(self) -> None:
        self.entries: dict[int, tuple[bytearray, bytes, Sparse]] = {}

    def decode(self, value: bytes | bytearray) -> Sparse:
        entry = self.entries.pop(id(value), None)
        if entry is not None and entry[0] is value and memoryview(value)[HEADER_BYTES:] == entry[1]:
            sparse = entry[2]
            sparse.header = bytearray(value[:HEADER_BYTES])  # PFCOUNT may have cached a count
            return sparse
        return Sparse(value)

    def keep(self, value: bytes | bytearray, sparse: Sparse) -> None:
        entries = self.entries
        if len(entries) >= self.MAX_ENTRIES:
            del entries[next(iter(entries))]
        entries[id(value)] = (value, bytes(value[HEADER_BYTES:]), sparse)


_CACHE = _SparseCache()


# --- value checks and estimation ----------------------------------------------------------


def check_hll(value: object) -> bytes | bytearray:
    """The value if it is a well-formed HLL string; Redis' errors otherwise."""
    t = type(value)
    if t is not bytes and t is not bytearray:
        raise ERR_WRONGTYPE
    if (
        len(value) < HEADER_BYTES
        or value[:4] != b"HYLL"
        or value[4] > SPARSE
        or (value[4] == DENSE and len(value) != DENSE_BYTES)
    ):
        raise ERR_NOT_HLL
    return value


def registers_of(value: bytes | bytearray) -> int:
    """Unpacked registers of a checked HLL value; Corrupt if undecodable."""
    if value[4] == DENSE:
        return dense_to_raw(memoryview(value)[HEADER_BYTES:])
    return Sparse(value).registers()


_BYTE_VALUES = [bytes((v,)) for v in range(64)]


def raw_histogram(raw: int) -> list[int]:
    """How many registers hold each value; counts only the values present
    (a membership test is a fast memchr, a count is a full pass)."""
    data = raw.to_bytes(REGISTERS, "little")
    return [data.count(b) if b in data else 0 for b in _BYTE_VALUES]


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if previous == z:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y = 1.0
    z = 1 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= math.pow(1 - x, 2) * y
        if previous == z:
            return z / 3


def estimate(hist: list[int]) -> int:
    """Ertl's improved estimator over the register histogram, in the same
    floating-point steps as Redis so that the results are identical. Returns
    the unsigned 64-bit value Redis stores."""
    m = float(REGISTERS)
    z = m * _tau((m - hist[HLL_Q + 1]) / m)
    for j in range(HLL_Q, 0, -1):
        z += hist[j]
        z *= 0.5
    z += m * _sigma(hist[0] / m)
    if z == 0.0:
        return 1 << 63  # llroundl(inf) on x86-64
    e = ALPHA_INF * m * m / z
    whole = math.floor(e)
    return int(whole) + (1 if e - whole >= 0.5 else 0)


def _as_reply(card: int) -> int:
    """Redis replies with the uint64 cardinality cast to long long."""
    return card - (1 << 64) if card >> 63 else card


def _invalidate(value: bytearray) -> None:
    value[CARD_OFFSET + 7] |= STALE_BIT


# --- commands ---------------------------------------------------------------------------


def _sparse_max_bytes(ctx: Ctx) -> int:
    return ctx.shard.settings["hll-sparse-max-bytes"]


@command("pfadd", -2, "write denyoom fast", (1, 1, 1), "hyperloglog",
         key_specs=(KeySpec("RW insert", 1, 0, 1),))
def pfadd(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    key = argv[1]
    value = db.get(key)
    updated = 0
    if value is None:
        sparse: Sparse | None = Sparse.empty()
        dense = None
        updated = 1
    else:
        check_hll(value)
        if value[4] == DENSE:
            dense = value if type(value) is bytearray else bytearray(value)
            sparse = None
        else:
            dense = None
            sparse = _CACHE.decode(value)
    started_dense = dense is not None
    max_bytes = _sparse_max_bytes(ctx)
    failed = False
    for element in argv[2:]:
        index, count = pattern(element)
        if sparse is not None:
            result = sparse.set(index, count, max_bytes)
            if result is None:
                try:
                    dense = sparse.to_dense()
                except Corrupt:
                    failed = True
                    break
                sparse = None
            elif result < 0:
                failed = True
                break
            else:
                updated += result
                continue
        if count > dense_get(dense, index):
            dense_set(dense, index, count)
            updated += 1
    if updated:
        new = dense if dense is not None else sparse.to_bytes()
        _invalidate(new)
        db.put(key, new, keep_ttl=True)
        if started_dense:  # Redis' dirty count: the registers changed, one more for a new key
            db.effect(argv, key, changes=updated)
        else:
            db.effect([b"SET", key, bytes(new), b"KEEPTTL"], key, changes=updated)
        db.notify(notify.STRING, b"pfadd", key)
    else:
        new = value
        if type(value) is bytes:
            new = bytearray(value)
            db.put(key, new, keep_ttl=True)  # Redis unshares it: raw encoding
    if sparse is not None and not failed:
        _CACHE.keep(new, sparse)
    if failed:
        raise ERR_INVALID
    return 1 if updated else 0


@command("pfcount", -2, "readonly may_replicate", (1, -1, 1), "hyperloglog",
         key_specs=(KeySpec("RW access", 1, -1, 1, notes="RW because it may change the internal representation "
                                                         "of the key, and propagate to replicas"),))
def pfcount(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    if len(argv) > 2:
        merged = 0
        for key in argv[1:]:
            value = db.get(key)
            if value is None:
                continue
            check_hll(value)
            try:
                merged = raw_max(merged, registers_of(value))
            except Corrupt:
                raise ERR_INVALID from None
        return _as_reply(estimate(raw_histogram(merged)))
    key = argv[1]
    value = db.get(key)
    if value is None:
        return 0
    check_hll(value)
    if type(value) is bytes:
        value = bytearray(value)
        db.put(key, value, keep_ttl=True)
    if not value[CARD_OFFSET + 7] & STALE_BIT:
        return _as_reply(int.from_bytes(value[CARD_OFFSET:HEADER_BYTES], "little"))
    try:
        if value[4] == DENSE:
            hist = raw_histogram(dense_to_raw(memoryview(value)[HEADER_BYTES:]))
        else:
            sparse = _CACHE.decode(value)
            hist = sparse.histogram()
            _CACHE.keep(value, sparse)
    except Corrupt:
        raise ERR_INVALID from None
    card = estimate(hist)
    cached = card.to_bytes(8, "little")
    value[CARD_OFFSET:HEADER_BYTES] = cached
    db.effect([b"SETRANGE", key, b"%d" % CARD_OFFSET, cached], key)
    return _as_reply(card)


@command("pfmerge", -2, "write denyoom", (1, -1, 1), "hyperloglog",
         key_specs=(KeySpec("RW access insert", 1, 0, 1), KeySpec("RO access", 2, -1, 1)))
def pfmerge(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    merged = 0
    use_dense = False
    for key in argv[1:]:
        value = db.get(key)
        if value is None:
            continue
        check_hll(value)
        if value[4] == DENSE:
            use_dense = True
        try:
            merged = raw_max(merged, registers_of(value))
        except Corrupt:
            raise ERR_INVALID from None
    dest = argv[1]
    value = db.get(dest)
    if value is None:
        sparse: Sparse | None = Sparse.empty()
    elif value[4] == SPARSE and not use_dense:
        sparse = _CACHE.decode(value)
    else:
        sparse = None
    if sparse is not None and not use_dense and _merge_into_sparse(sparse, merged, _sparse_max_bytes(ctx)):
        result = sparse.to_bytes()
    else:
        # Every source, the destination included, is in `merged`, so raising the
        # destination's registers to it gives exactly `merged`.
        header = bytearray(value[:HEADER_BYTES] if value is not None else sparse.header)
        header[4] = DENSE
        result = header + raw_to_dense(merged)
        sparse = None
    _invalidate(result)
    db.put(dest, result, keep_ttl=True)
    if sparse is not None:
        _CACHE.keep(result, sparse)
    if use_dense:
        db.effect(argv, dest)
    else:
        db.effect([b"SET", dest, bytes(result), b"KEEPTTL"], dest)
    db.notify(notify.STRING, b"pfadd", dest)
    return OK


def _merge_into_sparse(sparse: Sparse, merged: int, max_bytes: int) -> bool:
    """Raise the sparse registers one by one in index order (as Redis does; the
    resulting opcodes depend on it). False when the value must go dense; the
    registers set so far are <= merged, so the dense result is merged itself."""
    data = merged.to_bytes(REGISTERS, "little")
    for match in _NONZERO.finditer(data):
        index = match.start()
        if sparse.set(index, data[index], max_bytes) is None:
            return False
    return True
