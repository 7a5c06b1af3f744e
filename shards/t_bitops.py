"""Bitmap and bitfield commands on string values (Redis' bitops.c).

Bit 0 of a string is the most significant bit of its first byte. Ranges are
worked on as big integers (`int.from_bytes`, `int.bit_count`), a chunk at a time
so that a 512 MB string never becomes one giant integer.

Effects: SETBIT is logged as sent (it is deterministic). BITOP is logged as the
`SET dest <result>` it amounts to, or `DEL dest`. BITFIELD is logged as a
BITFIELD holding only `SET` operations with the final field values, so replay
neither re-runs increments nor depends on the overflow policy.
"""

from __future__ import annotations

from durakv.shards import notify
from durakv.shards.args import ERR_SYNTAX, ERR_WRONGTYPE, MAX_STRING_BYTES, int_arg
from durakv.shards.numbers import parse_ll
from durakv.shards.context import Ctx
from durakv.shards.resp import fixed_error
from durakv.shards.t_string import get_string
from durakv.shards.table import KeySpec, command

CHUNK_BYTES = 1 << 20  # largest slice turned into one integer at a time

ERR_BIT_OFFSET = fixed_error(b"ERR bit offset is not an integer or out of range")
ERR_BIT_VALUE = fixed_error(b"ERR bit is not an integer or out of range")
ERR_BIT_ARG = fixed_error(b"ERR The bit argument must be 1 or 0.")
ERR_BITFIELD_TYPE = fixed_error(
    b"ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is."
)
ERR_OVERFLOW_TYPE = fixed_error(b"ERR Invalid OVERFLOW type specified")
ERR_BITFIELD_RO = fixed_error(b"ERR BITFIELD_RO only supports the GET subcommand")
ERR_BITOP_NOT = fixed_error(b"ERR BITOP NOT must be called with a single source key.")

_U64 = (1 << 64) - 1


def _wrap_i64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


def parse_bit_offset(arg: bytes, hash_allowed: bool = False, bits: int = 0) -> int:
    """A bit offset argument; `#N` (BITFIELD only) means N * bits. Offsets whose
    byte lies past the 512 MB string limit are refused, as in Redis."""
    use_hash = hash_allowed and bits > 0 and arg[:1] == b"#"
    value = parse_ll(arg[1:] if use_hash else arg)
    if value is None:
        raise ERR_BIT_OFFSET
    if use_hash:
        value = _wrap_i64(value * bits)  # C multiplies in 64 bits
    if value < 0 or (value >> 3) >= MAX_STRING_BYTES:
        raise ERR_BIT_OFFSET
    return value


def _writable_string(ctx: Ctx, key: bytes, max_bit: int) -> tuple[bytearray, bool]:
    """The string at key as a bytearray at least long enough for max_bit, created
    or zero-extended as needed; returns (value, grown)."""
    db = ctx.db
    need = (max_bit >> 3) + 1
    value = get_string(ctx.db, key)
    if value is None:
        value = bytearray(need)
        db.put(key, value)
        return value, True
    if type(value) is bytes:
        value = bytearray(value)
        db.put(key, value, keep_ttl=True)
    if len(value) < need:
        value.extend(bytes(need - len(value)))
        return value, True
    return value, False


# --- SETBIT / GETBIT ------------------------------------------------------------


@command("setbit", 4, "write denyoom", (1, 1, 1), "bitmap",
         key_specs=(KeySpec("RW access update", 1, 0, 1),))
def setbit(ctx: Ctx, argv: list[bytes]):
    offset = parse_bit_offset(argv[2])
    on = parse_ll(argv[3])
    if on is None or on & ~1:
        raise ERR_BIT_VALUE
    value, grown = _writable_string(ctx, argv[1], offset)
    byte = offset >> 3
    shift = 7 - (offset & 7)
    old = (value[byte] >> shift) & 1
    if grown or old != on:
        value[byte] = (value[byte] & ~(1 << shift)) | (on << shift)
        ctx.db.effect(argv, argv[1])
        ctx.db.notify(notify.STRING, b"setbit", argv[1])
    return old


@command("getbit", 3, "readonly fast", (1, 1, 1), "bitmap")
def getbit(ctx: Ctx, argv: list[bytes]):
    offset = parse_bit_offset(argv[2])
    value = get_string(ctx.db, argv[1])
    byte = offset >> 3
    if value is None or byte >= len(value):
        return 0
    return (value[byte] >> (7 - (offset & 7))) & 1


