"""The router <-> shard frame protocol over a Unix stream socket
(DIR/run/shard-NNN.sock, log/layout.py; bound and peer-checked by shards/unixsock.py).

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
A large frame (a message carrying LARGE_BYTES or more) sets the length's top bit:
the 31 bits left give the size of a msgpack head `[sizes, message]`, and after it
come len(sizes) blobs of those sizes, which the message's placeholders stand
for. The blobs' bytes come in pieces of at most PIECE_BYTES, each a PIECE_HEADER,
its 4-byte size and its bytes, and ordinary frames may pass between the pieces
(a small request or reply does not wait for a 512 MiB value on the same link);
one large message is in transit at a time in each direction, and it is complete,
so handed on, with its last piece. A large reply's message is its rid (the blob is the reply); a large request's
is `[rid, client_id, proto, argv, positions]`, argv[positions[i]] being blob i.
shards/framelink.py reads and writes both kinds.
Router -> shard: a list of requests `[rid, client_id, proto, argv]`; one frame
carries every command the router had for that shard in one scheduling turn.
Shard -> router: a list of replies `[rid, data]`, where data is the reply already
encoded as RESP for the client's protocol (proto 2 or 3), or, for the router's
own fan-out requests (proto 0), msgpack of `[ok, value]`.

A request whose argv[0] starts with NUL is internal, never a client's command (RESP
cannot carry a command name the router would pass on that starts with NUL: the
router resolves every name in the command table first). The verbs are below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import msgspec

FRAME_HEADER_BYTES = 4
MAX_FRAME_BYTES = 2 * 1024 * 1024 * 1024 - 1
LARGE_FLAG = 0x80000000  # in a frame header: a large frame (its length is that of the head)
# A large frame's header with a length of 0 (no head is empty) opens a piece: the next
# 4 bytes give its size, then come that many bytes of the large message's blobs.
PIECE_HEADER = LARGE_FLAG.to_bytes(FRAME_HEADER_BYTES, "big")
PIECE_HEADER_BYTES = 2 * FRAME_HEADER_BYTES
PIECE_BYTES = 2 * 1024 * 1024  # a large message's blobs travel in pieces this big; other frames pass between
LARGE_BYTES = 256 * 1024  # a reply this big, or a request with an argument this big, travels as a large frame
# A bulk string reply this big goes to a router link as Pieces, its value's own bytes
# written as they are (in an ordinary frame below LARGE_BYTES: encode_frame_parts), not
# copied into a RESP reply and again into the frame's msgpack: 16 pipelined GETs of a
# 100 KB value cost their shard ~1 ms of copies in one turn, which its other clients
# waited for (issue 13).
UNCOPIED_REPLY_BYTES = 64 * 1024
MAX_LARGE_HEAD_BYTES = 64 * 1024 * 1024  # a large request's head holds its small arguments
MAX_LARGE_BLOBS = 1024 * 1024
LARGE_ARG_BYTES = 4 * 1024  # in a large request, arguments this big go as blobs, the rest in its head
PROTO_INTERNAL = 0

# Internal request verbs (argv[0]); shards/internal.py handles all but EXEC and LITERAL.
INTERNAL_PREFIX = b"\x00"
VERB_EXEC = b"\x00exec"  # [VERB_EXEC, pack_transaction(queued)]: a MULTI/EXEC, run as one batch
VERB_LITERAL = b"\x00literal"  # inside a transaction, [VERB_LITERAL, reply]: a reply the router computed
VERB_UNWATCH = b"\x00unwatch"  # [verb, client id]: drop the client's WATCHes
VERB_UNBLOCK = b"\x00unblock"  # [verb, client id, b"timeout"|b"error"|b"drop"]: end a blocked command
VERB_CONFIG = b"\x00config"  # [verb, name, value]: CONFIG SET of a shard parameter
VERB_INFO = b"\x00info"  # [verb]: the shard's INFO fields
VERB_RESETSTAT = b"\x00resetstat"  # [verb]: CONFIG RESETSTAT
VERB_SLOWLOG = b"\x00slowlog"  # [verb, b"get", count] | [verb, b"len"] | [verb, b"reset"]: SLOWLOG
VERB_LATENCY = b"\x00latency"  # [verb, b"events"|b"histograms"] | [verb, b"reset", event...]: LATENCY
VERB_COUNTKEYSINSLOT = b"\x00countkeysinslot"  # [verb, slot]: CLUSTER COUNTKEYSINSLOT
VERB_GETKEYSINSLOT = b"\x00getkeysinslot"  # [verb, slot, count]: CLUSTER GETKEYSINSLOT
VERB_NO_WRITES_FUNCTIONS = b"\x00nowritesfns"  # [verb]: the no-writes functions (CLIENT PAUSE WRITE)
VERB_TRACKING = b"\x00tracking"  # [verb, b"1"|b"0"]: report changed keys on this connection (shards/tracking.py)
VERB_DEBUG = b"\x00debug"  # [verb, b"reload"] | [verb, b"set-active-expire", b"0"|b"1"]: DEBUG
VERB_EXPIRY_PAUSE = b"\x00expirypause"  # [verb, unix ms]: no key expires before then (CLIENT PAUSE; 0: resume)
# [verb, rules, *argv]: a script run by an ACL user whose rules (shards/acl.py) its redis.calls obey
VERB_AS_USER = b"\x00asuser"
# [verb, client id]: the router's retry of the client's script is done; its requests held
# since then run (shards/script_fence.py)
VERB_SCRIPT_UNFENCE = b"\x00unfence"
# [verb, sha...]: the router forgot these scripts for this shard after their drop
# (SCRIPTS_EVICTED_CHANNEL); what it sent before has run (shards/script_evict.py)
VERB_SCRIPTS_EVICTED_SEEN = b"\x00evictseen"
# Cross-shard transactions (shards/txn.py, coordinated by server/txn.py); replies are internal.
# [verb, txid, mode, key...] -> [watch dirty, packed values, oom]; mode b"one" (a command), b"exec" (+ WATCH check),
# b"keys" (b"" for a present value), b"all"/b"wide" (an EXEC holding the whole shard, b"all" answering every key's
# value), b"more" (keys a run found it reads: TXBUSY rather than wait)
VERB_TXLOCK = b"\x00txlock"
# [verb, txid, proto, b"multi"|b"one", packed commands, packed values, flags...] -> [reply, states, flushed,
# missing, wants_all, publishes(, changes: Redis' dirty count of the commands run, with the flag b"count")]
VERB_TXRUN = b"\x00txrun"
# [verb, txid, decider, packed participants, packed effects(, b"counted": the COMMIT adds no dirty count)]: durable
VERB_TXPREPARE = b"\x00txprepare"
# [verb, txid, packed effects(, packed publishes(, changes))]: apply + record COMMIT -> once durable
VERB_TXDECIDE = b"\x00txdecide"
VERB_TXCOMMIT = b"\x00txcommit"  # [verb, txid]: apply the prepared effects, release
VERB_TXABORT = b"\x00txabort"  # [verb, txid]: drop the prepared effects (if any), release
VERB_TXRESOLVE = b"\x00txresolve"  # [verb, txid] (to the decider) -> b"commit" | b"abort" (recorded), durable
VERB_TXINDOUBT = b"\x00txindoubt"  # [verb] -> [[txid, decider], ...] prepared and waiting for a decision
# [verb, txid, b"try"|b"wait", command, key...]: lock the keys, run the read command on them -> its reply;
# b"try" answers TXBUSY at once (locking nothing) where a key is locked, b"wait" waits for the locks
VERB_TXREAD = b"\x00txread"
# [verb, b"list"|b"zset", timeout, command argv...]: in the client's protocol, wait (as a blocked client, nothing
# popped) until one of the command's keys holds a non-empty value of that type -> the key, or the timeout's nil
VERB_TXWAIT = b"\x00txwait"
# Never sent: marks a router-answered command queued in MULTI until EXEC (server/client.py),
# which replaces it with a VERB_LITERAL.
VERB_ROUTER_IN_MULTI = b"\x00router"


class Request(msgspec.Struct, array_like=True, gc=False):
    """One request as the shard decodes it."""

    rid: int
    cid: int
    proto: int
    argv: list[bytes]


# The same request as the router queues and encodes it: (rid, client id, proto, argv).
RequestTuple: TypeAlias = tuple[int, int, int, list[bytes]]
# One reply: (rid, RESP bytes for the client, or an internal reply for proto 0).
Reply: TypeAlias = tuple[int, bytes]


# A "reply" with this rid carries keyspace notifications (shards/notify.py), not
# the answer to a request: msgpack of [[channel, message], ...]. Requests start at 1.
EVENTS_RID = 0
# An event on this channel, alone in its message, says the shard dropped the script whose
# sha is the message from its cache (shards/script_evict.py); the router answers
# VERB_SCRIPTS_EVICTED_SEEN on the same link.
SCRIPTS_EVICTED_CHANNEL = b"\x00\x00scripts-evicted"
events_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


def encode_events(events: list[tuple[bytes, bytes]]) -> bytes:
    return _internal_encoder.encode(events)


request_batch_decoder = msgspec.msgpack.Decoder(list[Request])
reply_batch_decoder = msgspec.msgpack.Decoder(list[Reply])
large_head_decoder = msgspec.msgpack.Decoder(tuple[list[int], msgspec.Raw])
large_reply_decoder = msgspec.msgpack.Decoder(int)
large_request_decoder = msgspec.msgpack.Decoder(tuple[int, int, int, list[bytes], list[int]])
internal_reply_decoder = msgspec.msgpack.Decoder()
_encoder = msgspec.msgpack.Encoder()


def _internal_hook(value: object) -> object:
    """Reply wrappers (OK, status strings) travel as their bytes internally."""
    data = getattr(value, "data", None)
    if data is None:
        data = getattr(value, "text", None)
    if data is None:
        raise TypeError(f"cannot send {type(value).__name__} in an internal reply")
    return data


_internal_encoder = msgspec.msgpack.Encoder(enc_hook=_internal_hook)


class FrameStats:
    """Bytes this process encoded (copied) into ordinary frames' msgpack: a big
    value written from its own buffer (a Pieces, a large frame's blob) is not among
    them (INFO link_frame_bytes_encoded: router and shards summed)."""

    __slots__ = ("bytes_encoded",)

    def __init__(self) -> None:
        self.bytes_encoded = 0


frame_stats = FrameStats()


def encode_frame(batch: Sequence[object]) -> bytearray:
    """Header and body in one buffer, encoded in place (no second copy of a
    frame that may carry big replies)."""
    frame = bytearray(FRAME_HEADER_BYTES)
    _encoder.encode_into(batch, frame, FRAME_HEADER_BYTES)
    size = len(frame) - FRAME_HEADER_BYTES
    frame_stats.bytes_encoded += size
    if size > MAX_FRAME_BYTES:  # replies carry client data: a real check, not an assertion
        raise ValueError(f"internal frame of {size} bytes is larger than the protocol's {MAX_FRAME_BYTES}")
    frame[:FRAME_HEADER_BYTES] = size.to_bytes(FRAME_HEADER_BYTES, "big")
    return frame


def encode_frame_parts(batch: Sequence[tuple[int, object]]) -> list[bytes | bytearray]:
    """An ordinary frame of replies, some of them Pieces, as the buffers to write in
    order: each Pieces' parts stand in the frame as they are (after a msgpack bin
    header written here), every other reply is encoded as encode_frame does. The
    bytes are those of encode_frame with the Pieces joined: the router decodes it
    as any frame."""
    head = bytearray(FRAME_HEADER_BYTES)
    count = len(batch)
    if count < 16:
        head.append(0x90 | count)
    else:
        head += (b"\xdc" + count.to_bytes(2, "big")) if count < 0x10000 else (b"\xdd" + count.to_bytes(4, "big"))
    parts: list[bytes | bytearray] = [head]
    filling = head
    encoded = -FRAME_HEADER_BYTES
    for reply in batch:
        data = reply[1]
        if type(data) is Pieces:
            filling.append(0x92)  # [rid, bin]
            _encoder.encode_into(reply[0], filling, len(filling))
            filling += b"\xc6" + data.size.to_bytes(4, "big")
            encoded += len(filling)
            parts.extend(data.parts)
            filling = bytearray()
            parts.append(filling)
        else:
            _encoder.encode_into(reply, filling, len(filling))
    encoded += len(filling)
    frame_stats.bytes_encoded += encoded
    size = sum(map(len, parts)) - FRAME_HEADER_BYTES
    if size > MAX_FRAME_BYTES:  # replies carry client data: a real check, not an assertion
        raise ValueError(f"internal frame of {size} bytes is larger than the protocol's {MAX_FRAME_BYTES}")
    head[:FRAME_HEADER_BYTES] = size.to_bytes(FRAME_HEADER_BYTES, "big")
    return parts


def encode_internal(ok: bool, value: object) -> bytes:
    return _internal_encoder.encode((ok, value))


def encode_large_head(message: object, sizes: list[int]) -> bytearray:
    """A large frame's header and head; its blobs follow as they are."""
    frame = bytearray(FRAME_HEADER_BYTES)
    _encoder.encode_into((sizes, message), frame, FRAME_HEADER_BYTES)
    size = len(frame) - FRAME_HEADER_BYTES
    if size > MAX_LARGE_HEAD_BYTES:
        raise ValueError(f"large frame head of {size} bytes is larger than the protocol's {MAX_LARGE_HEAD_BYTES}")
    frame[:FRAME_HEADER_BYTES] = (LARGE_FLAG | size).to_bytes(FRAME_HEADER_BYTES, "big")
    return frame


