"""INFO's rdb_changes_since_last_save, reset by the newest published snapshot (issue 15).

Redis counts the changes since its last save. A durakv shard counts the effects it has
appended since its process started (shards/commit.py effects_appended) and keeps no count
per log seq, so nobody can say exactly how many of them a snapshot (named by its log seq)
covers; a node that does not build the shard learns of the snapshot only from the store
(snapshotter/published.py). So the count restarts when this router first sees a shard's
newer published snapshot, or a served SAVE/BGSAVE, in status.json: the changes since
then. Not exact: changes made between the snapshot's seq and that moment (up to a
snapshotter poll, or REFRESH_S for a shard another node builds) are left out. An exact
count needs a cumulative effect count carried in each snapshot's manifest and
kept by every shard and replica from it (not done)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Base:
    save: tuple[int, int]  # (the shard's published snapshot seq, status request_served_at_ms) when seen
    effects: int           # the shard's effects_appended then


class ChangesSinceSave:
    """Per shard: its effects_appended when this router saw its newest save."""

    def __init__(self) -> None:
        self._bases: dict[int, _Base] = {}

    def count(self, shard: int, effects: int, save: tuple[int, int]) -> int:
        base = self._bases.get(shard)
        if base is None:  # first look: every change since the shard started (as before any save)
            base = self._bases[shard] = _Base(save, 0)
        elif base.save != save:
            base.save, base.effects = save, effects
        if effects < base.effects:  # the shard process restarted: its count did too
            base.effects = 0
        return effects - base.effects
