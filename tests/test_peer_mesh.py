"""server/pubsub.py's peer mesh: a peer killed with its stream open does not take this
process with it."""

from __future__ import annotations

import os
import signal

from test_pubsub import _one_per_router


def test_a_peer_killed_with_its_stream_open_leaves_this_router_serving(server_factory):
    """Router 0's PUBLISH opens its stream to router 1; router 1 is killed (-9). Router 0
    sees that stream break (EOF or reset), counts router 1 as no receivers and goes on:
    the same connection's next PUBLISH and PING are answered by the same process.
    (Before, the stream's nursery raised an exception group its handler did not catch:
    router 0 crashed and was restarted, closing its clients' connections.)"""
    srv = server_factory(shards=1, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    ours = by_router[0]
    router0 = srv.child_pid("router", 0)
    try:
        assert ours.call("PUBLISH", "c", "m") == b":0\r\n"
        os.kill(srv.child_pid("router", 1), signal.SIGKILL)
        assert [ours.call("PUBLISH", "c", "m") for _ in range(3)] == [b":0\r\n"] * 3
        assert ours.call("PING") == b"+PONG\r\n"
        assert srv.child_pid("router", 0) == router0
    finally:
        for conn in [*by_router.values(), *spare]:
            conn.close()
