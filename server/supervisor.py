"""`durakv serve`: start the shard and router processes, restart any that die,
stop them all on SIGTERM/SIGINT.

Children stay in the supervisor's process group and ask the kernel to SIGKILL
them if the supervisor dies (PR_SET_PDEATHSIG), so even a kill -9 of the
supervisor leaves no orphan holding a port or a log open.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from server.topology import ensure_topology
from shards.config import Config, config_to_json

log = logging.getLogger("durakv.supervisor")

POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 5.0
RESTART_BACKOFF_MIN_MS = 100
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a supervised child."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)  # the supervisor died before prctl took effect


class Child:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.backoff_ms = RESTART_BACKOFF_MIN_MS
        self.restart_at = 0.0
        self.started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self.started_at = time.monotonic()


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = False
        self.children: list[Child] = []
        common = ["--config-json", config_to_json(config), "--parent-pid", str(os.getpid())]
        entry = [sys.executable, "-m", "server.cli"]
        for i in range(config.shards):
            self.children.append(Child(f"shard {i}", entry + ["shard", "--index", str(i)] + common))
        for i in range(config.routers):
            self.children.append(Child(f"router {i}", entry + ["router", "--index", str(i)] + common))
        # Even without a snapshot URL (it then keeps snapshots under the data dir), so the
        # shards drop covered segments and BGSAVE/LASTSAVE work.
        if config.snapshotter:
            self.children.append(Child("snapshotter", entry + ["snapshotter"] + common))

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        ensure_topology(self.config.data_dir, self.config.shards)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("supervisor ready: pid %d, %d shards, %d routers, data dir %s",
                 os.getpid(), self.config.shards, self.config.routers, self.config.data_dir)
        for child in self.children:
            child.start()
        while not self.stopping:
            time.sleep(POLL_INTERVAL_S)
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if now >= child.restart_at and not self.stopping:
                        child.restarts += 1
                        log.warning("supervisor: restarting %s (restart #%d)", child.name, child.restarts)
                        child.start()
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                if now - child.started_at > 10:
                    child.backoff_ms = RESTART_BACKOFF_MIN_MS
                log.error("supervisor: %s (pid %d) exited with %s; restarting in %d ms",
                          child.name, child.proc.pid, code, child.backoff_ms)
                child.proc = None
                child.restart_at = now + child.backoff_ms / 1000
                child.backoff_ms = min(child.backoff_ms * 2, self.config.shard_restart_backoff_max_ms)
        return self.stop()

    def stop(self) -> int:
        log.info("supervisor: stopping %d processes", len(self.children))
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        # Routers first so no new work arrives, then shards.
        for child in sorted(running, key=lambda c: not c.name.startswith("router")):
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            remaining = max(deadline - time.monotonic(), 0.01)
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                log.error("supervisor: %s did not stop in %.0f s; killing it", child.name, STOP_GRACE_S)
                child.proc.kill()
                child.proc.wait()
        log.info("supervisor: stopped")
        return 0
