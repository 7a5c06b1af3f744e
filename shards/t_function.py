"""FUNCTION and FCALL (Redis 7.0's functions.c and function_lua.c).

Libraries are durable state of the shard, as in Redis (FLUSHALL leaves them):
FUNCTION LOAD, DELETE, FLUSH and RESTORE record an effect (`FUNCTION LOAD
REPLACE <code>`, `FUNCTION DELETE <name>`, `FUNCTION FLUSH`) in the batch's log
record, so a restarted shard replays its libraries back; they fan out to every
shard so every shard holds the same libraries and an FCALL finds its function
wherever its keys route. FUNCTION LIST, DUMP and STATS read shard 0's copy.
Every RDB durakv writes carries the libraries (RDB_OPCODE_FUNCTION2, one entry
per library's code, as Redis 7.0), and every RDB load replaces the library set
with the file's (library_codes and restore_libraries, used by shards/rdb/file.py),
so a snapshot that releases the log segments holding a FUNCTION LOAD keeps it.
"""

from __future__ import annotations

import re
import struct
import time
from typing import Any

from durakv.shards.context import Ctx
from durakv.shards.glob import glob_match
from durakv.shards.keyspace import Keyspace
from durakv.shards.luaenv import ScriptError, Scripting, scripting_of
from durakv.shards.numbers import parse_ll
from durakv.shards.rdb.codec import (
    FOOTER_BYTES, RDB_VERSION, BytesSource, RdbError, encode_string, read_string, verify_payload,
)
from durakv.shards.rdb.crc64 import crc64
from durakv.shards.resp import OK, Map, ReplyError, SetReply, Simple, fixed_error, split_args
from durakv.shards.t_script import (
    ERR_NUMKEYS_NEGATIVE, ERR_NUMKEYS_TOO_BIG, SCRIPT_KEYS, SCRIPT_RO_SPEC, SCRIPT_RW_SPEC, merge_first, merge_kill,
    not_busy, run_script,
)
from durakv.shards.table import FANOUT, command, container, merge_ok, subcommand_syntax_error

FUNCTION_FLAGS = (b"no-writes", b"allow-oom", b"allow-stale", b"no-cluster", b"allow-cross-slot-keys")
RDB_OPCODE_FUNCTION2 = 245
MAX_LIBRARIES = 10_000
MAX_FUNCTIONS_PER_LIBRARY = 10_000
MAX_CODE_BYTES = 64 * 1024 * 1024
_NAME = re.compile(rb"[A-Za-z0-9_]+\Z")

ERR_FUNCTION_NOT_FOUND = fixed_error(b"ERR Function not found")
ERR_LIBRARY_NOT_FOUND = fixed_error(b"ERR Library not found")
ERR_BAD_NUMKEYS = fixed_error(b"ERR Bad number of keys provided")
ERR_RO_WITH_WRITE = fixed_error(b"ERR Can not execute a script with write flag using *_ro command.")


class Function:
    __slots__ = ("name", "callback", "flags", "description")

    def __init__(self, name: bytes, callback: Any, flags: list[bytes], description: bytes | None) -> None:
        self.name = name
        self.callback = callback
        self.flags = flags
        self.description = description


class Library:
    """A library being loaded or loaded: its code and the functions it registered."""

    __slots__ = ("name", "code", "functions")

    def __init__(self, name: bytes, code: bytes) -> None:
        self.name = name
        self.code = code
        self.functions: dict[bytes, Function] = {}

    def register(self, state: Scripting, name: bytes, callback: Any, flags: Any, description: Any) -> None:
        """redis.register_function, its arguments already checked in Lua."""
        if not _NAME.match(name):
            raise ScriptError(state.error_table(
                b"ERR Library names can only contain letters, numbers, or underscores(_) and must be at "
                b"least one character long"))  # sic: Redis 7.0 says "Library" for a function name too
        if any(name.lower() == other.lower() for other in self.functions):
            raise ScriptError(state.error_table(b"ERR Function already exists in the library"))
        if len(self.functions) >= MAX_FUNCTIONS_PER_LIBRARY:
            raise ScriptError(state.error_table(b"ERR too many functions in one library"))
        names = []
        i = 1
        while flags[i] is not None:
            flag = flags[i].lower()
            if flag not in FUNCTION_FLAGS:
                raise ScriptError(state.error_table(b"ERR unknown flag given"))
            names.append(flag)
            i += 1
        self.functions[name] = Function(name, callback, names, description)


