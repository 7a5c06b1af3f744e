#!/usr/bin/env python3
"""Where each process of an idle `durakv serve` tree keeps its memory (issue 11 §4).

Starts an empty tree (or reads one already running: --pid SUPERVISOR), then prints,
per process, its mappings grouped by kind (the Python heap: [heap] and anonymous
mappings; the interpreter binary; extension modules of site-packages; the
interpreter's own lib-dynload; other shared libraries; the rest), each with RSS, PSS,
Private_Dirty (pages this process alone wrote: what it costs beyond the others) and
Shared (pages it shares with other processes: after fork, the supervisor's imports).
RSS counts a shared page in every process that maps it; PSS divides it among them.

    python scripts/process_memory.py --shards 2
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
from memory_per_key import group_pids, role, wait_ready, wait_titles  # noqa: E402
from proctools import free_port, start_group, stop_group  # noqa: E402

FIELDS = ("Rss", "Pss", "Private_Dirty", "Shared_Clean", "Shared_Dirty")
SETTLE_S = 5.0  # the snapshotter's first builds (forked children) end


def kind(path: str) -> str:
    """The group a mapping of /proc/PID/smaps belongs to."""
    if path in ("[heap]", ""):
        return "heap+anon"
    if path.startswith("["):
        return "stack/vdso"
    if "site-packages" in path:
        return "site-packages .so"
    if "lib-dynload" in path:
        return "lib-dynload .so"
    if "/bin/python" in path or path.endswith("/python3") or "libpython" in path:
        return "python binary"
    if ".so" in path:
        return "shared libs"
    return "other files"


def smaps(pid: int) -> dict[str, collections.Counter]:
    """kind -> Counter of FIELDS in kB, for one process."""
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    current = groups["other files"]
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's first line: range perms offset dev inode [path]
                parts = line.split(None, 5)
                current = groups[kind(parts[5].strip() if len(parts) > 5 else "")]
            elif head[:-1] in FIELDS:
                current[head[:-1]] += int(line.split()[1])
    return groups


def report(leader: int) -> None:
    totals: collections.Counter = collections.Counter()
    for pid in group_pids(leader):
        name = role(pid, leader)
        groups = smaps(pid)
        whole = sum(groups.values(), collections.Counter())
        totals.update(whole)
        print(f"\n{name} (pid {pid}): RSS {whole['Rss'] / 1024:.1f} MB, PSS {whole['Pss'] / 1024:.1f} MB, "
              f"private dirty {whole['Private_Dirty'] / 1024:.1f} MB")
        print(f"  {'kind':<20}{'RSS':>8}{'PSS':>8}{'PrivDirty':>10}{'ShClean':>9}{'ShDirty':>9}  (MB)")
        for k, c in sorted(groups.items(), key=lambda kv: -kv[1]["Rss"]):
            if c["Rss"]:
                print(f"  {k:<20}" + "".join(f"{c[f] / 1024:>{w}.1f}" for f, w in zip(FIELDS, (8, 8, 10, 9, 9))))
    print(f"\ntree: RSS {totals['Rss'] / 1024:.1f} MB, PSS {totals['Pss'] / 1024:.1f} MB, "
          f"private dirty {totals['Private_Dirty'] / 1024:.1f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--pid", type=int, help="the supervisor of a running tree (else one is started)")
    opts = p.parse_args()
    if opts.pid:
        report(opts.pid)
        return
    with tempfile.TemporaryDirectory(prefix="durakv-procmem-") as tmp:
        port = free_port()
        proc = start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                            "--shards", str(opts.shards), "--data-dir", f"{tmp}/data"],
                           cwd=REPO, stdout=open(f"{tmp}/durakv.log", "wb"), stderr=subprocess.STDOUT)
        try:
            wait_ready(port, proc, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
            wait_titles(proc.pid)
            time.sleep(SETTLE_S)
            report(proc.pid)
        finally:
            stop_group(proc)


if __name__ == "__main__":
    main()
