#!/usr/bin/env python3
"""Closed-loop load generator for any Redis-protocol server (durakv, redis-server).

Why not redis-benchmark alone: it cannot pin every key to one shard, mix GET
and SET in one run, or report p99.9. Why this shape: the generator must cost
less than the server it measures, so each process runs asyncio protocol
callbacks (no task per request), writes RESP with a byte template and parses
replies with hiredis' C reader; `--processes N` runs N such processes and adds
up their latency histograms, because one Python process cannot saturate a
multi-core server.

Each connection sends a batch of `--pipeline` commands, waits for all its
replies, records the batch latency (send to last reply) and sends the next.
A SET writes `value_for(key, size)`, so a reader can check what the server
holds afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import socket
import sys
import time
from binascii import crc_hqx
from dataclasses import dataclass, field
from typing import Callable

import hiredis

SLOT_COUNT = 16384
HIST_SIGNIFICANT_BITS = 10  # ~0.1% resolution, bounded number of buckets
TICK_S = 0.1
PROGRESS_PERIOD_S = 1.0
CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 30.0
PREFILL_CHUNK = 1000
RECV_BYTES = 256 * 1024
MAX_CONNECTIONS = 10_000
MAX_PIPELINE = 10_000
MAX_VALUE_BYTES = 64 * 1024 * 1024
MAX_PROCESSES = 256


class Histogram:
    """Latency counts in microseconds, rounded down to HIST_SIGNIFICANT_BITS
    significant bits so memory stays bounded and processes merge by adding."""

    __slots__ = ("counts", "max_us", "sum_us", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.max_us = 0
        self.sum_us = 0
        self.total = 0

    def record(self, us: int) -> None:
        self.total += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us
        shift = us.bit_length() - HIST_SIGNIFICANT_BITS
        if shift > 0:
            us = (us >> shift) << shift
        counts = self.counts
        counts[us] = counts.get(us, 0) + 1

    def merge(self, other: "Histogram") -> None:
        for us, n in other.counts.items():
            self.counts[us] = self.counts.get(us, 0) + n
        self.max_us = max(self.max_us, other.max_us)
        self.sum_us += other.sum_us
        self.total += other.total

    def percentile_us(self, q: float) -> int:
        """Smallest recorded bucket below which at least q percent of samples lie."""
        if not self.total:
            return 0
        rank = max(1, math.ceil(q * self.total / 100 - 1e-9))
        seen = 0
        for us in sorted(self.counts):
            seen += self.counts[us]
            if seen >= rank:
                return min(us, self.max_us)
        return self.max_us

    def to_json(self) -> dict:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "max_us": self.max_us,
                "sum_us": self.sum_us, "total": self.total}

    @classmethod
    def from_json(cls, data: dict) -> "Histogram":
        hist = cls()
        hist.counts = {int(k): v for k, v in data["counts"].items()}
        hist.max_us = data["max_us"]
        hist.sum_us = data["sum_us"]
        hist.total = data["total"]
        return hist


@dataclass
class Result:
    ops: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    hist: Histogram = field(default_factory=Histogram)
    first_error: str = ""

    def merge(self, other: "Result") -> None:
        self.ops += other.ops
        self.errors += other.errors
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.hist.merge(other.hist)
        self.first_error = self.first_error or other.first_error


def key_slot(key: bytes) -> int:
    """Redis Cluster's slot of a key (CRC16-XMODEM of the key or its {hash tag})."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) & (SLOT_COUNT - 1)


def tag_for_slot(slot: int) -> bytes:
    """The smallest decimal hash tag whose slot is `slot` (found in ~16k CRCs)."""
    if not 0 <= slot < SLOT_COUNT:
        raise ValueError(f"slot must be in 0..{SLOT_COUNT - 1}")
    n = 0
    while crc_hqx(b"%d" % n, 0) & (SLOT_COUNT - 1) != slot:
        n += 1
    return b"%d" % n


def key_prefix(opts: argparse.Namespace) -> bytes:
    prefix = opts.key_prefix.encode()
    if opts.pin_slot is not None:
        return b"{" + tag_for_slot(opts.pin_slot) + b"}" + prefix
    if opts.hash_tag:
        return b"{" + opts.hash_tag.encode() + b"}" + prefix
    return prefix