def parse_metadata(code: bytes) -> tuple[bytes, bytes, int]:
    """functionExtractLibMetaData: (engine, library name, length of the shebang line)."""
    if not code.startswith(b"#!"):
        raise ReplyError(b"ERR Missing library metadata")
    end = code.find(b"\n")
    if end < 0:
        raise ReplyError(b"ERR Invalid library metadata")
    parts = split_args(code[:end])  # sdssplitargs: quotes allowed (name="foo")
    if not parts:
        raise ReplyError(b"ERR Invalid library metadata")
    engine = parts[0][2:]
    name = None
    for part in parts[1:]:
        if part[:5].lower() == b"name=":
            if name is not None:
                raise ReplyError(b"ERR Invalid metadata value, name argument was given multiple times")
            name = part[5:]
            continue
        raise ReplyError(b"ERR Invalid metadata value given: %s" % part)
    if name is None:
        raise ReplyError(b"ERR Library name was not given")
    return engine, name, end


def build_library(state: Scripting, code: bytes) -> Library:
    """Compile a library's code and run it to collect its functions."""
    engine, name, shebang_len = parse_metadata(code)
    if not _NAME.match(name):
        raise ReplyError(b"ERR Library names can only contain letters, numbers, or underscores(_) and must be at "
                         b"least one character long")
    if engine.upper() != b"LUA":
        raise ReplyError(b"ERR Engine '%s' not found" % engine)
    compiled = state.boot["compile"](code[shebang_len:], b"@user_function", True)
    chunk = compiled[0] if isinstance(compiled, tuple) else compiled
    if chunk is None:
        raise ReplyError(b"ERR Error compiling function: %s" % compiled[1])
    library = Library(name, code)
    state.registering = library
    state.load_started = time.monotonic()
    try:
        ok, err = state.boot["load_library"](chunk)
    finally:
        state.registering = None
    if not ok:
        message = state.boot["rawget"](err, b"err") if state.lua_table(err) == "table" else None
        text = message if type(message) is bytes else b"ERR %s" % (err if type(err) is bytes else b"unknown error")
        raise ReplyError(b"ERR Error registering functions: %s" % text)
    if not library.functions:
        raise ReplyError(b"ERR No functions registered")
    return library


def install(state: Scripting, library: Library, replace: bool) -> None:
    """Add a library, replacing one of the same name when asked; function names stay unique."""
    libraries = state.libraries
    old = libraries.get(library.name)
    if old is not None and not replace:
        raise ReplyError(b"ERR Library '%s' already exists" % library.name)
    if old is None and len(libraries) >= MAX_LIBRARIES:
        raise ReplyError(b"ERR too many libraries (limit %d)" % MAX_LIBRARIES)
    for fname in library.functions:
        for other in libraries.values():
            if other is not old and any(fname.lower() == name.lower() for name in other.functions):
                raise ReplyError(b"ERR Function %s already exists" % fname)
    libraries[library.name] = library


def check_function_names(libraries: dict[bytes, Library]) -> None:
    """Function names are unique (case-insensitively) across a library set."""
    owners: dict[bytes, bytes] = {}
    for library in libraries.values():
        for fname in library.functions:
            if owners.setdefault(fname.lower(), library.name) != library.name:
                raise ReplyError(b"ERR Function %s already exists" % fname)


def library_codes(db: Keyspace) -> list[bytes]:
    """The code of every library the keyspace holds, in load order: what an RDB
    carries as its RDB_OPCODE_FUNCTION2 entries."""
    state = db.scripting
    if state is None:
        return []
    assert isinstance(state, Scripting)
    return [library.code for library in state.libraries.values()]


