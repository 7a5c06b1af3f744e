"""What a router (or a shard's client port) counts about the replies it sends:
INFO errorstats (every error reply by its code) and the commandstats of the
commands it answers itself or refuses before they run (rejected_calls).

Errors are counted where every reply passes, Client.flush: one byte compared per
reply. The shards count the calls and failures of the commands they run
(shards/command_stats.py); INFO merges both."""

from __future__ import annotations

import logging

from durakv.shards.command_stats import CommandStats

logger = logging.getLogger("durakv.router")

# As Redis' ERRORSTATS_LIMIT: past this many distinct error codes, new codes are
# counted in total_error_replies only (a client cannot grow the table without bound).
MAX_ERROR_CODES = 128
MAX_ERROR_CODE_BYTES = 64


class ReplyStats:
    __slots__ = ("errors", "error_replies", "commands", "codes_full")

    def __init__(self) -> None:
        self.errors: dict[bytes, int] = {}
        self.error_replies = 0
        self.commands: dict[str, CommandStats] = {}
        self.codes_full = False  # the code table reached MAX_ERROR_CODES (warned once)

    def error(self, reply: bytes | memoryview) -> None:
        """Count one error reply (its first byte is '-') by its code, the first word."""
        self.error_replies += 1
        head = bytes(reply[1:MAX_ERROR_CODE_BYTES + 1])
        end = len(head)
        for stop in (b" ", b"\r"):
            at = head.find(stop)
            if 0 <= at < end:
                end = at
        code = head[:end]
        errors = self.errors
        if code in errors:
            errors[code] += 1
        elif len(errors) < MAX_ERROR_CODES:
            errors[code] = 1
        elif not self.codes_full:
            self.codes_full = True
            logger.warning("errorstats: more than %d distinct error codes; %r and later new codes are "
                           "counted in total_error_replies only", MAX_ERROR_CODES, code)

    def command(self, name: str) -> CommandStats:
        stat = self.commands.get(name)
        if stat is None:
            stat = self.commands[name] = CommandStats()
        return stat

    def reset(self) -> None:
        self.errors.clear()
        self.error_replies = 0
        self.commands.clear()
        self.codes_full = False

    def error_lines(self, elsewhere: dict[bytes, int]) -> list[str]:
        """INFO errorstats: these replies' errors plus those counted `elsewhere` (the
        errors of commands scripts ran on the shards, shards/luaenv.py)."""
        merged = dict(self.errors)
        for code, count in elsewhere.items():
            merged[code] = merged.get(code, 0) + count
        return [f"errorstat_{code.decode(errors='replace')}:count={count}"
                for code, count in sorted(merged.items()) if count]