# --- ranges -----------------------------------------------------------------------


def _popcount(value: bytes | bytearray, start: int, end: int) -> int:
    """Set bits in value[start:end]."""
    total = 0
    view = memoryview(value)
    for pos in range(start, end, CHUNK_BYTES):
        total += int.from_bytes(view[pos : min(pos + CHUNK_BYTES, end)], "big").bit_count()
    return total


def _unit(arg: bytes) -> bool:
    """True for BIT, False for BYTE."""
    unit = arg.upper()
    if unit == b"BIT":
        return True
    if unit == b"BYTE":
        return False
    raise ERR_SYNTAX


def _clamp(start: int, end: int, total: int) -> tuple[int, int]:
    if start < 0:
        start += total
    if end < 0:
        end += total
    start = max(start, 0)
    end = max(end, 0)
    if end >= total:
        end = total - 1
    return start, end


@command("bitcount", -2, "readonly", (1, 1, 1), "bitmap")
def bitcount(ctx: Ctx, argv: list[bytes]):
    # Redis 7.0 looks the key up before it parses the range.
    value = get_string(ctx.db, argv[1])
    if value is None:
        return 0
    argc = len(argv)
    if argc == 2:
        return _popcount(value, 0, len(value))
    if argc not in (4, 5):
        raise ERR_SYNTAX
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    if start < 0 and end < 0 and start > end:
        return 0
    is_bit = _unit(argv[4]) if argc == 5 else False
    total = len(value) * 8 if is_bit else len(value)
    start, end = _clamp(start, end, total)
    if start > end:
        return 0
    if not is_bit:
        return _popcount(value, start, end + 1)
    first, last = start >> 3, end >> 3
    count = _popcount(value, first, last + 1)
    head = start & 7
    if head:
        count -= (value[first] >> (8 - head)).bit_count()
    tail = 7 - (end & 7)
    if tail:
        count -= (value[last] & ((1 << tail) - 1)).bit_count()
    return count


def _first_bit(value: bytes | bytearray, first_bit: int, last_bit: int, bit: int) -> int:
    """Position of the first bit equal to `bit` in [first_bit, last_bit], or -1."""
    view = memoryview(value)
    first_byte, last_byte = first_bit >> 3, last_bit >> 3
    for pos in range(first_byte, last_byte + 1, CHUNK_BYTES):
        stop = min(pos + CHUNK_BYTES, last_byte + 1)
        width = (stop - pos) * 8
        x = int.from_bytes(view[pos:stop], "big")
        if not bit:
            x ^= (1 << width) - 1
        if pos == first_byte:
            x &= (1 << (width - (first_bit & 7))) - 1
        if stop == last_byte + 1:
            x &= ~((1 << (7 - (last_bit & 7))) - 1)
        if x:
            return pos * 8 + width - x.bit_length()
    return -1


@command("bitpos", -3, "readonly", (1, 1, 1), "bitmap")
def bitpos(ctx: Ctx, argv: list[bytes]):
    bit = int_arg(argv[2])
    if bit != 0 and bit != 1:
        raise ERR_BIT_ARG
    value = get_string(ctx.db, argv[1])
    if value is None:
        return -1 if bit else 0
    argc = len(argv)
    size = len(value)
    end_given = False
    is_bit = False
    if argc == 3:
        start, end = 0, size - 1
    elif argc <= 6:
        start = int_arg(argv[3])
        if argc == 6:
            is_bit = _unit(argv[5])
        if argc >= 5:
            end = int_arg(argv[4])
            end_given = True
        else:
            end = size * 8 + 7 if is_bit else size - 1
        start, end = _clamp(start, end, size * 8 if is_bit else size)
    else:
        raise ERR_SYNTAX
    if start > end:
        return -1
    if not is_bit:
        start, end = start * 8, end * 8 + 7
    found = _first_bit(value, start, end, bit)
    if found >= 0 or bit:
        return found
    # No clear bit: without an explicit end the string counts as zero-padded.
    return -1 if end_given else ((end >> 3) + 1) * 8


# --- BITOP ------------------------------------------------------------------------

_BITOPS = {b"AND", b"OR", b"XOR", b"NOT"}


@command("bitop", -4, "write denyoom", (2, -1, 1), "bitmap",
         key_specs=(KeySpec("OW update", 2, 0, 1), KeySpec("RO access", 3, -1, 1)))
