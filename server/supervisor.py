"""`durakv serve`: bind the client port, start the shard, router and snapshotter
processes, restart any that crash, stop them all on SIGTERM/SIGINT.

- The listening socket is bound here, once, before anything starts, and every
  router inherits it (pass_fds) and accepts from it: a second server on the
  same port fails at once with one line, and a restarted router finds the
  clients that connected meanwhile waiting in the backlog.
- Children get the config through an inherited pipe, never on argv (`ps` shows
  argv to every user, and the config holds requirepass), and an environment
  without secrets (server/secret_sources.py).
- A crash after a healthy run (the child had sent READY=1 on the notify socket)
  is restarted at once; only a crash loop (a child that dies before it is
  ready, or too many crashes in a short window) waits, with a doubling backoff.
- A child that exits with EXIT_PERMANENT or EXIT_USAGE (corrupt log, bad
  config: the child logs why) is not restarted: one line says so, the others
  keep serving, and a marker in the run dir tells the routers not to wait for
  it. If every shard has failed so, `serve` stops and exits non-zero.
- The supervisor sleeps in poll() on its children's pidfds, the notify socket
  and a signal wakeup pipe: a death is seen the moment it happens.

Children stay in the supervisor's process group and ask the kernel to SIGKILL
them if the supervisor dies (PR_SET_PDEATHSIG), so even a kill -9 of the
supervisor leaves no orphan holding a port or a log open.
"""

from __future__ import annotations

import collections
import gc
import importlib
import logging
import os
import select
import signal
import socket
import struct
import sys
import time

from durakv.log import layout
from durakv.log.lease import LeaseFile
from durakv.log.lock import lock_data_dir
from durakv.server.listener import ClientListeners
from durakv.server.acl import clear_runtime_users
from durakv.server.client_count import clear_slot
from durakv.server.logsetup import FOLLOW_INTERVAL_S, LogLevelFollower
from durakv.server.secret_sources import child_env, take_env_credentials
from durakv.server.runtime_changes import clear_runtime_changes, load_runtime_changes, settings_path
from durakv.server.topology import ensure_topology
from durakv.shards import failure, sdnotify
from durakv.shards.config import Config, config_pipe
from durakv.shards.exit_codes import EXIT_NOT_PROMOTED, EXIT_PERMANENT, EXIT_USAGE
from durakv.shards.lifeline import die_with_parent
from durakv.shards.malloc_stats import release_free_heap
from durakv.shards.replica_board import ReplicaBoard

logger = logging.getLogger("durakv.supervisor")

STOP_GRACE_S = 5.0
RESTART_BACKOFF_MIN_MS = 100
# More crashes than this within the window are a crash loop even if each run got ready.
CRASH_LOOP_CRASHES = 10
CRASH_LOOP_WINDOW_S = 60.0
NOT_RESTARTED = (EXIT_PERMANENT, EXIT_USAGE)
NOTIFY_MESSAGE_MAX_BYTES = 4096
UCRED = struct.Struct("iII")  # pid, uid, gid
# What the supervisor imports before it forks its children. Every page of it counts in
# the RSS of each process of the tree, so what only some configurations need (the etcd
# client, boto3) is imported where it is used (tests/test_process_memory.py).
PRELOADED_MODULES = ("durakv.shards.process", "durakv.snapshotter.shard_hooks", "durakv.server.node",
                     "durakv.server.router")


