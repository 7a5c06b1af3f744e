"""A router's shard links are read in its client poller's turns (server/links.py
PolledReads), not by a task woken per read (issue 11 §3: at P1 that wakeup, trio's
epoll_ctl re-arm and the task switch were a fifth of the router's CPU), and a large
reply still goes through the link's task, which gives the socket back once it is in.

In-process, with the real code paths: a real Router, its ShardLinks' own receive
(`ShardLink._receiver`, one task per link as `ShardLink.run` runs it) on Unix socket
pairs whose other ends a stand-in shard task answers, the poller's and the flusher's
tasks, and clients over loopback TCP. A trio Instrument counts each task's steps."""

from __future__ import annotations

import socket
from collections import Counter

import trio
import trio.testing
from node_bench import socket_pairs  # scripts/, on sys.path through conftest.py

from durakv.server.client import Client
from durakv.server.router import Router
from durakv.shards.config import Config
from durakv.shards.framelink import RECV_BYTES, send_batch
from durakv.shards.frames import encode_frame, large_reply, request_batch_decoder

VALUE = b"v" * 100


class TaskSteps(trio.abc.Instrument):
    """Steps run per task name."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


def reply_for(key: bytes) -> bytes:
    """GET big:N answers a value of N bytes, any other key VALUE."""
    value = b"w" * int(key[4:]) if key.startswith(b"big:") else VALUE
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def stand_in_shard(sock: socket.socket) -> None:
    """Answer each request frame at once; a reply of 256 KiB and up as a large frame,
    as a shard sends it (frames.large_reply, in pieces)."""
    buf = bytearray()
    while True:
        await trio.lowlevel.wait_readable(sock)
        data = sock.recv(RECV_BYTES)
        if not data:
            return
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = int.from_bytes(buf[:4], "big")
            requests = request_batch_decoder.decode(bytes(buf[4:4 + size]))
            del buf[:4 + size]
            replies = [(r.rid, reply_for(r.argv[1])) for r in requests]
            large = [i for i, (_rid, reply) in enumerate(replies) if len(reply) >= 256 * 1024]
            if large:
                await send_batch(sock, replies, large, large_reply)
            else:
                sock.sendall(encode_frame(replies))


async def get(peer: socket.socket, key: bytes) -> bytes:
    """One GET at P1 from a client's end; its whole reply."""
    peer.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
    expected = len(reply_for(key))
    got = bytearray()
    while len(got) < expected:
        await trio.lowlevel.wait_readable(peer)
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            continue
    return bytes(got)


async def run_router(tmp_path, body) -> Counter[str]:
    """A router with 2 links to stand-in shards and 2 clients; `body(peers)` drives the
    clients. Returns the steps of each link's receive task during body."""
    router = Router(Config(data_dir=str(tmp_path), shards=2).resolved(), 0)
    instrument = TaskSteps()
    async with trio.open_nursery() as nursery:
        for link in router.links:
            router_end, shard_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            router_end.setblocking(False)
            shard_end.setblocking(False)
            link.sock = router_end
            link.up = True
            nursery.start_soon(stand_in_shard, shard_end)
            nursery.start_soon(link._receiver, name=f"receiver-{link.index}")
        pairs = socket_pairs(2)
        for _peer, conn in pairs:
            client = Client(router, conn, router.new_client_id())
            router.clients[client.id] = client
            router.poller.add(client)
        nursery.start_soon(router.poller.run)
        nursery.start_soon(router._flusher)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(instrument)
        try:
            await body([peer for peer, _conn in pairs])
        finally:
            trio.lowlevel.remove_instrument(instrument)
        nursery.cancel_scope.cancel()
    return Counter({name: n for name, n in instrument.steps.items() if name.startswith("receiver-")})


async def test_link_reads_wake_no_task(tmp_path):
    """200 GETs at P1 over both shards: every reply right, and the links' receive tasks
    never run (before: at least a step per reply frame, 200 here)."""
    async def body(peers):
        for n in range(100):
            for peer in peers:
                key = b"key:%d" % n
                assert await get(peer, key) == reply_for(key)

    steps = await run_router(tmp_path, body)
    assert sum(steps.values()) == 0, steps


async def test_large_replies_then_polled_again(tmp_path):
    """A large reply collected (1 MiB) and one streamed to its client (5 MiB: links.
    STREAM_MIN_BYTES) come whole and in order among small ones, read by the link's task;
    then the link is read by the poller again: the small replies after them wake no task."""
    after_large: list[Counter[str]] = []

    async def body(peers):
        for key in (b"a", b"big:1048576", b"b", b"big:5242880", b"c"):
            assert await get(peers[0], key) == reply_for(key)
        steps = TaskSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(50):
                key = b"key:%d" % n
                assert await get(peers[n % 2], key) == reply_for(key)
        finally:
            trio.lowlevel.remove_instrument(steps)
        after_large.append(Counter({name: n for name, n in steps.steps.items() if name.startswith("receiver-")}))

    during = await run_router(tmp_path, body)
    assert sum(during.values()) > 0  # the large replies' pieces were read by a link's task
    assert sum(after_large[0].values()) == 0, after_large[0]
