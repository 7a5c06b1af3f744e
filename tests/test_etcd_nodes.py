"""Routing across nodes (issue 15): a router forwards a shard's commands to its current
primary on whichever node holds it, over an authenticated TCP link.

Two `durakv serve` trees on one host stand for two machines sharing their shard logs on
a real 3-member etcd cluster (tests/etcd_support.py): node a runs the primaries, node b
(node-role replica) only replicas."""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl
import time
import uuid

import redis
import trustme

from conftest import DurakvServer
from durakv.log.etcd_client import EtcdClient, unb64
from durakv.log.etcd_nodes import read_cluster
from durakv.shards.frames import encode_frame
from test_durability import AckedSets
from test_etcd_backend import etcd_config
from redis.cluster import RedisCluster
from test_etcd_failover import _reply, _retry, _shard_of, _until
from test_replicas import replica_port

TTL_S = 2
WRITERS = 8
SHARDS = 2


def _nodes(server_factory, tmp_path, etcd_cluster, replicas_on_b: int = 1, extra: str = ""):
    prefix = f"xnode-{uuid.uuid4().hex[:8]}"
    common = f"etcd-lease-ttl-s = {TTL_S}\nsnapshotter = false\n{extra}"
    node_a = server_factory(shards=SHARDS, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common), "--node-id", "a",
        "--advertise", "127.0.0.1:7000"))
    node_b = DurakvServer(tmp_path / "node-b", shards=SHARDS, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common + f"replicas = {replicas_on_b}\n"),
        "--node-id", "b", "--node-role", "replica", "--advertise", "127.0.0.1:7001"))
    node_b.start(wait=False)
    return prefix, node_a, node_b


def _key_on(client: redis.Redis, shard: int, stem: str) -> str:
    return next(f"{stem}{i}" for i in range(1000) if _shard_of(client, f"{stem}{i}", SHARDS) == shard)


def test_router_forwards_to_primaries_on_another_node_and_follows_a_failover(etcd_cluster, server_factory,
                                                                             tmp_path):
    """A client of node b's router reads and writes keys of both shards, whose primaries
    are on node a; kill -9 of node a under 8 writers through node b: node b's replicas
    take over and the same writers go on through node b, and every write node b
    acknowledged, before and after, is there."""
    _prefix, node_a, node_b = _nodes(server_factory, tmp_path, etcd_cluster)
    try:
        a, b = node_a.client(), node_b.client()
        for shard in range(SHARDS):
            key = _key_on(b, shard, "k")
            value = f"via-b-{shard}"
            assert _retry(lambda key=key, value=value: b.set(key, value), f"a write via node b to shard {shard}")
            assert a.get(key) == f"via-b-{shard}".encode()
            a.set(key, f"via-a-{shard}")
            assert b.get(key) == f"via-a-{shard}".encode()
        keys = [_key_on(b, shard, "m") for shard in range(SHARDS)]
        assert b.mset({keys[0]: "x", keys[1]: "y"})   # a cross-shard transaction through node b
        assert a.mget(keys) == [b"x", b"y"]
        assert "on node 'a'" in node_b.log()
        sets = AckedSets(node_b.port, WRITERS, socket_timeout_s=20)
        acked = sets.acked
        _until(lambda: len(acked) > 100, "writes through node b to node a's primaries")
        through_a = len(acked)
        node_a.kill9()
        killed_at = time.monotonic()
        _until(lambda: len(acked) > through_a + 200, "writes through node b after node a died")
        print(f"kill -9 of node a: {len(acked) - through_a} more writes acknowledged through node b within "
              f"{time.monotonic() - killed_at:.2f} s ({through_a} before)")
        sets.stop(join_timeout_s=30)
        assert not sets.missing(lambda chunk: _retry(lambda: b.mget(chunk), "node b's shards")), \
            "a write acknowledged through node b was lost"
        assert node_b.log().count("leader key is free; campaigning") >= SHARDS
    finally:
        node_b.discard()


def _link_address(etcd_cluster, prefix: str) -> tuple[str, int]:
    def entry():
        return read_cluster(EtcdClient(etcd_cluster.endpoints), prefix)[1].leaders.get(0)
    link = _until(entry, "shard 0's leader entry")["link"]
    host, _, port = link.rpartition(":")
    return host, int(port)


def _connect_or_none(host: str, port: int) -> socket.socket | None:
    try:
        return socket.create_connection((host, port))
    except ConnectionRefusedError:
        return None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _closed_without_reply(sock: socket.socket) -> bool:
    """Whether the peer closes the connection, having sent nothing but its challenge."""
    sock.settimeout(10)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return len(received) <= 8 + 32   # MAGIC + nonce, nothing after


