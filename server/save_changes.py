"""INFO's rdb_changes_since_last_save (issue 15): Redis' dirty counter since the newest save.

Exact when the shard's newest published snapshot carries its count: every shard keeps
Redis' dirty count cumulative over its history (shards/changes.py, `changes` in its
internal INFO), logged with each record, so a restarted shard, a replica and the
snapshotter reach the same number at every seq; the snapshot's manifest holds it at its
seq (status.json `last_changes`, also for a snapshot another node built:
snapshotter/published.py). The changes since that snapshot are then the shard's count now
minus the snapshot's, on every router and node alike.

A snapshot written before the count existed (`last_changes` -1) falls back to the old
approximation: the shard's effects since this router first saw that snapshot, or a
served SAVE/BGSAVE, in status.json."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Base:
    save: tuple[int, int]  # (the shard's published snapshot seq, status request_served_at_ms) when seen
    effects: int           # the shard's effects_appended then


class ChangesSinceSave:
    """Per shard: the changes since its newest published snapshot."""

    def __init__(self) -> None:
        self._bases: dict[int, _Base] = {}

    def count(self, shard: int, changes: int, snapshot_changes: int, effects: int, save: tuple[int, int]) -> int:
        """changes: the shard's cumulative count now; snapshot_changes: its newest published
        snapshot's (0: none yet; -1: one without a count, then the approximation from
        effects, the shard's effects_appended, and save, its snapshot seq and last served request)."""
        if snapshot_changes >= 0:
            return max(changes - snapshot_changes, 0)  # a shard not yet at the snapshot's seq: none since
        base = self._bases.get(shard)
        if base is None:  # first look: every change since the shard started (as before any save)
            base = self._bases[shard] = _Base(save, 0)
        elif base.save != save:
            base.save, base.effects = save, effects
        if effects < base.effects:  # the shard process restarted: its count did too
            base.effects = 0
        return effects - base.effects