class Child:
    """One supervised process: how to start it, and its crash history.

    Every child is forked from the supervisor, which imported the shard and router
    code once at its own start: a (re)started child skips the interpreter's start
    and the imports (about 0.3 s of CPU for a shard, 1 s for a router, seconds on a
    busy machine), so `serve` is ready sooner and a restarted shard serves as soon
    as its log is replayed. A shard runs shard_main; a router (argv) runs the CLI
    as `python -m durakv.server.cli ROLE` would, its config read from a pipe
    (_spawn); the snapshotter, which needs little of those imports and is not in a
    hurry, execs that command line after the fork (`fresh`), so it idles small."""

    def __init__(self, role: str, index: int | None, config: Config, argv: list[str] | None = None,
                 listeners: ClientListeners | None = None, replica: tuple[int, ClientListeners] | None = None) -> None:
        self.role = role
        self.index = index
        self.name = role if index is None else f"{role} {index}"
        # A replica (shards/replica.py): its number and its own port; `listeners` is its
        # shard's client port, which it serves once promoted.
        self.replica = replica
        if replica is not None:
            self.name = f"shard {index} replica {replica[0]}"
        self.argv = argv  # None: forked (a shard)
        # Exec'd afresh after the fork rather than run on the supervisor's imports: the
        # snapshotter uses little of them (no trio, no engine until a build, whose forked
        # child imports it), and a forked child would keep all of their pages resident
        # (in its RSS, and in its PSS the pages its refcounts copy) while it idles.
        self.fresh = role == "snapshotter"
        self.config = config
        # The client port's sockets it inherits: plain and TLS (a router's are shared by every router).
        self.listeners = listeners
        self.pid = 0  # 0: not running
        self.pidfd = -1
        self.ready = False
        self.failed = False  # exited for a permanent reason: never restarted
        self.backoff_ms = RESTART_BACKOFF_MIN_MS
        self.restart_at = 0.0
        self.started_at = 0.0
        self.restarts = 0
        self.crashes: collections.deque[float] = collections.deque(maxlen=CRASH_LOOP_CRASHES)

    def start(self, env: dict[str, str], in_child) -> None:
        """in_child(): what a forked child must undo of the supervisor first."""
        if self.argv is None:
            self.pid = self._fork(env, in_child)
        else:
            self.pid = self._spawn(env, in_child)
        self.pidfd = os.pidfd_open(self.pid)
        self.started_at = time.monotonic()
        self.ready = False

    def _spawn(self, env: dict[str, str], in_child) -> int:
        """Fork, then run the CLI with argv (after `python -m durakv.server.cli`) in the
        child, as an exec of argv would (a `fresh` child does exec it), in the
        environment env."""
        from durakv.server.cli import main as cli_main

        assert self.argv is not None and self.argv[1:3] == ["-m", "durakv.server.cli"], self.argv
        config_fd = config_pipe(self.config)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except BaseException:
            os.close(config_fd)
            raise
        if pid:
            os.close(config_fd)
            return pid
        code = 1
        try:
            argv = self.argv[3:] + ["--config-fd", str(config_fd)]
            if self.listeners is not None:  # its own descriptors: in_child closes the supervisor's
                for flag, sock in (("--listen-fd", self.listeners.plain), ("--tls-listen-fd", self.listeners.tls)):
                    if sock is not None:
                        argv += [flag, str(os.dup(sock.fileno()))]
            in_child()
            if self.fresh:
                os.set_inheritable(config_fd, True)
                os.execve(sys.executable, self.argv[:3] + argv, env)
            os.environ.clear()
            os.environ.update(env)
            code = cli_main(argv)
        except BaseException:
            logger.exception("%s crashed", self.name)
        finally:
            logging.shutdown()
            os._exit(code)

    def _fork(self, env: dict[str, str], in_child) -> int:
        from durakv.server.cli import shard_main

        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            assert self.listeners is not None and self.index is not None, "a shard is forked with its client port"
            # Its own descriptors: in_child closes every listener object the supervisor holds.
            own_fds = [os.dup(sock.fileno()) if sock is not None else None for sock in self.listeners]
            replica_fds = [os.dup(sock.fileno()) if sock is not None else None
                           for sock in (self.replica[1] if self.replica is not None else ())]
            in_child()
            from durakv.server.listener import listener_from_fd

            plain_fd, tls_fd = own_fds
            shard_listeners = ClientListeners(None if plain_fd is None else listener_from_fd(plain_fd),
                                              None if tls_fd is None else listener_from_fd(tls_fd))
            os.environ["NOTIFY_SOCKET"] = env["NOTIFY_SOCKET"]
            die_with_parent(parent)
            replica = None
            if self.replica is not None:
                replica = (self.replica[0], ClientListeners(
                    *(None if fd is None else listener_from_fd(fd) for fd in replica_fds)))
            code = shard_main(self.config, self.index, shard_listeners, replica)
        except BaseException:
            logger.exception("%s crashed", self.name)
        finally:
            logging.shutdown()
            os._exit(code)

    def reap(self) -> int:
        """Collect the exited process; returns its exit status (negative: the
        signal that killed it)."""
        _, status = os.waitpid(self.pid, 0)
        os.close(self.pidfd)
        self.pid, self.pidfd = 0, -1
        return os.waitstatus_to_exitcode(status)

    def schedule_restart(self, now: float) -> tuple[float, str]:
        """After a crash: restart at once after a healthy run, else back off
        (doubling) as in a crash loop. Returns (delay_s, why)."""
        self.crashes.append(now)
        looping = len(self.crashes) == CRASH_LOOP_CRASHES and now - self.crashes[0] < CRASH_LOOP_WINDOW_S
        if self.ready and not looping:
            self.backoff_ms = RESTART_BACKOFF_MIN_MS
            delay_s, why = 0.0, "after a healthy run"
        else:
            delay_s = self.backoff_ms / 1000
            why = (f"{CRASH_LOOP_CRASHES} crashes in {now - self.crashes[0]:.0f} s" if looping
                   else "it died before it was ready")
            self.backoff_ms = min(self.backoff_ms * 2, self.config.shard_restart_backoff_max_ms)
        self.restart_at = now + delay_s
        return delay_s, why