class Pieces:
    """A big bulk-string reply as its three buffers (header, the value itself, CRLF),
    made instead of one encoded copy (a GET of 512 MiB copied 512 MiB, holding the
    shard's loop ~0.4 s) only for replies to a router link, whose large frames write a
    blob's parts as they are (send_batch). len() is the reply's encoded size."""

    __slots__ = ("parts", "size")

    def __init__(self, value: bytes) -> None:
        self.parts = (b"$%d\r\n" % len(value), value, b"\r\n")
        self.size = sum(map(len, self.parts))

    def __len__(self) -> int:
        return self.size

    @classmethod
    def of(cls, parts: list) -> Pieces:
        """A reply already encoded as consecutive buffers (shards/chunked.py)."""
        pieces = cls.__new__(cls)
        pieces.parts = tuple(parts)
        pieces.size = sum(map(len, parts))
        return pieces


def large_reply(reply: Reply) -> tuple[object, list[bytes]]:
    """A large reply's head (its rid) and blob (the reply)."""
    return reply[0], [reply[1]]


def large_request(request: RequestTuple) -> tuple[object, list[bytes]]:
    """A large request's head, its big arguments replaced by b"", and those arguments."""
    rid, cid, proto, argv = request
    positions = [i for i, arg in enumerate(argv) if len(arg) >= LARGE_ARG_BYTES]
    small = list(argv)
    for i in positions:
        small[i] = b""
    return (rid, cid, proto, small, positions), [argv[i] for i in positions]