def bitop(ctx: Ctx, argv: list[bytes]):
    op = argv[1].upper()
    if op not in _BITOPS:
        raise ERR_SYNTAX
    if op == b"NOT" and len(argv) != 4:
        raise ERR_BITOP_NOT
    db = ctx.db
    sources = []
    for key in argv[3:]:
        value = db.get(key)
        if value is not None and type(value) is not bytes and type(value) is not bytearray:
            raise ERR_WRONGTYPE
        sources.append(value or b"")
    dest = argv[2]
    size = max(len(s) for s in sources)
    if not size:
        if db.get(dest) is not None:
            db.delete(dest)
            db.effect([b"DEL", dest], dest)
            db.notify(notify.GENERIC, b"del", dest)
        return 0
    result = _combine(op, sources, size)
    db.put(dest, bytearray(result))
    db.effect([b"SET", dest, result], dest)
    db.notify(notify.STRING, b"set", dest)
    return size


def _combine(op: bytes, sources: list, size: int) -> bytes:
    """The BITOP result of the sources, each zero-padded to size bytes."""
    out = bytearray()
    for pos in range(0, size, CHUNK_BYTES):
        stop = min(pos + CHUNK_BYTES, size)
        width = stop - pos
        acc = None
        for src in sources:
            piece = src[pos:stop]
            x = int.from_bytes(piece, "big") << (8 * (width - len(piece)))
            if acc is None:
                acc = x
            elif op == b"AND":
                acc &= x
            elif op == b"OR":
                acc |= x
            else:
                acc ^= x
        if op == b"NOT":
            acc ^= (1 << (8 * width)) - 1
        out += acc.to_bytes(width, "big")
    return bytes(out)


# --- BITFIELD ----------------------------------------------------------------------

_GET, _SET, _INCRBY = 0, 1, 2
_WRAP, _SAT, _FAIL = 0, 1, 2
_OPCODES = {b"GET": (_GET, 2), b"SET": (_SET, 3), b"INCRBY": (_INCRBY, 3)}
_OVERFLOWS = {b"WRAP": _WRAP, b"SAT": _SAT, b"FAIL": _FAIL}


def _bitfield_type(arg: bytes) -> tuple[bool, int]:
    """(signed, bits) from `i<bits>` / `u<bits>` (lower case only, as in Redis)."""
    kind = arg[:1]
    if kind != b"i" and kind != b"u":
        raise ERR_BITFIELD_TYPE
    bits = parse_ll(arg[1:].split(b"\x00", 1)[0])  # C reads up to the first NUL
    signed = kind == b"i"
    if bits is None or bits < 1 or bits > (64 if signed else 63):
        raise ERR_BITFIELD_TYPE
    return signed, bits


def get_field(value: bytes | bytearray, offset: int, bits: int) -> int:
    """The unsigned field of `bits` bits at bit offset; bytes past the end read 0."""
    first, last = offset >> 3, (offset + bits - 1) >> 3
    width = last - first + 1
    piece = value[first : last + 1]
    x = int.from_bytes(piece, "big") << (8 * (width - len(piece)))
    return (x >> (width * 8 - (offset & 7) - bits)) & ((1 << bits) - 1)


def set_field(value: bytearray, offset: int, bits: int, field: int) -> None:
    """Store the unsigned field (already reduced to `bits` bits) at bit offset."""
    first, last = offset >> 3, (offset + bits - 1) >> 3
    width = last - first + 1
    shift = width * 8 - (offset & 7) - bits
    x = int.from_bytes(value[first : last + 1], "big")
    x = (x & ~(((1 << bits) - 1) << shift)) | (field << shift)
    value[first : last + 1] = x.to_bytes(width, "big")


def _signed(field: int, bits: int) -> int:
    return field - (1 << bits) if field >> (bits - 1) else field


def _apply_overflow(target: int, signed: bool, bits: int, policy: int) -> int | None:
    """The value stored for an exact `target` under the policy; None for FAIL."""
    if signed:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    if low <= target <= high:
        return target
    if policy == _FAIL:
        return None
    if policy == _SAT:
        return high if target > high else low
    wrapped = target & ((1 << bits) - 1)
    return _signed(wrapped, bits) if signed else wrapped


