"""The router's per-turn batching (issue 11 §3), in-process with scripts/router_bench.py's
harness (a real Router and Clients, stand-in shards at the other end of its links):
a turn's requests leave as one frame per shard, and a client's replies, once in, as
one send. Also the table fact the router's single-key fast path relies on."""

from __future__ import annotations

from router_bench import open_router  # scripts/, on sys.path through conftest.py

from durakv.server.client import SCRIPT_COMMANDS
from durakv.shards.slots import key_slot
from durakv.shards.table import SHARD, TABLE

VALUE_REPLY = b"$100\r\n" + b"x" * 100 + b"\r\n"


def keys_on_each_shard(router, count: int) -> list[bytes]:
    """count keys, alternating between shard 0 and shard 1."""
    found: dict[int, list[bytes]] = {0: [], 1: []}
    n = 0
    while min(len(keys) for keys in found.values()) < count:
        key = b"key:%d" % n
        found[router.slot_owner[key_slot(key)]].append(key)
        n += 1
    return [found[i % 2][i // 2] for i in range(count)]


def get(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


class CountingSocket:
    """A client's socket whose sends (send, sendmsg) are counted by client id, in order:
    Client.flush writes its common case without calling Client.write."""

    def __init__(self, sock, client_id: int, sends: list[int]) -> None:
        self._sock = sock
        self._client_id = client_id
        self._sends = sends

    def send(self, data) -> int:
        self._sends.append(self._client_id)
        return self._sock.send(data)

    def sendmsg(self, buffers) -> int:
        self._sends.append(self._client_id)
        return self._sock.sendmsg(buffers)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def count_writes(clients) -> list[int]:
    """The ids of the clients whose sockets are sent to, in order."""
    writes: list[int] = []
    for client in clients:
        client.sock = CountingSocket(client.sock, client.id, writes)
    return writes


async def test_one_frame_per_shard_and_one_send_per_client_per_turn(tmp_path):
    router, shards, pumps, peers, clients = open_router(str(tmp_path), 2, 10)
    writes = count_writes(clients)
    keys = keys_on_each_shard(router, 40)
    for turn in range(2):
        for n, peer in enumerate(peers):  # P1: one GET per client, both shards in every turn
            peer.send(get(keys[turn * 10 + n]))
        frames_before = [link.frames_sent for link in router.links]
        router.poller.in_turn = True
        for client in clients:
            client.on_readable()
        router.poller.in_turn = False
        router.end_turn()
        assert [link.frames_sent - before for link, before in zip(router.links, frames_before)] == [1, 1]
        assert sum(shard.answer() for shard in shards) == 10
        writes.clear()
        for pump in pumps:
            assert pump.pump()
        assert sorted(writes) == sorted(client.id for client in clients)
        for peer in peers:
            assert peer.recv(4096) == VALUE_REPLY
    # A pipeline of one client's keys on one shard: one frame, one send of all its replies.
    peers[0].send(b"".join(get(key) for key in keys[20:40:2]))
    router.poller.in_turn = True
    clients[0].on_readable()
    router.poller.in_turn = False
    router.end_turn()
    assert sum(shard.answer() for shard in shards) == 10
    writes.clear()
    for pump in pumps:
        pump.pump()
    assert writes == [clients[0].id]
    assert peers[0].recv(65536) == VALUE_REPLY * 10


async def test_a_pipeline_over_both_shards_is_one_send(tmp_path):
    """A client's replies from two shards' frames go out in one send: the first link's
    receive leaves the client, whose later replies wait for the other shard, to the
    flusher; the second's completes it and writes everything. (Before: one send per
    link frame, 1.5 per pipeline at P16.) The flusher still writes what is in when the
    rest is not."""
    router, shards, pumps, peers, clients = open_router(str(tmp_path), 2, 3)
    writes = count_writes(clients)
    keys = keys_on_each_shard(router, 48)  # alternating shard 0, shard 1
    router.poller.in_turn = True
    for n, peer in enumerate(peers):
        peer.send(b"".join(get(key) for key in keys[n * 16:(n + 1) * 16]))
        clients[n].on_readable()
    router.poller.in_turn = False
    router.end_turn()
    assert sum(shard.answer() for shard in shards) == 48
    for pump in pumps:
        assert pump.pump()
    router.flush_ready_clients()  # the flusher: nothing left for it
    assert sorted(writes) == sorted(client.id for client in clients)
    for peer in peers:
        got = b""
        while len(got) < len(VALUE_REPLY) * 16:
            got += peer.recv(65536)
        assert got == VALUE_REPLY * 16
    # Only shard 0 answers: its replies before the first of shard 1 go out, from the flusher.
    writes.clear()
    peers[0].send(get(keys[0]) + get(keys[1]))
    router.poller.in_turn = True
    clients[0].on_readable()
    router.poller.in_turn = False
    router.end_turn()
    assert shards[0].answer() == 1
    assert pumps[0].pump()
    assert writes == []
    router.flush_ready_clients()
    assert writes == [clients[0].id]
    assert peers[0].recv(65536) == VALUE_REPLY
    assert shards[1].answer() == 1
    assert pumps[1].pump()
    assert writes == [clients[0].id] * 2
    assert peers[0].recv(65536) == VALUE_REPLY


def test_no_script_or_watch_is_a_single_key_shard_command():
    """Client.dispatch sends a single-key command of `where` SHARD to its shard before
    looking at scripts (timed, ACL-wrapped) and WATCH: none may be one."""
    commands = [*TABLE.values(), *(sub for cmd in TABLE.values() for sub in cmd.subcommands.values())]
    assert not [cmd.fullname for cmd in commands
                if cmd.single_key and cmd.where == SHARD and (cmd.name in SCRIPT_COMMANDS or cmd.name == "watch")]
