"""LATENCY LATEST/HISTORY/RESET/DOCTOR/GRAPH/HISTOGRAM/HELP as Redis 7.0. Events
and histograms are kept where commands execute (shards/latency.py): on a router
each subcommand merges the router's own with every reachable shard's, as SLOWLOG
does; a shard node answers from its process's monitor (its shard's) alone.

Merged series keep, per second, the largest sample of any process, so a router
answers as one Redis would whose events came from all of them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from durakv.log.durable_file import replace_file
from durakv.log.layout import run_dir
from durakv.server.client import Client
from durakv.shards.frames import VERB_LATENCY
from durakv.shards.latency import (
    EVENT_COMMAND, EVENT_FAST_COMMAND, EVENT_FSYNC, EVENT_SNAPSHOT_UPLOAD, MAX, SAMPLES, cdf, merge_events,
    merge_histograms,
)
from durakv.shards.resp import Map, ReplyError, Simple, Verbatim, encode, encode_error
from durakv.shards.table import ROUTER, TABLE, Command, command, container, find_fullname
from durakv.snapshotter.runner import read_status

GRAPH_COLUMNS = 80
GRAPH_ROWS = 4
SPARK_CHARS = b"_o#"  # Redis' sparkline "fill" charset, one step per character per row
LABEL_MARGIN_TOP = 1
SNAPSHOT_RESET_FILE = "latency-snapshot-reset"  # in DIR/run: LATENCY RESET's time for snapshot-upload

container("latency", "server", where=ROUTER)

_TIPS = ("nondeterministic_output", "request_policy:all_nodes", "response_policy:special")


def _gather(client: Client, request: list[bytes], finish: Callable[[list[Any]], Any]):
    """finish(every up shard's answer to `request`) as the reply (a ReplyError it
    returns is the error reply); a node answers from its own process alone."""
    router = client.router
    if router.cluster_node:
        value = finish([])
        if isinstance(value, ReplyError):
            raise value
        return value
    proto = client.proto

    def reply(values: list[Any]) -> bytes:
        value = finish(values)
        return encode_error(value.message) if isinstance(value, ReplyError) else encode(value, proto)

    up = [link.index for link in router.links if link.up]
    return router.fanout_internal(client, request, reply, shards=up)


def _events(client: Client, finish: Callable[[dict[str, list]], Any]):
    router = client.router
    own = router.latency.export_events()
    uploads = snapshot_uploads(router)
    return _gather(client, [VERB_LATENCY, b"events"],
                   lambda values: finish(merge_events([own, *values, uploads])))


def _reset_path(data_dir: str) -> str:
    return os.path.join(run_dir(data_dir), SNAPSHOT_RESET_FILE)


def snapshot_uploads(router) -> dict[str, list]:
    """The snapshot-upload event from the snapshotter's status (it times every upload;
    the threshold applies here): samples at or past latency-monitor-threshold, newer
    than the last LATENCY RESET of the event (DIR/run/latency-snapshot-reset, shared
    by every router and node). A node reports its own shard's uploads."""
    threshold_ms = router.latency.threshold_ms
    if not threshold_ms:
        return {}
    data_dir = router.config.data_dir
    try:
        with open(_reset_path(data_dir), "rb") as f:
            reset_s = int(f.read(32) or 0)
    except FileNotFoundError:
        reset_s = 0
    shards = read_status(data_dir).shards
    own_shard = router.index if router.cluster_node else None
    samples = [(second, ms) for shard, status in shards.items() if own_shard in (None, shard)
               for second, ms in status.upload_samples if ms >= threshold_ms and second > reset_s]
    if not samples:
        return {}
    return {EVENT_SNAPSHOT_UPLOAD: [max(ms for _, ms in samples), sorted(samples)]}


def _reset_snapshot_uploads(router, names: list[bytes]) -> bool:
    """Forget the snapshot-upload samples so far (when RESET names it or all); whether
    there were any to forget."""
    if names and EVENT_SNAPSHOT_UPLOAD not in {name.decode(errors="replace").lower() for name in names}:
        return False
    had = bool(snapshot_uploads(router))
    path = _reset_path(router.config.data_dir)
    replace_file(path, b"%d" % int(time.time()), tmp_path=f"{path}.{os.getpid()}.tmp")
    return had


@command("latency|latest", 2, "admin noscript loading stale", group="server", where=ROUTER, tips=_TIPS)
def latency_latest(client: Client, argv: list[bytes]):
    def reply(events: dict[str, list]) -> list:
        return [[name.encode(), samples[-1][0], samples[-1][1], peak]
                for name, (peak, samples) in events.items() if samples]

    return _events(client, reply)


@command("latency|history", 3, "admin noscript loading stale", group="server", where=ROUTER, tips=_TIPS)
def latency_history(client: Client, argv: list[bytes]):
    name = argv[2].decode(errors="replace")

    def reply(events: dict[str, list]) -> list:
        series = events.get(name)
        return [] if series is None else [[second, ms] for second, ms in series[SAMPLES]]

    return _events(client, reply)