def test_a_link_without_the_secret_is_refused(etcd_cluster, server_factory, tmp_path):
    """A shard's link port answers no frame of a peer that skips the handshake, or
    answers it without the link secret; the secret's holder gets replies."""
    prefix, node_a, node_b = _nodes(server_factory, tmp_path, etcd_cluster, replicas_on_b=1)
    try:
        node_a.client().set("k", "v")
        host, port = _link_address(etcd_cluster, prefix)
        request = encode_frame([(1, 1, 2, [b"SET", b"k", b"stolen"])])
        # The port listens once the shard has read the link secret, just after it serves.
        skipper = _until(lambda: _connect_or_none(host, port), "the link port to listen")
        skipper.sendall(request)
        assert _closed_without_reply(skipper)
        liar = socket.create_connection((host, port))
        hello = _recv_exactly(liar, 40)
        liar.sendall(b"n" * 32 + hmac.new(b"guess", b"router" + hello[8:] + b"n" * 32, hashlib.sha256).digest())
        liar.sendall(request)
        assert _closed_without_reply(liar)
        assert node_a.client().get("k") == b"v"
        _until(lambda: node_a.log().count("refused an internal link") >= 2, "the refusals in node a's log")
        secret = unb64(EtcdClient(etcd_cluster.endpoints).range(f"{prefix}/link-secret".encode())["kvs"][0]["value"])
        holder = socket.create_connection((host, port))
        hello = _recv_exactly(holder, 40)
        nonce = b"c" * 32
        holder.sendall(nonce + hmac.new(secret, b"router" + hello[8:] + nonce, hashlib.sha256).digest())
        assert _recv_exactly(holder, 32) == hmac.new(secret, b"shard" + hello[8:] + nonce, hashlib.sha256).digest()
        holder.sendall(encode_frame([(1, 1, 2, [b"GET", b"k"])]))
        holder.settimeout(10)
        assert b"v" in holder.recv(4096)
        assert host == "127.0.0.1"   # --advertise's host
    finally:
        node_b.discard()


def _slots_view(client: redis.Redis) -> list:
    """CLUSTER SLOTS as (first, last, [(port, id) of each node]), ordered."""
    return sorted((first, last, [(n[1], n[2]) for n in nodes])
                  for first, last, *nodes in client.execute_command("CLUSTER", "SLOTS"))


def test_cluster_answers_name_every_nodes_primaries_and_replicas(etcd_cluster, server_factory, tmp_path):
    """CLUSTER SLOTS/SHARDS/NODES on every router and shard port of both nodes name node
    a's primaries (its shard ports and ids) with node b's replicas; a RedisCluster client
    given only node b's router finds node a's primaries and reads and writes through them;
    once node a is killed, node b's answers name its own promoted shards."""
    _prefix, node_a, node_b = _nodes(server_factory, tmp_path, etcd_cluster)
    try:
        a = node_a.client()
        a_ids = [node_a.shard_client(shard).execute_command("CLUSTER", "MYID").decode() for shard in range(SHARDS)]
        b_replica_ids = [redis.Redis(port=replica_port(node_b, shard), socket_timeout=10)
                         for shard in range(SHARDS)]
        b_replica_ids = [_retry(lambda r=r: r.execute_command("CLUSTER", "MYID"), "node b's replica").decode()
                         for r in b_replica_ids]
        expected = sorted((first, last, [(node_a.shard_port(shard), a_ids[shard].encode()),
                                         (replica_port(node_b, shard), b_replica_ids[shard].encode())])
                          for shard, (first, last) in enumerate([(0, 8191), (8192, 16383)]))
        ports = [node_a.client(), node_b.client(), *(node_a.shard_client(s) for s in range(SHARDS)),
                 *(redis.Redis(port=replica_port(node_b, s), socket_timeout=10) for s in range(SHARDS))]
        for port in ports:
            _until(lambda port=port: _slots_view(port) == expected,
                   f"CLUSTER SLOTS naming both nodes: {_slots_view(port)} != {expected}")
            nodes_text = port.execute_command("CLUSTER", "NODES")
            nodes_text = nodes_text.decode() if isinstance(nodes_text, bytes) else str(nodes_text)
            for shard in range(SHARDS):
                assert f"{a_ids[shard]} 127.0.0.1:{node_a.shard_port(shard)}@" in nodes_text, nodes_text
                assert f"{b_replica_ids[shard]} 127.0.0.1:{replica_port(node_b, shard)}@" in nodes_text, nodes_text
            shards = port.execute_command("CLUSTER", "SHARDS")
            assert len(shards) == SHARDS and all(len(s[b"nodes"]) == 2 for s in shards), shards
        cluster = RedisCluster(host="127.0.0.1", port=node_b.port)
        for i in range(20):
            cluster.set(f"rc{i}", i)
        assert [a.get(f"rc{i}") for i in range(20)] == [str(i).encode() for i in range(20)]
        assert {n.port for n in cluster.get_primaries()} == {node_a.shard_port(s) for s in range(SHARDS)}
        moved = _reply(redis.Redis(port=replica_port(node_b, 0), socket_timeout=10), "SET", _key_on(a, 0, "x"), 1)
        assert f"127.0.0.1:{node_a.shard_port(0)}" in str(moved), moved   # a replica's MOVED: to node a
        node_a.kill9()
        b = node_b.client()
        for shard in range(SHARDS):
            _retry(lambda shard=shard: b.set(_key_on(b, shard, "after"), 1), f"shard {shard} on node b")
        _until(lambda: {nodes[0][0] for _first, _last, nodes in _slots_view(b)}
               == {node_b.shard_port(s) for s in range(SHARDS)}, f"node b's primaries in {_slots_view(b)}")
    finally:
        node_b.discard()


