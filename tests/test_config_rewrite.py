"""CONFIG REWRITE into the --config TOML file (comments and order kept, the next
start applies what it wrote), CONFIG SET loglevel in every process of the tree, and
log-file (issue 13)."""

from __future__ import annotations

import os
import signal
import time

import redis
from refserver import pair, redis_ref  # noqa: F401  (fixtures)

WAIT_S = 20

CONFIG_TEXT = """\
# production settings
hz = 10   # expiry cycles per second

# logging
log-level = "info"
"""


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_rewrite_without_a_config_file_matches_redis(pair):
    pair.same("CONFIG", "REWRITE")
    pair.same("CONFIG", "REWRITE", "x")


def test_rewrite_keeps_comments_and_the_next_start_applies_it(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text(CONFIG_TEXT)
    os.chmod(config, 0o640)
    data = tmp_path / "data"
    srv = server_factory(shards=2, extra_args=("--config", str(config)), data_dir=data)
    r = srv.client()
    r.config_set("hz", 25)
    r.config_set("loglevel", "warning")
    r.config_set("maxmemory", "10mb")
    r.config_set("slowlog-log-slower-than", 500)
    r.config_set("appendonly", "no")
    r.config_set("notify-keyspace-events", "KEA")
    assert r.config_rewrite() == b"OK"
    text = config.read_text()
    assert text.startswith("# production settings\nhz = 25   # expiry cycles per second\n\n# logging\n"
                           'log-level = "warning"\n'), text
    assert "\n[settings]\n" in text
    for line in ("maxmemory = 10485760", "slowlog-log-slower-than = 500", "appendonly = false",
                 'notify-keyspace-events = "AKE"'):
        assert line in text.splitlines(), (line, text)
    assert oct(os.stat(config).st_mode & 0o777) == oct(0o640)
    srv.stop()

    again = server_factory(shards=2, extra_args=("--config", str(config)), data_dir=data)
    r = again.client()
    assert r.config_get("hz") == {"hz": "25"}
    assert r.config_get("loglevel") == {"loglevel": "warning"}
    assert r.config_get("maxmemory") == {"maxmemory": "10485760"}
    assert r.config_get("appendonly") == {"appendonly": "no"}
    assert r.config_get("notify-keyspace-events") == {"notify-keyspace-events": "AKE"}
    # The shards run with the file's [settings] too: a shard port's SLOWLOG threshold.
    assert again.shard_client(1).config_get("slowlog-log-slower-than") == {"slowlog-log-slower-than": "500"}
    r.config_set("slowlog-log-slower-than", 0)
    r.set("k", "v")
    assert any(entry["command"] == b"SET k v" for entry in r.slowlog_get(-1)), "the shard runs with 0 now"
    assert r.config_rewrite() == b"OK"
    assert "slowlog-log-slower-than = 0" in config.read_text().splitlines()


def test_bad_settings_table_is_one_line(tmp_path):
    from durakv.server import cli

    cases = {
        '[settings]\nmaxmemory-policy = "lru"\n': "[settings] CONFIG SET failed (possibly related to argument "
                                                   "'maxmemory-policy') - argument(s) must be one of the following:",
        "[settings]\nhz = 5\n": "[settings] hz: set it as the top-level key hz instead",
        "[settings]\nnope = 1\n": "Unknown option or number of arguments for CONFIG SET - 'nope'",
    }
    for n, (text, problem) in enumerate(cases.items()):
        path = tmp_path / f"c{n}.toml"
        path.write_text(text)
        args = ["serve", "--config", str(path), "--data-dir", str(tmp_path / "d"), "--port", "1"]
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert cli.main(args) == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and problem in lines[0], lines


def test_loglevel_reaches_every_process_and_log_file(server_factory, tmp_path):
    log = tmp_path / "durakv.log"
    config = tmp_path / "durakv.toml"
    config.write_text(f'log-file = "{log}"\n')
    srv = server_factory(shards=2, extra_args=("--config", str(config)))
    r = srv.client()
    assert r.config_get("logfile") == {"logfile": str(log)}
    try:
        r.config_set("logfile", "/tmp/x")
    except redis.ResponseError as e:
        assert "can't set immutable config" in str(e)
    pids = _long_lived_pids(srv)

    def level_changed(level: str) -> set[int]:
        text = log.read_text()
        return {pid for pid in pids if f"[{pid}] " in text and
                any(f"[{pid}] " in line and f"log level is now {level}" in line for line in text.splitlines())}

    r.config_set("loglevel", "warning")
    _wait(lambda: level_changed("warning") == pids, "every process to take loglevel warning")
    mark = len(log.read_text())
    os.kill(srv.child_pid("shard", 1), signal.SIGKILL)
    _wait(lambda: "restarting" in log.read_text()[mark:], "the supervisor to restart shard 1")
    _wait(lambda: _serves(srv), "shard 1 to serve again")
    after = log.read_text()[mark:]
    assert " WARNING " in after and " INFO " not in after, after
    print(f"while loglevel is warning: {len(after.splitlines())} lines, none INFO")

    pids = _long_lived_pids(srv)
    r.config_set("loglevel", "notice")
    _wait(lambda: level_changed("notice") == pids, "every process to take loglevel notice")
    mark = len(log.read_text())
    os.kill(srv.child_pid("shard", 1), signal.SIGKILL)
    _wait(lambda: "router: connected to shard 1" in log.read_text()[mark:], "an INFO line again")


def _long_lived_pids(srv) -> set[int]:
    """Supervisor, router, 2 shards, snapshotter: once no snapshot build child (forked by
    the snapshotter for one build, shards/lifeline.py) is in the group beside them."""
    _wait(lambda: len(srv.pids()) == 5, "the tree to be its 5 long-lived processes")
    return set(srv.pids())


def _serves(srv) -> bool:
    try:
        srv.shard_client(1).ping()
        return srv.client().execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0
    except redis.RedisError:
        return False


def test_rewrite_puts_top_level_keys_before_the_tables(tmp_path):
    import tomllib

    from durakv.server.config_rewrite import rewrite
    from durakv.server.settings import Settings
    from durakv.shards.config import load_config

    path = tmp_path / "durakv.toml"
    path.write_text("port = 7000  # keep me\n\n[settings]\n# a note\nappendonly = false\n")
    settings = Settings(load_config(str(path), {}))
    settings.apply(settings.validate([(b"hz", b"30"), (b"loglevel", b"debug"), (b"maxmemory-policy", b"allkeys-lru")]))
    rewrite(settings, str(path))
    text = path.read_text()
    assert text.startswith("port = 7000  # keep me\n") and "# a note\n" in text
    assert tomllib.loads(text) == {"port": 7000, "hz": 30, "log-level": "debug",
                                   "settings": {"appendonly": False, "maxmemory-policy": "allkeys-lru"}}
    assert load_config(str(path), {}).settings == {"appendonly": False, "maxmemory-policy": "allkeys-lru"}
