"""The request parser's hiredis fast path (shards/resp.py): complete pipelines of
plain multibulk requests are parsed in C, and on every input the parser answers
exactly what the pure-Python parser answers (the same requests, the same Redis
errors at the same point), which is checked here on random streams split at
random points."""

from __future__ import annotations

import random

import pytest

import durakv.shards.resp as resp
from durakv.shards.resp import ProtocolError, RequestParser


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_a_pipeline_of_plain_requests_takes_the_fast_path():
    parser = RequestParser()
    batch = b"".join(pack(b"SET", b"key:%d" % i, b"v" * 100) for i in range(16))
    parser.feed(batch)
    requests = parser.requests()
    assert requests == [[b"SET", b"key:%d" % i, b"v" * 100] for i in range(16)]
    assert parser.fast_requests == 16
    parser.feed(pack(b"GET", b"k")[:7])  # a partial request: the exact parser keeps it
    assert parser.requests() == []
    parser.feed(pack(b"GET", b"k")[7:] + pack(b"PING"))
    assert parser.requests() == [[b"GET", b"k"], [b"PING"]]
    assert parser.fast_requests == 16


class RecordingReader:
    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.fed.append(bytes(data))
        raise AssertionError("hiredis must not see this input")


@pytest.mark.parametrize("data", [b"*2000000000\r\n", b"*99999\r\n$3\r\nSET\r\n", b"*1\r\n*12345\r\n",
                                  b"*1\r\n+PING\r\n", b"*1\r\n=8\r\ntxt:PING\r\n", b"*1\r\n(12\r\n",
                                  b"~1\r\n$4\r\nPING\r\n", b"|1\r\n$1\r\na\r\n$1\r\nb\r\n",
                                  b">1\r\n$4\r\nPING\r\n", b"#f\r\n*1\r\n$4\r\nPING\r\n"])
def test_input_hiredis_would_read_otherwise_never_reaches_it(data, monkeypatch):
    """hiredis allocates an array when it reads its count, hands simple strings,
    verbatim strings and big numbers inside a request out as bytes, and sets,
    attributes and pushes as lists (requests, in its eyes, where Redis reads an
    inline command): none of that is given to it."""
    reader = RecordingReader()
    monkeypatch.setattr(resp, "_fast_reader", reader)
    parser = RequestParser()
    data = pack(b"ECHO", b"x" * resp.FAST_PARSE_MIN_BYTES) + data  # big enough for the fast path
    parser.feed(data)
    try:
        parser.requests()
    except ProtocolError:
        pass
    assert reader.fed == []


@pytest.mark.parametrize("data", [
    pack(b"PING") * (resp.FAST_PARSE_MAX_SMALL_ARRAYS + 1),  # too many arrays
    pack(b"PING") * resp.FAST_PARSE_MAX_ARRAYS + pack(*[b"x"] * 1000),  # more than 256, one with 1000 items
])
def test_too_many_arrays_in_one_input_go_to_the_exact_parser(data, monkeypatch):
    reader = RecordingReader()
    monkeypatch.setattr(resp, "_fast_reader", reader)
    parser = RequestParser()
    parser.feed(data)
    assert len(parser.requests()) == data.count(b"*")
    assert reader.fed == [] and parser.fast_requests == 0


def test_a_deep_pipeline_of_small_commands_takes_the_fast_path():
    """A 16 KiB read of GETs (~650 of them, more than FAST_PARSE_MAX_ARRAYS) is parsed
    by hiredis: the turn that parses it is what other clients wait for (issue 13)."""
    parser = RequestParser()
    data = pack(b"GET", b"{a}big") * 650
    parser.feed(data)
    assert parser.requests() == [[b"GET", b"{a}big"]] * 650
    assert parser.fast_requests == 650


PIECES = [
    lambda r: pack(b"SET", b"key:%d" % r.randrange(1000), r.randbytes(r.choice([0, 1, 5, 100, 3000]))),
    lambda r: pack(b"GET", b"k\r\n+x" if r.random() < 0.2 else b"k"),
    lambda r: pack(b"MSET", *[b"f%d" % i for i in range(r.randrange(1, 12))]),
    lambda r: pack(b"ECHO", b"a\x00b*99999\r\n(=+"),
    lambda r: b"*0\r\n",
    lambda r: b"*-1\r\n",
    lambda r: b"PING inline\r\n",
    lambda r: b"  \r\n",
    lambda r: b"*1\r\n+PING\r\n",
    lambda r: b"*2\r\n$3\r\nGET\r\n:12\r\n",
    lambda r: b"*1\r\n$-1\r\n",
    lambda r: b"*1\r\n*1\r\n$1\r\na\r\n",
    lambda r: b"*1\r\n_\r\n",
    lambda r: b"*1\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    lambda r: b"*01\r\n$4\r\nPING\r\n",
    lambda r: b"*1\r\n$04\r\nPING\r\n",
    lambda r: b"*1\r\n$4\r\nPINGxx",
    lambda r: b"*1\rX$4\r\nPING\r\n",
    lambda r: b"*1\r\n$4\r\nPING\n\n",
    lambda r: b"*3000000000\r\n",
    lambda r: b"*2\r\n$3\r\nGET\r\n$999999999999\r\n",
    lambda r: b"*1\r\n$ 4\r\nPING\r\n",
    lambda r: b"$4\r\nPING\r\n",
    lambda r: b"*1\x00\r\n$4\r\nPING\r\n",
    # A request's first line of another RESP3 type: an inline command to Redis.
    lambda r: b"~1\r\n$4\r\nPING\r\n",
    lambda r: b"|1\r\n$1\r\na\r\n$1\r\nb\r\n",
    lambda r: b">1\r\n$4\r\nPING\r\n",
    lambda r: b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    lambda r: b":5\r\n#t\r\n,1.5\r\n",
    lambda r: b"#f\r\n",  # hiredis' False, its "no more input"
]


