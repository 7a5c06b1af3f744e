"""A cross-shard transaction that restarts (a key it found while running is locked
by another transaction: it releases everything and locks again in ascending order)
keeps Redis' WATCH semantics: every attempt checks the WATCHes, so EXEC answers nil
when a watched key changed in between (server/txn.py, shards/txn.py)."""

from __future__ import annotations

import threading

from test_supervisor import wait_until


def key_on_shard(shard: int, shards: int, prefix: str) -> str:
    """The first name prefix+N owned by `shard` of a `shards`-shard tree."""
    from durakv.shards.slots import key_slot, slot_owner_table
    owner = slot_owner_table(shards)
    n = 0
    while owner[key_slot(f"{prefix}{n}".encode())] != shard:
        n += 1
    return f"{prefix}{n}"


def test_watch_is_checked_again_when_a_transaction_restarts(server_factory, tmp_path):
    """A: WATCH k (shard 2); MULTI; SORT ids (shard 0) BY w_* (its weight key on shard 1,
    undeclared); EXEC, held before its run (DURAKV_TXN_HOLD) with ids and k locked. B:
    MSET weight k: locks the weight key and waits for k. A's run finds the weight key
    locked: A releases and restarts; B writes k; A's second attempt must see k changed."""
    hold = tmp_path / "hold"
    srv = server_factory(shards=3, env={"DURAKV_TXN_HOLD": str(hold)})
    ids = key_on_shard(0, 3, "ids")
    weight = key_on_shard(1, 3, "w_")
    element = weight.removeprefix("w_")
    watched = key_on_shard(2, 3, "k")
    r = srv.client()
    r.rpush(ids, element)
    r.mset({weight: "1", watched: "before"})
    hold.write_text("router-before-run")
    a = srv.client(single_connection_client=True)
    a.execute_command("WATCH", watched)
    a.execute_command("MULTI")
    a.execute_command("SORT", ids, "BY", "w_*")
    outcome: list[object] = []
    exec_thread = threading.Thread(target=lambda: outcome.append(a.execute_command("EXEC")))
    exec_thread.start()

    def persistence(field: str) -> int:
        return r.info("persistence")[field]

    wait_until(lambda: persistence("xshard_locked_keys") == 2, "A holding ids and the watched key")
    waits_before = persistence("xshard_lock_waits")
    writer = threading.Thread(target=lambda: srv.client().mset({weight: "2", watched: "after"}))
    writer.start()
    wait_until(lambda: persistence("xshard_lock_waits") > waits_before and persistence("xshard_locked_keys") == 3,
               "B holding the weight key and waiting for the watched one")
    hold.unlink()
    exec_thread.join()
    writer.join()
    assert outcome == [None]
    assert r.mget(weight, watched) == [b"2", b"after"]
    # The WATCH went with the EXEC: a new transaction runs.
    a.execute_command("MULTI")
    a.execute_command("SORT", ids, "BY", "w_*")
    assert a.execute_command("EXEC") == [[element.encode()]]
    info = r.info("persistence")
    assert info["xshard_locked_keys"] == 0 and info["xshard_waiting_requests"] == 0


def test_unchanged_watches_let_a_restarted_transaction_commit(server_factory, tmp_path):
    """The same restart, A also writing `other` (shard 2) and B waiting for it rather
    than for the watched key, which stays untouched: A's second attempt commits and
    sees B's weight."""
    hold = tmp_path / "hold"
    srv = server_factory(shards=3, env={"DURAKV_TXN_HOLD": str(hold)})
    ids = key_on_shard(0, 3, "ids")
    weight = key_on_shard(1, 3, "w_")
    other = key_on_shard(2, 3, "o")
    watched = key_on_shard(2, 3, "k")
    r = srv.client()
    r.rpush(ids, weight.removeprefix("w_"))
    r.mset({weight: "1", watched: "before", other: "x"})
    hold.write_text("router-before-run")
    a = srv.client(single_connection_client=True)
    a.execute_command("WATCH", watched)
    a.execute_command("MULTI")
    a.execute_command("SORT", ids, "BY", "w_*", "GET", "w_*")
    a.execute_command("SET", other, "mine")
    outcome: list[object] = []
    exec_thread = threading.Thread(target=lambda: outcome.append(a.execute_command("EXEC")))
    exec_thread.start()
    wait_until(lambda: r.info("persistence")["xshard_locked_keys"] == 3, "A holding ids, other and the watched key")
    waits_before = r.info("persistence")["xshard_lock_waits"]
    writer = threading.Thread(target=lambda: srv.client().mset({weight: "2", other: "y"}))
    writer.start()
    wait_until(lambda: r.info("persistence")["xshard_lock_waits"] > waits_before
               and r.info("persistence")["xshard_locked_keys"] == 4, "B holding the weight key, waiting for other")
    hold.unlink()
    exec_thread.join()
    writer.join()
    assert outcome == [[[b"2"], b"OK"]]
    assert r.mget(weight, watched, other) == [b"2", b"before", b"mine"]
