"""CPU µs and instructions per command of the router's per-command path, in-process:
real `Client`s on a real `Router` over loopback TCP, its real ShardLinks over Unix
socket pairs whose other ends a stand-in shard in the driver answers (GET: a 100 B
value, SET: +OK). What is measured is the router's parse, dispatch, routing, frame
encoding and send per shard, the link's receive (FrameReceiver's views) and reply
dispatch, and the client writes; the driver (client sends and reads, the stand-in
shard's decode and reply frames) is timed apart and subtracted. No other process
takes part, so the figure moves little with the machine's load (scripts/node_bench.py
does the same for a shard port).

Each turn sends every client its next pipeline (P commands in one send), runs each
client's `on_readable` and the router's `end_turn` (one frame per shard) as the poller
would, lets the stand-in shards answer, runs each link's receive as its receiver task
would (one recv, the frames handed over as views, complete clients' replies flushed),
then the flusher's flush of what is left, then reads every reply. Best of --rounds rounds.

    python scripts/router_bench.py [--clients 50] [--requests 50000] [--rounds 5]
        [--shards 2] [--workloads get1,get16,set1,set16]

Instructions per command, deterministic (one workload per run; Ir / commands, the
driver included, as in scripts/node_bench.py):

    valgrind --tool=callgrind --instr-atstart=no python scripts/router_bench.py \
        --callgrind --rounds 1 --requests 2000 --clients 10 --workloads get1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.server.client import Client  # noqa: E402
from durakv.server.router import Router  # noqa: E402
from durakv.shards.config import Config  # noqa: E402
from durakv.shards.framelink import FrameReceiver, RECV_BYTES  # noqa: E402
from durakv.shards.frames import encode_frame, request_batch_decoder  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from node_bench import GET_REPLY_BYTES, SET_REPLY_BYTES, VALUE, request, socket_pairs  # noqa: E402

PHASES = ("read, parse, dispatch", "frames to shards", "receive, replies to clients", "commands")
GET_REPLY = b"$%d\r\n%s\r\n" % (len(VALUE), VALUE)
SET_REPLY = b"+OK\r\n"


class StandInShard:
    """The shard end of one link: decodes the router's frames and answers each
    request at once (a GET with the value, anything else +OK)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def answer(self) -> int:
        """Answer every complete frame the socket holds; returns requests answered."""
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                break
            self.buf += data
        buf = self.buf
        answered = 0
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + size:
                break
            requests = request_batch_decoder.decode(bytes(buf[4:4 + size]))
            del buf[:4 + size]
            replies = [(r.rid, GET_REPLY if r.argv[0] in (b"GET", b"get") else SET_REPLY) for r in requests]
            self.sock.sendall(encode_frame(replies))
            answered += len(replies)
        return answered


class LinkPump:
    """The receive half of a ShardLink run synchronously: what its receiver task does
    after each wake (one recv into the reused buffer, the frames handed over as views)."""

    def __init__(self, link, sock: socket.socket) -> None:
        self.sock = sock
        self.receiver = FrameReceiver(sock, link._on_frames, link._stream_reply, views=True)

    def pump(self) -> bool:
        receiver = self.receiver
        try:
            size = self.sock.recv_into(receiver._chunk)
        except BlockingIOError:
            return False
        receiver._buf += receiver._view[:size]
        receiver._handle_views(receiver._buf)
        return True


async def workload(router: Router, shards: list[StandInShard], pumps: list[LinkPump], peers: list[socket.socket],
                   clients: list[Client], command: str, pipeline: int, requests: int, keys: int,
                   phases_s: dict[str, float]) -> float:
    """Router CPU µs per command (thread time without the driver's); adds each
    phase's thread time to phases_s."""
    reply_bytes = (GET_REPLY_BYTES if command == "get" else SET_REPLY_BYTES) * pipeline
    poller = router.poller
    driver_s = 0.0
    done = 0
    issued = 0
    thread_start = time.thread_time()
    while done < requests:
        t0 = time.thread_time()
        for peer in peers:
            parts = []
            for _ in range(pipeline):
                issued += 1
                parts.append(request(command, issued % keys))
            peer.send(b"".join(parts))
        driver_s += time.thread_time() - t0
        t0 = time.thread_time()
        poller.in_turn = True  # as ClientPoller.run does
        for client in clients:
            client.on_readable()
        poller.in_turn = False
        t1 = time.thread_time()
        router.end_turn()
        t2 = time.thread_time()
        phases_s["read, parse, dispatch"] += t1 - t0
        phases_s["frames to shards"] += t2 - t1
        for shard in shards:
            shard.answer()
        t0 = time.thread_time()
        driver_s += t0 - t2
        for pump in pumps:
            pump.pump()
        router.flush_ready_clients()  # as the flusher task would: replies a receive left for it
        t1 = time.thread_time()
        phases_s["receive, replies to clients"] += t1 - t0
        t0 = t1
        for peer in peers:
            got = 0
            while got < reply_bytes:
                try:
                    got += len(peer.recv(1 << 20))
                except BlockingIOError:
                    raise RuntimeError("a reply did not come back in its turn") from None
        driver_s += time.thread_time() - t0
        done += len(peers) * pipeline
    return (time.thread_time() - thread_start - driver_s) * 1e6 / done


