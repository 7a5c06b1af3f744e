"""Logs and service (issue 13): journald priority prefixes when JOURNAL_STREAM is
stderr, parsed as journald does; no third-party INFO noise; the snapshotter reads the
servers' TOML config as its systemd unit runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from conftest import DurakvServer

from durakv.server.logsetup import journal_priority

# journald (SyslogLevelPrefix=yes, the default) takes a leading <N> as the line's
# priority and strips it; a line without one gets the unit's SyslogLevel (info).
JOURNAL_PREFIX = re.compile(r"^<([0-7])>(.*)$")
DEFAULT_PRIORITY = 6
WAIT_S = 20


def journal_entries(text: str) -> list[tuple[int, str]]:
    out = []
    for line in text.splitlines():
        m = JOURNAL_PREFIX.match(line)
        out.append((int(m.group(1)), m.group(2)) if m else (DEFAULT_PRIORITY, line))
    return out


def _journal_env(path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_priorities_as_syslog():
    import logging

    assert [journal_priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING,
                                                 logging.INFO, 15, logging.DEBUG)] == [2, 3, 4, 6, 7, 7]


def test_every_process_prefixes_priorities_under_journald(tmp_path):
    srv = DurakvServer(tmp_path / "data", shards=2)
    srv.log_path.touch()  # stderr's file exists first: JOURNAL_STREAM names its inode
    srv.env = _journal_env(srv.log_path)
    srv.start()
    try:
        os.kill(srv.child_pid("shard", 0), signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while "restarting" not in srv.log() or "snapshotter ready" not in srv.log():  # it starts on its own time
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.05)
    finally:
        srv.stop()
    entries = journal_entries(srv.log())
    unprefixed = [line for line in srv.log().splitlines() if not JOURNAL_PREFIX.match(line)]
    assert not unprefixed, unprefixed
    exits = [p for p, text in entries if "supervisor: shard 0" in text and "exited with" in text]
    assert exits == [3], entries  # logged at ERROR
    assert any(p == 4 and "lost shard 0" in text for p, text in entries), entries  # WARNING
    assert any(p == 6 and "router 0 ready" in text for p, text in entries), entries  # INFO
    assert any(p == 6 and "snapshotter ready" in text for p, text in entries), entries
    assert all(not re.match(r"\d{4}-\d\d-\d\d ", text) for _, text in entries), "journald stamps the time"


def test_operator_mistake_is_an_error_entry(tmp_path):
    config = tmp_path / "redis.conf"
    config.write_text("port 6379\n")
    err = tmp_path / "stderr"
    err.touch()
    with open(err, "ab") as stream:
        code = subprocess.run([sys.executable, "-m", "durakv.server.cli", "serve", "--config", str(config)],
                              stderr=stream, env=dict(os.environ, **_journal_env(err)), timeout=60).returncode
    assert code == 2
    assert journal_entries(err.read_text()) == [
        (3, f"durakv: bad configuration: config file {config} is not TOML: line 1 `port 6379` is redis.conf "
            "syntax; durakv's config is TOML (key = value): write port = 6379")]
    # Not journald's stream (another inode): a plain line, as before.
    out = subprocess.run([sys.executable, "-m", "durakv.server.cli", "serve", "--config", str(config)],
                         capture_output=True, text=True, env=dict(os.environ, **_journal_env(config)), timeout=60)
    assert out.stderr.startswith("durakv: bad configuration:")


NOISE = """
import logging
from durakv.server.logsetup import setup_logging
setup_logging({level!r})
logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
logging.getLogger("urllib3.connectionpool").info("Starting new HTTPS connection")
logging.getLogger("urllib3.connectionpool").warning("Retrying")
logging.getLogger("durakv.snapshotter").info("snapshot published")
"""


def test_library_info_noise_is_off_unless_debug():
    def run(level: str) -> str:
        return subprocess.run([sys.executable, "-c", NOISE.format(level=level)], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
                              timeout=60).stderr

    quiet = run("notice")
    assert "snapshot published" in quiet and "Retrying" in quiet
    assert "Found credentials" not in quiet and "Starting new HTTPS" not in quiet
    loud = run("debug")
    assert "Found credentials" in loud and "Starting new HTTPS" in loud


def test_snapshotter_reads_the_servers_toml(server_factory, tmp_path):
    store = tmp_path / "store"
    data = tmp_path / "data"
    config = tmp_path / "durakv.toml"
    config.write_text(f'data-dir = "{data}"\nsnapshot-url = "file://{store}"\nlog-level = "warning"\n'
                      "snapshotter = false\n")
    srv = server_factory(shards=1, extra_args=("--config", str(config)), data_dir=data)
    srv.client().set("k", "v")
    out = subprocess.run([sys.executable, "-m", "durakv.server.cli", "snapshotter", "--config", str(config),
                          "--once"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert " INFO " not in out.stderr, out.stderr  # log-level warning, from the file
    assert any(name.endswith(".rdb") for _, _, files in os.walk(store) for name in files)
