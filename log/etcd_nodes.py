"""Where each shard's primary accepts internal links and which nodes exist, for
routers and shard ports on every node (durakv on several machines, issue 15), and
the secret internal links authenticate with.

Keys, under a deployment's prefix D (a shard's log is under D/shard-NNN):
    D/cluster/leader/shard-NNN  a copy of the shard's leader key (JSON {holder, epoch,
                         node, advertise, link, ...}), written in the same transaction
                         and bound to the same etcd lease (log/etcd_log.py take_lease), so
                         it names the current primary and vanishes with it
    D/cluster/node/<id>  what a node serves (JSON: its address, each shard's primary and
                         replica ports and node ids; server/cluster_view.py), bound to a
                         lease its router 0 keeps alive, so it vanishes with the node
    D/cluster/replica/shard-NNN/<node>-<number>  a live replica of the shard (JSON {node,
                         number, seq}: seq, how far it applied): a copy of its position key (log/etcd_positions.py) put
                         with the same etcd lease, which the replica renews while its loop
                         runs and it reaches etcd, so it vanishes a TTL after the replica
                         stops following (killed, paused, cut off) or at once when it stops
                         cleanly or is promoted; CLUSTER SHARDS/NODES on every node show
                         another node's replica as online only while it is there
    D/link-secret        32 random bytes (hex), created once by the first process that
                         needs it: what a router proves it knows before a shard on another
                         node runs its requests (shards/link_auth.py). Whoever can read the
                         deployment's keys can read every value anyway, so etcd's own
                         access control (etcd-user, TLS) guards it.
(D/snapshotter/ holds the snapshotters' build locks: snapshotter/build_lock.py.)
One watch on D/cluster/ follows both (a watch on D/ would carry every log record too)."""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .etcd_client import EtcdClient, EtcdRequestFailed, EtcdUnavailable, unb64
from .etcd_records import cmp_absent, get_op, kvs_of, put_op, revision_of
from .etcd_watch import PrefixWatch

logger = logging.getLogger("durakv.log")

LINK_SECRET_BYTES = 32
LEADER_DIR = b"leader/"
NODE_DIR = b"node/"
REPLICA_DIR = b"replica/"


def deployment_of(shard_prefix: str) -> str:
    """D of a shard's prefix D/shard-NNN (log/etcd_records.py shard_prefix)."""
    deployment, _, name = shard_prefix.rstrip("/").rpartition("/")
    if not (name.startswith("shard-") and name[6:].isdigit()):
        raise ValueError(f"etcd prefix {shard_prefix!r} is not a shard's (DEPLOYMENT/shard-NNN)")
    return deployment


