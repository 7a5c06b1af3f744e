"""Log record payloads: one record per shard batch (see log/FORMAT.md for the
framing and the payload layout).

A payload is a msgpack array [written_at_ms, effects]: the shard's wall clock
when it appended the record (never lower than the previous record's, so a
log's times do not decrease even if the clock steps back), and the batch's
effects as an array of argument vectors. The time is what makes restore
--at exact to the record. A record whose Redis change count (shards/changes.py)
is not one per effect carries it as a fourth element, after its (maybe empty)
transaction markers."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from durakv.log.format import PayloadPieces


class Record(msgspec.Struct, array_like=True):
    written_at_ms: int
    effects: list[list[bytes]]
    # Cross-shard transaction markers (shards/txn.py); absent from ordinary records.
    txns: list[list[Any]] = msgspec.field(default_factory=list)
    # Redis' dirty count of the record (shards/changes.py); -1, absent: one per effect.
    changes: int = -1

    def change_count(self) -> int:
        """What the record adds to its keyspace's Keyspace.changes."""
        return len(self.effects) if self.changes < 0 else self.changes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(written_at_ms: int, effects: list[list[bytes]], txns: list[list[Any]] | None = None,
                  changes: int = -1) -> bytes:
    """An ordinary record is [written_at_ms, effects]; one with transaction markers
    has them as a third element; one whose change count is not len(effects) has it
    as a fourth (after its markers, maybe none)."""
    if changes >= 0 and changes != len(effects):
        return _encoder.encode((written_at_ms, effects, txns or [], changes))
    if txns:
        return _encoder.encode((written_at_ms, effects, txns))
    return _encoder.encode((written_at_ms, effects))


# An effect's argument this big stays in its own buffer in a record built by
# encode_record_pieces: framed, checksummed and written without a copy.
BIG_EFFECT_ARG_BYTES = 64 * 1024


def encode_record_pieces(written_at_ms: int, effects: list[list[bytes]],
                         txns: list[list[Any]] | None = None, changes: int = -1) -> bytes | PayloadPieces:
    """encode_record's bytes, as pieces: msgpack written here around each argument of
    BIG_EFFECT_ARG_BYTES or more, which stays the buffer it is (the keyspace's value),
    so a 512 MiB SET is not copied into its record (msgspec would, growing its
    buffer as it goes). Plain bytes when no argument is that big."""
    parts: list[bytes] = []
    with_changes = changes >= 0 and changes != len(effects)
    small = [_array_header(4 if with_changes else 3 if txns else 2), _encoder.encode(written_at_ms),
             _array_header(len(effects))]
    for effect in effects:
        if max(map(len, effect), default=0) < BIG_EFFECT_ARG_BYTES:
            small.append(_encoder.encode(effect))
            continue
        small.append(_array_header(len(effect)))
        for arg in effect:
            if len(arg) < BIG_EFFECT_ARG_BYTES:
                small.append(_encoder.encode(arg))
                continue
            small.append(bin_header(len(arg)))
            parts.append(b"".join(small))
            small = []
            parts.append(arg)
    if txns or with_changes:
        small.append(_encoder.encode(txns or []))
    if with_changes:
        small.append(_encoder.encode(changes))
    if not parts:
        return b"".join(small)
    if small:
        parts.append(b"".join(small))
    return PayloadPieces(parts)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def bin_header(size: int) -> bytes:
    """msgpack's header of a bin of `size` bytes."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def decode_record(payload: bytes) -> Record:
    return _decoder.decode(payload)


class RecordClock:
    """Record times for one log: wall-clock milliseconds that never decrease."""

    __slots__ = ("last_ms",)

    def __init__(self, last_ms: int = 0) -> None:
        self.last_ms = last_ms

    def now_ms(self) -> int:
        now = time.time_ns() // 1_000_000
        if now > self.last_ms:
            self.last_ms = now
        return self.last_ms
