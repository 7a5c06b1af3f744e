"""Log record payloads: one record per shard batch, holding the batch's effects
as a msgpack array of argument vectors (see log/FORMAT.md for the framing)."""

from __future__ import annotations

import msgspec

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[list[bytes]])


def encode_effects(effects: list[list[bytes]]) -> bytes:
    return _encoder.encode(effects)


def decode_effects(payload: bytes) -> list[list[bytes]]:
    return _decoder.decode(payload)