def restore_libraries(db: Keyspace, codes: list[bytes]) -> None:
    """Make `codes` the keyspace's whole library set (an RDB's set replaces what
    was there, as a load into an empty Redis does). Compiles every library
    first and changes nothing on error (ReplyError: the error Redis' rdbLoad
    reports, e.g. a library that is there twice or a function name clash)."""
    if not codes and db.scripting is None:
        return  # no libraries before or after: no Lua state needed
    state = scripting_of(db)
    restored: dict[bytes, Library] = {}
    for code in codes:
        if len(code) > MAX_CODE_BYTES:
            raise ReplyError(b"ERR library code is over %d bytes" % MAX_CODE_BYTES)
        library = build_library(state, code)
        if library.name in restored:
            raise ReplyError(b"ERR Library '%s' already exists" % library.name)
        if len(restored) >= MAX_LIBRARIES:
            raise ReplyError(b"ERR too many libraries (limit %d)" % MAX_LIBRARIES)
        restored[library.name] = library
    check_function_names(restored)
    state.libraries = restored


def function_by_name(state: Scripting, name: bytes) -> Function | None:
    """Function names are case-insensitive, as in Redis."""
    name = name.lower()
    for library in state.libraries.values():
        for fname, function in library.functions.items():
            if fname.lower() == name:
                return function
    return None


# --- FCALL -----------------------------------------------------------------------------


def _fcall(ctx: Ctx, argv: list[bytes], read_only: bool):
    numkeys = parse_ll(argv[2])
    if numkeys is None:
        raise ERR_BAD_NUMKEYS
    if numkeys < 0:
        raise ERR_NUMKEYS_NEGATIVE
    if numkeys > len(argv) - 3:
        raise ERR_NUMKEYS_TOO_BIG
    state = scripting_of(ctx.db)
    function = function_by_name(state, argv[1])
    if function is None:
        raise ERR_FUNCTION_NOT_FOUND
    no_writes = b"no-writes" in function.flags
    if read_only and not no_writes:
        raise ERR_RO_WITH_WRITE
    keys, args = argv[3:3 + numkeys], argv[3 + numkeys:]
    return run_script(ctx, state, function.callback, function.name, argv, keys, args, read_only or no_writes, True,
                      function.flags)


def _always(argv: list[bytes]) -> bool:
    """A function may read keys it did not declare: its reply waits for every pending write."""
    return True


