"""A cross-shard script's PUBLISH goes out once the transaction's decision is durable
(server/txn.py hands it to the decider with TXDECIDE), never when the run that made it
is followed by an abort (issue 16)."""

from __future__ import annotations

import os
import signal
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from test_supervisor import wait_until
from test_txn_restart import key_on_shard

SCRIPT = ("redis.log(redis.LOG_WARNING, 'script-ran-' .. ARGV[1]) redis.call('PUBLISH', 'xchan', ARGV[1]) "
          "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[1]) return 1")


def _messages(sub, wait_s: float) -> list:
    got = []
    while (message := sub.get_message(timeout=wait_s)) is not None:
        if message["type"] == "message":
            got.append(message["data"])
    return got


def test_a_cross_shard_scripts_publish_waits_for_the_decision(server_factory, tmp_path):
    """The script writes a key on each shard and publishes. Held after its executor's
    run (DURAKV_TXN_HOLD; its redis.log line is written then), the other participant is
    killed -9: the transaction aborts (it was never prepared there), nothing is written, and the subscriber hears
    nothing. A run that commits is heard once."""
    hold = tmp_path / "hold"
    srv = server_factory(env={"DURAKV_TXN_HOLD": str(hold)})
    a, b = key_on_shard(0, 2, "pa"), key_on_shard(1, 2, "pb")
    admin = srv.client()
    sub = srv.client().pubsub()
    sub.subscribe("xchan")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    hold.write_text("router-after-run")
    outcome: list[object] = []

    def run() -> None:
        try:
            # No retry: a disconnect here would be a defect the test must see, not hide.
            client = srv.client(retry=Retry(NoBackoff(), 0))
            outcome.append(client.eval(SCRIPT, 2, a, b, "aborted"))
        except (redis.ResponseError, redis.ConnectionError) as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: "script-ran-aborted" in srv.log(), "the executor's run (its redis.log line)")
    os.kill(srv.child_pid("shard", 1), signal.SIGKILL)  # shard 0 decides; shard 1 is never prepared
    hold.unlink()
    t.join()
    # Whether the router saw shard 1 gone before its prepare or wrote the prepare to the
    # dying shard, the decider never decided: the outcome is known, an abort.
    assert outcome and isinstance(outcome[0], redis.ResponseError), outcome
    assert "cross-shard transaction aborted" in str(outcome[0]), outcome
    assert _messages(sub, 1.0) == []
    wait_until(lambda: _answers(srv), "shard 1 back")
    assert admin.mget(a, b) == [None, None]
    assert admin.eval(SCRIPT, 2, a, b, "committed") == 1
    assert _messages(sub, 1.0) == [b"committed"]
    assert admin.mget(a, b) == [b"committed", b"committed"]
    sub.close()


def _answers(srv) -> bool:
    try:
        srv.client().get(key_on_shard(1, 2, "pb"))
        return True
    except redis.RedisError:
        return False