@command("latency|reset", -2, "admin noscript loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def latency_reset(client: Client, argv: list[bytes]):
    router = client.router
    own = router.latency.reset_events([name.decode(errors="replace") for name in argv[2:]])
    if _reset_snapshot_uploads(router, argv[2:]):
        own.append(EVENT_SNAPSHOT_UPLOAD)
    return _gather(client, [VERB_LATENCY, b"reset", *argv[2:]],
                   lambda values: len({name.lower() for part in [own, *values] for name in part}))


@command("latency|graph", 3, "admin noscript loading stale", group="server", where=ROUTER, tips=_TIPS)
def latency_graph(client: Client, argv: list[bytes]):
    name = argv[2].decode(errors="replace")

    def reply(events: dict[str, list]):
        series = events.get(name)
        if series is None:
            return ReplyError(b"ERR No samples available for event '%s'" % argv[2])
        return Verbatim(graph(name, series, int(time.time())).encode())

    return _events(client, reply)


@command("latency|doctor", 2, "admin noscript loading stale", group="server", where=ROUTER, tips=_TIPS)
def latency_doctor(client: Client, argv: list[bytes]):
    router = client.router
    values = router.settings.values
    return _events(client, lambda events: Verbatim(doctor(
        events, int(values["latency-monitor-threshold"]), int(values["slowlog-log-slower-than"]),
        router.config.durability == "sync", int(time.time())).encode()))


@command("latency|histogram", -2, "admin noscript loading stale", group="server", where=ROUTER, tips=_TIPS)
def latency_histogram(client: Client, argv: list[bytes]):
    own = client.router.latency.export_histograms()
    wanted = argv[2:]

    def reply(values: list[Any]) -> Map:
        merged = merge_histograms([own, *values])
        items: list = []
        for cmd in _histogram_commands(wanted):
            counts = merged.get(cmd.fullname)
            if counts:
                buckets: list = []
                for usec, cumulative in cdf(counts):
                    buckets += [usec, cumulative]
                items += [cmd.fullname.encode(),
                          Map([b"calls", sum(counts.values()), b"histogram_usec", Map(buckets)])]
        return Map(items)

    return _gather(client, [VERB_LATENCY, b"histograms"], reply)


def _histogram_commands(names: list[bytes]) -> list[Command]:
    """The commands (and subcommands of a container) named, in Redis' order; all
    of them, in the table's order, when none is named. Unknown names are skipped."""
    if not names:
        roots = list(TABLE.values())
    else:
        roots = [cmd for cmd in map(find_fullname, names) if cmd is not None]
    out = []
    for cmd in roots:
        out.append(cmd)
        out.extend(cmd.subcommands.values())
    return out


@command("latency|help", 2, "loading stale", group="server", where=ROUTER)
def latency_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in (
        b"LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"DOCTOR",
        b"    Return a human readable latency analysis report.",
        b"GRAPH <event>",
        b"    Return an ASCII latency graph for the <event> class.",
        b"HISTORY <event>",
        b"    Return time-latency samples for the <event> class.",
        b"LATEST",
        b"    Return the latest latency samples for all events.",
        b"RESET [<event> ...]",
        b"    Reset latency data of one or more <event> classes.",
        b"    (default: reset all data for all event classes)",
        b"HISTOGRAM [COMMAND ...]",
        b"    Return a cumulative distribution of latencies in the format of a histogram for the specified "
        b"command names.",
        b"    If no commands are specified then all histograms are replied.",
        b"HELP",
        b"    Prints this help.",
    )]


# --- DOCTOR and GRAPH texts (Redis' latency.c wording) -------------------------------


def _analyze(samples: list, now_s: int) -> tuple[int, int, int, float]:
    """(samples, average ms, mean absolute deviation ms, seconds per sample)."""
    count = len(samples)
    total = sum(ms for _, ms in samples)
    avg = total // count
    period = now_s - min(second for second, _ in samples) or 1
    mad = sum(abs(avg - ms) for _, ms in samples) // count
    return count, avg, mad, period / count


