"""shards/numbers.py: the one home of string2ll, C strtod and the C limits."""

import math
import time

import pytest

from durakv.shards.numbers import LLONG_MAX, LLONG_MIN, parse_float, parse_ll, strtod


@pytest.mark.parametrize("text, value", [
    (b"0", 0), (b"-1", -1), (b"9223372036854775807", LLONG_MAX), (b"-9223372036854775808", LLONG_MIN),
    (b"+1", None), (b" 1", None), (b"1 ", None), (b"01", None), (b"-0", None), (b"", None), (b"-", None),
    (b"9223372036854775808", None), (b"-9223372036854775809", None), (b"1e3", None),
])
def test_string2ll_is_redis(text, value):
    assert parse_ll(text) == value


@pytest.mark.parametrize("text, value, used", [
    (b"0x10", 16.0, 4), (b" 1.5abc", 1.5, 4), (b"1e", 1.0, 1), (b"0x", 0.0, 1), (b"-inf", -math.inf, 4),
    (b"infinityx", math.inf, 8), (b"1e999", math.inf, 5), (b"abc", 0.0, 0), (b"0x1p-2", 0.25, 6),
])
def test_strtod_reads_the_longest_prefix_as_c_does(text, value, used):
    assert strtod(text) == (value, used)


def test_strtod_nan_and_string2d_refuses_it():
    value, used = strtod(b"nan(x1)")
    assert math.isnan(value) and used == 7
    assert parse_float(b"nan") is None
    assert parse_float(b"inf") == math.inf and parse_float(b"-inf") == -math.inf
    assert parse_float(b" 1") is None and parse_float(b"1e999") is None and parse_float(b"0x10") == 16.0


def test_debug_sleep_reads_hex_like_redis(server_factory):
    """DEBUG SLEEP takes strtod's prefix, so Redis sleeps 0x0.4p0 = 0.25 s; the
    router's own copy before the shared strtod knew no hex and read it as 0. (A
    sleep cannot end early, so the lower bound is not a timing race.)"""
    server = server_factory()
    client = server.client()
    started = time.monotonic()
    assert client.execute_command("DEBUG", "SLEEP", "0x0.4p0") in (b"OK", "OK", True)
    print(f"DEBUG SLEEP 0x0.4p0 took {time.monotonic() - started:.3f}s (0.25 expected)")
    assert time.monotonic() - started >= 0.2
