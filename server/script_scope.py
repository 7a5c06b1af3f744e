"""Which scripts surely keep to their declared keys (issue 16, the script fence).

A script sent to the one shard of its declared keys may still reach another shard's
key; until its reply is in, the router does not send its client's requests for other
shards (server/script_retry.py `holds`), since one Redis would run them after it.
That wait costs a pipeline of scripts spread over shards one round trip per change of
shard, so it is skipped for a script whose text shows it cannot reach an undeclared key:
a conservative reading of the source, not of what it computes. It keeps to its keys when

- every `redis.call(` / `redis.pcall(` names its command as a string literal, and the
  command is one whose only key is its first argument (or touches no key: PUBLISH...),
  with `KEYS[<n>]` as that argument (followed by `,` or `)`);
- `redis` appears only as `redis.<member>` of the members that touch no key, and
  `KEYS` only as `KEYS[<n>]`, never assigned;
- none of the names through which Lua reaches a global by another name appears
  (`_G`, `getfenv`, `rawget`, `load`...).

Words inside strings and comments count too, which only makes it more conservative.
Anything else (a call through a variable, a computed key, FCALL, whose body the router
does not see) is treated as possibly reaching. The verdicts are kept by body and by sha
(an EVALSHA is judged by the body an EVAL or SCRIPT LOAD showed this router), bounded.
"""

from __future__ import annotations

import re

from durakv.shards.luaenv import sha1hex
from durakv.shards.table import find

MAX_VERDICTS = 4096  # bodies and shas remembered; all forgotten past it (only costs a wait)
MAX_BODY_BYTES = 64 * 1024  # longer scripts are not read: treated as possibly reaching

# Commands a script may call with any arguments: they touch no key.
KEYLESS = frozenset({b"publish", b"ping", b"echo", b"time"})
# Members of `redis` that touch no key.
SAFE_MEMBERS = frozenset({
    b"log", b"LOG_DEBUG", b"LOG_VERBOSE", b"LOG_NOTICE", b"LOG_WARNING", b"sha1hex", b"error_reply",
    b"status_reply", b"setresp", b"set_repl", b"REPL_ALL", b"REPL_AOF", b"REPL_REPLICA", b"REPL_SLAVE",
    b"REPL_NONE", b"replicate_commands", b"breakpoint", b"debug", b"REDIS_VERSION", b"REDIS_VERSION_NUM",
})
_BANNED = re.compile(rb"\b(?:_G|_ENV|getfenv|setfenv|rawget|rawset|rawequal|load|loadstring|dofile|require|"
                     rb"setmetatable|getmetatable|module|package)\b")
_REDIS = re.compile(rb"\bredis\b\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*))?")
_CALL = re.compile(rb"""\bredis\s*\.\s*p?call\s*\(\s*(?:'([A-Za-z_|]+)'|"([A-Za-z_|]+)")\s*"""
                   rb"""(,\s*KEYS\s*\[\s*\d+\s*\]\s*[,)]|[,)])""")
_KEYS = re.compile(rb"\bKEYS\b")
_KEYS_READ = re.compile(rb"\bKEYS\s*\[\s*\d+\s*\](?!\s*=[^=])")


def keeps_to_its_keys(body: bytes) -> bool:
    """Whether the script's text shows every key it touches is one of its KEYS."""
    if len(body) > MAX_BODY_BYTES or _BANNED.search(body):
        return False
    calls = 0
    for member in _REDIS.finditer(body):
        name = member.group(1)
        if name is None:
            return False  # `redis` passed around or indexed: any call may hide behind it
        if name in (b"call", b"pcall"):
            calls += 1
        elif name not in SAFE_MEMBERS:
            return False
    if calls != sum(1 for call in _CALL.finditer(body) if _call_keeps_to_keys(call)):
        return False
    return len(_KEYS.findall(body)) == len(_KEYS_READ.findall(body))


def _call_keeps_to_keys(call: re.Match) -> bool:
    name = (call.group(1) or call.group(2)).lower()
    if name in KEYLESS:
        return True
    cmd = find([name])
    return (cmd is not None and not cmd.subcommands and cmd.single_key and cmd.reads_undeclared_keys is None
            and b"KEYS" in call.group(3))


class ScriptScopes:
    """The verdicts of keeps_to_its_keys, by body and by sha (bounded)."""

    __slots__ = ("by_body", "by_sha")

    def __init__(self) -> None:
        self.by_body: dict[bytes, bool] = {}
        self.by_sha: dict[bytes, bool] = {}

    def body_keeps(self, body: bytes) -> bool:
        verdict = self.by_body.get(body)
        if verdict is None:
            verdict = keeps_to_its_keys(body)
            if len(self.by_body) >= MAX_VERDICTS:
                self.by_body.clear()
                self.by_sha.clear()
            self.by_body[body] = verdict
            self.by_sha[sha1hex(body)] = verdict
        return verdict

    def sha_keeps(self, sha: bytes) -> bool:
        return self.by_sha.get(sha.lower(), False)

    def keeps(self, argv: list[bytes]) -> bool:
        """For EVAL*/EVALSHA* argv (FCALL: False, the router does not see a function's body)."""
        name = argv[0].lower()
        if name.startswith(b"evalsha"):
            return self.sha_keeps(argv[1])
        if name.startswith(b"eval"):
            return self.body_keeps(argv[1])
        return False