def parse_stream(stream: bytes, cuts: list[int], fast: bool, authed: bool,
                 monkeypatch: pytest.MonkeyPatch) -> list:
    monkeypatch.setattr(resp, "FAST_PARSE_MAX_BYTES", 64 * 1024 if fast else 0)
    monkeypatch.setattr(resp, "SMALL_PARSE_MAX_BYTES", resp.FAST_PARSE_MIN_BYTES - 1 if fast else 0)
    parser = RequestParser(max_bulk_bytes=1024 * 1024)
    parser.authed = authed
    out: list = []
    start = 0
    for cut in [*cuts, len(stream)]:
        parser.feed(stream[start:cut])
        start = cut
        try:
            out.append(parser.requests())
        except ProtocolError as e:
            out.append(("error", e.args[0], e.requests))
            break
    out.append(parser.buffered_bytes())
    return out


@pytest.mark.parametrize("seed", range(300))
def test_the_fast_path_answers_what_the_exact_parser_answers(seed, monkeypatch):
    r = random.Random(seed)
    plain = r.random() < 0.5  # half the streams hold only well-formed requests
    pieces = PIECES[:3] if plain else PIECES
    stream = b"".join(r.choice(pieces)(r) for _ in range(r.randrange(1, 40)))
    cuts = sorted(r.sample(range(1, len(stream)), min(len(stream) - 1, r.randrange(0, 6)))) if len(stream) > 1 else []
    authed = r.random() < 0.9
    expected = parse_stream(stream, cuts, False, authed, monkeypatch)
    assert parse_stream(stream, cuts, True, authed, monkeypatch) == expected


def test_a_short_request_takes_the_small_path():
    """At P1 a read holds one short request: split at CRLF, not parsed byte by byte."""
    parser = RequestParser()
    parser.feed(pack(b"GET", b"key:1") + pack(b"SET", b"k", b""))
    assert parser.requests() == [[b"GET", b"key:1"], [b"SET", b"k", b""]]
    assert parser.fast_requests == 2
    parser.feed(pack(b"SET", b"k\r\nx", b"\r"))  # CRLF inside: the split disagrees, the exact parser reads it
    assert parser.requests() == [[b"SET", b"k\r\nx", b"\r"]]
    assert parser.fast_requests == 2
    parser.feed(b"*1\r\n$4\r\nPINGxx")  # not canonical (Redis skips the two bytes unread): the exact parser
    assert parser.requests() == [[b"PING"]]
    assert parser.fast_requests == 2


@pytest.mark.parametrize("seed", range(300))
def test_the_small_path_answers_what_the_exact_parser_answers(seed, monkeypatch):
    r = random.Random(seed)
    stream = b"".join(r.choice(PIECES)(r) for _ in range(r.randrange(1, 4)))[:resp.SMALL_PARSE_MAX_BYTES]
    cuts = sorted(r.sample(range(1, len(stream)), min(len(stream) - 1, r.randrange(0, 2)))) if len(stream) > 1 else []
    authed = r.random() < 0.9
    expected = parse_stream(stream, cuts, False, authed, monkeypatch)
    assert parse_stream(stream, cuts, True, authed, monkeypatch) == expected


def test_a_read_that_ends_inside_a_request_takes_the_fast_path_up_to_it():
    """A deep pipeline read 16 KiB at a time ends inside a request: the complete
    requests before it are parsed by hiredis, the partial one by the exact parser,
    which completes it with the next read."""
    data = pack(b"GET", b"{a}big") * 1000
    parser = RequestParser()
    first = 16 * 1024 + 7  # inside a request
    parser.feed(data[:first])
    got = parser.requests()
    assert parser.fast_requests == len(got) > 600
    parser.feed(data[first:])
    got += parser.requests()
    assert got == [[b"GET", b"{a}big"]] * 1000


def test_every_read_of_a_deep_pipeline_takes_the_fast_path():
    """Read 16 KiB at a time (as a router reads a client), a deep pipeline's reads end
    inside requests, also just after one of their CRLFs: the exact parser completes
    that request with the next read and the fast path takes the rest of it (before,
    the exact parser kept every read after the first one ending inside a request:
    1.5 against 0.3 µs a GET, in the turn other clients wait for; issue 13)."""
    data = pack(b"GET", b"{a}big") * 5000
    parser = RequestParser()
    got: list[list[bytes]] = []
    reads = range(0, len(data), 16 * 1024)
    for start in reads:
        parser.feed(data[start : start + 16 * 1024])
        got += parser.requests()
    assert got == [[b"GET", b"{a}big"]] * 5000
    assert parser.fast_requests >= len(got) - len(reads)
