"""EVAL, EVALSHA, EVAL_RO, EVALSHA_RO and SCRIPT (Redis' eval.c) on Lua 5.1.

A script runs on the shard that owns its keys (the router sends it there by
the numkeys key positions; no keys: shard 0) and everything it does goes
through redis.call, so its writes are ordinary effects, all in the batch's one
log record: the log never holds a script (DESIGN invariant 3). A script that
fails half way keeps the effects it made, as in Redis. Each shard caches the
scripts it compiled: SCRIPT LOAD fans out to every shard, EVAL caches on the
shard that ran it, and an EVALSHA answered NOSCRIPT is looked for on the other
shards (server/script_cache.py), so the cache is one for the server.
"""

from __future__ import annotations

import os
from typing import Any, cast

from durakv.shards.context import Ctx
from durakv.shards.evict import ERR_OOM
from durakv.shards.luaenv import Run, Scripting, scripting_of, sha1hex
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, Raw, ReplyError, Simple, encode, fixed_error
from durakv.shards.script_effects import HeldLogs
from durakv.shards.script_undo import NONLOCAL_RETRY, Undo
from durakv.shards.table import FANOUT, command, container, keynum_spec, merge_ok, numkeys_keys

# Past this, the oldest cached script is forgotten (EVALSHA: NOSCRIPT); tests set a small one by env.
MAX_CACHED_SCRIPTS = int(os.environ.get("DURAKV_TEST_MAX_CACHED_SCRIPTS", "100000"))
SCRIPT_FLAGS = {b"no-writes", b"allow-oom", b"allow-stale", b"no-cluster", b"allow-cross-slot-keys"}

ERR_NOSCRIPT = fixed_error(b"NOSCRIPT No matching script. Please use EVAL.")
ERR_NUMKEYS_NOT_INT = fixed_error(b"ERR value is not an integer or out of range")
ERR_NUMKEYS_NEGATIVE = fixed_error(b"ERR Number of keys can't be negative")
ERR_NUMKEYS_TOO_BIG = fixed_error(b"ERR Number of keys can't be greater than number of args")


