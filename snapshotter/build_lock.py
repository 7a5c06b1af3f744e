"""Which snapshotter builds which shard, when the snapshotters of several nodes share a
deployment on etcd (issue 15).

Every node runs a snapshotter on the same shard logs and publishes to the same store;
without coordination each built every shard, and the second publish of a seq was
refused with an error. Here exactly one snapshotter builds a shard at a time: it holds
the shard's build lock, an etcd key bound to its own lease, which it keeps alive from a
thread of its own (a build may outlast the TTL). A snapshotter that dies or is cut off
loses its lease, and with it its locks, within the TTL; another takes them over.

The preferred builder of a shard is the snapshotter of the node holding the shard's
primary: that node's snapshotter writes the release notice its primary drops covered
records by (snapshotter/runner.py, log/etcd_positions.py: the truncation rules are
unchanged), and its local snapshot cache is the one a restart there loads. A free lock is
taken at once by the preferred node's snapshotter, or by anyone when the primary's node
runs none (or the shard has no primary); a holder on another node hands the lock back
after its build once the primary's node runs a snapshotter.

The same mechanism picks the one snapshotter that defragments etcd's members
(log/etcd_upkeep.py): a member being defragmented answers nothing, so rounds from
several nodes at once could take several members, and the quorum, away together. The
defragmenter lock is taken by whichever snapshotter finds it free, kept while that one
lives, and checked again before each member.

Keys, under a deployment's prefix D (log/etcd_nodes.py holds D/cluster/):
    D/snapshotter/node/<node id>  JSON {node, pid, host}: a live snapshotter runs on that
                                  node (bound to its lease)
    D/snapshotter/shard-NNN       JSON {node, pid, host, lease}: the build lock (bound to
                                  the holder's lease)
    D/snapshotter/request-NNN     JSON {node, request, seq}: a SAVE/BGSAVE on a node that
                                  does not build the shard asks the holder for a snapshot
                                  through seq (bound to the asker's lease; the holder
                                  deletes it, at the revision it read, once published)"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from durakv.log.errors import LogError
from durakv.log.etcd_client import EtcdClient, b64, unb64
from durakv.log.etcd_nodes import read_cluster
from durakv.log.etcd_records import cmp_absent, cmp_mod, kvs_of, put_op
from durakv.shards.faults import hold_here

logger = logging.getLogger("durakv.snapshotter")

NODE_DIR = b"node/"
SHARD_PREFIX = b"shard-"
REQUEST_PREFIX = b"request-"
DEFRAG_NAME = b"defrag"
# Fault injection for tests (DURAKV_TXN_HOLD naming this step): the defragmenter waits
# between its lock check and its request, so a test can pause it there.
DEFRAG_HOLD_STEP = "etcd-defrag-before-request"
NO_NODE_ID = "-"  # a tree without --node-id (one node on etcd): its presence key's name
# Keys read in one range of D/snapshotter/: one presence key per node and one lock per shard.
MAX_KEYS_READ = 10_000


def snapshotter_start(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/snapshotter/".encode()


def snapshotter_end(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/snapshotter0".encode()  # "/" + 1: every key under snapshotter/


def lock_key(deployment: str, shard: int) -> bytes:
    return snapshotter_start(deployment) + b"%s%03d" % (SHARD_PREFIX, shard)


def request_key(deployment: str, shard: int) -> bytes:
    return snapshotter_start(deployment) + b"%s%03d" % (REQUEST_PREFIX, shard)


def defrag_key(deployment: str) -> bytes:
    return snapshotter_start(deployment) + DEFRAG_NAME


def presence_key(deployment: str, node: str) -> bytes:
    return snapshotter_start(deployment) + NODE_DIR + node.encode()


@dataclass(slots=True)
class BuilderState:
    """What D/snapshotter/ holds: the nodes running a snapshotter, and each locked
    shard's holder ({node, pid, host, lease} and the key's mod_revision)."""
    nodes: set[str] = field(default_factory=set)
    holders: dict[int, tuple[dict[str, Any], int]] = field(default_factory=dict)
    requests: dict[int, tuple[int, int]] = field(default_factory=dict)  # shard -> (seq asked for, mod_revision)


def _holder(kv: dict[str, Any]) -> dict[str, Any]:
    try:
        holder = json.loads(unb64(kv["value"]))
    except ValueError:
        logger.warning("etcd: build lock %s is not JSON; taken as held by nobody known",
                       unb64(kv["key"]).decode(errors="replace"))
        return {"unknown": True}
    return holder if isinstance(holder, dict) else {"unknown": True}


def read_builders(client: EtcdClient, deployment: str) -> BuilderState:
    reply = client.range(snapshotter_start(deployment), snapshotter_end(deployment), limit=MAX_KEYS_READ)
    state = BuilderState()
    start = snapshotter_start(deployment)
    for kv in kvs_of(reply):
        name = unb64(kv["key"])[len(start):]
        if name.startswith(NODE_DIR):
            state.nodes.add(name[len(NODE_DIR):].decode(errors="replace"))
        elif name.startswith(SHARD_PREFIX) and name[len(SHARD_PREFIX):].isdigit():
            state.holders[int(name[len(SHARD_PREFIX):])] = (_holder(kv), int(kv["mod_revision"]))
        elif name.startswith(REQUEST_PREFIX) and name[len(REQUEST_PREFIX):].isdigit():
            asked = _holder(kv).get("seq", 0)
            state.requests[int(name[len(REQUEST_PREFIX):])] = (asked if isinstance(asked, int) else 0,
                                                                int(kv["mod_revision"]))
    return state


class BuildLocks:
    """This snapshotter's build locks (a blocking etcd client: call from the snapshotter's
    loop; the lease is renewed by a thread of its own, started by start())."""

    def __init__(self, client: EtcdClient, deployment: str, node_id: str, ttl_s: int, margin_ms: int = 500) -> None:
        """margin_ms: etcd-lease-margin-ms, the clock drift allowed between this machine and
        etcd (at most half the TTL): the lease is taken as lapsed that much early."""
        assert ttl_s > 0 and 0 <= margin_ms * 2 <= ttl_s * 1000, "a lease needs a TTL, the margin at most half"
        self.client = client
        self.deployment = deployment
        self.node = node_id or NO_NODE_ID
        self.ttl_s = ttl_s
        self.margin_s = margin_ms / 1000
        self._lease = 0
        # Monotonic time until which the lease surely lives: its last grant or renewal was
        # sent at t and answered with TTL s, so etcd keeps it at least until t + s.
        self._valid_until = 0.0
        self._lease_lost = threading.Event()
        self._held: set[int] = set()
        # Held shards another node asked a snapshot of (read by claim): shard -> (seq, mod_revision).
        self.requested: dict[int, tuple[int, int]] = {}
        self._me = {"node": self.node, "pid": os.getpid(), "host": socket.gethostname()}

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def start(self, stop: threading.Event) -> threading.Thread:
        """Renew the lease every third of its TTL until stop is set."""
        thread = threading.Thread(target=self._keep_alive, args=(stop,), name="build-lease", daemon=True)
        thread.start()
        return thread

    def _keep_alive(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl_s / 3):
            lease = self._lease
            if not lease:
                continue
            try:
                self._renew(lease)
            except LogError as e:
                logger.warning("snapshotter: renewing its etcd lease: %s", e)

    def _renew(self, lease: int) -> None:
        """Renew the lease (from either thread); a lapsed one sets _lease_lost."""
        sent = time.monotonic()
        ttl_s = self.client.lease_keepalive(lease)
        if lease != self._lease:
            return  # replaced meanwhile
        if ttl_s > 0:
            self._valid_until = max(self._valid_until, sent + ttl_s)
        elif not self._lease_lost.is_set():
            # Loud: its locks are gone (a stop, a starved or hung process, etcd out of reach
            # for longer than the TTL), and another node's snapshotter may hold them now.
            logger.warning("snapshotter: its etcd lease %x lapsed (%.1f s since its last renewal, TTL %d s); its "
                           "locks are lost", lease, sent - (self._valid_until - self.ttl_s), self.ttl_s)
            self._lease_lost.set()

    def _ensure_lease(self) -> None:
        """A live lease and presence key before the locks are read: checked here too, not
        only by the renewing thread, so that a snapshotter resumed after a pause (SIGSTOP,
        a VM frozen) never acts on a lease that expired meanwhile."""
        if self._lease:
            self._renew(self._lease)
        if self._lease_lost.is_set():
            self._lease_lost.clear()
            if self._held:
                logger.warning("snapshotter: its etcd lease expired; shards %s may be built by another node's "
                               "snapshotter now", sorted(self._held))
            self._held.clear()
            self._lease = 0
        if not self._lease:
            sent = time.monotonic()
            self._lease, self._valid_until = self.client.lease_grant(self.ttl_s), sent + self.ttl_s
            self.client.txn([], [put_op(presence_key(self.deployment, self.node), json.dumps(self._me).encode(),
                                        self._lease)], [])

    def claim(self, shards: int) -> frozenset[int]:
        """The shards this snapshotter builds now: take the free locks it is the preferred
        builder of (or that nobody is preferred for), hand back those whose primary's node
        runs a snapshotter of its own. Raises LogError when etcd is out of reach."""
        self._ensure_lease()
        _, cluster = read_cluster(self.client, self.deployment)
        builders = read_builders(self.client, self.deployment)
        for shard in range(shards):
            leader_node = str(cluster.leaders.get(shard, {}).get("node", "")) or None
            preferred = leader_node if leader_node in builders.nodes else None
            holder, revision = builders.holders.get(shard, ({}, 0))
            mine = holder.get("lease") == self._lease
            if shard in self._held and not mine:
                logger.warning("snapshotter: shard %d's build lock is no longer its own (%s)", shard, holder)
                self._held.discard(shard)
            if mine and preferred is not None and preferred != self.node:
                self._hand_back(shard, revision, preferred)
            elif mine:
                self._held.add(shard)
            elif not holder and preferred in (None, self.node):
                self._take(shard)
        self.requested = {shard: asked for shard, asked in builders.requests.items() if shard in self._held}
        return self.held

    def ask(self, shard: int, request: str, seq: int) -> None:
        """Ask the holder of shard's build lock for a snapshot through seq (a SAVE or
        BGSAVE here). Bound to this snapshotter's lease: it lapses with the asker.
        Raises LogError when etcd is out of reach."""
        self._ensure_lease()
        value = json.dumps({"node": self.node, "request": request, "seq": seq}).encode()
        self.client.txn([], [put_op(request_key(self.deployment, shard), value, self._lease)], [])

    def answered(self, shard: int, revision: int) -> None:
        """A snapshot covering the request read at revision is published: drop the request
        unless it was asked again since (then the next round builds once more)."""
        key = request_key(self.deployment, shard)
        delete = {"request_delete_range": {"key": b64(key)}}
        self.client.txn([cmp_mod(key, revision)], [delete], [])
        self.requested.pop(shard, None)

    def _take(self, shard: int) -> None:
        if self._take_key(lock_key(self.deployment, shard)):
            logger.info("snapshotter: builds shard %d's snapshots (node %s, lease %x)", shard, self.node, self._lease)
            self._held.add(shard)

    def _take_key(self, key: bytes) -> bool:
        """Create key, bound to this snapshotter's lease, unless it exists."""
        value = json.dumps({**self._me, "lease": self._lease}).encode()
        return bool(self.client.txn([cmp_absent(key)], [put_op(key, value, self._lease)], []).get("succeeded"))

    def _holds_key(self, key: bytes) -> bool:
        kvs = kvs_of(self.client.range(key))
        return bool(kvs) and _holder(kvs[0]).get("lease") == self._lease

    def claim_defrag(self) -> bool:
        """Whether this snapshotter is the one that defragments etcd now: it holds
        D/snapshotter/defrag, or takes it when free. Raises LogError when etcd is out
        of reach."""
        self._ensure_lease()
        key = defrag_key(self.deployment)
        if self._holds_key(key):
            return True
        if self._take_key(key):
            logger.info("snapshotter: defragments etcd's members for the deployment (node %s, lease %x)", self.node,
                        self._lease)
            return True
        return False

    def defrag_deadline(self) -> float:
        """Before each member's defragmentation (log/etcd_upkeep.py): the monotonic time
        until which this snapshotter surely keeps the defragmenter lock (its lease's end
        minus the margin), 0.0 when it no longer holds it (a lease lost meanwhile may
        have let another node's snapshotter start a round) or etcd does not answer: the
        round stops either way."""
        if self._lease_lost.is_set():
            return 0.0
        valid_until = self._valid_until  # read before the check: a renewal during it only adds
        try:
            holds = self._holds_key(defrag_key(self.deployment))
        except LogError as e:
            logger.warning("snapshotter: checking the defragmenter lock: %s; stopping the round", e)
            return 0.0
        hold_here(DEFRAG_HOLD_STEP, "defragmentation")
        return valid_until - self.margin_s if holds else 0.0

    def _hand_back(self, shard: int, revision: int, to_node: str) -> None:
        key = lock_key(self.deployment, shard)
        delete = {"request_delete_range": {"key": b64(key)}}
        if self.client.txn([cmp_mod(key, revision)], [delete], []).get("succeeded"):
            logger.info("snapshotter: hands shard %d's snapshots to node %s, which holds its primary", shard,
                        to_node)
        self._held.discard(shard)

    def still_held(self, shard: int) -> bool:
        """Whether this snapshotter still holds shard's lock (before publishing a build:
        a lease lost meanwhile may have let another node's snapshotter build it)."""
        if self._lease_lost.is_set() or shard not in self._held:
            return False
        return self._holds_key(lock_key(self.deployment, shard))

    def close(self) -> None:
        """Give every lock up at once (a clean stop: another node need not wait for the TTL)."""
        if self._lease:
            try:
                self.client.lease_revoke(self._lease)
            except LogError as e:
                logger.warning("snapshotter: giving up its etcd lease: %s", e)
            self._lease = 0
            self._held.clear()
