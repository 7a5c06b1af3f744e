"""Importing this module registers every command the router answers itself."""

from server import cluster_commands, conn_commands, multi_commands, server_commands  # noqa: F401
