"""Importing this module registers every command a shard executes."""

from shards import t_keys, t_multi, t_string  # noqa: F401