class Supervisor:
    def __init__(self, config: Config, listener: ClientListeners, shard_listeners: list[ClientListeners],
                 replica_listeners: list[list[ClientListeners]] | None = None) -> None:
        """listener: the client port (plain and TLS), and shard_listeners each shard's client port,
        bound by the caller before anything else, so a port in use ends `serve`
        before it creates or locks anything. A restarted shard inherits its own."""
        assert len(shard_listeners) == config.shards, "one client port per shard"
        # Exported S3 credentials leave this environment for the config pipe (no child's environ).
        self.config = config = take_env_credentials(config)
        self.stopping = False
        self.children: list[Child] = []
        self.listener = listener
        self.shard_listeners = shard_listeners
        self.replica_listeners = replica_listeners or [[] for _ in range(config.shards)]
        self.failover = Failover(config) if config.replicas else None
        self.notify: socket.socket | None = None
        self.wake_fds: tuple[int, int] = (-1, -1)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _make_children(self) -> None:
        config = self.config
        entry = [sys.executable, "-m", "durakv.server.cli"]
        parent = ["--parent-pid", str(os.getpid())]
        # A replica node (node-role = "replica") runs no primaries: its replicas campaign.
        for i in range(config.shards if config.node_role == "primary" else 0):
            self.children.append(Child("shard", i, config, listeners=self.shard_listeners[i]))
        for i in range(config.shards):
            for number, replica_listener in enumerate(self.replica_listeners[i]):
                self.children.append(Child("replica", i, config, listeners=self.shard_listeners[i],
                                           replica=(number, replica_listener)))
        for i in range(config.routers):
            self.children.append(Child("router", i, config, entry + ["router", "--index", str(i)] + parent,
                                       self.listener))
        # Even without a snapshot URL (it then keeps snapshots under the data dir), so the
        # shards drop covered segments and BGSAVE/LASTSAVE work.
        if config.snapshotter:
            self.children.append(Child("snapshotter", None, config, entry + ["snapshotter"] + parent))

    def _in_forked_child(self) -> None:
        """A forked shard keeps nothing of the supervisor's: its signal handling,
        the client ports (it dup'ed its own first), the notify socket, the other
        children's pidfds."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.listener.close()
        for shard_listener in self.shard_listeners:
            shard_listener.close()
        for replica_listeners in self.replica_listeners:
            for replica_listener in replica_listeners:
                replica_listener.close()
        if self.failover is not None:
            self.failover.close()
        self.notify.close()
        for fd in self.wake_fds:
            os.close(fd)
        for child in self.children:
            if child.pidfd >= 0:
                os.close(child.pidfd)

    def run(self) -> int:
        """Raises LockHeld if another server holds the data dir."""
        config = self.config
        # One server per data dir: held until this process exits (LockHeld names the holder).
        self.data_dir_lock_fd = lock_data_dir(config.data_dir, f"durakv serve port {config.port}")
        ensure_topology(config.data_dir, config.shards)
        layout.ensure_run_dir(config.data_dir)
        clear_runtime_changes(config.data_dir)  # CONFIG SET lasts until the server restarts, as in Redis
        clear_runtime_users(config.data_dir, config.aclfile)  # with an aclfile, users last until ACL SAVE
        for i in range(config.shards):
            failure.clear(config.data_dir, i)
        # Imported once here, so that every forked shard and router starts with them
        # loaded, and frozen, so that no child's collector writes to (and copies) their pages.
        for module in PRELOADED_MODULES:
            importlib.import_module(module)
        gc.freeze()
        release_free_heap()  # what the imports freed: else resident in every child too
        self._make_children()
        self.notify = notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        # Abstract, so no path to clean up; a datagram from anyone but our own
        # children is ignored (the kernel vouches for the sender's pid).
        notify.bind(f"\0{sdnotify.SUPERVISOR_SOCKET_PREFIX[1:]}{os.getpid()}-{os.urandom(8).hex()}")
        env = dict(child_env(os.environ), NOTIFY_SOCKET="@" + notify.getsockname()[1:].decode())
        self.wake_fds = wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        logger.info("supervisor ready: pid %d, %d shards, %d routers, listening on %s port %d tls-port %d, "
                    "data dir %s", os.getpid(), config.shards, config.routers, config.bind, config.port,
                    config.tls_port, config.data_dir)
        try:
            for child in self.children:
                child.start(env, self._in_forked_child)
            code = self._loop(env, wake_r)
            self.stop()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            notify.close()
            self.listener.close()
            for shard_listener in self.shard_listeners:
                shard_listener.close()
            for replica_listeners in self.replica_listeners:
                for replica_listener in replica_listeners:
                    replica_listener.close()
            if self.failover is not None:
                self.failover.close()
        return code

    def _loop(self, env: dict[str, str], wake_r: int) -> int:
        all_ready_told = False
        data_dir = self.config.data_dir
        log_level = LogLevelFollower(settings_path(data_dir), self.config.log_level,
                                     lambda: load_runtime_changes(data_dir))
        while not self.stopping:
            poller = select.poll()
            poller.register(wake_r, select.POLLIN)
            poller.register(self.notify, select.POLLIN)
            by_fd = {}
            for child in self.children:
                if child.pid:
                    poller.register(child.pidfd, select.POLLIN)
                    by_fd[child.pidfd] = child
            waiting = [c.restart_at for c in self.children if not c.pid and not c.failed]
            # At least once a second: CONFIG SET loglevel reaches this process through DIR/run/settings.
            timeout_ms = FOLLOW_INTERVAL_S * 1000 if not waiting else \
                min(max(0, int((min(waiting) - time.monotonic()) * 1000) + 1), FOLLOW_INTERVAL_S * 1000)
            if self.failover is not None:  # it watches the primaries' leases
                timeout_ms = min(timeout_ms, self.failover.watch_interval_ms)
            events = poller.poll(timeout_ms)
            log_level.check()
            now = time.monotonic()
            for fd, _ in events:
                if fd == wake_r:
                    _drain(wake_r)
                elif fd == self.notify.fileno():
                    self._read_notifications()
                elif fd in by_fd:
                    self._on_exit(by_fd[fd], now)
            if self.failover is not None and not self.stopping:
                self.failover.watch_leases(self.children, now)
            if self._every_shard_failed():
                logger.critical("supervisor: every shard failed permanently (their reasons are logged above); "
                             "not serving. Fix them and start again")
                return EXIT_PERMANENT
            if not all_ready_told and all(c.ready for c in self.children):
                all_ready_told = True
                sdnotify.notify(b"READY=1")
            if self.stopping:
                break
            for child in self.children:
                if not child.pid and not child.failed and now >= child.restart_at:
                    child.restarts += 1
                    logger.warning("supervisor: restarting %s (restart #%d)", child.name, child.restarts)
                    child.start(env, self._in_forked_child)
        return 0

    def _read_notifications(self) -> None:
        by_pid = {c.pid: c for c in self.children if c.pid}
        while True:
            try:
                data, ancdata, _flags, _addr = self.notify.recvmsg(NOTIFY_MESSAGE_MAX_BYTES,
                                                                   socket.CMSG_SPACE(UCRED.size))
            except BlockingIOError:
                return
            pid = next((UCRED.unpack(d[:UCRED.size])[0] for level, kind, d in ancdata
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            child = by_pid.get(pid)
            if child is None:
                logger.warning("supervisor: ignored a notification from pid %s, not a child", pid)
                continue
            lines = data.split(b"\n")
            if b"STOPPING=1" in lines and not self.stopping:
                # SHUTDOWN on a router or shard port: stop the tree as on SIGTERM.
                logger.warning("supervisor: %s (pid %d) asked to stop the server (SHUTDOWN); stopping",
                               child.name, pid)
                self.stopping = True
            if b"READY=1" in lines and not child.ready:
                child.ready = True
                logger.info("supervisor: %s (pid %d) ready %.0f ms after its start",
                         child.name, pid, (time.monotonic() - child.started_at) * 1000)

    def _on_exit(self, child: Child, now: float) -> None:
        pid = child.pid
        code = child.reap()
        if child.role in ("router", "shard") and child.index is not None:
            clear_slot(self.config.data_dir, child.role, child.index)  # its clients died with it
        if self.stopping:
            return
        if code in NOT_RESTARTED:
            child.failed = True
            logger.error("supervisor: %s (pid %d) exited with status %d: it cannot run (its reason is logged "
                      "above); not restarting it", child.name, pid, code)
            if child.role == "shard" and not failure.read(self.config.data_dir, child.index):
                failure.record(self.config.data_dir, child.index, f"exited with status {code}")
            self._close_port_of_failed(child)
            return
        if self.failover is not None and child.role == "shard" and code == EXIT_NOT_PROMOTED \
                and self.failover.undo(child, now):
            return
        if self.failover is not None and child.role == "shard" and self.failover.promote(self.children, child, now):
            logger.error("supervisor: %s (pid %d) exited with %s; a replica took over", child.name, pid, code)
            return
        delay_s, why = child.schedule_restart(now)
        logger.error("supervisor: %s (pid %d) exited with %s; restarting it in %d ms (%s)",
                  child.name, pid, code, delay_s * 1000, why)

    def _close_port_of_failed(self, child: Child) -> None:
        """A child that will not run again leaves no listening port behind that nobody
        accepts on (clients would hang in its backlog): a failed replica's own port, and a
        failed primary's shard port unless a replica could still take it over."""
        if child.role == "replica" and child.replica is not None:
            child.replica[1].close()
        elif child.role == "shard" and child.listeners is not None and self.failover is None:
            child.listeners.close()

    def _every_shard_failed(self) -> bool:
        shards = [c for c in self.children if c.role == "shard"]
        return bool(shards) and all(c.failed for c in shards)

    def stop(self) -> None:
        sdnotify.notify(b"STOPPING=1")  # to systemd, when it runs `serve`
        running = [c for c in self.children if c.pid]
        logger.info("supervisor: stopping %d processes", len(running))
        # Routers first so no new work arrives, then shards.
        for child in sorted(running, key=lambda c: c.role != "router"):
            os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while running:
            poller = select.poll()
            for child in running:
                poller.register(child.pidfd, select.POLLIN)
            exited = {fd for fd, _ in poller.poll(max(deadline - time.monotonic(), 0) * 1000)}
            if not exited:
                break
            for child in [c for c in running if c.pidfd in exited]:
                running.remove(child)
                child.reap()
        for child in running:
            logger.error("supervisor: %s did not stop in %.0f s; killing it", child.name, STOP_GRACE_S)
            os.kill(child.pid, signal.SIGKILL)
            child.reap()
        logger.info("supervisor: stopped")