def doctor(events: dict[str, list], threshold_ms: int, slowlog_slower_than_us: int, fsync_always: bool,
           now_s: int) -> str:
    """LATENCY DOCTOR's report over the merged events."""
    if not events and threshold_ms == 0:
        return ("I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. "
                "You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. "
                "If we weren't in a deep space mission I'd suggest to take a look at "
                "https://redis.io/topics/latency-monitor.\n")
    report = []
    advice: set[str] = set()
    for number, (name, (peak, samples)) in enumerate(events.items(), 1):
        if number == 1:
            report.append("Dave, I have observed latency spikes in this Redis instance. "
                          "You don't mind talking about it, do you Dave?\n\n")
        count, avg, mad, period = _analyze(samples, now_s) if samples else (0, 0, 0, 0.0)
        report.append(f"{number}. {name}: {count} latency spikes (average {avg}ms, mean deviation {mad}ms, "
                      f"period {period:.2f} sec). Worst all time event {peak}ms.\n")
        lowered = name.lower()
        if lowered == EVENT_COMMAND:
            if slowlog_slower_than_us < 0:
                advice.add("slowlog-enable")
            elif slowlog_slower_than_us // 1000 > threshold_ms:
                advice.add("slowlog-tune")
            advice |= {"slowlog-inspect", "large-objects"}
        elif lowered == EVENT_FAST_COMMAND:
            advice.add("scheduler")
        elif lowered == EVENT_FSYNC:
            advice.add("relax-fsync")
    if not events:
        report.append("Dave, no latency spike was observed during the lifetime of this Redis instance, not in the "
                      "slightest bit. I honestly think you ought to sit down calmly, take a stress pill, and "
                      "think things over.\n")
        return "".join(report)
    if not advice:
        report.append("\nWhile there are latency events logged, I'm not able to suggest any easy fix. Please use "
                      "the Redis community to get some help, providing this report in your help request.\n")
        return "".join(report)
    report.append("\nI have a few advices for you:\n\n")
    threshold_us = threshold_ms * 1000
    texts = [
        ("slowlog-enable", "- There are latency issues with potentially slow commands you are using. Try to enable "
         "the Slow Log Redis feature using the command 'CONFIG SET slowlog-log-slower-than "
         f"{threshold_us}'. If the Slow log is disabled Redis is not able to log slow commands execution "
         "for you.\n"),
        ("slowlog-tune", "- Your current Slow Log configuration only logs events that are slower than your "
         f"configured latency monitor threshold. Please use 'CONFIG SET slowlog-log-slower-than {threshold_us}'.\n"),
        ("slowlog-inspect", "- Check your Slow Log to understand what are the commands you are running which are "
         "too slow to execute. Please check https://redis.io/commands/slowlog for more information.\n"),
        ("scheduler", "- The system is slow to execute Redis code paths not containing system calls. This usually "
         "means the system does not provide Redis CPU time to run for long periods. You should try to:\n"
         "  1) Lower the system load.\n"
         "  2) Use a computer / VM just for Redis if you are running other software in the same system.\n"
         "  3) Check if you have a \"noisy neighbour\" problem.\n"
         "  4) Check with 'redis-cli --intrinsic-latency 100' what is the intrinsic latency in your system.\n"
         "  5) Check if the problem is allocator-related by recompiling Redis with MALLOC=libc, if you are using "
         "Jemalloc. However this may create fragmentation problems.\n"),
        ("relax-fsync", "- Your fsync policy is set to 'always'. It is very hard to get good performances with "
         "such a setup, if possible try to relax the fsync policy to 'onesec'.\n" if fsync_always else ""),
        ("large-objects", "- Deleting, expiring or evicting (because of maxmemory policy) large objects is a "
         "blocking operation. If you have very large objects that are often deleted, expired, or evicted, try to "
         "fragment those objects into multiple smaller objects.\n"),
    ]
    report += [text for key, text in texts if key in advice]
    return "".join(report)


def graph(name: str, series: list, now_s: int) -> str:
    """LATENCY GRAPH: a header, a rule and Redis' 4-row sparkline with age labels."""
    samples = series[SAMPLES]
    values = [ms for _, ms in samples]
    labels = [_age_label(now_s - second) for second, _ in samples]
    out = [f"{name} - high {max(values)} ms, low {min(values)} ms (all time high {series[MAX]} ms)\n",
           "-" * GRAPH_COLUMNS + "\n"]
    for start in range(0, len(values), GRAPH_COLUMNS):
        if start:
            out.append("\n")
        out.append(_sparkline(values, labels, start, min(len(values) - start, GRAPH_COLUMNS)))
    return "".join(out)


def _age_label(elapsed_s: int) -> str:
    if elapsed_s < 60:
        return f"{elapsed_s}s"
    if elapsed_s < 3600:
        return f"{elapsed_s // 60}m"
    if elapsed_s < 86400:
        return f"{elapsed_s // 3600}h"
    return f"{elapsed_s // 86400}d"


def _sparkline(values: list[int], labels: list[str], offset: int, length: int) -> str:
    """Redis' sparklineRenderRange with the fill charset: the scale is the whole
    sequence's min..max; rows of bars, a blank row, then the labels downwards."""
    low, high = min(values), max(values)
    span = (high - low) or 1
    steps = len(SPARK_CHARS) * GRAPH_ROWS
    lines: list[str] = []
    row = 0
    while True:
        chars = [" "] * length
        more = False
        for j in range(length):
            if row < GRAPH_ROWS:
                step = min(max(int(int((values[offset + j] - low) * steps) / span), 0), steps - 1)
                index = step - (GRAPH_ROWS - row - 1) * len(SPARK_CHARS)
                more = True
                if 0 <= index < len(SPARK_CHARS):
                    chars[j] = chr(SPARK_CHARS[index])
                elif index >= len(SPARK_CHARS):
                    chars[j] = "|"
            else:
                if row - GRAPH_ROWS < LABEL_MARGIN_TOP:
                    more = True
                    break
                label = labels[offset + j]
                at = row - GRAPH_ROWS - LABEL_MARGIN_TOP
                if len(label) > at:
                    more = True
                    chars[j] = label[at]
        if not more:
            return "".join(lines)
        lines.append("".join(chars) + "\n")
        row += 1
