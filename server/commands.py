"""Importing this module registers every command the router answers itself."""

from durakv.server import (  # noqa: F401
    acl_commands, blocking_commands, cluster_commands, conn_commands, latency_commands, memory_commands, monitor,
    multi_commands, pubsub, server_commands, shutdown_commands, slowlog_commands, snapshot_commands, tracking,
)
