"""Logging for every durakv process: the level (`log-level` in the config, CONFIG SET
loglevel at run time), the destination (`log-file`; empty: stderr) and, when stderr
is journald's stream, a `<N>` syslog priority prefix on every line so journald files
each line at its priority (sd-daemon(3): systemd sets JOURNAL_STREAM to the
`device:inode` of the stream it connected to stderr).

Redis' level names map onto Python's: debug -> DEBUG, verbose -> 15 (between DEBUG
and INFO; durakv logs nothing at it), notice -> INFO, warning -> WARNING. The
config also takes Python's names (info, error, critical). Third-party libraries
(botocore, urllib3, s3transfer, boto3) log at WARNING and above unless the level is
debug: their INFO lines ("Found credentials ...") are noise to an operator.

A level set by CONFIG SET reaches routers and shard processes through the settings
sync (server/settings_sync.py, Front.settings_applied); the supervisor and the
snapshotter follow DIR/run/settings (LogLevelFollower), once a second.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

VERBOSE = 15
LEVELS = {"debug": logging.DEBUG, "verbose": VERBOSE, "notice": logging.INFO, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}
# CONFIG GET loglevel's value for each config name (Redis has four levels).
REDIS_NAMES = {"debug": "debug", "verbose": "verbose", "notice": "notice", "info": "notice",
               "warning": "warning", "error": "warning", "critical": "warning"}
NOISY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")
# syslog priorities (sd-daemon.h SD_ERR...) by Python level, highest first.
JOURNAL_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
JOURNAL_DEBUG_PRIORITY = 7
PLAIN_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
# journald stamps time and pid itself.
JOURNAL_FORMAT = "%(name)s %(levelname)s %(message)s"
FOLLOW_INTERVAL_S = 1.0

logging.addLevelName(VERBOSE, "VERBOSE")


def journal_priority(levelno: int) -> int:
    for threshold, priority in JOURNAL_PRIORITIES:
        if levelno >= threshold:
            return priority
    return JOURNAL_DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """`<priority>` before each line; a multi-line record (a traceback) gets the
    prefix on every line, since journald reads its stream line by line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """JOURNAL_STREAM names stderr's device and inode: systemd connected it to journald."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def print_error(line: str) -> None:
    """An operator's mistake as one line on stderr, filed at error priority by
    journald when stderr is its stream (it is printed before logging is set up)."""
    print(f"<3>{line}" if stderr_is_journal() else line, file=sys.stderr)


def setup_logging(level_name: str, log_file: str = "") -> None:
    """Configure the root logger of this process (replacing what was there)."""
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if stderr_is_journal()
                             else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(handlers=[handler], force=True)
    set_level(level_name)


def set_level(level_name: str) -> None:
    """Apply a config or CONFIG SET level name (see LEVELS) to this process."""
    level = LEVELS[level_name]
    logging.getLogger().setLevel(level)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))


def change_level(level_name: str, why: str) -> None:
    """set_level at run time, saying so in the log (at a level the new setting shows)."""
    set_level(level_name)
    logging.getLogger("durakv.logging").log(max(LEVELS[level_name], logging.INFO), "log level is now %s (%s)",
                                            level_name, why)


class LogLevelFollower:
    """For the processes outside the settings sync (supervisor, snapshotter): apply
    `loglevel` from DIR/run/settings when the file changes, and the configured
    level again when it goes (a new server run)."""

    def __init__(self, settings_path: str, configured_level: str, load) -> None:
        self.path = settings_path
        self.configured = configured_level
        self.load = load  # () -> {name: value}: the runtime changes (runtime_changes.load_runtime_changes)
        self.seen: tuple[int, int] | None = None
        self.applied = configured_level

    def check(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self.seen:
            return
        self.seen = stamp
        wanted = self.load().get("loglevel", self.configured) if stamp is not None else self.configured
        if wanted != self.applied and wanted in LEVELS:
            change_level(wanted, f"from {self.path}")
            self.applied = wanted

    def start_thread(self, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            while not stop.wait(FOLLOW_INTERVAL_S):
                try:
                    self.check()
                except (OSError, ValueError) as e:
                    logging.getLogger("durakv.logging").warning("cannot follow the log level in %s: %s",
                                                                self.path, e)

        thread = threading.Thread(target=run, name="log-level", daemon=True)
        thread.start()
        return thread