@command("fcall", -3, "noscript skip_monitor may_replicate no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RW_SPEC,))
def fcall(ctx: Ctx, argv: list[bytes]):
    return _fcall(ctx, argv, read_only=False)


@command("fcall_ro", -3, "readonly noscript skip_monitor no_mandatory_keys stale", group="scripting",
         keys_fn=SCRIPT_KEYS, reads_undeclared_keys=_always, key_specs=(SCRIPT_RO_SPEC,))
def fcall_ro(ctx: Ctx, argv: list[bytes]):
    return _fcall(ctx, argv, read_only=True)


# --- FUNCTION --------------------------------------------------------------------------

container("function", "scripting")


def _one_change(ctx: Ctx) -> int:
    """Redis counts a FUNCTION change as one change (rdb_changes_since_last_save). Every
    shard takes it (through the router, or restored from the shard port that took it):
    shard 0 counts it, so the server's sum is one (shards/changes.py)."""
    return 1 if getattr(ctx.shard, "index", 0) == 0 else 0


@command("function|load", -3, "write denyoom noscript", group="scripting", where=FANOUT, merge=merge_first,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def function_load(ctx: Ctx, argv: list[bytes]):
    replace = False
    for arg in argv[2:-1]:
        if arg.upper() != b"REPLACE":
            raise ReplyError(b"ERR Unknown option given: %s" % arg)
        replace = True
    code = argv[-1]
    if len(code) > MAX_CODE_BYTES:
        raise ReplyError(b"ERR library code is over %d bytes" % MAX_CODE_BYTES)
    state = scripting_of(ctx.db)
    library = build_library(state, code)
    install(state, library, replace)
    ctx.db.effect([b"FUNCTION", b"LOAD", b"REPLACE", code], changes=_one_change(ctx))
    return library.name


@command("function|delete", 3, "write noscript", group="scripting", where=FANOUT, merge=merge_ok,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def function_delete(ctx: Ctx, argv: list[bytes]):
    state = scripting_of(ctx.db)
    if state.libraries.pop(argv[2], None) is None:
        raise ERR_LIBRARY_NOT_FOUND
    ctx.db.effect([b"FUNCTION", b"DELETE", argv[2]], changes=_one_change(ctx))
    return OK


@command("function|flush", -2, "write noscript", group="scripting", where=FANOUT, merge=merge_ok,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def function_flush(ctx: Ctx, argv: list[bytes]):
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    if len(argv) == 3 and argv[2].upper() not in (b"ASYNC", b"SYNC"):
        raise ReplyError(b"ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
    scripting_of(ctx.db).libraries.clear()
    ctx.db.effect([b"FUNCTION", b"FLUSH"], changes=_one_change(ctx))
    return OK


@command("function|list", -2, "noscript", group="scripting",
         tips=("nondeterministic_output_order",))
def function_list(ctx: Ctx, argv: list[bytes]):
    pattern = None
    with_code = False
    i = 2
    while i < len(argv):
        arg = argv[i].upper()
        if arg == b"WITHCODE" and not with_code:
            with_code = True
        elif arg == b"LIBRARYNAME" and pattern is None:
            if i + 1 >= len(argv):
                raise ReplyError(b"ERR library name argument was not given")
            pattern = argv[i + 1]
            i += 1
        else:
            raise ReplyError(b"ERR Unknown argument %s" % argv[i])
        i += 1
    out = []
    for library in scripting_of(ctx.db).libraries.values():
        if pattern is not None and not glob_match(pattern, library.name):
            continue
        functions = [Map([b"name", f.name, b"description", f.description,
                          b"flags", SetReply([Simple(flag) for flag in f.flags])]) for f in library.functions.values()]
        items = [b"library_name", library.name, b"engine", b"LUA", b"functions", functions]
        if with_code:
            items += [b"library_code", library.code]
        out.append(Map(items))
    return out


@command("function|dump", 2, "noscript", group="scripting")
def function_dump(ctx: Ctx, argv: list[bytes]):
    body = b"".join(bytes((RDB_OPCODE_FUNCTION2,)) + encode_string(library.code)
                    for library in scripting_of(ctx.db).libraries.values())
    data = body + struct.pack("<H", RDB_VERSION)
    return data + struct.pack("<Q", crc64(data))


@command("function|restore", -3, "write denyoom noscript", group="scripting", where=FANOUT, merge=merge_ok,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def function_restore(ctx: Ctx, argv: list[bytes]):
    policy = b"APPEND"
    if len(argv) > 4:
        raise subcommand_syntax_error(argv)
    if len(argv) == 4:
        policy = argv[3].upper()
        if policy not in (b"FLUSH", b"APPEND", b"REPLACE"):
            raise ReplyError(b"ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.")
    payload = argv[2]
    try:
        verify_payload(payload)
    except RdbError:
        raise ReplyError(b"ERR DUMP payload version or checksum are wrong") from None
    src = BytesSource(payload[:-FOOTER_BYTES])
    codes = []
    try:
        while src.pos < len(src.data):
            if src.byte() != RDB_OPCODE_FUNCTION2:
                raise ReplyError(b"ERR given type is not a function")
            codes.append(read_string(src, MAX_CODE_BYTES))
    except RdbError:
        raise ReplyError(b"ERR payload is not a function dump") from None
    state = scripting_of(ctx.db)
    restored: dict[bytes, Library] = {}
    for code in codes:
        library = build_library(state, code)
        restored[library.name] = library
    merged = {} if policy == b"FLUSH" else dict(state.libraries)
    for name, library in restored.items():
        if name in merged and policy == b"APPEND":
            raise ReplyError(b"ERR Library %s already exists" % name)
        merged[name] = library
    check_function_names(merged)
    state.libraries = merged
    ctx.db.effect([b"FUNCTION", b"FLUSH"], changes=_one_change(ctx))
    for library in merged.values():
        ctx.db.effect([b"FUNCTION", b"LOAD", b"REPLACE", library.code], changes=0)
    return OK


@command("function|stats", 2, "noscript allow_busy", group="scripting",
         tips=("nondeterministic_output", "request_policy:all_shards", "response_policy:special"))
def function_stats(ctx: Ctx, argv: list[bytes]):
    return stats(scripting_of(ctx.db))


def stats(state: Scripting) -> Map:
    """FUNCTION STATS; while a function runs past busy-reply-threshold it answers
    from the function's hook (shards/process.py) and names it."""
    run = state.run
    running = None
    if run is not None and not run.is_eval:
        running = Map([b"name", run.name, b"command", run.command,
                       b"duration_ms", int((time.monotonic() - run.started) * 1000)])
    libraries = state.libraries
    functions = sum(len(library.functions) for library in libraries.values())
    return Map([b"running_script", running, b"engines", Map([b"LUA", Map([
        b"libraries_count", len(libraries), b"functions_count", functions])])])


@command("function|kill", 2, "noscript allow_busy", group="scripting", where=FANOUT, merge=merge_kill,
         tips=("request_policy:all_shards", "response_policy:one_succeeded"))
def function_kill(ctx: Ctx, argv: list[bytes]):
    return not_busy(ctx)


@command("function|help", 2, "loading stale", group="scripting")
def function_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in (
        b"FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"LOAD [REPLACE] <FUNCTION CODE>",
        b"    Create a new library with the given library name and code.",
        b"DELETE <LIBRARY NAME>",
        b"    Delete the given library.",
        b"LIST [LIBRARYNAME PATTERN] [WITHCODE]",
        b"    Return general information on all the libraries:",
        b"    * Library name",
        b"    * The engine used to run the Library",
        b"    * Library description",
        b"    * Functions list",
        b"    * Library code (if WITHCODE is given)",
        b"    It also possible to get only function that matches a pattern using LIBRARYNAME argument.",
        b"FCALL <FUNCTION NAME> nkeys <key1 .. keyn> <arg1 .. argn>",
        b"    Call a function",
        b"FCALL_RO <FUNCTION NAME> nkeys <key1 .. keyn> <arg1 .. argn>",
        b"    Call a read-only function",
        b"STATS",
        b"    Return information about the current function running:",
        b"    * Function name",
        b"    * Command used to run the function",
        b"    * Duration in MS that the function is running",
        b"    If no function is running, return nil",
        b"    In addition, returns a list of available engines and the number of functions per engine",
        b"KILL",
        b"    Kill the current running function.",
        b"FLUSH [ASYNC|SYNC]",
        b"    Delete all the libraries.",
        b"    When called without the optional mode argument, the behavior is determined by the",
        b"    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
        b"    * ASYNC: Asynchronously delete the libraries.",
        b"    * SYNC: Synchronously delete the libraries.",
        b"DUMP",
        b"    Return a serialized payload representing the current libraries, can be restored using RESTORE command",
        b"RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]",
        b"    Restore the libraries represented by the given payload, it is possible to give a restore policy to",
        b"    control how to handle existing libraries (default APPEND):",
        b"    * FLUSH: delete all existing libraries.",
        b"    * APPEND: appends the restored libraries to the existing libraries. On collision, abort.",
        b"    * REPLACE: appends the restored libraries to the existing libraries, On collision, replace the old",
        b"      libraries with the new libraries (notice that even on this case there is no guarantee of",
        b"      consistency with the library name and the functions names).",
        b"HELP",
        b"    Print this help.",
    )]

