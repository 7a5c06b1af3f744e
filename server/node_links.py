"""Routing across nodes (issue 15): where each shard's primary is, for a router on a
node (node-id set) of a deployment whose logs are on etcd.

Every primary's leader entry (log/etcd_nodes.py) names its node and the TCP address
of its link port. `NodeDirectory` follows them with one watch (in a thread, as the
etcd client is synchronous) and tells each `ShardLink` (server/links.py) where to
connect: the local Unix socket while the shard leads on this node or nobody leads
(a replica here may be campaigning), else the other node's link port, over TCP,
authenticated with the deployment's link secret (shards/link_auth.py). When a
shard's leader entry changes, the link to the old place is dropped (its requests in
flight are LOST, as when a shard dies) and the link reconnects to the new one, so a
deposed primary is left at once; it could not acknowledge a write anyway (every
commit is a transaction fenced on its leader key) nor answer a read past its lease."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any

import trio

from durakv.shards.config import Config
from durakv.shards.link_auth import LinkRefused, open_link, tune_tcp_link
from durakv.shards.link_tls import LinkTls, LinkTlsError, link_context, links_use_tls
from durakv.shards.log_backend import etcd_client, link_secret

logger = logging.getLogger("durakv.router")

CONNECT_TIMEOUT_S = 2.0

Address = tuple[str, int]


class NodeDirectory:
    """Each shard's primary and every live node, as this process sees them in etcd
    (log/etcd_nodes.py): on a router, where each link goes; on routers and shard ports,
    what CLUSTER SLOTS/SHARDS/NODES and MOVED tell clients (server/cluster_view.py)."""

    def __init__(self, config: Config) -> None:
        from durakv.log.etcd_nodes import ClusterState

        self.config = config
        self.node_id = config.node_id
        self.state = ClusterState()
        self.secret: bytes | None = None
        self._changed = trio.Event()  # set (and replaced) at every change of the entries
        self._watch: Any = None
        self._entry: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._tls: ssl.SSLContext | None = None  # the links' client context, made at the first TLS link

    async def start(self, links: bool, entry: dict[str, Any] | None = None) -> None:
        """Start following the cluster's entries; links: read the link secret first (a
        router); entry: publish it as this node's (router 0)."""
        from durakv.log.etcd_nodes import NodeEntry, cluster_watch

        if links:
            self.secret = await trio.to_thread.run_sync(link_secret, self.config)
        self._token = trio.lowlevel.current_trio_token()
        if entry is not None:
            self._entry = NodeEntry(etcd_client(self.config), self.config.etcd_prefix, self.node_id, entry,
                                    self.config.etcd_lease_ttl_s)
            self._entry.start()
        self._watch = cluster_watch(etcd_client(self.config), self.config.etcd_prefix, self._from_thread)
        self._watch.start()

    def close(self) -> None:
        for thread in (self._watch, self._entry):
            if thread is not None:
                thread.close()

    def leave(self) -> None:
        """A clean stop: remove this node's entry now (a blocking etcd request; the watch
        thread, a daemon, is left alone: closing its stream could block on its read)."""
        if self._entry is not None:
            self._entry.close()

    def _from_thread(self, state: Any) -> None:
        assert self._token is not None, "entries arrived before start()"
        try:
            self._token.run_sync_soon(self._update, state)
        except trio.RunFinishedError:
            self.close()

    def _update(self, state: Any) -> None:
        self.state = state
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def leader_node(self, shard: int) -> str | None:
        """The node id whose process leads the shard (None: nobody, as far as etcd says)."""
        entry = self.state.leaders.get(shard)
        return str(entry.get("node", "")) if entry is not None else None

    def remote(self, shard: int) -> Address | None:
        """The other node's link port the shard's primary is on (None: connect locally)."""
        from durakv.log.etcd_nodes import entry_link

        entry = self.state.leaders.get(shard)
        if entry is None or entry.get("node") == self.node_id:
            return None
        return entry_link(entry)

    def holder(self, shard: int) -> str:
        entry = self.state.leaders.get(shard)
        return f"node {entry.get('node')!r} ({entry.get('holder')})" if entry else "nobody"

    async def wait_moved(self, shard: int, address: Address | None, cancel_scope: trio.CancelScope) -> None:
        """Cancel cancel_scope (the link's) once the shard's primary is no longer where
        the link went (address; None: on this machine)."""
        while self.remote(shard) == address:
            await self._changed.wait()
        logger.warning("router: shard %d's primary is now %s; reconnecting", shard, self.holder(shard))
        cancel_scope.cancel()

    async def connect(self, address: Address) -> Any:
        """A TCP link to another node's shard primary, authenticated (OSError or
        LinkRefused if not), over TLS when the node has its certificate and CA
        (shards/link_tls.py: a LinkTls, else the socket)."""
        if self.secret is None:
            raise LinkRefused("the link secret is not read yet")
        host, port = address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        link: Any = sock
        try:
            tune_tcp_link(sock)
            with trio.fail_after(CONNECT_TIMEOUT_S):
                error = sock.connect_ex((host, port))
                if error not in (0, errno.EINPROGRESS):
                    raise OSError(error, f"connect to {host}:{port} failed")
                await trio.lowlevel.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, f"connect to {host}:{port} failed")
            if links_use_tls(self.config):
                if self._tls is None:
                    self._tls = link_context(self.config, server_side=False)
                link = LinkTls(sock, self._tls, server_hostname=host)
                try:
                    await link.handshake()
                except LinkTlsError as e:
                    raise LinkRefused(str(e)) from None
            await open_link(link, self.secret)
        except (OSError, LinkRefused, trio.TooSlowError) as e:
            sock.close()
            if isinstance(e, trio.TooSlowError):
                raise OSError(f"connect to {host}:{port} timed out after {CONNECT_TIMEOUT_S:g} s") from None
            raise
        return link