def value_for(key: bytes, size: int) -> bytes:
    """The value a SET of `key` writes: the key, '=', then 'x' padding, cut to size."""
    return (key + b"=").ljust(size, b"x")[:size]


def encode_command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def sync_command(host: str, port: int, *args: bytes, timeout_s: float = 5.0):
    """One command on a fresh blocking connection (readiness probes, INFO); the
    reply as hiredis parses it, errors returned as hiredis.ReplyError."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_command(*args))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            data = sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            reader.feed(data)
        return reply


class Workload:
    """Builds batches of GET/SET commands over the key space."""

    def __init__(self, opts: argparse.Namespace, seed: int) -> None:
        sets, gets = opts.ratio
        self.set_fraction = sets / (sets + gets)
        self.prefix = key_prefix(opts)
        self.key_space = opts.key_space
        self.value_size = opts.value_size
        self.pipeline = opts.pipeline
        self.rng = random.Random(seed)

    def key(self, n: int) -> bytes:
        return self.prefix + b"%d" % n

    def set_command(self, key: bytes) -> bytes:
        value = value_for(key, self.value_size)
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(value), value)

    def batch(self) -> bytes:
        rand = self.rng.random
        pick = self.rng.randrange
        parts = []
        for _ in range(self.pipeline):
            key = self.prefix + b"%d" % pick(self.key_space)
            if rand() < self.set_fraction:
                parts.append(self.set_command(key))
            else:
                parts.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))
        return b"".join(parts)


class LoadProtocol(asyncio.Protocol):
    """One client connection: send a batch, count its replies, record latency, repeat."""

    def __init__(self, workload: Workload, result: Result, auth: bytes | None) -> None:
        self.workload = workload
        self.result = result
        self.auth = auth
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.sent_at = 0
        self.stopping = False
        self.ready = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.auth:
            self.pending = 1
            transport.write(encode_command(b"AUTH", self.auth))
        else:
            self.ready.set_result(None)

    def start(self) -> None:
        self._send()

    def _send(self) -> None:
        self.pending = self.workload.pipeline
        data = self.workload.batch()
        self.sent_at = time.perf_counter_ns()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        result = self.result
        while (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                result.errors += 1
                result.first_error = result.first_error or str(reply)
            self.pending -= 1
            if self.pending:
                continue
            if not self.ready.done():
                if result.errors:
                    self.ready.set_exception(RuntimeError(f"AUTH failed: {result.first_error}"))
                else:
                    self.ready.set_result(None)
                continue
            result.hist.record((time.perf_counter_ns() - self.sent_at) // 1000)
            result.ops += self.workload.pipeline
            if self.stopping:
                self.done.set_result(None)
            else:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"server closed the connection ({exc or 'EOF'})")
        for fut in (self.ready, self.done):
            if not fut.done():
                fut.set_exception(error)


async def prefill(opts: argparse.Namespace) -> None:
    """SET every key once (pipelined) so GETs hit; not measured."""
    workload = Workload(opts, seed=0)
    reader, writer = await asyncio.open_connection(opts.host, opts.port)
    parser = hiredis.Reader()
    try:
        if opts.password:
            writer.write(encode_command(b"AUTH", opts.password.encode()))
        chunks = [range(i, min(i + PREFILL_CHUNK, opts.key_space))
                  for i in range(0, opts.key_space, PREFILL_CHUNK)]
        expected = 1 if opts.password else 0
        for chunk in chunks:
            writer.write(b"".join(workload.set_command(workload.key(n)) for n in chunk))
            expected += len(chunk)
            while expected:
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RuntimeError(f"prefill failed: {reply}")
                    expected -= 1
                if expected:
                    data = await reader.read(RECV_BYTES)
                    if not data:
                        raise ConnectionError("server closed the connection during prefill")
                    parser.feed(data)
    finally:
        writer.close()


async def generate(opts: argparse.Namespace, connections: int, seed: int,
                   on_tick: Callable[[int], None], go: Callable[[], None]) -> Result:
    """Open `connections`, call go() (a start barrier), run for opts.duration."""
    loop = asyncio.get_running_loop()
    result = Result()
    auth = opts.password.encode() if opts.password else None
    protocols = []
    for i in range(connections):
        workload = Workload(opts, seed * MAX_CONNECTIONS + i)
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda w=workload: LoadProtocol(w, result, auth), opts.host, opts.port),
            CONNECT_TIMEOUT_S)
        protocols.append(proto)
    await asyncio.wait_for(asyncio.gather(*(p.ready for p in protocols)), CONNECT_TIMEOUT_S)
    go()
    start = time.perf_counter()
    for proto in protocols:
        proto.start()
    deadline = start + opts.duration
    while (now := time.perf_counter()) < deadline:
        await asyncio.sleep(min(TICK_S, deadline - now))
        on_tick(result.ops)
        if opts.until_file and os.path.exists(opts.until_file):
            break
    for proto in protocols:
        proto.stopping = True
    try:
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protocols)), DRAIN_TIMEOUT_S)
    finally:
        for proto in protocols:
            proto.transport.close()
    result.elapsed_s = time.perf_counter() - start
    on_tick(result.ops)
    return result


class Progress:
    """Prints one line per second to stderr: ops/s in the last second and overall."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()
        self.next_at = self.start + PROGRESS_PERIOD_S
        self.last_ops = 0
        self.last_at = self.start

    def __call__(self, ops: int) -> None:
        now = time.perf_counter()
        if now < self.next_at:
            return
        if not self.quiet:
            rate = (ops - self.last_ops) / (now - self.last_at)
            overall = ops / (now - self.start)
            print(f"[{now - self.start:5.1f}s] {rate:10.0f} ops/s  (so far {overall:.0f} ops/s, {ops} ops)",
                  file=sys.stderr, flush=True)
        self.last_ops, self.last_at = ops, now
        self.next_at += PROGRESS_PERIOD_S


