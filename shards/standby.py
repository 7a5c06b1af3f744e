"""Where a standby (a replica on the etcd log, on any node) sends the clients it does
not serve: to the shard's current primary, which may run on another machine.

A Redis Cluster replica answers `-MOVED slot host:port` of its master to a write, and
to a read of a connection that did not send READONLY. On one machine the primary's
port follows from the config (shards/config.py shard_port); across machines it does
not: the primary is whichever node's process holds the shard's leader key. So a
primary on etcd with an advertised host publishes its client ports in the leader key
(beside its node id, log/etcd_records.py), and each standby reads them from there
(shards/etcd_replica.py EtcdFollow.watch_leader) for its MOVED replies."""

from __future__ import annotations

import json
from dataclasses import dataclass

from durakv.shards.config import Config, shard_port, tls_shard_port

# The leader key's fields that carry the primary's client addresses.
FIELD_CLIENT = "client"
FIELD_TLS_CLIENT = "tls_client"


def advertised_host(config: Config) -> str:
    """announce-ip if set, else the host of `advertise` (HOST:PORT, checked at start);
    "" when neither is set."""
    if config.announce_ip:
        return config.announce_ip
    return config.advertise.rpartition(":")[0] if config.advertise else ""


def leader_addresses(config: Config, index: int) -> dict[str, str]:
    """The leader key's fields naming where shard `index`'s primary on this node serves
    cluster clients (plain and TLS); none without an advertised host."""
    host = advertised_host(config)
    if not host:
        return {}
    fields = {}
    if shard_port(config, index):
        fields[FIELD_CLIENT] = f"{host}:{shard_port(config, index)}"
    if tls_shard_port(config, index):
        fields[FIELD_TLS_CLIENT] = f"{host}:{tls_shard_port(config, index)}"
    return fields


@dataclass(frozen=True, slots=True)
class PrimaryAddress:
    """Where the shard's current primary serves cluster clients ("" when it did not say)."""
    client: str
    tls_client: str

    def for_client(self, tls: bool) -> str:
        return self.tls_client if tls else self.client

    def host_port(self) -> tuple[str, int] | None:
        """The plain client address as (host, port), for INFO replication's master_host
        and master_port (None if the primary published only a TLS port)."""
        host, _, port = self.client.rpartition(":")
        return (host, int(port)) if host and port.isdigit() else None


def primary_address(leader_value: bytes) -> PrimaryAddress | None:
    """The addresses a leader key's value (JSON) publishes; None if it names none
    (a primary without an advertised host, or a value that is not JSON)."""
    try:
        leader = json.loads(leader_value)
        client, tls_client = str(leader.get(FIELD_CLIENT, "")), str(leader.get(FIELD_TLS_CLIENT, ""))
    except (ValueError, TypeError, AttributeError):
        return None
    if not client and not tls_client:
        return None
    return PrimaryAddress(client, tls_client)