class Failover:
    """Promotes a replica when its shard's primary dies (at once: its pidfd says so) or
    stops renewing its log lease (a paused primary: the promoted replica fences it,
    log/FORMAT.md). The promoted process takes the primary's place among the children;
    the replica's place gets the old primary's process (a dead one is restarted as a
    replica at once; a paused one is SIGKILLed once the promoted replica holds the
    lease, since it might never resume to learn it is deposed and meanwhile keeps its
    memory, sockets and log lock, and is then restarted as a replica)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.watch_interval_ms = max(config.lease_duration_ms // 8, 5)
        self.margin_ns = config.lease_duration_ms * 1_000_000 // 4
        self._leases: dict[int, LeaseFile] = {}
        self._boards: dict[int, ReplicaBoard] = {}
        # shard -> the replica place now holding a live primary that was deemed stalled,
        # until the promoted replica serves (or gives up: undo).
        self._swapped: dict[int, Child] = {}

    def _board(self, shard: int) -> ReplicaBoard:
        board = self._boards.get(shard)
        if board is None:
            board = self._boards[shard] = ReplicaBoard(self.config.data_dir, shard)
        return board

    def _candidate(self, children: list[Child], shard: int) -> Child | None:
        """The ready replica of `shard` that applied the most of its log."""
        ready = {c.replica[0]: c for c in children
                 if c.role == "replica" and c.index == shard and c.pid and c.ready and c.replica is not None}
        slots = {slot.number: slot.applied_seq for slot in self._board(shard).slots(self.config.replicas)
                 if slot.pid == (ready[slot.number].pid if slot.number in ready else -1)}
        best = max(slots, key=lambda n: slots[n], default=None)
        return ready[best] if best is not None else None

    def promote(self, children: list[Child], primary: Child, now: float) -> bool:
        """Hand `primary`'s place to its best replica; False if none is ready."""
        replica = self._candidate(children, primary.index or 0)
        if replica is None:
            return False
        logger.warning("supervisor: promoting %s (pid %d) to primary of shard %d", replica.name, replica.pid,
                       primary.index)
        os.kill(replica.pid, signal.SIGUSR1)
        _swap(primary, replica)
        if not replica.pid:
            replica.restart_at = now   # the dead primary's place: a replacement replica, now
        elif primary.index is not None:
            self._swapped[primary.index] = replica
        return True

    def undo(self, promoted: Child, now: float) -> bool:
        """The replica told to take over from a stalled primary found it renewing its
        lease again and gave up: the primary keeps its place, the replica's is restarted."""
        holder = self._swapped.pop(promoted.index, None) if promoted.index is not None else None
        if holder is None or not holder.pid:
            return False
        logger.warning("supervisor: shard %d's primary (pid %d) renewed its lease: it stays primary",
                       promoted.index, holder.pid)
        _swap(promoted, holder)
        holder.restart_at = now
        return True

    def watch_leases(self, children: list[Child], now: float) -> None:
        """A live primary whose lease ran out (paused, stalled): promote a replica. (On
        etcd the primary mirrors its etcd lease in the LEASE file, shards/log_backend.py.)"""
        now_ns = time.monotonic_ns()
        for child in children:
            if child.role != "shard" or not child.pid or not child.ready or child.index is None:
                continue
            lease = self._leases.get(child.index)
            if lease is None:
                lease = self._leases[child.index] = LeaseFile(layout.shard_log_dir(self.config.data_dir,
                                                                                   child.index))
            if child.index in self._swapped and lease.holder_pid != self._swapped[child.index].pid:
                # The lease moved on (the promoted replica fenced the log): the stalled
                # primary can acknowledge nothing more, so nothing is lost by ending it.
                _end_deposed(self._swapped.pop(child.index), child.index)
            # Past the lease and a margin: a slow renewal is not yet a stalled primary.
            if lease.holder_pid == child.pid and 0 < lease.valid_until_ns + self.margin_ns < now_ns:
                logger.error("supervisor: %s (pid %d) stopped renewing its log lease", child.name, child.pid)
                self.promote(children, child, now)

    def close(self) -> None:
        for lease in self._leases.values():
            lease.close()
        for board in self._boards.values():
            board.close()


def _end_deposed(deposed: Child, shard: int) -> None:
    """SIGKILL a deposed primary (paused, stalled) through its pidfd, so no reused pid is
    hit; its exit then restarts its place as a replica."""
    if not deposed.pid:
        return
    logger.warning("supervisor: ending shard %d's deposed primary (pid %d): its lease passed to the promoted "
                   "replica", shard, deposed.pid)
    try:
        signal.pidfd_send_signal(deposed.pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass   # it ended by itself meanwhile (it resumed and found its lease gone)


def _swap(a: Child, b: Child) -> None:
    """Exchange the processes two children's places hold."""
    for attr in ("pid", "pidfd", "ready", "started_at"):
        mine, theirs = getattr(a, attr), getattr(b, attr)
        setattr(a, attr, theirs)
        setattr(b, attr, mine)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