def _run_loop(coro):
    try:
        import uvloop  # optional: a faster event loop if the machine has it
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _child(opts: argparse.Namespace, index: int, connections: int, counters, barrier, results) -> None:
    """One generator process: publish progress in counters[index], result on the queue."""
    def tick(ops: int) -> None:
        counters[index] = ops

    try:
        result = _run_loop(generate(opts, connections, index + 1, tick, barrier.wait))
        results.put((index, None, result.ops, result.errors, result.elapsed_s, result.first_error,
                     result.hist.to_json()))
    except BaseException as e:  # report every failure to the parent, then exit
        barrier.abort()
        results.put((index, f"{type(e).__name__}: {e}", 0, 0, 0.0, "", None))


def run_processes(opts: argparse.Namespace) -> Result:
    """Split the connections over opts.processes processes; merge their results."""
    n = opts.processes
    ctx = multiprocessing.get_context("fork")
    counters = ctx.RawArray("q", n)
    barrier = ctx.Barrier(n + 1)
    results = ctx.Queue()
    shares = [opts.connections // n + (1 if i < opts.connections % n else 0) for i in range(n)]
    procs = [ctx.Process(target=_child, args=(opts, i, shares[i], counters, barrier, results), daemon=True)
             for i in range(n)]
    for proc in procs:
        proc.start()
    total = Result()
    try:
        try:
            barrier.wait(CONNECT_TIMEOUT_S * n + 5)
        except Exception:
            pass  # a child aborted or timed out: its error arrives on the queue
        progress = Progress(opts.quiet)
        received = 0
        deadline = time.monotonic() + opts.duration + DRAIN_TIMEOUT_S + CONNECT_TIMEOUT_S * n
        while received < n:
            if time.monotonic() > deadline:
                raise TimeoutError("generator processes did not finish")
            try:
                index, error, ops, errors, elapsed, first_error, hist = results.get(timeout=TICK_S)
            except Exception:
                progress(sum(counters))
                continue
            if error:
                raise RuntimeError(f"generator process {index} failed: {error}")
            received += 1
            total.merge(Result(ops, errors, elapsed, Histogram.from_json(hist), first_error))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return total


def run(opts: argparse.Namespace) -> Result:
    if opts.prefill:
        _run_loop(prefill(opts))
    if opts.processes == 1:
        return _run_loop(generate(opts, opts.connections, 1, Progress(opts.quiet), lambda: None))
    return run_processes(opts)


def report(opts: argparse.Namespace, result: Result) -> dict:
    hist = result.hist
    ms = lambda us: round(us / 1000, 3)  # noqa: E731
    return {
        "host": opts.host, "port": opts.port, "connections": opts.connections,
        "processes": opts.processes, "pipeline": opts.pipeline,
        "ratio_set_get": list(opts.ratio), "value_size": opts.value_size,
        "key_space": opts.key_space, "key_prefix": key_prefix(opts).decode(),
        "ops": result.ops, "errors": result.errors, "first_error": result.first_error,
        "elapsed_s": round(result.elapsed_s, 3),
        "ops_per_s": round(result.ops / result.elapsed_s, 1) if result.elapsed_s else 0.0,
        "batches": hist.total,
        "latency_ms": {
            "mean": ms(hist.sum_us / hist.total) if hist.total else 0.0,
            "p50": ms(hist.percentile_us(50)), "p99": ms(hist.percentile_us(99)),
            "p999": ms(hist.percentile_us(99.9)), "max": ms(hist.max_us),
        },
    }


def _ratio(text: str) -> tuple[int, int]:
    try:
        sets, gets = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("ratio is SET:GET, e.g. 1:10") from None
    if sets < 0 or gets < 0 or sets + gets == 0:
        raise argparse.ArgumentTypeError("ratio needs non-negative parts, not both zero")
    return sets, gets


def _bounded(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--password", default="", help="send AUTH on every connection")
    p.add_argument("-c", "--connections", type=_bounded(1, MAX_CONNECTIONS), default=50)
    p.add_argument("--processes", type=_bounded(1, MAX_PROCESSES), default=1,
                   help="generator processes sharing the connections")
    p.add_argument("-P", "--pipeline", type=_bounded(1, MAX_PIPELINE), default=1,
                   help="commands per batch; latency is measured per batch")
    p.add_argument("--ratio", type=_ratio, default=(1, 1), help="SET:GET mix")
    p.add_argument("-d", "--value-size", type=_bounded(1, MAX_VALUE_BYTES), default=100, help="bytes")
    p.add_argument("-r", "--key-space", type=_bounded(1, 2**62), default=100_000, help="distinct keys")
    p.add_argument("--key-prefix", default="key:")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--hash-tag", help="put every key in one {tag}: one slot, one shard")
    where.add_argument("--pin-slot", type=_bounded(0, SLOT_COUNT - 1),
                       help="put every key in this slot (finds a matching hash tag)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--until-file", help="stop early once this file exists (checked every tick)")
    p.add_argument("--prefill", action="store_true", help="SET every key once before measuring")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    opts = p.parse_args(argv)
    if opts.connections < opts.processes:
        p.error("need at least one connection per process")
    if not 0 < opts.duration <= 24 * 3600:
        p.error("duration must be in (0, 86400] seconds")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    where = "all slots"
    if opts.pin_slot is not None or opts.hash_tag:
        where = f"slot {key_slot(key_prefix(opts))}"
    if not opts.quiet:
        print(f"load: {opts.connections} connections in {opts.processes} process(es) to "
              f"{opts.host}:{opts.port}, pipeline {opts.pipeline}, SET:GET {opts.ratio[0]}:{opts.ratio[1]}, "
              f"{opts.value_size}-byte values, {opts.key_space} keys ({where}), {opts.duration:g} s",
              file=sys.stderr, flush=True)
    try:
        result = run(opts)
    except (TimeoutError, OSError, RuntimeError) as e:
        print(f"load: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    out = report(opts, result)
    if opts.json:
        print(json.dumps(out, indent=2))
    else:
        lat = out["latency_ms"]
        per = "batch" if opts.pipeline > 1 else "request"
        print(f"throughput: {out['ops_per_s']:.0f} ops/s ({result.ops} ops in {result.elapsed_s:.2f} s, "
              f"{result.errors} errors)")
        print(f"latency per {per} (ms): p50 {lat['p50']}  p99 {lat['p99']}  p99.9 {lat['p999']}  "
              f"max {lat['max']}  mean {lat['mean']}")
    if result.errors:
        print(f"load: {result.errors} error replies, first: {result.first_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
