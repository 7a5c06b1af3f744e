"""Process titles: `ps` shows each process's role and where it serves
(`durakv shard 1 /var/lib/durakv`, `durakv router 0 127.0.0.1:6379 /var/lib/durakv`)
instead of its command line, which may hold a password given by the operator."""

from __future__ import annotations

import setproctitle


def set_title(*parts: object) -> None:
    """Replace the process title (argv as /proc/PID/cmdline and `ps` show it)."""
    setproctitle.setproctitle(" ".join(["durakv", *map(str, parts)]))
