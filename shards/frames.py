"""The router <-> shard frame protocol over a Unix stream socket
(DIR/run/shard-NNN.sock, log/layout.py; bound and peer-checked by shards/unixsock.py).

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Router -> shard: a list of requests `[rid, client_id, proto, argv]`; one frame
carries every command the router had for that shard in one scheduling turn.
Shard -> router: a list of replies `[rid, data]`, where data is the reply already
encoded as RESP for the client's protocol (proto 2 or 3), or, for the router's
own fan-out requests (proto 0), msgpack of `[ok, value]`.
"""

from __future__ import annotations

import msgspec

FRAME_HEADER_BYTES = 4
MAX_FRAME_BYTES = 2 * 1024 * 1024 * 1024 - 1
PROTO_INTERNAL = 0


class Request(msgspec.Struct, array_like=True, gc=False):
    rid: int
    cid: int
    proto: int
    argv: list[bytes]


request_batch_decoder = msgspec.msgpack.Decoder(list[Request])
reply_batch_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes]])
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


def encode_frame(batch: list) -> bytearray:
    """Header and body in one buffer, encoded in place (no second copy of a
    frame that may carry big replies)."""
    frame = bytearray(FRAME_HEADER_BYTES)
    _encoder.encode_into(batch, frame, FRAME_HEADER_BYTES)
    size = len(frame) - FRAME_HEADER_BYTES
    if size > MAX_FRAME_BYTES:  # replies carry client data: a real check, not an assertion
        raise ValueError(f"internal frame of {size} bytes is larger than the protocol's {MAX_FRAME_BYTES}")
    frame[:FRAME_HEADER_BYTES] = size.to_bytes(FRAME_HEADER_BYTES, "big")
    return frame


def encode_internal(ok: bool, value: object) -> bytes:
    return _internal_encoder.encode((ok, value))


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete frame body at the front of buf."""
    frames = []
    pos = 0
    n = len(buf)
    while n - pos >= FRAME_HEADER_BYTES:
        size = int.from_bytes(buf[pos : pos + 4], "big")
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
        end = pos + 4 + size
        if end > n:
            break
        with memoryview(buf) as view:
            frames.append(bytes(view[pos + 4 : end]))  # one copy, not a bytearray slice and then bytes
        pos = end
    if pos:
        del buf[:pos]
    return frames

