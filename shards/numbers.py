"""Numbers as Redis reads and writes them: the C integer limits, string2ll, C's
strtod grammar (hex, inf, nan) and Redis' string2d / string2ld on top of it, and
the x86-64 long double INCRBYFLOAT computes in. The one home for these rules:
the RESP parser, argument parsing, CONFIG values, sort weights, score ranges and
the RDB codec all read numbers through here. Nothing here imports from durakv."""

from __future__ import annotations

import math
import re
from fractions import Fraction

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
LONG_MAX = LLONG_MAX
ULLONG_MAX = 2**64 - 1
INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
UINT_MAX = 2**32 - 1


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


# --- C's strtod grammar ---------------------------------------------------------
#
# One pattern for every reader: leading C isspace(), a sign, then a hex float, a
# decimal float, inf/infinity or nan(chars), matched as the longest prefix, as
# strtod does. string2d/string2ld additionally refuse a leading space, NaN and
# anything left over.
_C_SPACE = b" \t\n\v\f\r"
_C_FLOAT = re.compile(
    rb"[ \t\n\v\f\r]*([+-]?)(?:"
    rb"0[xX](?:([0-9a-fA-F]+)\.?([0-9a-fA-F]*)|\.([0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?"
    rb"|(?:([0-9]+)\.?([0-9]*)|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?"
    rb"|([iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    rb"|([nN][aA][nN](?:\([0-9A-Za-z_]*\))?)"
    rb")"
)
_HEX_WHOLE, _HEX_ONLY_FRAC, _INF, _NAN = 2, 4, 10, 11

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


def strtod(text: bytes) -> tuple[float, int]:
    """C's strtod: (value, bytes consumed); consumed is 0 when no number starts
    the text. Overflow gives +-inf and underflow 0, as strtod returns them."""
    m = _C_FLOAT.match(text)
    if m is None:
        return 0.0, 0
    number = text[m.end(1):m.end()]
    if m.group(_INF) is not None:
        value = math.inf
    elif m.group(_NAN) is not None:
        value = math.nan
    elif m.group(_HEX_WHOLE) is not None or m.group(_HEX_ONLY_FRAC) is not None:
        try:
            value = float.fromhex(number.decode())
        except OverflowError:
            value = math.inf
    else:
        value = float(number)
    return (-value if m.group(1) == b"-" else value), m.end()


def _parse_c_float(text: bytes) -> Fraction | float | None:
    """The exact rational value of a strtod-style number, float('inf') or
    float('-inf') for infinities, None if not a number at all. Values far
    outside every floating range come back as a stand-in (10**±5000) that
    rounds the same way (overflow, or zero), never as an unbounded power."""
    if not text or text[0] in _C_SPACE:
        return None
    m = _C_FLOAT.match(text)
    if m is None or m.end() != len(text) or m.group(_NAN) is not None:
        return None
    negative = m.group(1) == b"-"
    if m.group(_INF) is not None:
        return float("-inf") if negative else float("inf")
    if m.group(_HEX_WHOLE) is not None or m.group(_HEX_ONLY_FRAC) is not None:
        base = 16
        whole, frac, only_frac, exp = m.group(2, 3, 4, 5)
    else:
        base = 10
        whole, frac, only_frac, exp = m.group(6, 7, 8, 9)
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
    if value is None or isinstance(value, float):
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

