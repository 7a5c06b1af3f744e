"""Fixtures that start real durakv processes on free ports and connect real
clients to them."""

from __future__ import annotations

import compileall
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

# scripts/proctools.py: the one free_port and process-group helper, shared with the scripts.
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
sys.path.append(str(SCRIPTS_DIR))
from proctools import free_port, kill_group  # noqa: E402

# Fixtures shared across test files: redis_ref/pair/pair3 (refserver.py) and the
# snapshot tests' moto S3 (snapshot_support.py). Test files import helpers from
# these modules, never fixtures.
pytest_plugins = ["refserver", "snapshot_support", "etcd_support"]

STARTUP_TIMEOUT_S = 30
CHILD_TITLE_WAIT_S = 10
# Set by .ci/run, which installs redis-server/redis-tools: then a test skipped for a
# missing redis tool (its skip reason names "redis-...") fails instead.
REQUIRE_REDIS_ENV = "DURAKV_REQUIRE_REDIS"


DURAKV_PACKAGES = ("log", "server", "shards", "snapshotter")


def pytest_configure(config: pytest.Config) -> None:
    """Compile durakv's modules and the scripts to bytecode once, before any test.

    Every tree a test starts imports durakv afresh in two processes (the supervisor
    and the snapshotter, which is executed, not forked), and many tests run the CLI
    or a script. Where PYTHONDONTWRITEBYTECODE is set (some CI images and
    sandboxes), an editable install has no .pyc and each of those processes compiled
    all of durakv's source: 0.8 s of a 1.4 s tree start. Python reads .pyc files
    under that setting; it only does not write them, so writing them here once is
    enough. An xdist worker leaves it to the controller, which configures first."""
    if hasattr(config, "workerinput"):
        return
    dirs = [Path(importlib.import_module(f"durakv.{name}").__file__).parent for name in DURAKV_PACKAGES]
    for directory in [*dirs, SCRIPTS_DIR]:
        # A tree it cannot write (an installed, read-only copy) only loses the speed:
        # compileall prints each file it could not compile, and the tests import as before.
        compileall.compile_dir(directory, quiet=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(REQUIRE_REDIS_ENV) != "1" or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "redis-" in reason:
        report.outcome = "failed"
        report.longrepr = (f"skipped ({reason}), but {REQUIRE_REDIS_ENV}=1 says the redis tools "
                           "are installed: the comparison tests may not skip")


class DurakvServer:
    """A `durakv serve` process tree in its own process group."""

    def __init__(self, data_dir: Path, shards: int = 2, extra_args: tuple[str, ...] = (),
                 env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.extra_args = extra_args
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    def start(self, wait: bool = True) -> "DurakvServer":
        """Start the tree; with wait, return once every shard serves."""
        self.port = free_port()
        argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(self.port),
                "--shards", str(self.shards), "--data-dir", str(self.data_dir), *self.extra_args]
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"durakv exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client = redis.Redis(port=self.port, socket_timeout=2)
                info = client.execute_command("CLUSTER", "INFO")
                client.close()
                if b"cluster_state:ok" in info:
                    return self.wait_children_started(deadline)
            except redis.AuthenticationError:
                # up, and asking for the password it was started with
                return self.wait_children_started(deadline)
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"durakv not ready after {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def wait_children_started(self, deadline: float) -> None:
        """Routers and shards serve before the snapshotter (executed afresh, not forked)
        has loaded its code: wait until every process of the tree shows its own title
        (`durakv snapshotter DIR`), as a test reading titles or pids expects."""
        while time.monotonic() < deadline:
            titles = []
            for pid in self.pids():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        titles.append(f.read())
                except FileNotFoundError:
                    pass  # a child that just exited
            serve = [t for t in titles if t.startswith(b"durakv serve ")]
            if len(serve) == 1 and all(t.startswith(b"durakv ") for t in titles):
                return
            time.sleep(0.02)
        raise RuntimeError(f"durakv's children did not all start in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=30, **kwargs)

    def shard_port(self, shard: int) -> int:
        """Shard `shard`'s client port (the default shard-port-base: free_port
        left the ports after self.port free for them)."""
        return self.port + 1 + shard

    def shard_client(self, shard: int, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.shard_port(shard), socket_timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """Every process in the server's process group (supervisor and children)."""
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def child_pid(self, role: str, index: int) -> int:
        """A child found by its process title (`durakv shard 1 DIR`), as `ps` shows it.
        Waits a little: a second router may still be starting when the first answers."""
        deadline = time.monotonic() + CHILD_TITLE_WAIT_S
        while True:
            out = subprocess.run(["pgrep", "-g", str(self.proc.pid), "-f", f"^durakv {role} {index} "],
                                 capture_output=True, text=True)
            pids = [int(p) for p in out.stdout.split()]
            if pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(pids) == 1, f"expected one {role} {index}, found {pids}"
        return pids[0]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()
        self._log.close()

    def kill9(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        kill_group(self.proc)

    def discard(self) -> None:
        """The end of a test that is done with the server: SIGKILL, not SIGTERM. A graceful
        stop (about a second of waiting per tree) is what test_supervisor.py and the tests
        that call stop() check; every other test only needs the processes gone."""
        if self.proc is None:
            return
        self.kill9()
        self._log.close()


@pytest.fixture
def server_factory(tmp_path):
    started: list[DurakvServer] = []

    def start(shards: int = 2, extra_args: tuple[str, ...] = (), data_dir: Path | None = None,
              env: dict | None = None) -> DurakvServer:
        srv = DurakvServer(data_dir or tmp_path / f"data{len(started)}", shards, extra_args, env)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.discard()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = DurakvServer(tmp_path_factory.mktemp("durakv") / "data", shards=2).start()
    yield srv
    srv.discard()


@pytest.fixture
def r(server):
    client = server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def r3(server):
    client = server.client(protocol=3)
    client.flushall()
    yield client
    client.close()
