"""Argument parsing with Redis' exact rules and error texts, shared by the type
modules (the equivalents of Redis' getLongLongFromObjectOrReply and friends)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from durakv.shards.resp import ReplyError, fixed_error

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
LONG_MAX = LLONG_MAX
INT_MAX = 2**31 - 1
INT_MIN = -(2**31)

ERR_NOT_INT = fixed_error(b"ERR value is not an integer or out of range")
ERR_NOT_FLOAT = fixed_error(b"ERR value is not a valid float")
ERR_SYNTAX = fixed_error(b"ERR syntax error")
ERR_WRONGTYPE = fixed_error(b"WRONGTYPE Operation against a key holding the wrong kind of value")
ERR_OVERFLOW = fixed_error(b"ERR increment or decrement would overflow")
ERR_NO_SUCH_KEY = fixed_error(b"ERR no such key")
ERR_OFFSET = fixed_error(b"ERR offset is out of range")
ERR_TOO_BIG = fixed_error(b"ERR string exceeds maximum allowed size (proto-max-bulk-len)")
ERR_INDEX = fixed_error(b"ERR index out of range")

MAX_STRING_BYTES = 512 * 1024 * 1024


def parse_ll(text: bytes) -> int | None:
    """Redis' string2ll: an optional '-', no leading zeros, no spaces or '+', fits in
    a signed 64-bit integer. Returns None when the text is not such an integer."""
    n = len(text)
    if n == 0 or n > 20:
        return None
    if text.isdigit():
        if text[0] == 48 and n > 1:
            return None
        value = int(text)
        return value if value <= LLONG_MAX else None
    if text[0] == 45 and text[1:].isdigit() and text[1] != 48:
        value = int(text)
        return value if value >= LLONG_MIN else None
    return None


def int_arg(text: bytes, error: type[ReplyError] = ERR_NOT_INT) -> int:
    value = parse_ll(text)
    if value is None:
        raise error
    return value


# C's strtod/strtold grammar (what Redis' string2d and string2ld accept once they
# have refused a leading space and required the whole string to be consumed).
_DECIMAL_RE = re.compile(rb"[+-]?(?:([0-9]+)\.?([0-9]*)|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?\Z")
_HEX_RE = re.compile(rb"[+-]?0[xX](?:([0-9a-fA-F]+)\.?([0-9a-fA-F]*)|\.([0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?\Z")
_INF_RE = re.compile(rb"[+-]?(?:inf|infinity)\Z", re.IGNORECASE)
# Decimal exponents beyond these over/underflow any double or long double; they
# are settled without building 10**exponent.
_EXP10_OVERFLOW = 4940
_EXP10_UNDERFLOW = -4970
_EXP2_LIMIT = 17000
_INT_CHUNK_DIGITS = 4000
_SIGNIFICANT_DIGITS_KEPT = 20000
_CHUNK_POWER = 10**_INT_CHUNK_DIGITS


def _decimal_int(digits: bytes) -> int:
    """int(digits) without Python's 4300-digit conversion limit."""
    value = 0
    for i in range(0, len(digits), _INT_CHUNK_DIGITS):
        chunk = digits[i : i + _INT_CHUNK_DIGITS]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


def _decimal_str(value: int) -> str:
    """str(value) for a non-negative int, without the 4300-digit limit."""
    if value < _CHUNK_POWER:
        return str(value)
    high, low = divmod(value, _CHUNK_POWER)
    return _decimal_str(high) + str(low).rjust(_INT_CHUNK_DIGITS, "0")


def _parse_c_float(text: bytes) -> Fraction | float | None:
    """The exact rational value of a strtod-style number, float('inf') or
    float('-inf') for infinities, None if not a number at all. Values far
    outside every floating range come back as a stand-in (10**±5000) that
    rounds the same way (overflow, or zero), never as an unbounded power."""
    if not text or text[0] in b" \t\n\v\f\r":
        return None
    negative = text[:1] == b"-"
    m = _DECIMAL_RE.match(text)
    base = 10
    if m is None:
        m = _HEX_RE.match(text)
        base = 16
        if m is None:
            if _INF_RE.match(text):
                return float("-inf") if negative else float("inf")
            return None
    whole, frac, only_frac, exp = m.groups()
    fraction_digits = only_frac if only_frac is not None else (frac or b"")
    digits = (whole or b"") + fraction_digits
    if exp is None:
        exponent = 0
    elif len(exp) > 12:
        exponent = -(10**12) if exp[:1] == b"-" else 10**12
    else:
        exponent = int(exp)
    digits = digits.lstrip(b"0")
    if not digits:
        return Fraction(0)
    if base == 10:
        exponent -= len(fraction_digits)
        stripped = digits.rstrip(b"0")
        exponent += len(digits) - len(stripped)
        digits = stripped
        if len(digits) > _SIGNIFICANT_DIGITS_KEPT:
            # Sticky truncation: the dropped tail only decides which side of a
            # rounding boundary the value lies on, which a trailing 1 preserves.
            exponent += len(digits) - _SIGNIFICANT_DIGITS_KEPT - 1
            digits = digits[:_SIGNIFICANT_DIGITS_KEPT] + b"1"
        magnitude = exponent + len(digits)
        if magnitude > _EXP10_OVERFLOW:
            value = Fraction(10**5000)
        elif magnitude < _EXP10_UNDERFLOW:
            value = Fraction(1, 10**5000)
        else:
            value = _decimal_int(digits) * Fraction(10) ** exponent
    else:
        exponent -= 4 * len(fraction_digits)
        magnitude = exponent + 4 * len(digits)
        if magnitude > _EXP2_LIMIT:
            value = Fraction(10**5000)
        elif magnitude < -_EXP2_LIMIT - 4 * len(digits):
            value = Fraction(1, 10**5000)
        else:
            value = int(digits, 16) * Fraction(2) ** exponent
    return -value if negative else value


