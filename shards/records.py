"""Log record payloads: one record per shard batch (see log/FORMAT.md for the
framing and the payload layout).

A payload is a msgpack array [written_at_ms, effects]: the shard's wall clock
when it appended the record (never lower than the previous record's, so a
log's times do not decrease even if the clock steps back), and the batch's
effects as an array of argument vectors. The time is what makes restore
--at exact to the record."""

from __future__ import annotations

import time
from typing import Any

import msgspec


class Record(msgspec.Struct, array_like=True):
    written_at_ms: int
    effects: list[list[bytes]]
    # Cross-shard transaction markers (shards/txn.py); absent from ordinary records.
    txns: list[list[Any]] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(written_at_ms: int, effects: list[list[bytes]], txns: list[list[Any]] | None = None) -> bytes:
    """An ordinary record is [written_at_ms, effects]; one with transaction markers
    has them as a third element."""
    if txns:
        return _encoder.encode((written_at_ms, effects, txns))
    return _encoder.encode((written_at_ms, effects))


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
