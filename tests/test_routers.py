"""Several router processes share one port (SO_REUSEPORT) in front of the same shards."""

from __future__ import annotations


def test_two_routers_share_the_port_and_the_data(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    assert srv.child_pid("router", 0) != srv.child_pid("router", 1)
    clients = [srv.client() for _ in range(24)]
    ids = [c.client_id() for c in clients]
    assert len(set(ids)) == len(ids), "client ids must be unique across routers"
    # Client ids encode the router (id = seq * routers + index + 1): both routers took connections.
    assert {(i - 1) % 2 for i in ids} == {0, 1}
    for n, c in enumerate(clients):
        c.set(f"k{n}", n)
    for n, c in enumerate(reversed(clients)):
        assert c.mget([f"k{i}" for i in range(len(clients))]) == [str(i).encode() for i in range(len(clients))]
    for c in clients:
        c.close()
