"""A big value's way from a client's socket to the log without copies (issue 11 §4):
received into the bytes the keyspace holds (shards/bigbuf.py), recorded with the
value as its own buffer (shards/records.py encode_record_pieces) and written from
it by one pwritev (log/format.py PayloadPieces, Log.sync). The wall-clock numbers
are scripts/large_values.py's."""

from __future__ import annotations

import os
import random

import redis

from durakv.log import Log
from durakv.log import format as format_module
from durakv.log.format import PayloadPieces
from durakv.shards.bigbuf import Filling
from durakv.shards.records import BIG_EFFECT_ARG_BYTES, decode_record, encode_record, encode_record_pieces

MIB = 1024 * 1024


def test_record_pieces_are_encode_record_with_big_values_not_copied():
    rng = random.Random(5)
    sizes = [0, 1, 15, 16, 255, 256, 65535, 65536, BIG_EFFECT_ARG_BYTES - 1, BIG_EFFECT_ARG_BYTES, 70000]
    for _ in range(60):
        effects = [[rng.randbytes(rng.choice(sizes)) for _ in range(rng.choice([1, 2, 3, 17]))]
                   for _ in range(rng.choice([1, 2, 16, 17]))]
        txns = rng.choice([None, [[1, 2, b"x"]]])
        pieces = encode_record_pieces(1234567, effects, txns)
        expected = encode_record(1234567, effects, txns)
        big = [arg for effect in effects for arg in effect if len(arg) >= BIG_EFFECT_ARG_BYTES]
        if not big:
            assert pieces == expected
            continue
        assert isinstance(pieces, PayloadPieces)
        assert bytes(pieces) == expected and len(pieces) == len(expected)
        # every big argument is one of the record's buffers, the very object (no copy)
        assert [part for part in pieces.parts if any(part is arg for arg in big)] == big
        assert decode_record(bytes(pieces)).effects == effects


def test_log_writes_a_scattered_record_from_its_buffers(tmp_path, monkeypatch):
    big = os.urandom(BIG_EFFECT_ARG_BYTES * 3)
    effects = [[b"SET", b"k", big], [b"SET", b"small", b"v"]]
    payload = encode_record_pieces(1, effects)
    assert isinstance(payload, PayloadPieces)
    written: list[list] = []
    real_pwritev = os.pwritev

    def pwritev(fd, buffers, offset, *flags):
        written.append(list(buffers))
        return real_pwritev(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "pwritev", pwritev)
    checksummed: list[int] = []
    real_crc32c = format_module.crc32c

    def crc32c(data, value=0):
        checksummed.append(len(data))
        return real_crc32c(data, value)

    monkeypatch.setattr(format_module, "crc32c", crc32c)
    path = tmp_path / "log"
    with Log.open(path) as lg:
        lease = lg.take_lease("shard-0")
        lg.append([b"before"], 0, lease)
        lg.append([payload, b"after"], 1, lease)
        assert len(big) not in checksummed, "append checksummed the big value: in the loop, not the commit thread"
        assert lg.sync() == 3
        assert len(big) in checksummed
        assert lg.bytes_written == lg.size_bytes
    assert any(any(buffer is big for buffer in buffers) for buffers in written), "the value was copied"
    with Log.open(path) as lg:
        records = list(lg.read())
    assert [(seq, p) for seq, _, p in records] == [(1, b"before"), (2, bytes(payload)), (3, b"after")]
    assert decode_record(records[1][2]).effects == effects


def test_filling_hands_out_the_bytes_it_was_written_into():
    value = os.urandom(3 * MIB + 7)
    filling = Filling(len(value))
    assert filling.write(value[:100]) == 100
    space = filling.space()
    space[: MIB] = value[100 : 100 + MIB]
    del space
    filling.wrote(MIB)
    assert filling.write(value[100 + MIB :] + b"beyond") == len(value) - 100 - MIB
    assert filling.complete
    got = filling.take()
    assert type(got) is bytes and got == value and hash(got) == hash(value)


def test_big_sets_through_router_and_shard_port_survive_kill9(server_factory):
    """The records of big SETs (router: a large frame; shard port: in-process) are
    replayed to the same values after a crash; small writes of the same batches too."""
    srv = server_factory(shards=2)
    r = srv.client()
    values = {f"{{a}}big{i}": os.urandom(2 * MIB + i) for i in range(3)}
    pipe = r.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value).set(key + ":small", b"s")
    assert all(pipe.execute())
    node_value = os.urandom(5 * MIB)
    for shard in range(2):  # the shard owning {b}node takes it; the other answers MOVED
        node = srv.shard_client(shard)
        try:
            assert node.set("{b}node", node_value)
            break
        except redis.ResponseError as e:
            assert str(e).startswith("MOVED"), e
            node.close()
    assert node.append("{b}node", b"!") == len(node_value) + 1
    srv.kill9()
    srv.start()
    r = srv.client()
    for key, value in values.items():
        assert r.get(key) == value
        assert r.get(key + ":small") == b"s"
    assert r.get("{b}node") == node_value + b"!"
    r.close()
    node.close()
