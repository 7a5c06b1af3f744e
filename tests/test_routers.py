"""Several router processes accept from the one listening socket the supervisor
bound, in front of the same shards."""

from __future__ import annotations


def test_two_routers_share_the_port_and_the_data(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    assert srv.child_pid("router", 0) != srv.child_pid("router", 1)
    # Whichever router wakes first accepts a connection; connect until both have
    # taken some (bounded).
    clients = []
    for _ in range(200):
        clients.append(srv.client())
        clients[-1].ping()
        routers = {(c.client_id() - 1) % 2 for c in clients}  # id = seq * routers + index + 1
        if routers == {0, 1} and len(clients) >= 8:
            break
    assert routers == {0, 1}, "both routers must take connections"
    ids = [c.client_id() for c in clients]
    assert len(set(ids)) == len(ids), "client ids must be unique across routers"
    for n, c in enumerate(clients):
        c.set(f"k{n}", n)
    for n, c in enumerate(reversed(clients)):
        assert c.mget([f"k{i}" for i in range(len(clients))]) == [str(i).encode() for i in range(len(clients))]
    for c in clients:
        c.close()
