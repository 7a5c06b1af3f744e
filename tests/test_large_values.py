"""Large values pass the router without copies and without holding other clients
(issue 11 §4): they travel between router and shard as large frames
(shards/framelink.py), whose blobs are read straight into their final buffers in
bounded pieces. Timing is scripts/large_values.py's job; these tests check the
bytes, the order, that other clients are served while a large reply cannot
finish, and the router's peak memory for a large reply (a copy shows there)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import msgspec
import redis
import trio

from durakv.shards.framelink import FrameReceiver, Large, Outbox, send_batch
from durakv.shards.frames import (
    LARGE_ARG_BYTES, LARGE_BYTES, PIECE_BYTES, encode_frame, large_reply, large_reply_decoder, large_request,
    large_request_decoder, reply_batch_decoder,
)
from durakv.shards.resp import RequestParser

MIB = 1024 * 1024
APPEND_PIECE_BYTES = MIB  # builds a big value without a big request


def vm_hwm_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def build_value(r: redis.Redis, key: str, size_bytes: int) -> bytes:
    """A value of size_bytes made with APPENDs of 1 MiB (no large request)."""
    value = os.urandom(size_bytes)
    r.delete(key)
    for start in range(0, size_bytes, APPEND_PIECE_BYTES):
        r.append(key, value[start : start + APPEND_PIECE_BYTES])
    return value


def test_large_set_get_round_trip(server_factory):
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    big = os.urandom(8 * MIB)
    assert r.set("big", big)
    assert r.get("big") == big
    assert r.strlen("big") == len(big)
    # several large arguments in one request, around small ones, and the same in a pipeline
    parts = {"{t}a": os.urandom(3 * MIB), "{t}b": b"small", "{t}c": os.urandom(LARGE_BYTES)}
    assert r.mset(parts)
    assert r.mget(list(parts)) == list(parts.values())
    pipe = r.pipeline(transaction=False)
    pipe.set("p1", b"x").get("big").set("p2", big[:LARGE_BYTES - 1]).get("p2").get("p1")
    assert pipe.execute() == [True, big, True, big[:LARGE_BYTES - 1], b"x"]
    assert r.lpush("list", big, b"tail") == 2
    assert r.lrange("list", 0, -1) == [b"tail", big]
    r3 = redis.Redis(port=srv.port, protocol=3)
    assert r3.get("big") == big
    # a large argument inside MULTI (queued, then sent in the transaction's frame),
    # and to a command the router answers itself
    tx = r.pipeline(transaction=True)
    tx.set("{tx}big", big).append("{tx}big", b"!").get("{tx}big")
    assert tx.execute() == [True, len(big) + 1, big + b"!"]
    assert r.echo(big) == big


def test_other_clients_served_while_a_large_reply_cannot_finish(server_factory):
    """A client asks for 32 MiB and does not read: its reply stays in transit (the
    gate). Meanwhile other clients, of either shard, get answers; then the reader
    reads and gets exactly the value. The router's peak memory for the reply grows
    by less than one and a half copies of it (it held two: the frame and the reply)."""
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    size_bytes = 32 * MIB
    value = build_value(r, "big", size_bytes)
    router_pid = srv.child_pid("router", 0)
    with open(f"/proc/{router_pid}/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    hwm_before = vm_hwm_bytes(router_pid)

    gate = socket.create_connection(("127.0.0.1", srv.port))
    gate.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    gate.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
    other = redis.Redis(port=srv.port)
    for i in range(20):
        assert other.ping()
        assert other.set(f"k{i}", i)  # keys spread over both shards
        assert other.get(f"k{i}") == str(i).encode()
    assert other.strlen("big") == size_bytes  # the big key's own shard answers too

    header = b"$%d\r\n" % size_bytes
    expected = header + value + b"\r\n"
    got = bytearray()
    while len(got) < len(expected):
        chunk = gate.recv(4 * MIB)
        assert chunk, f"connection closed after {len(got)} of {len(expected)} bytes"
        got += chunk
    gate.close()
    assert got == expected
    growth = vm_hwm_bytes(router_pid) - hwm_before
    print(f"router peak memory growth for a {size_bytes} byte reply: {growth} bytes")
    assert growth < 1.5 * size_bytes, f"router peak grew {growth} bytes for a {size_bytes} byte reply"


def test_frame_receiver_yields_inside_a_large_message_and_keeps_order():
    """Unit level: a large reply whose blob arrives in pieces lets other tasks run
    between the pieces, and the frames around it come out in order."""

    async def main() -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        blob = os.urandom(3 * LARGE_BYTES)
        got: list = []

        def handle(items: list) -> None:
            for item in items:
                if type(item) is Large:
                    got.append((large_reply_decoder.decode(item.head), bytes(item.blobs[0])))
                else:
                    got.extend(reply_batch_decoder.decode(item))

        ticks = 0
        released = trio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not released.is_set():
                ticks += 1
                await trio.sleep(0)

        async def sender() -> None:
            outbox: Outbox = Outbox()
            outbox.extend([(1, b"+first\r\n"), (2, blob), (3, b"+last\r\n")])
            batch = await outbox.take()
            large = [i for i, reply in enumerate(batch) if len(reply[1]) >= LARGE_BYTES]
            assert large == [1]
            # a sender that stalls halfway through the blob: the gate
            half = threading.Event()

            class Halting:
                def __init__(self, sock: socket.socket) -> None:
                    self.sock = sock
                    self.sent = 0

                def send(self, data) -> int:
                    if self.sent > 2 * LARGE_BYTES and not half.is_set():
                        raise BlockingIOError
                    n = self.sock.send(data)
                    self.sent += n
                    return n

                def fileno(self) -> int:
                    return self.sock.fileno()

            halting = Halting(a)
            async with trio.open_nursery() as inner:
                inner.start_soon(send_batch, halting, batch, large, large_reply)
                while halting.sent <= 2 * LARGE_BYTES:
                    await trio.sleep(0.01)
                ticks_at_gate = ticks
                await trio.sleep(0.05)
                assert got == [(1, b"+first\r\n")], "only the frame before the large reply is complete"
                assert ticks > ticks_at_gate, "the loop kept turning while the large reply waited"
                half.set()
            a.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            nursery.start_soon(sender)
            await FrameReceiver(b, handle).run()
            released.set()
        assert got == [(1, b"+first\r\n"), (2, blob), (3, b"+last\r\n")]
        a.close()
        b.close()

    trio.run(main)


def test_request_parser_fills_big_arguments_in_place():
    """Big arguments after the command name come out as the bytes the keyspace
    holds, filled as the input arrived (fed, or written straight into
    parser.fill.space() as a client's recv_into does), equal to what the plain
    parser gives, for any chunking."""
    rng = random.Random(11)
    for _ in range(200):
        requests = [[b"SET", rng.randbytes(rng.randint(0, 5))]
                    + [rng.randbytes(rng.choice([0, 3, 100, 1000, 5000])) for _ in range(rng.randint(0, 3))]
                    for _ in range(rng.randint(1, 5))]
        data = b"".join(b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)
                        for argv in requests)
        min_bytes = rng.choice([1, 50, 900, 4000])
        parser = RequestParser(in_place_min_bytes=min_bytes)
        got = []
        pos = 0
        while pos < len(data):
            size = rng.randint(1, 700)
            if parser.fill is not None and rng.random() < 0.5:
                space = parser.fill.space()
                size = min(size, len(space))
                space[:size] = data[pos : pos + size]
                del space
                parser.filled(size)
            else:
                parser.feed(data[pos : pos + size])
            pos += size
            got.extend(parser.requests())
        assert got == requests
        assert all(type(a) is bytes for argv in got for a in argv)
        assert parser.buffered_bytes() == 0


def test_frame_receiver_streams_a_large_blob_to_a_sink_as_it_arrives():
    """Unit level: with a stream hook, a large message's blob goes to the sink in
    pieces while the sender is still halfway through it; the frames around it keep
    their order and the Large handed on afterwards carries no blob."""

    async def main() -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        blob = os.urandom(3 * LARGE_BYTES)
        got: list = []
        streamed = bytearray()
        heads: list = []

        def handle(items: list) -> None:
            for item in items:
                if type(item) is Large:
                    got.append((large_reply_decoder.decode(item.head), item.blobs))
                else:
                    got.extend(reply_batch_decoder.decode(item))

        def stream(head, sizes: list[int]):
            heads.append((large_reply_decoder.decode(head), sizes))
            return streamed.extend  # copies the piece: it is the receiver's reused buffer

        gate = threading.Event()

        class Halting:
            def __init__(self, sock: socket.socket) -> None:
                self.sock = sock
                self.sent = 0

            def send(self, data) -> int:
                if self.sent > 2 * LARGE_BYTES and not gate.is_set():
                    raise BlockingIOError
                n = self.sock.send(data)
                self.sent += n
                return n

            def fileno(self) -> int:
                return self.sock.fileno()

        async def sender() -> None:
            batch = [(1, b"+first\r\n"), (2, blob), (3, b"+last\r\n")]
            halting = Halting(a)
            async with trio.open_nursery() as inner:
                inner.start_soon(send_batch, halting, batch, [1], large_reply)
                with trio.fail_after(10):
                    while len(streamed) < LARGE_BYTES:  # pieces of an unfinished blob arrive
                        await trio.sleep(0.01)
                assert heads == [(2, [len(blob)])]
                assert got == [(1, b"+first\r\n")], "the large reply is not complete yet"
                gate.set()
            a.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await FrameReceiver(b, handle, stream).run()
        assert got == [(1, b"+first\r\n"), (2, []), (3, b"+last\r\n")]
        assert streamed == blob
        a.close()
        b.close()

    trio.run(main)


def test_router_streams_a_large_reply_to_a_reading_client(server_factory):
    """Through the router, a large reply goes to a client that reads as it comes from
    its shard: the router's peak memory grows by well under the reply's size (it held
    all of it before writing any). Replies around it, RESP3, a blocked pop answered
    with a large value, and merged replies (MGET over both shards) stay exact."""
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    size_bytes = 32 * MIB
    value = build_value(r, "{a}big", size_bytes)
    router_pid = srv.child_pid("router", 0)
    with open(f"/proc/{router_pid}/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    hwm_before = vm_hwm_bytes(router_pid)
    assert r.get("{a}big") == value
    growth = vm_hwm_bytes(router_pid) - hwm_before
    print(f"router peak memory growth for a {size_bytes} byte reply read as it comes: {growth} bytes")
    assert growth < 0.75 * size_bytes, f"router peak grew {growth} bytes for a {size_bytes} byte reply"

    pipe = r.pipeline(transaction=False)
    pipe.ping().get("{a}big").set("{b}small", b"s").get("{b}small").mget("{a}big", "{b}small").strlen("{a}big")
    assert pipe.execute() == [True, value, True, b"s", [value, b"s"], size_bytes]
    r3 = redis.Redis(port=srv.port, protocol=3)
    assert r3.get("{a}big") == value and r3.ping()

    waiter = redis.Redis(port=srv.port)
    popped: list = []
    thread = threading.Thread(target=lambda: popped.append(waiter.blpop(["{a}list"], timeout=30)))
    thread.start()
    while not any(c.get("cmd") == "blpop" for c in r.client_list()):
        pass
    assert r.rpush("{a}list", value) == 1
    thread.join(timeout=60)
    assert popped == [(b"{a}list", value)]
    assert waiter.get("{b}small") == b"s"  # the blocked client goes on after its large reply


def test_shard_sends_a_big_bulk_reply_without_copying_it(server_factory):
    """A GET of a big string through the router leaves the shard as the value's own
    buffer behind a header (frames.Pieces), not as an encoded copy: the shard's peak
    memory grows by well under the value's size (a copy is one size)."""
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    size_bytes = 32 * MIB
    value = os.urandom(size_bytes)
    assert r.set("{a}big", value)  # bytes (an APPENDed value is a bytearray, copied as a reply: it may change)
    pids = [srv.child_pid("shard", i) for i in range(2)]
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    before = {pid: vm_hwm_bytes(pid) for pid in pids}
    for _ in range(3):
        assert r.get("{a}big") == value
    growth = max(vm_hwm_bytes(pid) - before[pid] for pid in pids)
    print(f"shard peak memory growth for GETs of a {size_bytes} byte value: {growth} bytes")
    assert growth < 0.5 * size_bytes, f"shard peak grew {growth} bytes for a {size_bytes} byte reply"
    r3 = redis.Redis(port=srv.port, protocol=3)
    assert r3.get("{a}big") == value
    tx = r.pipeline(transaction=True)
    tx.get("{a}big").strlen("{a}big")
    assert tx.execute() == [value, size_bytes]  # EXEC's reply is encoded whole, as before


def test_small_frames_pass_a_large_message_between_its_pieces():
    """Unit level: a large request of several blobs goes in pieces, and
    the frames `between` gives after a piece arrive, and are handled, before the
    large message completes; the blobs come out byte for byte."""
    blobs = [os.urandom(PIECE_BYTES * 2 + 5), os.urandom(LARGE_ARG_BYTES), b"", os.urandom(PIECE_BYTES)]  # b"": no blob
    request = (7, 42, 2, [b"MSET", b"a", blobs[0], b"b", blobs[1], b"small", b"", b"c", blobs[3]])

    async def main(views: bool) -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got: list = []

        def handle(items: list) -> None:
            for item in items:
                if type(item) is Large:
                    got.append(("large", large_request_decoder.decode(item.head), [bytes(x) for x in item.blobs]))
                else:
                    got.extend(msgspec.msgpack.decode(item))

        passed = iter(range(1, 4))

        def between() -> bytearray | None:
            n = next(passed, None)
            return encode_frame([[n, f"small {n}"]]) if n is not None else None

        async def sender() -> None:
            await send_batch(a, [(1, 0, 2, [b"PING"]), request, (9, 0, 2, [b"PING"])], [1],
                             large_request, between=between)
            a.shutdown(socket.SHUT_WR)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await FrameReceiver(b, handle, views=views).run()
        a.close()
        b.close()
        head = (7, 42, 2, [b"MSET", b"a", b"", b"b", b"", b"small", b"", b"c", b""], [2, 4, 8])
        assert got[0] == [1, 0, 2, [b"PING"]]
        assert got[1:4] == [[1, "small 1"], [2, "small 2"], [3, "small 3"]], "small frames passed the large one"
        assert got[4] == ("large", head, [blobs[0], blobs[1], blobs[3]])
        assert got[5:] == [[9, 0, 2, [b"PING"]]]

    trio.run(main, False)
    trio.run(main, True)


def passed_large(r: redis.Redis) -> int:
    return int(r.info("stats")["link_frames_passed_large"])


def test_same_shard_client_served_while_a_big_value_is_in_transit(server_factory):
    """A client of the shard that a big SET or GET is crossing the link to gets its
    small replies meanwhile (INFO link_frames_passed_large counts the frames that
    passed a big value, in either direction), and one client's pipelined replies stay
    in order around its own big values."""
    srv = server_factory(shards=1)
    r = redis.Redis(port=srv.port)
    r.set("small", b"v")
    big = os.urandom(32 * MIB)
    stop = threading.Event()
    answered = 0

    def probe() -> None:
        nonlocal answered
        probe_client = redis.Redis(port=srv.port)
        while not stop.is_set():
            assert probe_client.get("small") == b"v"
            answered += 1

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        before = passed_large(r)
        for round_ in range(20):  # the probe's requests meet a big value in transit: bounded retries
            pipe = r.pipeline(transaction=False)
            pipe.set("big", big).get("small").get("big").set("small2", round_).get("small2")
            assert pipe.execute() == [True, b"v", big, True, str(round_).encode()]
            if passed_large(r) > before:
                break
    finally:
        stop.set()
        thread.join()
    passed = passed_large(r) - before
    print(f"frames that passed a big value: {passed}, probe replies: {answered}, rounds: {round_ + 1}")
    assert passed > 0
    assert r.get("big") == big


def test_kill9_during_big_transfers_loses_no_acknowledged_write(server_factory):
    """Big SETs in transit and small writes passing them when the shard is killed:
    every write acknowledged before the kill is there after the restart."""
    srv = server_factory(shards=1)
    big_values = {f"big{i}": os.urandom(8 * MIB) for i in range(4)}
    acked: dict[str, bytes] = {}
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(keys: list[str], values) -> None:
        client = redis.Redis(port=srv.port)
        try:
            for key in keys:
                value = values(key)
                if done.is_set():
                    return
                client.set(key, value)
                acked[key] = value
        except redis.exceptions.RedisError:
            pass  # the shard died under it: from here nothing is acknowledged
        except BaseException as e:  # noqa: BLE001  # a failed check, reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(list(big_values), big_values.__getitem__)),
               threading.Thread(target=writer, args=([f"small{i}" for i in range(100_000)],
                                                     lambda key: key.encode()))]
    for thread in threads:
        thread.start()
    r = redis.Redis(port=srv.port)
    while "big1" not in acked:  # a big value acknowledged, the next ones in transit
        assert threads[0].is_alive() or acked.get("big1"), "the big writer stopped early"
        time.sleep(0.01)
    os.kill(srv.child_pid("shard", 0), 9)
    for thread in threads:
        thread.join(60)
    done.set()
    assert not errors, errors
    deadline = time.monotonic() + 30
    while True:
        try:
            r.ping()
            missing = [key for key, value in list(acked.items()) if r.get(key) != value]
            break
        except redis.exceptions.RedisError:
            assert time.monotonic() < deadline, "the shard did not come back"
            time.sleep(0.1)
    print(f"acknowledged before the kill: {len(acked)} writes")
    assert not missing, f"acknowledged writes lost: {missing[:5]}"
