"""Unit tests of the sans-IO RESP codec (shards/resp.py): the reply encoder in
both protocol versions and the bounded request parser, byte for byte against
the behaviour of Redis 7.0's networking.c."""

from __future__ import annotations

import ctypes
import math
import random
import tracemalloc

import hiredis
import pytest

from durakv.shards.resp import (
    BULK_ARRAY_MIN_ITEMS, NULL_ARRAY, OK, PONG, Map, ProtocolError, Push, Raw, ReplyError, RequestParser,
    SetReply, Simple, Verbatim, encode, encode_error, format_double, split_args,
)

# --- encoder ------------------------------------------------------------------------

ENCODINGS = [
    # value, RESP2 bytes, RESP3 bytes
    (b"bar", b"$3\r\nbar\r\n", b"$3\r\nbar\r\n"),
    (b"", b"$0\r\n\r\n", b"$0\r\n\r\n"),
    (b"a\r\nb", b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n"),
    (bytearray(b"xy"), b"$2\r\nxy\r\n", b"$2\r\nxy\r\n"),
    (42, b":42\r\n", b":42\r\n"),
    (-(2**63), b":-9223372036854775808\r\n", b":-9223372036854775808\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    ([], b"*0\r\n", b"*0\r\n"),
    ([b"a", 1, None], b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", b"*3\r\n$1\r\na\r\n:1\r\n_\r\n"),
    ((b"t",), b"*1\r\n$1\r\nt\r\n", b"*1\r\n$1\r\nt\r\n"),
    ([[b"n"], []], b"*2\r\n*1\r\n$1\r\nn\r\n*0\r\n", b"*2\r\n*1\r\n$1\r\nn\r\n*0\r\n"),
    (Simple(b"OK"), b"+OK\r\n", b"+OK\r\n"),
    (OK, b"+OK\r\n", b"+OK\r\n"),
    (PONG, b"+PONG\r\n", b"+PONG\r\n"),
    (Raw(b":7\r\n"), b":7\r\n", b":7\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (0.1, b"$19\r\n0.10000000000000001\r\n", b",0.10000000000000001\r\n"),
    (1e20, b"$5\r\n1e+20\r\n", b",1e+20\r\n"),
    (float("inf"), b"$3\r\ninf\r\n", b",inf\r\n"),
    (float("-inf"), b"$4\r\n-inf\r\n", b",-inf\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (False, b":0\r\n", b"#f\r\n"),
    (Map([b"k", 1, b"v", [b"x"]]), b"*4\r\n$1\r\nk\r\n:1\r\n$1\r\nv\r\n*1\r\n$1\r\nx\r\n",
     b"%2\r\n$1\r\nk\r\n:1\r\n$1\r\nv\r\n*1\r\n$1\r\nx\r\n"),
    (Map([]), b"*0\r\n", b"%0\r\n"),
    (SetReply([b"m"]), b"*1\r\n$1\r\nm\r\n", b"~1\r\n$1\r\nm\r\n"),
    (Verbatim(b"a:b\r\n"), b"$5\r\na:b\r\n\r\n", b"=9\r\ntxt:a:b\r\n\r\n"),
    (Verbatim(b"x", b"mkd"), b"$1\r\nx\r\n", b"=5\r\nmkd:x\r\n"),
    (Push([b"message", b"ch", b"hi"]), b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
     b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
    (NULL_ARRAY, b"*-1\r\n", b"_\r\n"),
    ([ReplyError(b"ERR inner")], b"*1\r\n-ERR inner\r\n", b"*1\r\n-ERR inner\r\n"),
    ([Map([b"a", None]), SetReply([]), 2.0], b"*3\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n$1\r\n2\r\n",
     b"*3\r\n%1\r\n$1\r\na\r\n_\r\n~0\r\n,2\r\n"),
]
ENCODING_IDS = [f"{i}-{type(e[0]).__name__}" for i, e in enumerate(ENCODINGS)]


@pytest.mark.parametrize("value,resp2,resp3", ENCODINGS, ids=ENCODING_IDS)
def test_encode_every_reply_type(value, resp2, resp3):
    assert encode(value, 2) == resp2
    assert encode(value, 3) == resp3


@pytest.mark.parametrize("value,resp2,resp3", ENCODINGS, ids=ENCODING_IDS)
def test_encoded_replies_parse_as_one_reply(value, resp2, resp3):
    """hiredis (the reply parser clients use) reads each encoding as exactly one reply."""
    for data, proto in ((resp2, 2), (resp3, 3)):
        reader = hiredis.Reader()
        reader.feed(data + b"+SENTINEL\r\n")
        reader.gets()
        assert reader.gets() == b"SENTINEL", (value, proto)


def test_encode_rejects_unknown_types():
    with pytest.raises(TypeError):
        encode(object(), 2)
    with pytest.raises(TypeError):
        encode([{1: 2}], 3)


def _libc_17g(value: float) -> bytes:
    libc = ctypes.CDLL(None)
    buf = ctypes.create_string_buffer(64)
    libc.snprintf(buf, 64, b"%.17g", ctypes.c_double(value))
    return buf.value


def test_format_double_matches_libc_printf_17g():
    rng = random.Random(7)
    values = [3.0, -0.5, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, 0.1, 123456789.125]
    values += [rng.uniform(-1e6, 1e6) for _ in range(200)]
    values += [math.ldexp(rng.random(), rng.randint(-1000, 1000)) for _ in range(200)]
    for value in values:
        assert format_double(value) == _libc_17g(value), value
    assert format_double(math.inf) == b"inf"
    assert format_double(-math.inf) == b"-inf"


def _array_item_by_item(items: list, proto: int, kind: bytes = b"*") -> bytes:
    """The reference: the RESP spelling of an array, one item at a time."""
    out = [kind + b"%d\r\n" % len(items)]
    out += [b"$%d\r\n%b\r\n" % (len(x), x) if type(x) is bytes else encode(x, proto) for x in items]
    return b"".join(out)


def _random_bulks(rng: random.Random, count: int) -> list[bytes]:
    shapes = [lambda: b"", lambda: b"\r\n", lambda: b"\x00$*\r", lambda: rng.randbytes(rng.randint(0, 40)),
              lambda: rng.randbytes(rng.randint(1000, 70000)), lambda: b"element-%d" % rng.randint(0, 10**9)]
    return [rng.choice(shapes)() for _ in range(count)]


@pytest.mark.parametrize("count", [0, 1, BULK_ARRAY_MIN_ITEMS - 1, BULK_ARRAY_MIN_ITEMS, 500])
def test_big_arrays_of_bulks_encode_as_item_by_item(count):
    """Arrays of bulk strings from BULK_ARRAY_MIN_ITEMS on are formatted in C
    (LRANGE, KEYS, SMEMBERS of big values): byte for byte the same as the
    per-item encoding, in both protocols, nested or not, list or tuple."""
    rng = random.Random(count)
    items = _random_bulks(rng, count)
    for proto in (2, 3):
        expected = _array_item_by_item(items, proto)
        assert encode(items, proto) == expected
        assert encode(tuple(items), proto) == expected
        assert encode([b"0", items], proto) == b"*2\r\n$1\r\n0\r\n" + expected
        assert encode(SetReply(items), proto) == _array_item_by_item(items, proto, b"*" if proto == 2 else b"~")


def test_big_arrays_with_other_item_types_keep_their_types():
    """An int, None, float, bytearray or nested array among many bulks keeps its own
    spelling (the C formatter would make a bulk string of a number)."""
    rng = random.Random(3)
    for odd in (7, None, 1.5, bytearray(b"ba"), [b"x"], Simple(b"OK")):
        items = _random_bulks(rng, BULK_ARRAY_MIN_ITEMS * 2)
        items[rng.randrange(len(items))] = odd
        for proto in (2, 3):
            assert encode(items, proto) == _array_item_by_item(items, proto), (odd, proto)


def test_error_replies_never_break_framing():
    assert encode_error(b"ERR plain") == b"-ERR plain\r\n"
    assert encode_error(b"ERR a\r\nb\nc\rd") == b"-ERR a  b c d\r\n"


# --- request parser -----------------------------------------------------------------


def parse_all(data: bytes, chunks: list[int] | None = None, **kw) -> list[list[bytes]]:
    parser = RequestParser(**kw)
    out: list[list[bytes]] = []
    if chunks is None:
        parser.feed(data)
        out += parser.requests()
        return out
    pos = 0
    for size in chunks:
        parser.feed(data[pos : pos + size])
        pos += size
        out += parser.requests()
    assert pos == len(data)
    return out


def protocol_error(data: bytes, **kw) -> ProtocolError:
    parser = RequestParser(**kw)
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        parser.requests()
    return info.value


def mbulk(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


PIPELINE = (
    mbulk(b"SET", b"key", b"va\r\nlue")
    + b"PING\r\n"
    + mbulk(b"GET", b"key")
    + b"ECHO \"a b\" 'c'\n"
    + mbulk(b"MSET", b"{t}a", b"", b"{t}b", b"x" * 40)
    + b"*0\r\n"
    + b"*-1\r\n"
    + b"\r\n"
    + mbulk(b"DEL", b"k")
)
PIPELINE_REQUESTS = [
    [b"SET", b"key", b"va\r\nlue"],
    [b"PING"],
    [b"GET", b"key"],
    [b"ECHO", b"a b", b"c"],
    [b"MSET", b"{t}a", b"", b"{t}b", b"x" * 40],
    [b"DEL", b"k"],
]


def test_pipeline_in_one_piece():
    assert parse_all(PIPELINE) == PIPELINE_REQUESTS


@pytest.mark.parametrize("split", range(1, len(PIPELINE)))
def test_pipeline_split_at_every_point(split):
    assert parse_all(PIPELINE, [split, len(PIPELINE) - split]) == PIPELINE_REQUESTS


def test_pipeline_byte_by_byte():
    assert parse_all(PIPELINE, [1] * len(PIPELINE)) == PIPELINE_REQUESTS


def test_pipeline_random_chunking():
    rng = random.Random(1234)
    for _ in range(200):
        chunks = []
        left = len(PIPELINE)
        while left:
            size = min(left, rng.randint(1, 40))
            chunks.append(size)
            left -= size
        assert parse_all(PIPELINE, chunks) == PIPELINE_REQUESTS


def test_big_argument_arriving_in_pieces():
    big = bytes(range(256)) * 1024  # 256 KiB, over the big-argument threshold
    data = mbulk(b"SET", b"k", big) + mbulk(b"GET", b"k")
    sizes = [7, 20, 1000] + [4096] * (len(data) // 4096)
    sizes.append(len(data) - sum(sizes))
    parser = RequestParser()
    out = []
    pos = 0
    for size in sizes:
        parser.feed(data[pos : pos + size])
        pos += size
        out += parser.requests()
        assert parser.buffered_bytes() <= pos - sum(len(mbulk(*argv)) for argv in out)
    assert out == [[b"SET", b"k", big], [b"GET", b"k"]]
    assert parser.buffered_bytes() == 0


def test_payload_is_taken_by_length_and_two_bytes_skipped():
    """Redis takes exactly the declared bytes and skips the next two unchecked."""
    assert parse_all(b"*1\r\n$4\r\nPINGxx\r\n") == [[b"PING"]]
    assert parse_all(b"*1\r\n$4\r\nPING\n\n") == [[b"PING"]]


def test_header_line_ends_at_cr():
    """A header ends at the first CR; the byte after it is skipped unchecked."""
    assert parse_all(b"*1\rX$4\rXPING\r\n") == [[b"PING"]]
    err = protocol_error(b"*1\r$4\r\nPING\r\n")
    assert err.args[0] == b"expected '$', got '4'"


def test_header_waits_for_the_byte_after_cr():
    parser = RequestParser()
    parser.feed(b"*1\r")
    assert parser.requests() == []
    parser.feed(b"\n$4\r")
    assert parser.requests() == []
    parser.feed(b"\nPING\r\n")
    assert parser.requests() == [[b"PING"]]


def test_empty_and_negative_multibulk_are_ignored():
    assert parse_all(b"*0\r\n*-1\r\n*-7\r\n" + mbulk(b"PING")) == [[b"PING"]]


def test_empty_argument_and_empty_command_name():
    assert parse_all(b"*1\r\n$0\r\n\r\n") == [[b""]]


INLINE = [
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"  SET  a   b  \r\n", [[b"SET", b"a", b"b"]]),
    (b"\r\n\n\r\n", []),
    (b"ECHO \"a\\x41\\n\\t\\r\\b\\a\\z\\\\\"\r\n", [[b"ECHO", b"aA\n\t\r\b\az\\"]]),
    (b"ECHO \"\\x4\"\r\n", [[b"ECHO", b"x4"]]),
    (b"ECHO \"\\xZZ\"\r\n", [[b"ECHO", b"xZZ"]]),
    (b"ECHO 'it\\'s' 'a\\nb'\r\n", [[b"ECHO", b"it's", b"a\\nb"]]),
    (b"ECHO \"\" ''\r\n", [[b"ECHO", b"", b""]]),
    (b"ECHO a\"b c\"d\r\n", None),  # closing quote must be followed by a space
    (b"ECHO a\"b c\" d\r\n", [[b"ECHO", b"ab c", b"d"]]),
    (b"ECHO a\vb\r\n", [[b"ECHO", b"a\vb"]]),  # \v and \f do not end an unquoted word
    (b"ECHO \fa\r\n", [[b"ECHO", b"a"]]),  # ...but are skipped between words
    (b"ECHO \"a\"\vb\r\n", [[b"ECHO", b"a", b"b"]]),
    (b"ECHO \"a\r\n", None),
    (b"ECHO 'a\r\n", None),
    (b"ECHO 'a'b\r\n", None),
    (b"ECHO \"a\\\"\r\n", None),
]


@pytest.mark.parametrize("data,expected", INLINE, ids=[repr(c[0]) for c in INLINE])
def test_inline_commands(data, expected):
    if expected is None:
        assert protocol_error(data).args[0] == b"unbalanced quotes in request"
    else:
        assert parse_all(data) == expected


def test_split_args_direct():
    assert split_args(b"") == []
    assert split_args(b"a\x00b c") == [b"a"]  # a NUL ends a C string
    assert split_args(b"'a b'") == [b"a b"]


def test_inline_line_hidden_by_nul_waits():
    """Redis finds the line end with strchr, which stops at a NUL byte."""
    parser = RequestParser()
    parser.feed(b"PING\x00\r\nPING\r\n")
    assert parser.requests() == []
    parser.feed(b"x" * (64 * 1024))
    with pytest.raises(ProtocolError) as info:
        parser.requests()
    assert info.value.args[0] == b"too big inline request"


@pytest.mark.parametrize("data", [b"*1\x00\r\n", b"*1\r\n\x00\r\n", b"*1\r\n$4\x00\r\n", b"\x00\r\n"])
def test_header_hidden_by_nul_waits(data):
    parser = RequestParser()
    parser.feed(data)
    assert parser.requests() == []


PROTOCOL_ERRORS = [
    (b"*x\r\n", b"invalid multibulk length"),
    (b"*01\r\n", b"invalid multibulk length"),
    (b"*+1\r\n", b"invalid multibulk length"),
    (b"*-0\r\n", b"invalid multibulk length"),
    (b"* 1\r\n", b"invalid multibulk length"),
    (b"*\r\n", b"invalid multibulk length"),
    (b"*2147483648\r\n", b"invalid multibulk length"),
    (b"*3000000000\r\n", b"invalid multibulk length"),
    (b"*99999999999999999999\r\n", b"invalid multibulk length"),
    (b"*" + b"1" * 5000 + b"\r\n", b"invalid multibulk length"),
    (b"*1\r\nx\r\n", b"expected '$', got 'x'"),
    (b"*1\r\n:1\r\n", b"expected '$', got ':'"),
    (b"*2\r\n$1\r\na\r\n*1\r\n", b"expected '$', got '*'"),
    (b"*1\r\n$x\r\n", b"invalid bulk length"),
    (b"*1\r\n$-1\r\n", b"invalid bulk length"),
    (b"*1\r\n$-0\r\n", b"invalid bulk length"),
    (b"*1\r\n$04\r\n", b"invalid bulk length"),
    (b"*1\r\n$+4\r\n", b"invalid bulk length"),
    (b"*1\r\n$ 4\r\n", b"invalid bulk length"),
    (b"*1\r\n$2000000000\r\n", b"invalid bulk length"),
    (b"*1\r\n$536870913\r\n", b"invalid bulk length"),
    (b"*1\r\n$" + b"1" * 5000 + b"\r\n", b"invalid bulk length"),
    (b"*" + b"1" * (64 * 1024 + 1), b"too big mbulk count string"),
    (b"*1\r\n$" + b"1" * (64 * 1024 + 1), b"too big bulk count string"),
    (b"SET a " + b"x" * (64 * 1024), b"too big inline request"),
    (b"ECHO \"abc\r\n", b"unbalanced quotes in request"),
]


@pytest.mark.parametrize("data,message", PROTOCOL_ERRORS, ids=[repr(c[0][:30]) for c in PROTOCOL_ERRORS])
def test_protocol_errors(data, message):
    assert protocol_error(data).args[0] == message


def test_bulk_length_limit_follows_proto_max_bulk_len():
    assert parse_all(mbulk(b"x" * 2000), max_bulk_bytes=2000) == [[b"x" * 2000]]
    assert protocol_error(b"*1\r\n$2001\r\n", max_bulk_bytes=2000).args[0] == b"invalid bulk length"


def test_long_inline_request_under_the_limit_is_fine():
    line = b"ECHO " + b"y" * (64 * 1024 - 10) + b"\r\n"
    assert parse_all(line) == [[b"ECHO", b"y" * (64 * 1024 - 10)]]


def test_unauthenticated_limits():
    def unauth(data: bytes) -> RequestParser:
        parser = RequestParser()
        parser.authed = False
        parser.feed(data)
        return parser

    assert unauth(b"*10\r\n").requests() == []
    with pytest.raises(ProtocolError) as info:
        unauth(b"*11\r\n").requests()
    assert info.value.args[0] == b"unauthenticated multibulk length"
    assert unauth(b"*1\r\n$16384\r\n").requests() == []
    with pytest.raises(ProtocolError) as info:
        unauth(b"*1\r\n$16385\r\n").requests()
    assert info.value.args[0] == b"unauthenticated bulk length"


def test_requests_before_garbage_travel_with_the_error():
    """Redis executes the complete commands that precede bad input in the same
    read before it answers the protocol error."""
    err = protocol_error(mbulk(b"PING") + b"PING\r\n" + b"*1\r\n$x\r\n")
    assert err.requests == [[b"PING"], [b"PING"]]
    assert err.args[0] == b"invalid bulk length"


def test_parser_state_survives_an_error_free_partial_feed():
    parser = RequestParser()
    parser.feed(b"*2\r\n$3\r\nGET\r\n")
    assert parser.requests() == []
    parser.feed(b"$1\r\nk\r\n*1\r\n$x\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.requests()
    assert info.value.requests == [[b"GET", b"k"]]


@pytest.mark.parametrize("header", [b"*2147483647\r\n", b"*1\r\n$536870912\r\n", b"*3\r\n$536870912\r\nab"])
def test_huge_declared_sizes_are_not_allocated(header):
    """A valid but huge count or length costs nothing until the bytes arrive."""
    parser = RequestParser()
    tracemalloc.start()
    try:
        parser.feed(header)
        assert parser.requests() == []
        parser.feed(b"x" * 1000)
        assert parser.requests() == []
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1024 * 1024


@pytest.mark.parametrize("header", [b"*3000000000\r\n", b"*1\r\n$2000000000\r\n"])
def test_huge_invalid_sizes_are_refused_at_once(header):
    parser = RequestParser()
    tracemalloc.start()
    try:
        parser.feed(header)
        with pytest.raises(ProtocolError):
            parser.requests()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1024 * 1024


def test_fuzzed_input_never_raises_anything_but_protocol_error():
    rng = random.Random(99)
    alphabet = b"*$\r\n0123456789-+ x\"'\\\x00"
    for _ in range(3000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        parser = RequestParser()
        try:
            for i in range(0, len(data), 7):
                parser.feed(data[i : i + 7])
                for argv in parser.requests():
                    assert argv and all(type(a) is bytes for a in argv)
        except ProtocolError as e:
            assert isinstance(e.args[0], bytes)
