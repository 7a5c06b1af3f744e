"""RESP2/RESP3 codec as pure functions on bytes: no sockets, no trio.

Requests are parsed by a stateful, bounded request parser (Redis' own request
grammar: multibulk of `$` bulks, or an inline line). hiredis' reader is the right
tool for *replies* (the router uses it to merge shard replies) but it cannot police
requests: it accepts any reply type inside a request and has no bound on array
sizes, so `*3000000000` would make it allocate a 3e9-slot list. Redis refuses such
input with precise errors before allocating, and so does this parser.

One exception, a fast path for the common case: input that is nothing but complete
requests, each a multibulk of `$` bulks, is parsed by hiredis' reader in C (about
0.3-0.8 µs per request against 2-4 µs here), but only after cheap scans that rule
out everything on which hiredis and Redis differ (other reply types, which hiredis
accepts inside an array, and any array count of five digits or more, for which
hiredis would allocate before the elements arrive); whatever fails a scan, or is
not parsed to the end, goes through this parser from the same byte, so every error
and limit stays Redis' own.

Replies are Python values encoded per the client's protocol version:
bytes/bytearray -> bulk, int -> integer, None -> null, list/tuple -> array,
float -> double, bool -> boolean (RESP3) or 1/0, and the wrapper classes below
for the types RESP2 and RESP3 spell differently.
"""

from __future__ import annotations

import itertools
import math

import re

import hiredis
from hiredis import pack_command

from durakv.shards.bigbuf import Filling
from durakv.shards.numbers import parse_ll

INLINE_MAX_SIZE_BYTES = 64 * 1024
MULTIBULK_MAX_COUNT = 2**31 - 1
UNAUTH_MULTIBULK_MAX_COUNT = 10
UNAUTH_BULK_MAX_BYTES = 16384
AUTH_COMMANDS = (b"auth", b"hello")  # the requests that may authenticate a connection
BIG_ARG_BYTES = 32 * 1024
BULK_HEADER_FAST_BYTES = 21  # `$` and up to 19 digits: parsed inline (bigger sizes are refused anyway)
# The hiredis fast path (see the module docstring) takes input of at most this many
# bytes holding at most this many `*`: hiredis allocates an array when it reads its
# header, so with every count under 10^4 (the scan below) it allocates at most
# FAST_PARSE_MAX_ARRAYS * 10^4 slots (20 MB of address space, briefly) for any input.
# Input of up to FAST_PARSE_MAX_SMALL_ARRAYS `*` goes there too if no count has four
# digits (at most 2048 * 10^3 slots, 16 MB): a deep pipeline of small commands (a
# client's 16 KiB read holds ~650 GETs) costs the loop 0.45 µs a request, not 3 µs,
# in the one turn that parses it, which every other client of the process waits for
# (issue 13).
FAST_PARSE_MAX_BYTES = 64 * 1024
# Below this, usually one request: the scans and hiredis' calls cost what they save.
FAST_PARSE_MIN_BYTES = 256
FAST_PARSE_MAX_ARRAYS = 256
FAST_PARSE_MAX_SMALL_ARRAYS = 2048
# Input shorter than FAST_PARSE_MIN_BYTES (at P1, one request a read) is first tried
# by _parse_small: one split at CRLF and a check that every header is canonical.
SMALL_PARSE_MAX_BYTES = FAST_PARSE_MIN_BYTES - 1
_FAST_PARSE_BIG_COUNT = re.compile(rb"\*[0-9]{5}")  # an array count of five digits or more
# After "\r\n" (the end of the previous header or bulk), a type byte other than `$` and
# `*` whose value hiredis hands out as bytes (simple string, verbatim, big number), as a
# list (set, attribute, push: a request in its eyes, where Redis reads an inline command)
# or as False (a boolean `#f`, which reads as "no more input": the line would be lost).
_NOT_PLAIN_TYPE_BYTES = b"+=(~|>#"  # input without any of these bytes needs no search
_FAST_PARSE_NOT_PLAIN = re.compile(rb"\r\n[" + re.escape(_NOT_PLAIN_TYPE_BYTES) + rb"]")
_FAST_PARSE_FOUR_DIGIT_COUNT = re.compile(rb"\*[0-9]{4}")
# From this many items on, an array of bulk strings is formatted in C (below this the
# type scan and the tuple copy cost more than the per-item Python formatting saves).
BULK_ARRAY_MIN_ITEMS = 32


