"""Where each shard's primary accepts internal links, for routers on every node
(durakv on several machines, issue 15), and the secret those links authenticate with.

Keys, under a deployment's prefix D (a shard's log is under D/shard-NNN):
    D/leaders/shard-NNN  a copy of the shard's leader key (JSON {holder, epoch, node,
                         advertise, link, ...}), written in the same transaction and
                         bound to the same etcd lease (log/etcd_log.py take_lease), so
                         it names the current primary and vanishes with it; one watch on
                         D/leaders/ follows every shard (a watch on D/ would carry every
                         log record too)
    D/link-secret        32 random bytes (hex), created once by the first process that
                         needs it: what a router proves it knows before a shard on another
                         node runs its requests (shards/link_auth.py). Whoever can read the
                         deployment's keys can read every value anyway, so etcd's own
                         access control (etcd-user, TLS) guards it."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any, Callable

from .etcd_client import EtcdClient, EtcdRequestFailed, EtcdUnavailable, unb64
from .etcd_records import cmp_absent, get_op, kvs_of, put_op, revision_of

logger = logging.getLogger("durakv.log")

LINK_SECRET_BYTES = 32
WATCH_RETRY_PAUSE_S = 0.2
SHARD_DIGITS = 3


def deployment_of(shard_prefix: str) -> str:
    """D of a shard's prefix D/shard-NNN (log/etcd_records.py shard_prefix)."""
    deployment, _, name = shard_prefix.rstrip("/").rpartition("/")
    if not (name.startswith("shard-") and name[6:].isdigit()):
        raise ValueError(f"etcd prefix {shard_prefix!r} is not a shard's (DEPLOYMENT/shard-NNN)")
    return deployment


def leaders_start(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/leaders/".encode()


def leaders_end(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/leaders0".encode()  # "/" + 1: every key under leaders/


def leader_entry_key(shard_prefix: str) -> bytes:
    """D/leaders/shard-NNN for the shard whose log is under shard_prefix."""
    name = shard_prefix.rstrip("/").rpartition("/")[2]
    return leaders_start(deployment_of(shard_prefix)) + name.encode()


def shard_of_entry(key: bytes) -> int:
    return int(key[-SHARD_DIGITS:])


def link_secret(client: EtcdClient, deployment: str) -> bytes:
    """D/link-secret, created (at random) if absent; the first creation wins."""
    key = f"{deployment.rstrip('/')}/link-secret".encode()
    reply = client.txn([cmp_absent(key)], [put_op(key, secrets.token_hex(LINK_SECRET_BYTES).encode())],
                       [get_op(key)])
    if not reply.get("succeeded"):
        return unb64(reply["responses"][0]["response_range"]["kvs"][0]["value"])
    return unb64(client.range(key)["kvs"][0]["value"])


def read_leaders(client: EtcdClient, deployment: str) -> tuple[int, dict[int, dict[str, Any]]]:
    """(revision, {shard: its leader entry}) at one revision."""
    reply = client.range(leaders_start(deployment), leaders_end(deployment))
    leaders = {}
    for kv in kvs_of(reply):
        entry = _entry(kv)
        if entry is not None:
            leaders[shard_of_entry(unb64(kv["key"]))] = entry
    return revision_of(reply), leaders


def _entry(kv: dict[str, Any]) -> dict[str, Any] | None:
    try:
        entry = json.loads(unb64(kv.get("value", "")))
    except ValueError:
        logger.warning("etcd: leader entry %s is not JSON; ignored", unb64(kv["key"]).decode(errors="replace"))
        return None
    return entry if isinstance(entry, dict) else None


class LeaderWatch:
    """Follows D/leaders/ in a thread: calls on_change({shard: entry}) with every
    shard's current leader entry (a shard without a leader is absent) after the first
    read and after every change; reads again from scratch when a watch fails."""

    def __init__(self, client: EtcdClient, deployment: str,
                 on_change: Callable[[dict[int, dict[str, Any]]], None]) -> None:
        self._client = client
        self._deployment = deployment
        self._on_change = on_change
        self._stream: Any = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"etcd leaders {deployment}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        start, end = leaders_start(self._deployment), leaders_end(self._deployment)
        while not self._closed:
            try:
                revision, leaders = read_leaders(self._client, self._deployment)
                self._on_change(dict(leaders))
                stream = self._stream = self._client.watch(start, end, revision + 1)
                try:
                    for result in stream.replies():
                        for event in result.get("events", []):
                            shard = shard_of_entry(unb64(event["kv"]["key"]))
                            entry = _entry(event["kv"]) if event.get("type", "PUT") == "PUT" else None
                            if entry is None:
                                leaders.pop(shard, None)
                            else:
                                leaders[shard] = entry
                        if result.get("events"):
                            self._on_change(dict(leaders))
                finally:
                    stream.close()
            except (EtcdUnavailable, EtcdRequestFailed, OSError, ValueError) as e:
                if self._closed:
                    return
                logger.warning("etcd: following the leader keys under %s failed (%s); reading them again",
                               self._deployment, e)
            if not self._closed:
                time.sleep(WATCH_RETRY_PAUSE_S)

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.close()


def entry_link(entry: dict[str, Any]) -> tuple[str, int] | None:
    """The (host, port) a leader entry says its primary accepts internal links on."""
    link = str(entry.get("link", ""))
    host, _, port = link.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None