def parse_float(text: bytes) -> float | None:
    """Redis' string2d: strtod over the whole string, no leading space, no NaN,
    and no overflow to infinity or underflow to zero (ERANGE) - but the words
    inf/infinity are accepted."""
    value = _parse_c_float(text)
    if value is None:
        return None
    if type(value) is float:
        return value
    try:
        result = float(value)
    except OverflowError:
        return None
    if result == 0.0 and value != 0:
        return None
    if math.isinf(result):
        return None
    return -0.0 if result == 0.0 and text[:1] == b"-" else result


def float_arg(text: bytes, error: type[ReplyError] = ERR_NOT_FLOAT) -> float:
    value = parse_float(text)
    if value is None:
        raise error
    return value


def int_range_arg(text: bytes, lo: int, hi: int) -> int:
    """Redis' getRangeLongFromObjectOrReply (getIntFromObjectOrReply for the C int range)."""
    value = int_arg(text)
    if not lo <= value <= hi:
        raise ReplyError(b"ERR value is out of range, value must between %d and %d" % (lo, hi))
    return value


# --- long double (x86-64 80-bit extended precision), as INCRBYFLOAT computes ---
#
# Redis does INCRBYFLOAT and HINCRBYFLOAT in C `long double`: a 64-bit significand
# with exponents down to 2**-16445 (subnormal). Values here are exact Fractions
# rounded to that format after every operation, so the results (and their
# "%.17Lf" rendering) are bit-for-bit what redis-server prints, and replay is
# deterministic.

LDBL_SIGNIFICAND_BITS = 64
LDBL_MIN_EXP2 = -16445  # weight of the least significant bit of the smallest subnormal
LDBL_OVERFLOW = 2**16384
MAX_LONG_DOUBLE_CHARS = 5 * 1024


def _round_half_even(num: int, den: int) -> int:
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q & 1):
        q += 1
    return q


def round_long_double(value: Fraction) -> Fraction | float:
    """Round an exact value to the nearest long double (ties to even); +-inf on overflow."""
    if value == 0:
        return Fraction(0)
    negative = value < 0
    num, den = abs(value.numerator), value.denominator
    e = num.bit_length() - den.bit_length()
    if (num << max(-e, 0)) < (den << max(e, 0)):
        e -= 1  # now 2**e <= |value| < 2**(e+1)
    k = max(e - (LDBL_SIGNIFICAND_BITS - 1), LDBL_MIN_EXP2)
    if k >= 0:
        m = _round_half_even(num, den << k)
    else:
        m = _round_half_even(num << -k, den)
    result = Fraction(m) * (Fraction(2) ** k)
    if result >= LDBL_OVERFLOW:
        return float("-inf") if negative else float("inf")
    return -result if negative else result


def parse_long_double(text: bytes) -> Fraction | float | None:
    """Redis' string2ld: strtold with the same refusals as string2d, and
    strings of MAX_LONG_DOUBLE_CHARS or more refused outright."""
    if len(text) >= MAX_LONG_DOUBLE_CHARS:
        return None
    value = _parse_c_float(text)
    if value is None or type(value) is float:
        return value
    result = round_long_double(value)
    if type(result) is float or (result == 0 and value != 0):
        return None
    return result


def format_long_double(value: Fraction) -> bytes:
    """Redis' ld2string(LD_STR_HUMAN): "%.17Lf", trailing zeros trimmed, "-0" as "0"."""
    scaled = abs(value) * 10**17
    digits = _decimal_str(_round_half_even(scaled.numerator, scaled.denominator)).rjust(18, "0")
    text = digits[:-17] + "." + digits[-17:]
    text = text.rstrip("0").rstrip(".")
    if value < 0 and text != "0":
        text = "-" + text
    return text.encode()


def is_string(value: object) -> bool:
    t = type(value)
    return t is bytes or t is bytearray


ERR_NUMKEYS = fixed_error(b"ERR numkeys should be greater than 0")
ERR_COUNT = fixed_error(b"ERR count should be greater than 0")


def parse_numkeys_side_count(argv: list[bytes], numkeys_index: int,
                             sides: dict[bytes, object]) -> tuple[list[bytes], object, int]:
    """`numkeys key [key ...] SIDE [COUNT count]` from numkeys_index on, shared by
    LMPOP/BLMPOP (LEFT|RIGHT) and ZMPOP/BZMPOP (MIN|MAX): (keys, side, count)."""
    numkeys = parse_ll(argv[numkeys_index])
    if numkeys is None or numkeys < 1:
        raise ERR_NUMKEYS
    side_index = numkeys_index + numkeys + 1
    if side_index >= len(argv):
        raise ERR_SYNTAX
    side = sides.get(argv[side_index].upper(), _NO_SIDE)
    if side is _NO_SIDE:
        raise ERR_SYNTAX
    count = -1
    i = side_index + 1
    while i < len(argv):
        if count == -1 and argv[i].upper() == b"COUNT" and i + 1 < len(argv):
            count = parse_ll(argv[i + 1])
            if count is None or count < 1:
                raise ERR_COUNT
            i += 2
        else:
            raise ERR_SYNTAX
    return argv[numkeys_index + 1 : side_index], side, 1 if count == -1 else count


_NO_SIDE = object()
