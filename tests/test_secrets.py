"""No secret on any process's command line or in its environment: the password comes
from a file, stdin or the config file, S3 credentials exported to `serve` reach the
snapshotter through the config pipe (server/secret_sources.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis
from proctools import free_port

from durakv.server.secret_sources import SECRET_ENV

WATCH_TIMEOUT_S = 30


def proc_bytes(pid: int) -> bytes:
    """cmdline and environ of pid (b"" once it is gone)."""
    out = b""
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                out += f.read() + b"\n"
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def titled(srv, title: bytes) -> int:
    """The child of srv's supervisor whose title starts with `title`."""
    pids = [pid for pid in children(srv.proc.pid) if proc_bytes(pid).startswith(title)]
    assert len(pids) == 1, (title, pids)
    return pids[0]


def watch_restart(srv, title: bytes) -> list[bytes]:
    """Kill the child titled `title` and read the cmdline and environ of
    its replacement from its first moment until it shows `title`: what a `ps` or a
    /proc reader sees while it starts."""
    supervisor = srv.proc.pid
    old_pid = titled(srv, title)
    before = children(supervisor) - {old_pid}
    os.kill(old_pid, signal.SIGKILL)
    seen: list[bytes] = []
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        new = children(supervisor) - before - {old_pid}
        for pid in new:
            snapshot = proc_bytes(pid)
            seen.append(snapshot)
            if snapshot.startswith(title):
                return seen
    raise AssertionError(f"no new process titled {title!r} within {WATCH_TIMEOUT_S} s")


def test_no_secret_in_any_cmdline_or_environ_even_while_a_child_starts(server_factory, s3, tmp_path):
    client_s3, bucket, url = s3
    password = "pw-" + os.urandom(8).hex()
    s3_secret = "s3-" + os.urandom(8).hex()
    cli_secret = "cli-" + os.urandom(8).hex()
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    config = tmp_path / "durakv.toml"
    config.write_text(f'snapshot-url = "{url}"\nlog-archive-interval-ms = 50\n')
    srv = server_factory(extra_args=("--config", str(config), "--requirepass-file", str(password_file)),
                         env={"AWS_SECRET_ACCESS_KEY": s3_secret, "REDISCLI_AUTH": cli_secret})
    secrets = [password.encode(), s3_secret.encode(), cli_secret.encode()]
    with srv.client(password=password) as c:
        deadline = time.monotonic() + WATCH_TIMEOUT_S
        while b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.set("k", "v")
        with redis.Redis(port=srv.port) as anonymous:
            try:
                anonymous.ping()
                raise AssertionError("the password from --requirepass-file is not asked for")
            except redis.AuthenticationError:
                pass
    # The snapshotter had the exported credentials (moto checks that some are given): the log arrives.
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while "Contents" not in client_s3.list_objects_v2(Bucket=bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Contents" in client_s3.list_objects_v2(Bucket=bucket), srv.log()
    seen = [proc_bytes(pid) for pid in srv.pids()]
    seen += watch_restart(srv, b"durakv router 0")
    seen += watch_restart(srv, b"durakv snapshotter")
    # Children are forked from the supervisor: until it sets its title a new child shows the
    # supervisor's own command line and environment, which `seen` holds (srv.pids() includes it).
    assert any(s.startswith(b"durakv serve ") for s in seen), "the supervisor's /proc entries were not read"
    for snapshot in seen:
        for secret in secrets:
            assert secret not in snapshot, snapshot
        for name in SECRET_ENV:
            assert b"\0" + name.encode() + b"=" not in b"\0" + snapshot, snapshot


def run_cli(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durakv.server.cli", *argv], input=stdin,
                          capture_output=True, timeout=WATCH_TIMEOUT_S)


def test_requirepass_on_the_command_line_is_refused_with_the_fix(tmp_path):
    out = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), "--requirepass", "x")
    lines = out.stderr.decode().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "--requirepass-file" in lines[0] and "ps" in lines[0]


def test_requirepass_file_from_stdin(server_factory, tmp_path):
    password = "stdin-" + os.urandom(4).hex()
    port = free_port()
    data_dir = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                             "--shards", "1", "--data-dir", str(data_dir), "--requirepass-file", "-"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.stdin.write(password.encode() + b"\n")
        proc.stdin.close()
        deadline = time.monotonic() + WATCH_TIMEOUT_S
        while True:
            try:
                with redis.Redis(port=port, password=password) as c:
                    assert c.ping()
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(WATCH_TIMEOUT_S)


def test_unreadable_password_file_is_one_line(tmp_path):
    out = run_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                  "--requirepass-file", str(tmp_path / "missing"))
    lines = out.stderr.decode().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "missing" in lines[0] and "Traceback" not in lines[0]


def test_world_readable_config_with_a_secret_is_warned_about(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text('requirepass = "sesame"\n')
    config.chmod(0o644)
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    warning = [line for line in srv.log().splitlines() if "warning: config file" in line]
    assert len(warning) == 1 and "requirepass" in warning[0] and "chmod o-r" in warning[0], srv.log()
    srv.stop()
    config.chmod(0o640)  # the systemd install's mode: readable by the service's group only
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    assert "warning: config file" not in srv.log()
