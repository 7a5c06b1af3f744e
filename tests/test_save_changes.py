"""INFO rdb_changes_since_last_save restarts at a save (issue 15): before, it counted
every change since the shard processes started, whatever was saved since."""

from __future__ import annotations


def _changes(client) -> int:
    return client.info("persistence")["rdb_changes_since_last_save"]


def test_rdb_changes_since_last_save_restarts_at_save(server_factory):
    srv = server_factory(shards=2)
    client = srv.client()
    for k in range(5):
        client.set(f"key:{k}", "v")
    assert _changes(client) == 5
    assert client.save() is True
    assert _changes(client) == 0
    client.set("key:0", "w")
    client.delete("key:1", "nokey")
    assert _changes(client) == 2