def split_keys(argv: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV of `CMD body-or-name numkeys key... arg...`, with Redis' errors."""
    numkeys = parse_ll(argv[2])
    if numkeys is None:
        raise ERR_NUMKEYS_NOT_INT
    if numkeys < 0:
        raise ERR_NUMKEYS_NEGATIVE
    if numkeys > len(argv) - 3:
        raise ERR_NUMKEYS_TOO_BIG
    return argv[3:3 + numkeys], argv[3 + numkeys:]


def shebang_flags(body: bytes) -> tuple[set[bytes] | None, int]:
    """evalExtractShebangFlags: (flags, length of the shebang line); None when the
    script has no shebang (it then runs with Redis' pre-7.0 defaults)."""
    if not body.startswith(b"#!"):
        return None, 0
    end = body.find(b"\n")
    line = body[2:] if end < 0 else body[2:end]
    parts = line.split(b" ")
    if parts[0] != b"lua":
        raise ReplyError(b"ERR Unexpected engine in script shebang: #!%s" % parts[0])
    flags: set[bytes] = set()
    for part in parts[1:]:
        if not part:
            continue
        if not part.startswith(b"flags="):
            raise ReplyError(b"ERR Unknown lua shebang option: %s" % part)
        for flag in part[6:].split(b","):
            if not flag:
                continue
            if flag not in SCRIPT_FLAGS:
                raise ReplyError(b"ERR Unexpected flag in script shebang: %s" % flag)
            flags.add(flag)
    return flags, len(body) if end < 0 else end


def compile_script(state: Scripting, body: bytes) -> tuple[bytes, Any]:
    """Compile and cache a script body; returns (sha, function)."""
    sha = sha1hex(body)
    cached = state.scripts.get(sha)
    if cached is not None:
        return sha, cached[1]
    _flags, shebang_len = shebang_flags(body)
    source = b"--" + body[2:] if shebang_len else body
    compiled = state.boot["compile"](source, b"@user_script", False)
    function = compiled[0] if isinstance(compiled, tuple) else compiled
    if function is None:
        raise ReplyError(b"ERR Error compiling script (new function): %s" % compiled[1])
    cache_script(state, sha, body, function)
    return sha, function


def cache_script(state: Scripting, sha: bytes, body: bytes, function: Any) -> None:
    """Into the cache; past its bound the oldest script is dropped, kept runnable until
    every router knows (shards/script_evict.py)."""
    scripts = state.scripts
    if len(scripts) >= MAX_CACHED_SCRIPTS:
        evicted = next(iter(scripts))
        state.evicting.dropped(evicted, *scripts.pop(evicted))
    scripts[sha] = (body, function)


def run_script(ctx: Ctx, state: Scripting, function: Any, name: bytes, argv: list[bytes], keys: list[bytes],
               args: list[bytes], read_only: bool, for_function: bool, flags: set[bytes] | list[bytes] | None) -> Raw:
    """Run a compiled script or a registered function (for the command argv) and encode its reply.
    `flags` are its shebang's or the function's (None: an EVAL script without a shebang)."""
    allow_oom = flags is not None and b"allow-oom" in flags
    if flags is not None and not read_only and b"no-writes" not in flags:
        noreplicas = getattr(ctx.shard, "noreplicas", None)  # shards/min_replicas.py; a replay has none
        if noreplicas is not None:
            raise ReplyError(noreplicas)  # a flagged script that may write, refused as a whole (as Redis)
    if ctx.db.oom and flags is not None and not allow_oom and b"no-writes" not in flags:
        raise ERR_OOM  # a flagged script that may write is denyoom as a whole
    run = state.run = Run(ctx, read_only, name, not for_function, argv, allow_oom)
    held_logs = None
    if not ctx.in_multi and getattr(ctx.shard, "scripts_undo", False):  # shards/script_undo.py
        watches = getattr(ctx.shard, "watches", None)  # dirtied by the run only if it counts
        run.undo = Undo(len(ctx.db.events), set(watches.dirty_clients) if watches and watches.by_key else None)
        if state.held_logs is None:  # its redis.log lines wait until it counts (shards/script_effects.py)
            held_logs = state.held_logs = HeldLogs()
    in_multi = ctx.in_multi
    ctx.in_multi = True  # blocking commands inside a script never block
    rt = state.runtime
    try:
        runner = state.boot["run_function" if for_function else "run_eval"]
        ok, result = runner(function, rt.table_from(keys), rt.table_from(args))
        if run.non_local:  # it reached another shard's key: put everything back, the router runs it again
            assert run.undo is not None, "non_local is set only with an undo record"
            state.run = None
            ctx.in_multi = in_multi
            run.undo.put_back(ctx)
            fence = getattr(ctx.shard, "fence_client", None)  # a serving shard's (a test's stand-in has none)
            if fence is not None:  # its client's later requests wait for the retry (shards/script_fence.py)
                fence(ctx.client_id)
            raise ReplyError(NONLOCAL_RETRY)  # the shard counts and logs it nowhere (Shard._execute)
        if not ok:
            state.uncount_reply(result)
            raise state.failure(result, name)
        data = state.reply(result, ctx.proto, run.resp)
        if data[:1] == b"-":  # an error table returned: a failed call in commandstats, as in Redis
            state.uncount_reply(result)
            raise ReplyError(data[1:-2])
        return Raw(data)
    finally:
        ctx.in_multi = in_multi
        state.run = None
        if held_logs is not None:
            state.held_logs = None
            if not run.non_local:  # an attempt put back says nothing: the one across shards will
                held_logs.write()
        if run.undo is not None and not run.non_local:  # its redis.calls, logged before its own entry
            log_script_call = cast(Any, ctx.shard).log_script_call  # a serving shard's (it keeps undo records)
            for cmd, call_argv, duration_us in run.undo.held_calls:
                log_script_call(cmd, call_argv, duration_us)


def _eval(ctx: Ctx, argv: list[bytes], by_sha: bool, read_only: bool):
    keys, args = split_keys(argv)
    state = scripting_of(ctx.db)
    if by_sha:
        sha = argv[1].lower()
        cached = state.scripts.get(sha)
        if cached is None:
            cached = state.evicting.take(sha)  # dropped, but a router may not know yet
            if cached is None:
                raise ERR_NOSCRIPT
            cache_script(state, sha, *cached)  # wanted again: cached again
        body, function = cached
    else:
        body = argv[1]
        sha, function = compile_script(state, body)
    flags, _ = shebang_flags(body)
    if flags is not None and b"no-writes" in flags:
        read_only = True
    return run_script(ctx, state, function, sha, argv, keys, args, read_only, False, flags)


SCRIPT_KEYS = numkeys_keys(2)  # routing: argv[3:3 + numkeys], as the key specs below say
# Redis' key specs for EVAL/FCALL (the notes are only on EVAL, EVAL_RO, FCALL, FCALL_RO).
SCRIPT_RW_SPEC = keynum_spec("RW access update", 2, notes=(
    "We cannot tell how the keys will be used so we assume the worst, RW and UPDATE"))
SCRIPT_RO_SPEC = keynum_spec("RO access", 2, notes=(
    "We cannot tell how the keys will be used so we assume the worst, RO and ACCESS"))


def _always(argv: list[bytes]) -> bool:
    """A script may read keys it did not declare: its reply waits for every pending write."""
    return True


@command("eval", -3, "noscript skip_monitor may_replicate no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RW_SPEC,))
def eval_(ctx: Ctx, argv: list[bytes]):
    return _eval(ctx, argv, by_sha=False, read_only=False)


@command("evalsha", -3, "noscript skip_monitor may_replicate no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RW_SPEC._replace(notes=None),))
def evalsha(ctx: Ctx, argv: list[bytes]):
    return _eval(ctx, argv, by_sha=True, read_only=False)


@command("eval_ro", -3, "readonly noscript skip_monitor no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RO_SPEC,))
def eval_ro(ctx: Ctx, argv: list[bytes]):
    return _eval(ctx, argv, by_sha=False, read_only=True)


@command("evalsha_ro", -3, "readonly noscript skip_monitor no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RO_SPEC._replace(notes=None),))
def evalsha_ro(ctx: Ctx, argv: list[bytes]):
    return _eval(ctx, argv, by_sha=True, read_only=True)


# --- SCRIPT ----------------------------------------------------------------------------

def merge_first(parts: list, proto: int) -> bytes:
    """Every shard gave the same answer (SCRIPT LOAD's sha): pass one on."""
    return encode(parts[0], proto)


def merge_any(parts: list, proto: int) -> bytes:
    """SCRIPT EXISTS: 1 for a script that any shard has cached."""
    return encode([int(any(found)) for found in zip(*parts)], proto)


container("script", "scripting")


@command("script|load", 3, "noscript stale", group="scripting", where=FANOUT, merge=merge_first,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def script_load(ctx: Ctx, argv: list[bytes]):
    sha, _ = compile_script(scripting_of(ctx.db), argv[2])
    return sha


@command("script|exists", -3, "noscript", group="scripting", where=FANOUT, merge=merge_any,
         tips=("request_policy:all_shards", "response_policy:agg_logical_and"))
def script_exists(ctx: Ctx, argv: list[bytes]):
    scripts = scripting_of(ctx.db).scripts
    return [int(sha.lower() in scripts) for sha in argv[2:]]


def flush_option_ok(argv: list[bytes]) -> bool:
    """SCRIPT FLUSH [ASYNC|SYNC]."""
    return len(argv) <= 3 and (len(argv) < 3 or argv[2].upper() in (b"ASYNC", b"SYNC"))


@command("script|flush", -2, "noscript", group="scripting", where=FANOUT, merge=merge_ok,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def script_flush(ctx: Ctx, argv: list[bytes]):
    if not flush_option_ok(argv):
        raise ReplyError(b"ERR SCRIPT FLUSH only support SYNC|ASYNC option")
    state = scripting_of(ctx.db)
    state.scripts.clear()
    state.evicting.clear()
    return OK


NOTBUSY = b"-NOTBUSY No scripts in execution right now."


def merge_kill(parts: list, proto: int) -> bytes:
    """SCRIPT/FUNCTION KILL: each shard's status line (a busy shard answers from its
    script's hook, shards/process.py); OK if one killed its script."""
    if b"+OK" in parts:
        return b"+OK\r\n"
    for part in parts:
        if part != NOTBUSY:
            return part + b"\r\n"
    return NOTBUSY + b"\r\n"


def not_busy(ctx: Ctx):
    """KILL on a shard with no script running (one that runs one answers from its hook)."""
    if ctx.proto == 0:
        return NOTBUSY  # to the router's merge_kill
    raise ReplyError(NOTBUSY[1:])


@command("script|kill", 2, "noscript allow_busy", group="scripting", where=FANOUT, merge=merge_kill,
         tips=("request_policy:all_shards", "response_policy:one_succeeded"))
def script_kill(ctx: Ctx, argv: list[bytes]):
    return not_busy(ctx)


@command("script|help", 2, "loading stale", group="scripting")
def script_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in (
        b"SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"DEBUG (YES|SYNC|NO)",
        b"    Set the debug mode for subsequent scripts executed.",
        b"EXISTS <sha1> [<sha1> ...]",
        b"    Return information about the existence of the scripts in the script cache.",
        b"FLUSH [ASYNC|SYNC]",
        b"    Flush the Lua scripts cache. Very dangerous on replicas.",
        b"    When called without the optional mode argument, the behavior is determined by the",
        b"    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
        b"    * ASYNC: Asynchronously flush the scripts cache.",
        b"    * SYNC: Synchronously flush the scripts cache.",
        b"KILL",
        b"    Kill the currently executing Lua script.",
        b"LOAD <script>",
        b"    Load a script into the scripts cache without executing it.",
        b"HELP",
        b"    Print this help.",
    )]