def callgrind(opts: argparse.Namespace, order: str) -> None:
    """As in scripts/node_bench.py: one callgrind dump per workload."""
    if opts.callgrind:
        subprocess.run(["callgrind_control", order, str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)


def connect_link(link) -> socket.socket:
    """Give a router's shard link one end of a socket pair, up; returns the other end,
    for a stand-in shard (this script and scripts/router_loop_bench.py)."""
    router_end, shard_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    router_end.setblocking(False)
    shard_end.setblocking(False)
    link.sock = router_end
    link.up = True
    return shard_end


def open_router(data_dir: str, shard_count: int, client_count: int) -> tuple[
        Router, list[StandInShard], list[LinkPump], list[socket.socket], list[Client]]:
    """A Router whose links lead to stand-in shards, and clients connected to it:
    (router, stand-in shards, link pumps, the clients' driver ends, the clients)."""
    config = Config(data_dir=data_dir, shards=shard_count).resolved()
    router = Router(config, 0)
    shards = []
    pumps = []
    for link in router.links:
        shard_end = connect_link(link)
        shards.append(StandInShard(shard_end))
        pumps.append(LinkPump(link, link.sock))
    pairs = socket_pairs(client_count)
    clients = []
    for _peer, conn in pairs:
        client = Client(router, conn, router.new_client_id())
        router.clients[client.id] = client
        router.poller.add(client)
        clients.append(client)
    return router, shards, pumps, [peer for peer, _ in pairs], clients


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    router, shards, pumps, peers, clients = open_router(data_dir, opts.shards, opts.clients)
    await workload(router, shards, pumps, peers, clients, "get", 1, 1000, opts.keys, dict.fromkeys(PHASES, 0.0))
    results: dict[str, list[float]] = {}
    phases: dict[str, dict[str, float]] = {}
    for _ in range(opts.rounds):
        for name in opts.workloads.split(","):
            command, pipeline = name[:3], int(name[3:])
            requests = opts.requests * (10 if pipeline > 1 else 1)
            callgrind(opts, "--instr=on")
            phases_s = phases.setdefault(name, dict.fromkeys(PHASES, 0.0))
            results.setdefault(name, []).append(await workload(
                router, shards, pumps, peers, clients, command, pipeline, requests, opts.keys, phases_s))
            phases_s["commands"] += requests
            callgrind(opts, "--instr=off")
            callgrind(opts, "--dump=" + name)
    frames = sum(link.frames_sent for link in router.links)
    sent = sum(link.requests_sent for link in router.links)
    print_rounds(results)
    print("phases, µs/cmd (all rounds): " + ", ".join(PHASES[:-1]))
    for name, phases_s in phases.items():
        print(f"{name.upper():<9} " + " ".join(f"{phases_s[p] * 1e6 / phases_s['commands']:>8.2f}"
                                             for p in PHASES[:-1]))
    print(f"requests per shard frame (all workloads): {sent / max(frames, 1):.1f}")


def options(description: str) -> argparse.Namespace:
    """The options of this script and of scripts/router_loop_bench.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=50_000, help="per P1 run; pipelined runs 10x as many")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--workloads", default="get1,get16,set1,set16")
    p.add_argument("--callgrind", action="store_true", help="toggle callgrind's collection around the workloads")
    opts = p.parse_args()
    if not (1 <= opts.clients <= 1000 and 100 <= opts.requests <= 10_000_000 and 1 <= opts.rounds <= 100
            and 1 <= opts.keys <= 1_000_000 and 1 <= opts.shards <= 64):
        p.error("an argument is out of range")
    return opts


def print_rounds(results: dict[str, list[float]]) -> None:
    print(f"{'workload':<9} {'router µs/cmd':>14}   every round")
    for name, rounds in results.items():
        print(f"{name.upper():<9} {min(rounds):>14.2f}   " + " ".join(f"{r:.2f}" for r in rounds))


def run_main(doc: str, bench, prefix: str) -> int:
    """The main() of this script and of scripts/router_loop_bench.py: their options,
    then `bench(opts, data_dir)` under trio in a data directory of its own."""
    opts = options(doc.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        trio.run(bench, opts, data_dir)
    return 0


def main() -> int:
    return run_main(__doc__, run, "durakv-router-bench-")


if __name__ == "__main__":
    sys.exit(main())