class Simple:
    """A status reply (`+OK`)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


class Map:
    """A map reply: RESP3 `%`, RESP2 a flat array of key, value, ..."""

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items  # flat [k1, v1, k2, v2, ...]


class SetReply:
    """A set reply: RESP3 `~`, RESP2 an array."""

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class Verbatim:
    """A verbatim string: RESP3 `=`, RESP2 a bulk string (INFO, CLIENT LIST)."""

    __slots__ = ("data", "fmt")

    def __init__(self, data: bytes, fmt: bytes = b"txt") -> None:
        self.data = data
        self.fmt = fmt


class Push:
    """An out-of-band push message: RESP3 `>`, RESP2 an array."""

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class Raw:
    """Bytes already encoded for both protocols (a cached reply)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class NullArray:
    """RESP2's `*-1` (BLPOP timeout, EXEC abort); RESP3 `_`."""

    __slots__ = ()


NULL_ARRAY = NullArray()


class ReplyError(Exception):
    """Raised by a command to reply with an error; `message` has no leading '-'."""

    def __init__(self, message: bytes) -> None:
        super().__init__(message)
        self.message = message


def fixed_error(message: bytes) -> type[ReplyError]:
    """A ReplyError subclass whose instances all carry `message`, for the module
    constants (`ERR_SYNTAX = fixed_error(b"ERR syntax error")`): `raise ERR_SYNTAX`
    makes a new instance each time, where a shared instance would keep the
    traceback of its last raise, and every frame that traceback references, alive
    until the next one."""

    def __init__(self: ReplyError) -> None:
        ReplyError.__init__(self, message)

    return type("FixedReplyError", (ReplyError,), {"__init__": __init__, "message": message})


OK = Raw(b"+OK\r\n")
PONG = Raw(b"+PONG\r\n")
QUEUED = Raw(b"+QUEUED\r\n")
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
NULLARRAY2 = b"*-1\r\n"


def format_double(d: float) -> bytes:
    """Redis 7.0's `%.17g` rendering of a double, with inf/-inf spelled out."""
    if math.isinf(d):
        return b"inf" if d > 0 else b"-inf"
    return b"%.17g" % d


def encode(value: object, proto: int) -> bytes:
    """Encode one reply value for a client speaking RESP `proto` (2 or 3)."""
    t = type(value)
    if t is bytes:
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if t is Raw:
        return value.data
    if t is int:
        return b":%d\r\n" % value
    if value is None:
        return NULL2 if proto == 2 else NULL3
    if t is list or t is tuple:
        packed = bulk_array(value)
        if packed is not None:
            return packed
    out: list[bytes] = []
    _encode_into(value, proto, out)
    return b"".join(out)


def encode_error(message: bytes) -> bytes:
    """An error reply; CR/LF inside the message would break framing."""
    if b"\r" in message or b"\n" in message:
        message = message.replace(b"\r", b" ").replace(b"\n", b" ")
    return b"-%b\r\n" % message


def bulk_array(items: list | tuple) -> bytes | None:
    """`items` as a RESP array of bulk strings (the same bytes in RESP2 and RESP3),
    formatted in C, if there are at least BULK_ARRAY_MIN_ITEMS and every one is
    exactly bytes; else None. hiredis' pack_command writes a Redis request, which
    is exactly that array: ~0.11 s a million elements this way against ~0.28 s
    item by item (issue 11 §4; CPU time on the shared 2-core machine). Exact
    types only: pack_command would turn an int into a bulk string where a reply
    wants `:n`."""
    if len(items) < BULK_ARRAY_MIN_ITEMS:
        return None
    types = set(map(type, items))
    if len(types) != 1 or bytes not in types:
        return None
    return pack_command(items if type(items) is tuple else tuple(items))