def _parse_bitfield(argv: list[bytes]) -> list[tuple]:
    """The operations of a BITFIELD call: (opcode, signed, bits, offset, arg, policy)."""
    ops = []
    policy = _WRAP
    j = 2
    argc = len(argv)
    while j < argc:
        remaining = argc - j - 1
        name = argv[j].upper()
        if name == b"OVERFLOW" and remaining >= 1:
            policy = _OVERFLOWS.get(argv[j + 1].upper(), -1)
            if policy < 0:
                raise ERR_OVERFLOW_TYPE
            j += 2
            continue
        spec = _OPCODES.get(name)
        if spec is None or remaining < spec[1]:
            raise ERR_SYNTAX
        opcode = spec[0]
        signed, bits = _bitfield_type(argv[j + 1])
        offset = parse_bit_offset(argv[j + 2], True, bits)
        arg = int_arg(argv[j + 3]) if opcode != _GET else 0
        ops.append((opcode, signed, bits, offset, arg, policy))
        j += 1 + spec[1]
    return ops


def _bitfield(ctx: Ctx, argv: list[bytes], readonly_command: bool):
    ops = _parse_bitfield(argv)
    key = argv[1]
    writes = [op for op in ops if op[0] != _GET]
    if not writes:
        value = get_string(ctx.db, key)
        return [_read(value, op) for op in ops]
    if readonly_command:
        raise ERR_BITFIELD_RO
    value, grown = _writable_string(ctx, key, max(op[3] + op[2] - 1 for op in writes))
    changed = grown
    wrote = False  # a SET or INCRBY ran (Redis' `changes`, which notifies even if no bit moved)
    replies: list[int | None] = []
    for op in ops:
        if op[0] == _GET:
            replies.append(_read(value, op))
            continue
        opcode, signed, bits, offset, arg, policy = op
        old = get_field(value, offset, bits)
        if signed:
            old = _signed(old, bits)
        if opcode == _INCRBY:
            new = _apply_overflow(old + arg, signed, bits, policy)
            reply = new
        else:
            # SET takes the 64-bit argument as the field type would: unsigned
            # fields see negative numbers as their two's complement.
            new = _apply_overflow(arg if signed else arg & _U64, signed, bits, policy)
            reply = old
        if new is None:
            replies.append(None)
            continue
        replies.append(reply)
        wrote = True
        set_field(value, offset, bits, new & ((1 << bits) - 1))
        if new != old:
            changed = True
    if changed:
        ctx.db.effect(_bitfield_effect(key, value, writes), key)
    if wrote:
        ctx.db.notify(notify.STRING, b"setbit", key)
    return replies


def _read(value: bytes | bytearray | None, op: tuple) -> int:
    _, signed, bits, offset, _, _ = op
    if value is None:
        return 0
    field = get_field(value, offset, bits)
    return _signed(field, bits) if signed else field


def _bitfield_effect(key: bytes, value: bytearray, writes: list[tuple]) -> list[bytes]:
    """BITFIELD key SET ... with the final content of every field the call wrote
    (or tried to: a failed write still grew the string). All fields are read
    from the final state, so their order does not matter on replay."""
    effect = [b"BITFIELD", key]
    seen = set()
    for _, signed, bits, offset, _, _ in writes:
        if (signed, bits, offset) in seen:
            continue
        seen.add((signed, bits, offset))
        field = get_field(value, offset, bits)
        if signed:
            field = _signed(field, bits)
        effect += [b"SET", b"%c%d" % (105 if signed else 117, bits), b"%d" % offset, b"%d" % field]
    return effect


def bitfield_key_flags(argv: list[bytes]) -> str:
    """Redis' bitfieldGetKeys: RO access when every operation is a GET (or OVERFLOW)."""
    i = 2
    argc = len(argv)
    while i < argc:
        arg = argv[i].lower()
        left = argc - i - 1
        if arg == b"get" and left >= 2:
            i += 3
        elif arg == b"overflow" and left >= 1:
            i += 2
        else:
            return "RW access update"
    return "RO access"


@command("bitfield", -2, "write denyoom", (1, 1, 1), "bitmap",
         key_specs=(KeySpec("RW access update variable_flags", 1, 0, 1,
                            notes="This command allows both access and modification of the key"),),
         key_flags_fn=bitfield_key_flags)
def bitfield(ctx: Ctx, argv: list[bytes]):
    return _bitfield(ctx, argv, False)


@command("bitfield_ro", -2, "readonly fast", (1, 1, 1), "bitmap")
def bitfield_ro(ctx: Ctx, argv: list[bytes]):
    return _bitfield(ctx, argv, True)

