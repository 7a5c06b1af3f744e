"""SLOWLOG entries, kept where commands execute: each shard logs the commands it
runs (the shard's time, not the router hop) and each router or shard node logs
the commands it answers itself. SLOWLOG GET on a router merges its own log with
every shard's, newest first (server/slowlog_commands.py).

Entry ids are unique across the processes of one server: a process numbered
`slot` among `stride` log-keeping processes (shards 0..S-1, then routers S..S+R-1)
gives its n-th entry the id n * stride + slot, so two processes never hand out
the same id and each process's ids grow with time, as Redis' do.

The hot path pays one integer comparison per command while the threshold is not
crossed (callers compare the duration with `threshold_us`); the argv copy,
truncation and redaction happen only for an entry that is kept.
"""

from __future__ import annotations

import time
from collections import deque

# Redis' slowlog.h: at most this many arguments, each at most this many bytes.
ENTRY_MAX_ARGC = 32
ENTRY_MAX_STRING_BYTES = 128
# `slowlog-log-slower-than -1`: no duration reaches this.
DISABLED_THRESHOLD_US = 1 << 63
REDACTED = b"(redacted)"
# The client a script's own commands are logged with: Redis' Lua client has no
# connection and no name, so its entries show this address and an empty name.
SCRIPT_CLIENT_ADDR = b"?:0"
# CONFIG SET parameters Redis flags SENSITIVE_CONFIG: their values are redacted.
SENSITIVE_CONFIGS = frozenset({b"requirepass", b"masterauth"})

# An entry as kept and as a shard sends it to a router (msgpack):
# [id, unix time ns, duration us, argv, client id, client addr, client name].
# addr and name are empty when the process does not know them (a shard); the
# router that merges fills them in for its own clients.
ID, TIME_NS, DURATION_US, ARGV, CLIENT_ID, ADDR, NAME = range(7)


class SlowLog:
    __slots__ = ("entries", "next_seq", "slot", "stride", "threshold_us", "max_len")

    def __init__(self, slot: int, stride: int) -> None:
        assert 0 <= slot < stride, f"slowlog process slot {slot} outside 0..{stride - 1}"
        self.slot = slot
        self.stride = stride
        self.next_seq = 0
        self.entries: deque[list] = deque()  # newest first
        self.threshold_us = 10000
        self.max_len = 128

    def configure(self, slower_than_us: int, max_len: int) -> None:
        """slowlog-log-slower-than (-1: off, 0: everything) and slowlog-max-len."""
        self.threshold_us = DISABLED_THRESHOLD_US if slower_than_us < 0 else slower_than_us
        self.max_len = max_len
        self._trim()

    def push(self, argv: list[bytes], duration_us: int, client_id: int, addr: bytes = b"",
             name: bytes = b"") -> None:
        """Keep an entry for a command that took `duration_us` (the caller checked
        it against threshold_us)."""
        entry_id = self.next_seq * self.stride + self.slot
        self.next_seq += 1
        self.entries.appendleft([entry_id, time.time_ns(), duration_us, entry_argv(argv), client_id, addr, name])
        self._trim()

    def newest(self, count: int) -> list[list]:
        """The newest `count` entries (all for count < 0), newest first."""
        entries = self.entries
        if count < 0 or count >= len(entries):
            return list(entries)
        return [entries[i] for i in range(count)]

    def reset(self) -> None:
        self.entries.clear()

    def _trim(self) -> None:
        entries = self.entries
        while len(entries) > self.max_len:
            entries.pop()


def entry_argv(argv: list[bytes]) -> list[bytes]:
    """argv as Redis keeps it (slowlogCreateEntry): secrets redacted, at most 32
    arguments (the last says how many more) and 128 bytes each (with how many more)."""
    argv = redact(argv)
    argc = len(argv)
    kept = min(argc, ENTRY_MAX_ARGC)
    out = []
    for j in range(kept):
        if kept != argc and j == kept - 1:
            out.append(b"... (%d more arguments)" % (argc - kept + 1))
            break
        arg = argv[j]
        if len(arg) > ENTRY_MAX_STRING_BYTES:
            arg = arg[:ENTRY_MAX_STRING_BYTES] + b"... (%d more bytes)" % (len(arg) - ENTRY_MAX_STRING_BYTES)
        out.append(arg)
    return out


def redact(argv: list[bytes]) -> list[bytes]:
    """The arguments Redis 7.0 replaces with "(redacted)" before logging
    (redactClientCommandArgument): AUTH's, HELLO's AUTH pair, the values of
    sensitive CONFIG SET parameters, ACL SETUSER's, MIGRATE's AUTH/AUTH2."""
    name = argv[0].lower()
    secret: list[int] = []
    if name == b"auth":
        secret = list(range(1, len(argv)))
    elif name == b"hello":
        j = 2
        while j < len(argv):
            option = argv[j].lower()
            more = len(argv) - 1 - j
            if option == b"auth" and more >= 2:
                secret += [j + 1, j + 2]
                j += 3
            elif option == b"setname" and more >= 1:
                j += 2
            else:
                break
    elif name == b"config" and len(argv) > 1 and argv[1].lower() == b"set":
        secret = [j + 1 for j in range(2, len(argv) - 1, 2) if argv[j].lower() in SENSITIVE_CONFIGS]
    elif name == b"acl" and len(argv) > 1 and argv[1].lower() == b"setuser":
        secret = list(range(2, len(argv)))
    elif name == b"migrate":
        for j in range(6, len(argv)):
            option = argv[j].lower()
            if option == b"auth":
                secret = [j + 1]
                break
            if option == b"auth2":
                secret = [j + 1, j + 2]
                break
    if not secret:
        return argv
    argv = list(argv)
    for j in secret:
        if j < len(argv):
            argv[j] = REDACTED
    return argv