def _encode_into(value: object, proto: int, out: list) -> None:
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        out.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif value is None:
        out.append(NULL2 if proto == 2 else NULL3)
    elif t is list or t is tuple:
        packed = bulk_array(value)
        if packed is not None:
            out.append(packed)
            return
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, proto, out)
    elif t is Raw:
        out.append(value.data)
    elif t is Simple:
        out.append(b"+%b\r\n" % value.text)
    elif t is float:
        if proto == 2:
            text = format_double(value)
            out.append(b"$%d\r\n%b\r\n" % (len(text), text))
        else:
            out.append(b",%b\r\n" % format_double(value))
    elif t is bool:
        if proto == 2:
            out.append(b":1\r\n" if value else b":0\r\n")
        else:
            out.append(b"#t\r\n" if value else b"#f\r\n")
    elif t is Map:
        items = value.items
        if proto == 2:
            out.append(b"*%d\r\n" % len(items))
        else:
            out.append(b"%%%d\r\n" % (len(items) // 2))
        for item in items:
            _encode_into(item, proto, out)
    elif t is SetReply:
        packed = bulk_array(value.items)
        if packed is not None:
            out.append(packed if proto == 2 else b"~" + memoryview(packed)[1:])
            return
        out.append((b"*%d\r\n" if proto == 2 else b"~%d\r\n") % len(value.items))
        for item in value.items:
            _encode_into(item, proto, out)
    elif t is Verbatim:
        if proto == 2:
            out.append(b"$%d\r\n%b\r\n" % (len(value.data), value.data))
        else:
            body = value.fmt + b":" + value.data
            out.append(b"=%d\r\n%b\r\n" % (len(body), body))
    elif t is Push:
        out.append((b"*%d\r\n" if proto == 2 else b">%d\r\n") % len(value.items))
        for item in value.items:
            _encode_into(item, proto, out)
    elif t is NullArray:
        out.append(NULLARRAY2 if proto == 2 else NULL3)
    elif t is ReplyError:
        out.append(encode_error(value.message))
    else:
        raise TypeError(f"cannot encode reply of type {t.__name__}")


class ProtocolError(Exception):
    """Malformed request; the connection is answered and closed, like Redis.

    `args[0]` is the message after "Protocol error: "; `requests` holds the
    complete requests that preceded the bad input in the same buffer: Redis
    executes those (and sends their replies) before the error."""

    def __init__(self, message: bytes, requests: list[list[bytes]] | None = None) -> None:
        super().__init__(message)
        self.requests: list[list[bytes]] = requests if requests is not None else []


class _Incomplete(Exception):
    """Internal: the header line is not complete yet (Redis' "no newline")."""


class RequestParser:
    """Incremental parser of client requests (multibulk or inline), bounded.

    Feed it bytes, take complete argument vectors out. State survives across
    feeds so a request arriving in many chunks is never re-scanned from the start.
    It follows Redis 7.0's networking.c byte for byte: a header line ends at the
    first CR (the byte after it is skipped unchecked), a bulk payload is followed
    by two skipped bytes, an inline line ends at LF, and a NUL byte before the
    line end hides it (Redis scans with strchr), so such input waits for more.
    """

    __slots__ = ("_buf", "_pos", "_args", "_remaining", "_chunks", "_chunks_bytes", "_need", "max_bulk_bytes",
                 "authed", "big_args", "in_place_min_bytes", "fill", "_skip", "fast_requests", "stopped_at_auth")

    def __init__(self, max_bulk_bytes: int = 512 * 1024 * 1024, in_place_min_bytes: int = 0) -> None:
        self._buf = b""
        self._pos = 0
        self._args: list[bytes] | None = None
        self._remaining = 0
        self._chunks: list[bytes] = []  # input held while a big argument arrives, joined once it is complete
        self._chunks_bytes = 0
        self._need = 0
        self.max_bulk_bytes = max_bulk_bytes
        self.authed = True
        # Arguments of BIG_ARG_BYTES or more that arrived over several feeds (every
        # argument bigger than a feed does): a caller can tell a big request came.
        self.big_args = 0
        # With in_place_min_bytes (0: off), an argument after the command name that
        # big is written into the bytes object it will be (shards/bigbuf.py) as the
        # input comes: no joining copy that would hold the loop. While one is being
        # filled, `fill` is it: a caller may recv_into fill.space() and call
        # filled() instead of feeding the same bytes through a buffer of its own.
        self.in_place_min_bytes = in_place_min_bytes
        self.fill: Filling | None = None
        self._skip = 0  # bytes after a filled argument (its CRLF) still to skip
        self.fast_requests = 0  # requests the hiredis fast path parsed
        # Unauthenticated, requests() returns after an AUTH or HELLO: Redis runs each request
        # before parsing the next, so the ones after a successful AUTH in the same read get
        # the authenticated limits. The caller runs it and asks again (server/client.py).
        self.stopped_at_auth = False

    def buffered_bytes(self) -> int:
        """Unparsed input held (Redis' query buffer length)."""
        return len(self._buf) - self._pos + self._chunks_bytes + (self.fill.have if self.fill is not None else 0)

    def whole_small_read(self, data: bytes) -> list[list[bytes]] | None:
        """feed(data) then requests(), in one call, for the commonest read: nothing was left
        buffered and `data` is short whole canonical requests (_parse_small), which
        requests() would take the same way after feed's checks. None, with nothing
        consumed: any other read; feed and requests take it."""
        if (self.fill is not None or self._skip or self._need or self._args is not None
                or self._pos < len(self._buf) or not self.authed or data[:1] != b"*"
                or len(data) > SMALL_PARSE_MAX_BYTES or len(data) > self.max_bulk_bytes):
            return None
        fast = _parse_small(data)
        if fast is None:
            return None
        self._buf = data
        self._pos = len(data)
        self.stopped_at_auth = False
        self.fast_requests += len(fast)
        return fast

    def feed(self, data: bytes) -> None:
        if self.fill is not None or self._skip:
            data = self._fill_from(data)
            if not data:
                return
        if self._need:
            self._chunks.append(data)
            self._chunks_bytes += len(data)
            if len(self._buf) - self._pos + self._chunks_bytes < self._need:
                return
            self._buf = b"".join([self._buf[self._pos :], *self._chunks])  # one copy of a big argument
            self._chunks.clear()
            self._chunks_bytes = 0
            self.big_args += 1
            self._pos = 0
            self._need = 0
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    def _fill_from(self, data: bytes) -> bytes:
        """Put data into the argument being filled; return what follows it."""
        fill = self.fill
        if fill is not None:
            take = fill.write(data)
            if not fill.complete:
                return b""
            self._end_fill(fill)
            data = data[take:]
        skip = min(self._skip, len(data))
        self._skip -= skip
        return data[skip:]

    def filled(self, count: int) -> None:
        """`count` bytes were received straight into fill.space()."""
        fill = self.fill
        assert fill is not None, "filled() while no argument is being filled"
        fill.wrote(count)
        if fill.complete:
            self._end_fill(fill)

    def _end_fill(self, fill: Filling) -> None:
        args = self._args
        assert args is not None, "an argument filled outside a request"
        args.append(fill.take())
        self._remaining -= 1
        self.fill = None
        self.big_args += 1

    def _start_fill(self, buf: bytes, start: int, n: int, size: int) -> int:
        """Begin reading a big argument in place from buf[start:n]; returns 1 if it
        is already complete (only its CRLF missing), else 0."""
        fill = Filling(size)
        with memoryview(buf) as view:
            take = fill.write(view[start:n])
        self._skip = 2 - (n - start - take)
        if not fill.complete:
            self.fill = fill
            return 0
        args = self._args
        assert args is not None, "an argument filled outside a request"
        args.append(fill.take())
        self.big_args += 1
        return 1

    def requests(self) -> list[list[bytes]]:
        """All complete requests buffered so far. On bad input raises
        ProtocolError carrying the complete requests parsed before it."""
        out: list[list[bytes]] = []
        self.stopped_at_auth = False
        if self._need or self.fill is not None:
            return out
        if self._args is not None and not self._remaining:  # its last argument was filled in place
            out.append(self._args)
            self._args = None
        if self._args is not None and len(self._buf) - self._pos > FAST_PARSE_MIN_BYTES:
            # A request an earlier read began (a deep pipeline read RECV_BYTES at a time ends
            # inside one): the exact parser completes it, and the rest may take the fast path
            # (before, the exact parser parsed the whole read: 1.5 against 0.3 µs a GET, in
            # the turn other clients wait for; issue 13).
            self._parse_exact(out, one=True)
            if self._args is not None or self._need or self.fill is not None or self.stopped_at_auth:
                return out
        buf = self._buf
        n = len(buf)
        pos = self._pos
        if self._args is None and self.authed and pos < n and buf[pos] == 42 and n - pos <= self.max_bulk_bytes:
            if n - pos <= SMALL_PARSE_MAX_BYTES:
                fast = _parse_small(buf if pos == 0 else buf[pos:])
            elif FAST_PARSE_MIN_BYTES <= n - pos <= FAST_PARSE_MAX_BYTES:
                fast = _parse_complete(buf if pos == 0 else buf[pos:]) if buf.endswith(b"\r\n") \
                    else ENDS_INSIDE_A_REQUEST
                if fast is ENDS_INSIDE_A_REQUEST:
                    fast = None
                    # A read that ended inside a request (a deep pipeline, read RECV_BYTES at
                    # a time; maybe just after one of its CRLFs): the fast path takes the
                    # requests before the last `*` that follows a CRLF if they parse
                    # completely; the exact parser the rest.
                    cut = buf.rfind(b"\r\n*", pos) + 2
                    head = _parse_complete(buf[pos:cut]) if cut - pos >= FAST_PARSE_MIN_BYTES else None
                    if head is not None and head is not ENDS_INSIDE_A_REQUEST:
                        self.fast_requests += len(head)
                        out.extend(head)
                        pos = cut
            else:
                fast = None
            if fast is not None:
                self._pos = n
                self.fast_requests += len(fast)
                if out:  # the request whose last argument was filled in place comes first
                    out.extend(fast)
                    return out
                return fast
        self._pos = pos
        self._parse_exact(out)
        return out

    def _parse_exact(self, out: list[list[bytes]], one: bool = False) -> None:
        """The exact parser: append to out the complete requests from the buffer's
        position on (only the one in progress, with `one`), keeping a partial one's
        state. ProtocolError carries out."""
        buf = self._buf
        n = len(buf)
        pos = self._pos
        try:
            while pos < n:
                if self._args is None:
                    if buf[pos] == 42:  # '*'
                        e = _header_end(buf, pos, n, b"too big mbulk count string")
                        count = parse_ll(buf[pos + 1 : e])
                        if count is None or count > MULTIBULK_MAX_COUNT:
                            _unless_hidden_by_nul(buf, pos, e, n, b"too big mbulk count string")
                            raise ProtocolError(b"invalid multibulk length")
                        if not self.authed and count > UNAUTH_MULTIBULK_MAX_COUNT:
                            raise ProtocolError(b"unauthenticated multibulk length")
                        pos = e + 2
                        if count <= 0:
                            continue
                        self._args = []
                        self._remaining = count
                    else:
                        e = buf.find(b"\n", pos)
                        if e < 0 or buf.find(b"\x00", pos, e) >= 0:
                            if n - pos > INLINE_MAX_SIZE_BYTES:
                                raise ProtocolError(b"too big inline request")
                            break
                        line = buf[pos:e]
                        pos = e + 1
                        if line.endswith(b"\r"):
                            line = line[:-1]
                        args = split_args(line)
                        if args is None:
                            raise ProtocolError(b"unbalanced quotes in request")
                        if args:
                            out.append(args)
                            if not self.authed and args[0].lower() in AUTH_COMMANDS:
                                self.stopped_at_auth = True
                                break
                        continue
                args = self._args
                remaining = self._remaining
                while remaining:
                    if pos >= n:
                        break
                    # Fast path, inline: a complete `$digits\r` header with no leading zero
                    # (what every client sends); anything else takes the exact path below.
                    e = buf.find(b"\r", pos, pos + BULK_HEADER_FAST_BYTES)
                    digits = buf[pos + 1 : e]
                    if e > pos + 1 and e + 1 < n and buf[pos] == 36 and digits.isdigit() and (
                            digits[0] != 48 or e == pos + 2):
                        size = int(digits)
                        if size > self.max_bulk_bytes:
                            raise ProtocolError(b"invalid bulk length")
                    else:
                        try:
                            e = _header_end(buf, pos, n, b"too big bulk count string")
                            if buf[pos] != 36:  # '$'
                                _unless_hidden_by_nul(buf, pos, e, n, b"too big bulk count string")
                                raise ProtocolError(b"expected '$', got '%c'" % buf[pos])
                            parsed = parse_ll(buf[pos + 1 : e])
                            if parsed is None or parsed < 0 or parsed > self.max_bulk_bytes:
                                _unless_hidden_by_nul(buf, pos, e, n, b"too big bulk count string")
                                raise ProtocolError(b"invalid bulk length")
                            size = parsed
                        except _Incomplete:
                            break
                    if not self.authed and size > UNAUTH_BULK_MAX_BYTES:
                        raise ProtocolError(b"unauthenticated bulk length")
                    start = e + 2
                    end = start + size
                    if end + 2 > n:
                        if self.in_place_min_bytes and size >= self.in_place_min_bytes and args:
                            remaining -= self._start_fill(buf, start, n, size)
                            pos = n
                        elif size >= BIG_ARG_BYTES:
                            self._need = end + 2 - pos
                        break
                    args.append(buf[start:end])
                    pos = end + 2
                    remaining -= 1
                self._remaining = remaining
                if remaining:
                    break
                out.append(args)
                self._args = None
                if not self.authed and args[0].lower() in AUTH_COMMANDS:
                    self.stopped_at_auth = True
                    break
                if one:
                    break
        except _Incomplete:
            pass
        except ProtocolError as e:
            e.requests = out
            raise
        finally:
            self._pos = pos


def _parse_small(data: bytes) -> list[list[bytes]] | None:
    """The requests in a short `data` if it holds only complete multibulk requests in
    canonical form (`*count` and `$size` headers of plain digits without leading
    zeros, every line ended by CRLF); None otherwise, and the exact parser reads it.
    A split at CRLF finds each argument: one holding CRLF, or anything not canonical,
    makes a size disagree with its line, so exactness needs no other check."""
    parts = data.split(b"\r\n")
    last = len(parts) - 1
    if parts[last]:
        return None  # not ended by CRLF: a request still arriving, or not canonical
    out = []
    i = 0
    while i < last:
        header = parts[i]
        digits = header[1:]
        if header[:1] != b"*" or not digits.isdigit() or digits[0] == 48 or len(digits) > 3:
            return None  # *0, *-1, leading zeros, a count this short input cannot hold
        end = i + 1 + 2 * int(digits)
        if end > last:
            return None
        for j in range(i + 1, end, 2):
            header = parts[j]
            digits = header[1:]
            if header[:1] != b"$" or not digits.isdigit() or len(parts[j + 1]) != int(digits) \
                    or (digits[0] == 48 and len(digits) > 1):
                return None
        out.append(parts[i + 2 : end : 2])
        i = end
    return out


_fast_reader = hiredis.Reader()
_chain_items = itertools.chain.from_iterable


# What _parse_complete answers (compared by identity) for plain complete requests and then
# one still arriving: the caller may take the complete ones up to its start.
ENDS_INSIDE_A_REQUEST: list[list[bytes]] = []


def _parse_complete(data: bytes) -> list[list[bytes]] | None:
    """The requests in `data` if it holds only complete multibulk requests of `$`
    bulks that hiredis parses exactly as Redis would; None otherwise (the caller
    parses it itself). The reader is empty after a success and replaced after
    anything else, so it never holds a byte between calls."""
    global _fast_reader
    # The scans, cheapest first (a regex walks every byte at ~3 ns, translate and count at
    # under 1): most pipelines hold none of the type bytes at all and no four-digit count.
    if len(data.translate(None, _NOT_PLAIN_TYPE_BYTES)) != len(data) and _FAST_PARSE_NOT_PLAIN.search(data):
        return None
    if _FAST_PARSE_FOUR_DIGIT_COUNT.search(data) is None:
        if len(data) > FAST_PARSE_MAX_SMALL_ARRAYS and data.count(b"*") > FAST_PARSE_MAX_SMALL_ARRAYS:
            return None
    elif _FAST_PARSE_BIG_COUNT.search(data) is not None or data.count(b"*") > FAST_PARSE_MAX_ARRAYS:
        return None
    reader = _fast_reader
    reader.feed(data)
    try:
        out: list[list[bytes]] = list(iter(reader.gets, False))
        # Every request an array and every argument a bulk string, checked in C: the set
        # of the requests' types, and a join of all their arguments, which raises
        # TypeError for anything but bytes (nil, integer, error, nested array, map, ...).
        if out:
            if len(set(map(type, out))) != 1 or type(out[0]) is not list:
                raise _NotPlain
            b"".join(_chain_items(out))
            if [] in out:  # `*0`: nothing to run, as Redis skips it
                out = [request for request in out if request]
        # A request not complete yet (the exact parser must keep its partial state):
        # hiredis may hold some of it as bytes, or as an array it is filling. An empty
        # array fed now comes back as itself only if it starts a request.
        reader.feed(b"*0\r\n")
        if reader.gets() != [] or reader.has_data():
            raise _Partial
    except _Partial:
        _fast_reader = hiredis.Reader()
        return ENDS_INSIDE_A_REQUEST
    except Exception:  # noqa: BLE001 - _NotPlain, the join's TypeError, hiredis.ProtocolError, or hiredis failing to build
        # a value (a map with an array key): not plain input; the exact parser, which
        # is the authority, reads it from the same byte and answers Redis' error.
        _fast_reader = hiredis.Reader()
        return None
    return out


class _NotPlain(Exception):
    """Input the hiredis fast path leaves to the exact parser."""


class _Partial(Exception):
    """Plain input whose last request is not complete."""


def _header_end(buf: bytes, pos: int, n: int, too_big: bytes) -> int:
    """Offset of the CR ending the header line at pos; the byte after the CR
    must have arrived too (Redis skips it without looking at it)."""
    e = buf.find(b"\r", pos)
    if e < 0:
        if n - pos > INLINE_MAX_SIZE_BYTES:
            raise ProtocolError(too_big)
        raise _Incomplete
    if e + 1 >= n:
        raise _Incomplete
    return e


def _unless_hidden_by_nul(buf: bytes, pos: int, e: int, n: int, too_big: bytes) -> None:
    """Redis finds the CR with strchr, which stops at a NUL: a header with a NUL
    before its CR is, to Redis, a line still waiting for its end."""
    if buf.find(b"\x00", pos, e) >= 0:
        if n - pos > INLINE_MAX_SIZE_BYTES:
            raise ProtocolError(too_big)
        raise _Incomplete


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_ISSPACE = b" \t\n\v\f\r"  # C isspace(): skipped between arguments, allowed after a quote
_TOKEN_END = b" \n\r\t\x00"  # what ends an unquoted argument (not \v or \f)


def split_args(line: bytes) -> list[bytes] | None:
    """Redis' sdssplitargs: split an inline command line honouring quotes.
    Returns None on unbalanced quotes (or a closing quote followed by a
    non-space). A NUL ends the line, as it does for C string scanning."""
    nul = line.find(b"\x00")
    if nul >= 0:
        line = line[:nul]
    if b'"' not in line and b"'" not in line and b"\v" not in line and b"\f" not in line:
        return line.split()
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        in_dq = in_sq = False
        while True:
            c = line[i] if i < n else 0
            if in_dq:
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
            elif in_sq:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
            elif i >= n or c in _TOKEN_END:
                break
            elif c == 34:
                in_dq = True
            elif c == 39:
                in_sq = True
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))
