"""The router as a client connection sees it: what server/client.py's `Client`
and the router-answered command handlers (`client.router`) may use.

`Router` (server/router.py) and a shard's client port, `ShardNode`
(server/node.py), implement it; the Protocol exists so
that a client and a handler are checked against this list rather than against
everything the router happens to hold, and so that the router can change
anything not named here without reading every handler. Annotations only: no
import of it runs on a hot path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from durakv.server.acl import Users
    from durakv.shards.oom_flags import OomFlags
    from durakv.server.client import Client, ClientPoller
    from durakv.server.links import Pending, ShardLink
    from durakv.server.monitor import Monitors
    from durakv.server.node_links import NodeDirectory
    from durakv.server.pubsub import PubSub
    from durakv.server.tracking import Tracking
    from durakv.server.settings import Settings
    from durakv.server.settings_sync import SettingsSync
    from durakv.server.pause import ClientPause
    from durakv.server.stats import ReplyStats
    from durakv.server.tls import TlsPort
    from durakv.shards.config import Config
    from durakv.shards.latency import LatencyMonitor
    from durakv.shards.slowlog import SlowLog
    from durakv.shards.table import Command, Merge

# Makes a client's reply bytes from the shards' internal replies, decoded from
# msgpack (hence Any): one per shard asked.
Finish = Callable[[list[Any]], bytes]


class RouterView(Protocol):
    # --- identity and configuration (read) ---------------------------------------
    @property
    def config(self) -> Config: ...

    @property
    def index(self) -> int: ...

    @property
    def node_id(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def started_at(self) -> float: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def settings_sync(self) -> SettingsSync: ...

    @property
    def slowlog(self) -> SlowLog: ...

    @property
    def acl(self) -> Users:
        """The ACL users, their log and their file (server/acl.py)."""
        ...

    @property
    def latency(self) -> LatencyMonitor: ...

    # --- shards, slots and clients (read) -----------------------------------------
    @property
    def links(self) -> Sequence[ShardLink]: ...

    @property
    def slot_owner(self) -> Sequence[int]:
        """The shard owning each hash slot, indexed by slot."""
        ...

    @property
    def clients(self) -> dict[int, Client]: ...

    cluster_node: bool
    """A shard's client port: Redis Cluster's per-slot rules apply (server/node.py)."""
    home_shard: int
    """The shard keyless, not fanned-out commands run on."""
    scripts_retry: bool
    """A script sent to one shard that reaches another's key runs again across shards."""
    reaching: Any
    script_scopes: Any
    """The scripts that did: they go across shards at once (server/script_retry.py Reaching)."""
    shard_node_ids: list[str]
    router_node_id: str
    directory: NodeDirectory | None
    """On a node of several (node-id set): each shard's primary and the live nodes (server/node_links.py)."""

    @property
    def poller(self) -> ClientPoller: ...

    @property
    def pubsub(self) -> PubSub:
        """This process's subscribers and its pub/sub streams to its peers."""
        ...

    @property
    def tracking(self) -> Tracking:
        """This process's client-side caching table (server/tracking.py)."""
        ...

    @property
    def monitors(self) -> Monitors:
        """MONITOR clients here, and whether any exists anywhere (`active`)."""
        ...

    # --- counters for INFO (clients and CONFIG RESETSTAT write them) --------------
    stats_commands: int
    reply_stats: ReplyStats
    # Queued output that stops a normal client's dispatch (server/client_limits.py).
    output_backpressure_bytes: int
    output_hard_bytes: int  # a normal client's hard output limit, 0: none (server/client_limits.py)
    oom_flags: OomFlags  # each shard's out-of-memory state, for commands queued in MULTI (shards/oom_flags.py)
    tls: TlsPort | None  # the TLS side of this port (server/tls.py), None without a tls-port
    pause: ClientPause  # CLIENT PAUSE (server/pause.py)
    stats_connections: int
    stats_rejected_connections: int
    stats_net_input_bytes: int
    stats_net_output_bytes: int
    stats_protocol_errors: int
    # EVAL/FCALL in flight on the shards (a node never counts its own: a script holds its loop).
    scripts_in_flight: int
    # Client reads that completed a big argument: a shard link looks for large
    # requests in its batch only when this moved (server/links.py).
    large_requests: int

    # --- routing -------------------------------------------------------------------
    def fanout(self, client: Client, argv: list[bytes], merge: Merge) -> None: ...

    def fanout_internal(self, client: Client, argv: list[bytes], finish: Finish,
                        shards: list[int] | None = None) -> Pending: ...

    def ask_shard(self, client: Client, shard: int, argv: list[bytes], finish: Callable[[Any], bytes]) -> Pending: ...

    def split(self, client: Client, argv: list[bytes], cmd: Command, indexes: list[int]) -> None: ...

    def keys_shard(self, client: Client, argv: list[bytes], indexes: list[int]) -> int:
        """The shard of a multi-key request; ReplyError CROSSSLOT if there is none
        (and MOVED on a node, for another node's slot)."""
        ...

    def single_shard(self) -> int:
        """The shard a whole-keyspace command inside MULTI runs on; ReplyError if none."""
        ...

    def cursor_shard(self, cursor: bytes) -> int: ...

    def route_cursor(self, client: Client, argv: list[bytes]) -> None: ...

    def unwatch(self, client_id: int, shards: set[int]) -> None: ...

    def blocking_move(self, client: Client, argv: list[bytes]) -> Pending: ...

    def split_watch(self, client: Client, argv: list[bytes]) -> set[int]: ...

    def cross_shard(self, client: Client, commands: list[list[bytes]], multi: bool) -> Pending:
        """Run commands whose keys live on several shards, atomically (server/txn.py)."""
        ...

    def retry_script(self, client: Client, pending: Pending, run: list[bytes], keys: list[bytes]) -> None:
        """Run again across shards a script that reached another shard's key (server/script_retry.py)."""
        ...

    def shards_up(self) -> bool: ...

    def busy_error(self, any_shard: bool) -> bytes | None:
        """BUSY while a shard runs a script past busy-reply-threshold (router commands)."""
        ...

    def after(self, seconds: float, fn: Callable[[], object]) -> None: ...

    # --- a client's life -----------------------------------------------------------
    def client_ready(self, client: Client) -> None:
        """The client has complete replies to write this turn."""
        ...

    def forget(self, client: Client) -> None:
        """The client closed: drop it and whatever it holds on the shards."""
        ...
