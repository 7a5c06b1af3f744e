"""A big string value's reply leaves its shard uncopied (issue 13): from
frames.UNCOPIED_REPLY_BYTES (in an ordinary frame, written as its buffers:
frames.encode_frame_parts) and from LARGE_BYTES (a large frame), the value's own
bytes object is written to the router link; it is not encoded into a RESP reply
and again into the frame's msgpack. INFO link_frame_bytes_encoded counts the
bytes copied into ordinary frames on the links (router and shards)."""

from __future__ import annotations

import os

import redis

from durakv.shards.frames import (
    LARGE_BYTES, UNCOPIED_REPLY_BYTES, Pieces, encode_frame, encode_frame_parts, reply_batch_decoder,
)


def encoded(r: redis.Redis) -> int:
    return int(r.info("stats")["link_frame_bytes_encoded"])


def test_frame_parts_are_the_frame_with_the_values_uncopied():
    """The buffers encode_frame_parts gives are encode_frame's bytes (the router
    decodes them as any frame), with each Pieces' value one of them, itself."""
    value = os.urandom(100_000)
    for count in (1, 15, 16, 300):  # msgpack's fixarray, array16
        batch: list = [(rid, b"+OK\r\n") for rid in range(1, count)]
        batch.insert(count // 2, (70_000, Pieces(value)))
        joined = [(rid, b"".join(data.parts) if type(data) is Pieces else data) for rid, data in batch]
        parts = encode_frame_parts(batch)
        assert b"".join(parts) == bytes(encode_frame(joined))
        assert any(part is value for part in parts), "the value was copied"
        assert reply_batch_decoder.decode(b"".join(parts)[4:]) == joined


def test_big_get_replies_are_not_copied_into_frames(server_factory):
    """GETs of a 100 KB and of a 300 KB value (above and below LARGE_BYTES), alone and
    pipelined with small replies, in RESP2 and RESP3: right replies, and the bytes
    copied into frames grow by far less than one value (each copy would add it)."""
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    values = {"{a}medium": os.urandom(100_000), "{a}large": os.urandom(300 * 1024)}
    assert UNCOPIED_REPLY_BYTES <= len(values["{a}medium"]) < LARGE_BYTES <= len(values["{a}large"])
    for key, value in values.items():
        assert r.set(key, value)
    r.set("{a}small", b"v")
    r3 = redis.Redis(port=srv.port, protocol=3)
    for key, value in values.items():
        for client in (r, r3):
            before = encoded(r)
            assert client.get(key) == value
            pipe = client.pipeline(transaction=False)
            pipe.get("{a}small").get(key).get("{a}small").get(key)
            assert pipe.execute() == [b"v", value, b"v", value]
            grew = encoded(r) - before  # the INFO requests' own frames are in it too
            print(f"{key} ({len(value)} bytes), 3 GETs: {grew} bytes encoded into frames")
            assert grew < len(value) // 4, f"{grew} bytes copied into frames for GETs of {len(value)} bytes"
