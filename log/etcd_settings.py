"""CONFIG SET across the nodes of a deployment (issue 15): every runtime change made on
any node's router or shard port is recorded in etcd, and every node applies what is
recorded there, so all nodes agree (server/config_sync.py does the applying).

Keys, under a deployment's prefix D:
    D/config/<name>  JSON {"value": normalised value, "node": the node that set it},
                     one key per setting (two nodes setting different settings at once
                     do not overwrite each other), written by one transaction per
                     CONFIG SET, never bound to a lease: a node started later applies
                     them too. etcd's revision order decides between two nodes setting
                     the same one: every node ends on the value etcd holds last.
Settings that are per node by nature (the TLS files, server/settings.py `per_node`) and
those fixed at start never travel."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from .etcd_client import EtcdClient, EtcdRequestFailed, unb64
from .etcd_records import kvs_of, put_op, revision_of
from .etcd_watch import PrefixWatch

logger = logging.getLogger("durakv.log")

# Settings read in one range request: Redis has about 200 parameters.
MAX_SETTINGS_READ = 1000


def settings_start(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/config/".encode()


def settings_end(deployment: str) -> bytes:
    return f"{deployment.rstrip('/')}/config0".encode()  # "/" + 1: every key under config/


def record_settings(client: EtcdClient, deployment: str, node_id: str, changes: list[tuple[str, str]]) -> None:
    """Write one CONFIG SET's changes (name, normalised value) in one transaction;
    EtcdUnavailable/EtcdRequestFailed if etcd did not take them."""
    start = settings_start(deployment)
    ops = [put_op(start + name.encode(), json.dumps({"value": value, "node": node_id}).encode())
           for name, value in changes]
    reply = client.txn([], ops, [])
    if not reply.get("succeeded", True):
        raise EtcdRequestFailed(f"etcd refused the settings {[name for name, _ in changes]}: {reply}")


def _parse(deployment: str, kv: dict[str, Any]) -> tuple[str, str] | None:
    name = unb64(kv["key"])[len(settings_start(deployment)):].decode(errors="replace")
    try:
        value = json.loads(unb64(kv.get("value", "")))["value"]
        if not isinstance(value, str):
            raise TypeError("the value is not a string")
    except (ValueError, KeyError, TypeError) as e:
        logger.error("etcd: setting %r under %s is not one (%s); ignored", name,
                     settings_start(deployment).decode(), e)
        return None
    return name, value


def read_settings(client: EtcdClient, deployment: str) -> tuple[int, dict[str, str]]:
    """(revision, every recorded setting) at one revision."""
    reply = client.range(settings_start(deployment), settings_end(deployment), limit=MAX_SETTINGS_READ)
    settings = {}
    for kv in kvs_of(reply):
        parsed = _parse(deployment, kv)
        if parsed is not None:
            settings[parsed[0]] = parsed[1]
    return revision_of(reply), settings


def _apply_setting(deployment: str, settings: dict[str, str], event: dict[str, Any]) -> str:
    """One watch event of D/config/ folded into settings; the setting's name."""
    name = unb64(event["kv"]["key"])[len(settings_start(deployment)):].decode(errors="replace")
    if event.get("type", "PUT") != "PUT":
        settings.pop(name, None)
        return name
    parsed = _parse(deployment, event["kv"])
    if parsed is not None:
        settings[parsed[0]] = parsed[1]
    return name


SettingsNotice = Callable[[int, dict[str, str], int, dict[str, int]], None]


def settings_watch(client: EtcdClient, deployment: str, on_change: SettingsNotice) -> PrefixWatch[dict[str, str]]:
    """Follows D/config/ in a thread: on_change(revision, every recorded setting, read_ns,
    fresh_ns) after the first read and after every change (log/etcd_watch.py). read_ns:
    wall clock when the read the state started from was sent (etcd answers a range
    linearizably: what it held at some point after read_ns); fresh_ns: the settings a
    watch event wrote since, with when the event arrived."""
    read_ns = 0
    fresh_ns: dict[str, int] = {}

    def read(c: EtcdClient) -> tuple[int, dict[str, str]]:
        nonlocal read_ns
        read_ns = time.time_ns()
        fresh_ns.clear()
        return read_settings(c, deployment)

    def apply(settings: dict[str, str], event: dict[str, Any]) -> None:
        name = _apply_setting(deployment, settings, event)
        fresh_ns[name] = time.time_ns()

    return PrefixWatch(client, settings_start(deployment), settings_end(deployment), f"etcd settings {deployment}",
                       read, apply,
                       lambda revision, settings: on_change(revision, dict(settings), read_ns, dict(fresh_ns)))