def cluster_start(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/cluster/".encode()


def cluster_end(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/cluster0".encode()  # "/" + 1: every key under cluster/


def leader_entry_key(shard_prefix: str) -> bytes:
    """D/cluster/leader/shard-NNN for the shard whose log is under shard_prefix."""
    name = shard_prefix.rstrip("/").rpartition("/")[2]
    return cluster_start(deployment_of(shard_prefix)) + LEADER_DIR + name.encode()


def node_entry_key(deployment: str, node_id: str) -> bytes:
    return cluster_start(deployment) + NODE_DIR + node_id.encode()


def live_replica_key(shard_prefix: str, name: str) -> bytes:
    """D/cluster/replica/shard-NNN/<name> for replica `name` (<node>-<number>) of the
    shard whose log is under shard_prefix."""
    shard = shard_prefix.rstrip("/").rpartition("/")[2]
    return cluster_start(deployment_of(shard_prefix)) + REPLICA_DIR + shard.encode() + b"/" + name.encode()


@dataclass(slots=True)
class ClusterState:
    """What D/cluster/ holds: each shard's leader entry (a shard without a leader is
    absent), each live node's entry, by node id, and the live replicas' entries, by (shard,
    "<node>-<number>")."""
    leaders: dict[int, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    replicas: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)

    def apply(self, deployment: str, kv: dict[str, Any], deleted: bool) -> None:
        key = unb64(kv["key"])[len(cluster_start(deployment)):]
        entry = None if deleted else _entry(kv)
        if key.startswith(LEADER_DIR) and key[len(LEADER_DIR) + 6:].isdigit():
            shard = int(key[len(LEADER_DIR) + 6:])
            if entry is None:
                self.leaders.pop(shard, None)
            else:
                self.leaders[shard] = entry
        elif key.startswith(NODE_DIR):
            node = key[len(NODE_DIR):].decode(errors="replace")
            if entry is None:
                self.nodes.pop(node, None)
            else:
                self.nodes[node] = entry
        elif key.startswith(REPLICA_DIR + b"shard-"):
            shard_text, _, name = key[len(REPLICA_DIR) + 6:].partition(b"/")
            if shard_text.isdigit() and name:
                replica = (int(shard_text), name.decode(errors="replace"))
                if entry is None:
                    self.replicas.pop(replica, None)
                else:
                    self.replicas[replica] = entry

    def copy(self) -> "ClusterState":
        return ClusterState(dict(self.leaders), dict(self.nodes), dict(self.replicas))


def link_secret(client: EtcdClient, deployment: str) -> bytes:
    """D/link-secret, created (at random) if absent; the first creation wins."""
    key = f"{deployment.rstrip('/')}/link-secret".encode()
    reply = client.txn([cmp_absent(key)], [put_op(key, secrets.token_hex(LINK_SECRET_BYTES).encode())],
                       [get_op(key)])
    if not reply.get("succeeded"):
        return unb64(reply["responses"][0]["response_range"]["kvs"][0]["value"])
    return unb64(client.range(key)["kvs"][0]["value"])


def read_cluster(client: EtcdClient, deployment: str) -> tuple[int, ClusterState]:
    """(revision, every leader and node entry) at one revision."""
    reply = client.range(cluster_start(deployment), cluster_end(deployment))
    state = ClusterState()
    for kv in kvs_of(reply):
        state.apply(deployment, kv, deleted=False)
    return revision_of(reply), state


def _entry(kv: dict[str, Any]) -> dict[str, Any] | None:
    try:
        entry = json.loads(unb64(kv.get("value", "")))
    except ValueError:
        logger.warning("etcd: leader entry %s is not JSON; ignored", unb64(kv["key"]).decode(errors="replace"))
        return None
    return entry if isinstance(entry, dict) else None


def _apply_cluster_event(deployment: str, state: ClusterState, event: dict[str, Any]) -> None:
    state.apply(deployment, event["kv"], deleted=event.get("type", "PUT") != "PUT")


def cluster_watch(client: EtcdClient, deployment: str,
                  on_change: Callable[[ClusterState], None]) -> PrefixWatch[ClusterState]:
    """Follows D/cluster/ in a thread: on_change(state) after the first read and after
    every change (log/etcd_watch.py)."""
    return PrefixWatch(client, cluster_start(deployment), cluster_end(deployment), f"etcd cluster {deployment}",
                       lambda c: read_cluster(c, deployment),
                       lambda state, event: _apply_cluster_event(deployment, state, event),
                       lambda _revision, state: on_change(state.copy()))


class NodeEntry:
    """This node's entry, D/cluster/node/<id>, bound to a lease kept alive by a thread
    (renewed every ttl/3; put again under a new lease if etcd expired it). A clean stop
    revokes the lease (close), so the other nodes drop the entry at once instead of a
    TTL later; a crash leaves it to expire."""

    def __init__(self, client: EtcdClient, deployment: str, node_id: str, entry: dict[str, Any],
                 ttl_s: int) -> None:
        self._client = client
        self._key = node_entry_key(deployment, node_id)
        self._value = json.dumps(entry).encode()
        self._ttl_s = ttl_s
        self._lease = 0
        self._lock = threading.Lock()  # the lease changes under it: close() revokes the current one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"etcd node entry {node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _put(self) -> None:
        lease = self._client.lease_grant(self._ttl_s)
        with self._lock:
            if self._stop.is_set():  # closed meanwhile: the entry must not come back
                self._client.lease_revoke(lease)
                return
            self._lease = lease
            self._client.txn([], [put_op(self._key, self._value, self._lease)], [])

    def _run(self) -> None:
        while True:
            try:
                if not self._lease or self._client.lease_keepalive(self._lease) <= 0:
                    self._put()
            except (EtcdUnavailable, EtcdRequestFailed, OSError, ValueError) as e:
                logger.warning("etcd: keeping %s failed (%s); trying again", self._key.decode(), e)
                self._lease = 0
            if self._stop.wait(self._ttl_s / 3):
                return

    def close(self) -> None:
        """Stop renewing and remove the entry now (a blocking request, bounded by the
        client's retry time; if etcd does not answer, the entry expires with its lease)."""
        with self._lock:
            self._stop.set()
            lease, self._lease = self._lease, 0
            if not lease:
                return
            try:  # a client of its own: the renewing thread may be in a request on the other
                self._client.clone().lease_revoke(lease)
            except (EtcdUnavailable, EtcdRequestFailed, OSError) as e:
                logger.warning("etcd: removing %s failed (%s); it expires in %d s", self._key.decode(), e,
                               self._ttl_s)
                return
        logger.info("etcd: removed %s (a clean stop)", self._key.decode())


def entry_link(entry: dict[str, Any]) -> tuple[str, int] | None:
    """The (host, port) a leader entry says its primary accepts internal links on."""
    link = str(entry.get("link", ""))
    host, _, port = link.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None

