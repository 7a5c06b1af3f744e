"""A real etcd cluster on loopback for the tests and the scripts: N members
(Debian's etcd-server) on free ports in a directory of their own, each leading its
own process group so kill -9 reaches it. Imports nothing from durakv; speaks to
the members' v3 JSON gateway with requests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import requests

from proctools import free_port, kill_group

ETCD_START_TIMEOUT_S = 30.0
# Short elections keep a leader kill's stall short (etcd's defaults: 100/1000 ms).
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500


class EtcdCluster:
    """`members` etcd processes forming one cluster on loopback."""

    def __init__(self, base_dir: Path, members: int = 3, binary: str = "etcd",
                 tls: tuple[str, str, str] | None = None, extra_args: tuple[str, ...] = ()) -> None:
        """tls: (cert file, key file, CA file) to serve clients over https and require
        client certificates signed by that CA (peers stay on plain http). extra_args:
        more etcd flags for every member (e.g. --auth-token-ttl)."""
        self.base_dir = base_dir
        self.extra_args = extra_args
        self.binary = binary
        self.tls = tls
        first = free_port(following=2 * members - 1)
        self.client_ports = [first + i for i in range(members)]
        self.peer_ports = [first + members + i for i in range(members)]
        self.names = [f"m{i}" for i in range(members)]
        self.procs: list[subprocess.Popen | None] = [None] * members
        self.token = f"durakv-test-{uuid.uuid4().hex[:8]}"

    @property
    def endpoints(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]

    def start(self) -> "EtcdCluster":
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.names)):
            self.start_member(i, new=True)
        self.wait_healthy()
        return self

    def start_member(self, i: int, new: bool = False) -> None:
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports))
        data_dir = self.base_dir / self.names[i]
        log = open(self.base_dir / f"{self.names[i]}.log", "ab")
        argv = [self.binary, "--name", self.names[i], "--data-dir", str(data_dir),
                "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new" if new else "existing",
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_TIMEOUT_MS),
                "--logger", "zap", "--log-level", "warn", *self.extra_args]
        if self.tls:
            cert, key, ca = self.tls
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def status(self, i: int) -> dict:
        tls = {} if not self.tls else {"verify": self.tls[2], "cert": (self.tls[0], self.tls[1])}
        resp = requests.post(f"{self.endpoints[i]}/v3/maintenance/status", json={}, timeout=1, **tls)
        resp.raise_for_status()
        return resp.json()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while True:
            try:
                if self.leader_index() is not None:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                logs = "".join((self.base_dir / f"{n}.log").read_text(errors="replace")[-2000:]
                               for n in self.names)
                raise RuntimeError(f"etcd cluster not healthy after {ETCD_START_TIMEOUT_S} s:\n{logs}")
            time.sleep(0.1)

    def leader_index(self) -> int | None:
        """The member that is raft leader, as every running member reports it."""
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                continue
            status = self.status(i)
            leader = int(status.get("leader", 0))
            if leader and int(status["header"]["member_id"]) == leader:
                return i
        return None

    def kill9(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                kill_group(proc)
            self.procs[i] = None