def test_links_between_nodes_run_over_tls_and_refuse_plaintext(etcd_cluster, server_factory, tmp_path):
    """With a certificate, its key and a CA, a router's links to another node's primaries
    run over TLS (mutual, verified against the CA): node b's router reads and writes both
    shards on node a, a 3 MB value too (large frames, decrypted bytes held between
    reads); a plaintext peer of the link port gets no challenge and no reply, and a
    peer whose certificate another CA signed fails the TLS handshake."""
    ca = trustme.CA()
    tmp_path.joinpath("certs").mkdir()
    ca_file = str(tmp_path / "certs" / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    node_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = str(tmp_path / "certs" / "node.pem"), str(tmp_path / "certs" / "node.key")
    node_cert.cert_chain_pems[0].write_to_path(cert_file)
    node_cert.private_key_pem.write_to_path(key_file)
    tls = f'tls-cert-file = "{cert_file}"\ntls-key-file = "{key_file}"\ntls-ca-cert-file = "{ca_file}"\n'
    prefix, node_a, node_b = _nodes(server_factory, tmp_path, etcd_cluster, extra=tls)
    try:
        a, b = node_a.client(), node_b.client()
        big = bytes(range(256)) * 12_000
        for shard in range(SHARDS):
            key = _key_on(b, shard, "t")
            assert _retry(lambda key=key, shard=shard: b.set(key, f"via-b-{shard}"),
                          f"a write via node b to shard {shard}")
            assert a.get(key) == f"via-b-{shard}".encode()
            a.set(key, f"via-a-{shard}")
            assert b.get(key) == f"via-a-{shard}".encode()
            b.set(f"{key}-big", big)
            assert b.get(f"{key}-big") == big and a.get(f"{key}-big") == big
        keys = [_key_on(b, shard, "m") for shard in range(SHARDS)]
        assert b.mset({keys[0]: "x", keys[1]: "y"}) and b.mget(keys) == [b"x", b"y"]
        assert "on node 'a'" in node_b.log()
        _until(lambda: "over TLS" in node_a.log(), "node a's link ports over TLS")
        host, port = _link_address(etcd_cluster, prefix)
        plain = socket.create_connection((host, port))
        plain.sendall(encode_frame([(1, 1, 2, [b"SET", keys[0], b"stolen"])]))
        plain.settimeout(10)
        received = b""
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        assert not received.startswith(b"DKVLINK1"), "a plaintext peer got the link challenge"
        stranger = trustme.CA().issue_cert("127.0.0.1")
        context = ssl.create_default_context(cafile=ca_file)
        stranger.configure_cert(context)
        with socket.create_connection((host, port)) as raw:
            try:   # TLS 1.3: the client's handshake ends before the server checks its certificate
                with context.wrap_socket(raw, server_hostname=host) as conn:
                    conn.settimeout(10)
                    assert not conn.recv(4096), "a peer with a stranger's certificate was answered"
            except (ssl.SSLError, ConnectionError):
                pass
        _until(lambda: "TLS handshake failed" in node_a.log(), "the stranger's refusal in node a's log")
        assert a.get(keys[0]) == b"x"
    finally:
        node_b.discard()
