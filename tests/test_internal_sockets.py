"""The internal shard sockets are closed to other users (issue 9, item 4):
filesystem sockets in the 0700 run dir (DIR/run/shard-NNN.sock), a peer-credential
check (SO_PEERCRED, same uid) before a frame is served, and data dirs longer than
a Unix socket path allows."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from durakv.log.layout import RUN_DIR_MODE, node_socket_path, run_dir, shard_socket_path
from durakv.shards.frames import encode_frame
from durakv.shards.unixsock import SUN_PATH_MAX_BYTES, bind_unix, connect_unix, peer_allowed, peer_credentials

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
NOBODY_UID = 65534
LONG_DIR_CHARS = 150
ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix Flags: a listening socket

# Run as nobody: connect to a shard socket, send one frame (GET), print what
# happened. Standard library only: nobody may not read the venv.
PROBE = r"""
import socket, sys
path, frame = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(path)
except OSError as e:
    print("connect refused:", type(e).__name__)
    sys.exit(0)
try:
    s.sendall(frame)
    data = s.recv(65536)
except OSError as e:
    print("closed:", type(e).__name__)
    sys.exit(0)
print("closed" if not data else "REPLY " + data.hex())
"""


@pytest.fixture
def open_parent():
    """A parent directory every user can traverse (pytest's tmp dirs are 0700,
    which would hide the run dir's own mode from the test)."""
    path = Path(tempfile.mkdtemp(prefix="durakv-sock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listening_unix_paths(pid: int) -> list[str]:
    """The names of the Unix sockets process `pid` listens on (/proc/net/unix)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    paths = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            listening = int(fields[3], 16) & ACCEPTCON
            if listening and fields[6] in inodes:
                paths.append(fields[7] if len(fields) > 7 else "")
    return paths


def nobody_python() -> str:
    """A Python interpreter that `nobody` may run (not one under root's home)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot connect as another user")
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        if subprocess.run([*NOBODY, python, "-c", "pass"], capture_output=True, cwd="/").returncode == 0:
            return python
    pytest.skip("no Python interpreter that the nobody user may execute")


def probe_as_nobody(path: str) -> str:
    frame = encode_frame([[1, 0, 2, [b"GET", b"secret"]]])
    out = subprocess.run([*NOBODY, nobody_python(), "-c", PROBE, path, frame.hex()],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_shard_sockets_live_in_the_private_run_dir(server_factory, open_parent):
    data_dir = open_parent / "data"
    srv = server_factory(data_dir=data_dir)
    srv.client().set("secret", "value")
    run = Path(run_dir(str(data_dir)))
    assert stat.S_IMODE(run.stat().st_mode) == RUN_DIR_MODE
    for shard in range(2):
        path = Path(shard_socket_path(str(data_dir), shard))
        assert path.parent == run
        assert stat.S_ISSOCK(path.stat().st_mode), path
    # The only Unix sockets each shard listens on are its files in the run dir (no
    # abstract socket, which any local user could reach): the routers' socket and
    # its client port's CONFIG SET control socket (server/settings_sync.py).
    for shard in range(2):
        assert sorted(listening_unix_paths(srv.child_pid("shard", shard))) == sorted(
            [shard_socket_path(str(data_dir), shard), node_socket_path(str(data_dir), shard)])
    # Another user cannot even reach the sockets: the run dir is 0700.
    for shard in range(2):
        assert probe_as_nobody(shard_socket_path(str(data_dir), shard)) == "connect refused: PermissionError"
        assert probe_as_nobody(node_socket_path(str(data_dir), shard)) == "connect refused: PermissionError"
    assert srv.client().get("secret") == b"value"


def test_shard_refuses_a_peer_of_another_uid(server_factory, open_parent):
    """Even with the run dir opened by mistake, a shard serves no frame to a
    connection from another uid: SO_PEERCRED is checked before reading."""
    data_dir = open_parent / "data"
    srv = server_factory(data_dir=data_dir)
    srv.client().set("secret", "value")
    run = Path(run_dir(str(data_dir)))
    run.chmod(0o755)
    paths = [shard_socket_path(str(data_dir), shard) for shard in range(2)]
    for path in paths:
        os.chmod(path, 0o777)
    results = [probe_as_nobody(path) for path in paths]
    # Connected (the directory no longer stops it), then closed unanswered.
    assert all(r.startswith("closed") for r in results), results
    log_text = srv.log()
    for shard in range(2):
        assert f"shard {shard}: refused a connection from pid " in log_text
    assert f"running as uid {NOBODY_UID} (only uid {os.geteuid()} may connect)" in log_text
    assert srv.client().get("secret") == b"value"  # the router's own links still serve


def test_peer_check_reads_the_connecting_process_credentials(caplog):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.geteuid(), os.getegid())
        assert peer_allowed(left, "unit")
        other_uid = os.geteuid() + 1
        with caplog.at_level(logging.WARNING, logger="durakv.unixsock"):
            assert not peer_allowed(left, "unit", expected_uid=other_uid)
    assert (f"unit: refused a connection from pid {os.getpid()} running as uid {os.geteuid()} "
            f"(only uid {other_uid} may connect)") in caplog.text


def test_peer_check_refuses_a_real_other_uid_process(open_parent):
    """A listener that anyone may reach: a process that changed its uid to
    nobody connects, and the check sees nobody's uid through SO_PEERCRED."""
    path = str(open_parent / "probe.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        bind_unix(listener, path)
        os.chmod(path, 0o777)
        listener.listen(1)
        listener.settimeout(30)
        code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "s.recv(1)")
        child = subprocess.Popen([*NOBODY, nobody_python(), "-c", code, path], cwd="/")
        try:
            conn, _ = listener.accept()
            with conn:
                pid, uid, _gid = peer_credentials(conn)
                assert uid == NOBODY_UID and pid == child.pid
                assert not peer_allowed(conn, "unit")
        finally:
            child.wait(30)


def test_stale_socket_file_is_replaced_and_other_files_are_not(tmp_path):
    path = str(tmp_path / "shard-000.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(first, path)
    first.close()  # a crashed shard leaves its socket file behind
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with second:
        bind_unix(second, path)
        second.listen(1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    regular = str(tmp_path / "shard-001.sock")
    Path(regular).write_text("not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
        with pytest.raises(OSError, match="not a socket"):
            bind_unix(third, regular)
    assert Path(regular).read_text() == "not a socket"


def test_long_socket_path_binds_and_connects(tmp_path):
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    path = str(deep / "shard-000.sock")
    assert len(path.encode()) > SUN_PATH_MAX_BYTES
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(stale, path)
    stale.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        bind_unix(listener, path)
        listener.listen(1)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            connect_unix(client, path)
            conn, _ = listener.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_server_with_a_data_dir_longer_than_a_socket_path(server_factory, tmp_path):
    data_dir = tmp_path / ("long-data-dir-" * 12)
    assert len(str(data_dir)) >= LONG_DIR_CHARS
    srv = server_factory(data_dir=data_dir)
    client = srv.client()
    for i in range(20):
        client.set(f"k{i}", i)
    assert client.mget([f"k{i}" for i in range(20)]) == [str(i).encode() for i in range(20)]
    for shard in range(2):
        assert stat.S_ISSOCK(os.stat(shard_socket_path(str(data_dir), shard)).st_mode)
    client.close()
