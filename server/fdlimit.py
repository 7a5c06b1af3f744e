"""File descriptors for a router, as redis-server's adjustOpenFilesLimit does:
raise the soft RLIMIT_NOFILE to fit maxclients plus the router's own needs (up
to the hard limit; a router never raises the hard limit), and when that is not
enough, lower maxclients with Redis' warnings instead of running out of
descriptors with clients connected."""

from __future__ import annotations

import errno
import logging
import os
import resource

logger = logging.getLogger("durakv.router")

# Redis' CONFIG_MIN_RESERVED_FDS (logs, persistence, listeners), plus one link
# per shard: control socket, epoll, trio's own, the spare for accept.
MIN_RESERVED_FDS = 32


class FdLimitTooLow(Exception):
    pass


def adjust_open_files_limit(maxclients: int, links: int) -> int:
    """Raise the soft limit if needed; returns the maxclients that fits."""
    reserved = MIN_RESERVED_FDS + links
    wanted = maxclients + reserved
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return maxclients
    best = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    why = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        best = wanted
    except (OSError, ValueError) as e:
        why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else os.strerror(errno.EINVAL)
        if best > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (best, hard))
        best = max(best, soft)
    if best >= wanted:
        logger.info("Increased maximum number of open files to %d (it was originally set to %d).", best, soft)
        return maxclients
    if best <= reserved:
        raise FdLimitTooLow(
            f"Your current 'ulimit -n' of {soft} is not enough for the server to start. "
            f"Please increase your open file limit to at least {wanted}. Exiting.")
    reduced = best - reserved
    logger.warning("You requested maxclients of %d requiring at least %d max file descriptors.", maxclients, wanted)
    logger.warning("Server can't set maximum open files to %d because of OS error: %s.", wanted, why)
    logger.warning("Current maximum open files is %d. maxclients has been reduced to %d to compensate for "
                "low ulimit. If you need higher maxclients increase 'ulimit -n'.", best, reduced)
    return reduced
