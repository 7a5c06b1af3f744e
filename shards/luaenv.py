"""The Lua 5.1 interpreter (lupa) that EVAL scripts and FUNCTION libraries run in,
and Redis' conversions between command replies and Lua values.

One `Scripting` per keyspace (created on first use), so a shard, a replay and a
test's in-process keyspace each have their own. redis.call goes through the
command table's `lookup` and the command's own handler on the shard's Ctx, so a
script's writes are the effects those commands record (DESIGN invariant 3): a
script is never logged, only what it did. The sandbox itself (readonly tables,
protected globals, the redis API) is Lua, in lua_boot.lua.
"""

from __future__ import annotations

import hashlib
import logging
import time
from importlib import resources
from typing import Any, Callable, cast

import lupa.lua51 as lua51

from durakv.shards.acl import ACL_OK, script_acl_error
from durakv.shards.args import select_db
from durakv.shards.context import Ctx
from durakv.shards.evict import OOM_MESSAGE
from durakv.shards.keyspace import Keyspace
from durakv.shards.luabytecode import without_tail_calls
from durakv.shards.lualibs import CJson, CMsgpack, LibError, Struct, bit_library
from durakv.shards.resp import (
    Map, NullArray, Push, Raw, ReplyError, SetReply, Simple, Verbatim, format_double,
)
from durakv.shards.script_effects import HeldLogs, hold_publish
from durakv.shards.script_evict import Evicting
from durakv.shards.script_undo import Undo
from durakv.shards.slots import key_slot
from durakv.shards.table import ROUTER, find
from durakv.shards.tracking import script_reads

logger = logging.getLogger("durakv.shards.lua")

LUA_VERSION = "Lua 5.1"
REDIS_VERSION = b"7.0.15"
REDIS_VERSION_NUM = 0x07000F
FUNCTION_LOAD_TIMEOUT_S = 0.5
MAX_REPLY_DEPTH = 512  # nested tables in a script's reply (Redis: the Lua stack limit)
MAX_ERROR_CODES = 128  # distinct codes in Scripting.error_counts (server/stats.py's bound)
MAX_ERROR_CODE_BYTES = 64
COUNTED = b"counted"  # marks an error table whose error INFO errorstats has (see count_error)
_LOG_LEVELS = (logging.DEBUG, logging.INFO, logging.INFO, logging.WARNING)

ERR_UNKNOWN = b"Unknown Redis command called from script"
ERR_ARITY = b"Wrong number of args calling Redis command from script"
ERR_NOSCRIPT_CMD = b"This Redis command is not allowed from script"
ERR_WRITE_RO = b"Write commands are not allowed from read-only scripts."
ERR_NON_LOCAL = b"Script attempted to access a non local key in a cluster node"
ERR_ARGS = b"Lua redis lib command arguments must be strings or integers"
ERR_NO_ARGS = b"Please specify at least one argument for this redis lib call"
# The router's commands a script may call: the shard answers them itself (Scripting._router_command).
SCRIPT_ROUTER_COMMANDS = frozenset({"ping", "select", "publish", "time", "echo"})


def sha1hex(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


def error_message(message: bytes) -> bytes:
    """luaPushErrorBuff of a command's error reply: "CODE text" (ERR when the
    message is one word)."""
    message = message.strip(b"\r\n")
    return message if b" " in message else b"ERR " + message


class ScriptCallError(ReplyError):
    """An error of redis.call itself (not of the command it ran): Redis prefixes ERR."""


class ScriptError(lua51.LuaError):
    """Raised through Lua by redis.call; carries Redis' error table (see lua_boot.lua)."""

    def __init__(self, table: Any) -> None:
        super().__init__(table[b"err"])
        self.table = table


def _unwrap(error: object) -> Any:
    """What a Python callback's exception is to Lua: Redis' error table, or a library's message."""
    if isinstance(error, ScriptError):
        return error.table
    if isinstance(error, LibError):
        return str(error).encode()
    return None


class _JsonNull:
    """cjson.null (a NULL lightuserdata in lua-cjson)."""

    __slots__ = ()


JSON_NULL = _JsonNull()


class Run:
    """One script or function invocation: what redis.call may do and how it converts."""

    __slots__ = ("ctx", "read_only", "resp", "name", "effects_before", "is_eval", "started", "killed", "busy",
                 "command", "reads_reported", "allow_oom", "undo", "non_local")

    def __init__(self, ctx: Ctx, read_only: bool, name: bytes, is_eval: bool, command: list[bytes],
                 allow_oom: bool = False) -> None:
        self.ctx = ctx
        self.allow_oom = allow_oom  # flagged allow-oom: denyoom commands run even over maxmemory
        self.command = command  # the EVAL/FCALL that runs it (FUNCTION STATS shows it)
        self.read_only = read_only
        self.resp = 2
        self.name = name
        self.is_eval = is_eval
        self.effects_before = len(ctx.db.effects)
        self.started = time.monotonic()
        self.killed = False  # SCRIPT KILL / FUNCTION KILL asked for it
        self.busy = False  # past busy-reply-threshold: other requests are answered BUSY
        self.reads_reported = False  # its declared keys went to CLIENT TRACKING (shards/tracking.py)
        # Through the router, on a shard that does not own every slot: what to put back if
        # the script reaches another shard's key (shards/script_undo.py), and whether it did.
        self.undo: Undo | None = None
        self.non_local = False

    def wrote(self) -> bool:
        return len(self.ctx.db.effects) > self.effects_before

    def busy_error(self) -> bytes:
        """What Redis answers every other command while this script runs too long."""
        what = b"SCRIPT KILL" if self.is_eval else b"FUNCTION KILL"
        return b"BUSY Redis is busy running a script. You can only call %s or SHUTDOWN NOSAVE." % what


class Scripting:
    """A keyspace's Lua state: the interpreter, the EVAL script cache and the
    FUNCTION libraries (t_script.py and t_function.py keep their rules)."""

    def __init__(self) -> None:
        self.runtime = lua51.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                          register_eval=False, register_builtins=False)
        self.run: Run | None = None
        self.scripts: dict[bytes, tuple[bytes, Any]] = {}  # sha -> (body, compiled function)
        self.libraries: dict[bytes, Any] = {}  # name -> t_function.Library
        self.registering: Any = None  # the library FUNCTION LOAD is running, if any
        self.load_started = 0.0  # when FUNCTION LOAD started running the library's code
        # Set by a serving shard: called from the Lua hook while a script runs past
        # busy-reply-threshold, to answer other requests (BUSY, SCRIPT KILL) meanwhile.
        self.on_busy: Callable[[Run], None] | None = None
        # Set by the shard's port while a MONITOR exists anywhere (server/monitor.py):
        # called with each command a script runs, as Redis feeds monitors `[0 lua]`.
        self.on_call: Callable[[list[bytes]], None] | None = None
        # Scripts dropped past t_script.MAX_CACHED_SCRIPTS, kept until every router knows
        # (shards/script_evict.py).
        self.evicting = Evicting()
        # PUBLISH from a script, set by the shard's port (server/node.py): delivers
        # through its pub/sub and answers the receivers in that process.
        self.on_publish: Callable[[bytes, bytes], int] | None = None
        # Set with on_publish: a script's PUBLISH answers these receivers at once and its
        # message waits in the keyspace's events until durable (shards/script_effects.py).
        self.count_receivers: Callable[[bytes], int] | None = None
        self.publishes_held = False  # a held PUBLISH was ever queued: Shard.publish_events looks for them
        self.held_logs: HeldLogs | None = None  # redis.log lines of an attempt that may be thrown away
        self.lua_table = lua51.lua_type
        self.boot = self._boot()
        # Errors of the commands scripts ran, by code, for INFO errorstats (the router
        # counts the replies it sends): as Redis counts them when the command fails,
        # also when the script catches them, and not again in the script's reply.
        self.error_counts: dict[bytes, int] = {}

    def _boot(self) -> Any:
        rt = self.runtime
        source = resources.files("durakv.shards").joinpath("lua_boot.lua").read_bytes()
        py = rt.table_from({
            b"call": self._call, b"pcall": self._pcall, b"call_packed": self._call_packed,
            b"without_tail_calls": without_tail_calls, b"unwrap": _unwrap, b"sha1hex": self._sha1hex,
            b"log": self._log, b"setresp": self._setresp, b"set_repl": self._set_repl,
            b"acl_check_cmd": self._acl_check_cmd, b"tick": self._tick, b"load_expired": self._load_expired,
            b"register_function": self._register_function,
            b"version": REDIS_VERSION, b"version_num": REDIS_VERSION_NUM,
            b"libraries": self._libraries(),
        })
        loaded = rt.eval("function(source, name) return loadstring(source, name) end")(source, b"=durakv")
        chunk = loaded[0] if isinstance(loaded, tuple) else loaded
        assert chunk is not None, f"lua_boot.lua does not compile: {loaded}"
        boot = chunk(py)
        return {name: boot[name.encode()] for name in (
            "compile", "run_eval", "run_function", "load_library", "rawget", "is_table", "next")}

    def _libraries(self) -> Any:
        rt = self.runtime

        def is_table(value: Any) -> bool:
            return lua51.lua_type(value) == "table"

        return rt.table_from({
            b"bit": rt.table_from(bit_library()),
            b"cjson": rt.table_from(CJson(rt, is_table, JSON_NULL).library()),
            b"cmsgpack": rt.table_from(CMsgpack(rt, is_table).library()),
            b"struct": rt.table_from(Struct(lua51.lua_type).library()),
        })

    # --- callbacks from Lua ---------------------------------------------------------

    def _tick(self) -> bool:
        """The Lua count hook: serve others once past busy-reply-threshold; True: killed."""
        run = self.run
        if run is None:
            return False
        if not run.killed and self.on_busy is not None:
            threshold_ms = run.ctx.shard.settings.get("busy-reply-threshold", 0)
            if threshold_ms > 0 and (time.monotonic() - run.started) * 1000 >= threshold_ms:
                if not run.busy:
                    run.busy = True
                    logger.warning("script %s: still running after %d ms: answering BUSY meanwhile",
                                   run.name.decode(errors="replace"), threshold_ms)
                self.on_busy(run)
        return run.killed

    def _load_expired(self) -> bool:
        """FUNCTION LOAD's limit on running a library's code (Redis: 500 ms)."""
        return time.monotonic() - self.load_started > FUNCTION_LOAD_TIMEOUT_S

    def _fail(self, message: bytes) -> ScriptError:
        return ScriptError(self.error_table(b"ERR " + message))

    def _sha1hex(self, *args: Any) -> bytes:
        if len(args) != 1:
            raise self._fail(b"wrong number of arguments")
        value = args[0]
        if type(value) is not bytes:
            value = b"%.14g" % value if type(value) in (int, float) else b""
        return sha1hex(value)

    def _log(self, *args: Any) -> None:
        if len(args) < 2:
            raise self._fail(b"redis.log() requires two arguments or more.")
        level = _number(args[0])
        if level is None:
            raise self._fail(b"First argument must be a number (log level).")
        if not 0 <= level <= 3:
            raise self._fail(b"Invalid debug level.")
        text = b" ".join(a if type(a) is bytes else b"%.14g" % a
                         for a in args[1:] if type(a) in (bytes, int, float))
        if self.held_logs is not None:
            self.held_logs.add(_LOG_LEVELS[int(level)], text.decode(errors="replace"))
            return
        logger.log(_LOG_LEVELS[int(level)], "script: %s", text.decode(errors="replace"))

    def _setresp(self, *args: Any) -> None:
        if self.run is None:
            raise self._fail(b"redis.setresp can only be called inside a script invocation")
        if len(args) != 1:
            raise self._fail(b"redis.setresp() requires one argument.")
        resp = _number(args[0])
        if resp not in (2, 3):
            raise self._fail(b"RESP version must be 2 or 3.")
        self.run.resp = int(resp)

    def _set_repl(self, *args: Any) -> None:
        if self.run is None:
            raise self._fail(b"redis.set_repl can only be called inside a script invocation")
        if len(args) != 1:
            raise self._fail(b"redis.set_repl() requires two arguments.")
        flags = _number(args[0])
        if flags is None or int(flags) & ~3:
            raise self._fail(b"Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE.")

    def _acl_check_cmd(self, *args: Any) -> bool:
        if not args:
            raise self._fail(ERR_NO_ARGS)
        argv = [a if type(a) is bytes else b"%.17g" % a for a in args if type(a) in (bytes, int, float)]
        if len(argv) != len(args):
            raise self._fail(ERR_ARGS)
        cmd = find(argv)
        if cmd is None:
            raise self._fail(b"Invalid command passed to redis.acl_check_cmd()")
        user = self.run.ctx.acl_user if self.run is not None else None
        return user is None or user.check(cmd, argv)[0] == ACL_OK

    def _register_function(self, name: bytes, callback: Any, flags: Any, description: Any) -> None:
        """redis.register_function, its arguments checked in lua_boot.lua."""
        registering = self.registering
        if registering is None:
            raise self._fail(b"redis.register_function can only be called on FUNCTION LOAD command")
        registering.register(self, name, callback, flags, description)

    def _call(self, *args: Any) -> Any:
        """redis.call: the reply, or a Lua error carrying Redis' error table."""
        reply, failed = self._pcall_reply(args)
        if failed:
            raise ScriptError(reply)
        return reply

    def _pcall(self, *args: Any) -> Any:
        """redis.pcall: the reply, an error as Redis' error table."""
        return self._pcall_reply(args)[0]

    def _call_packed(self, raising: bool, count: int, table: Any) -> Any:
        """redis.call (raising) or redis.pcall with more arguments than lupa passes
        to a Python callable (lua_boot.lua): they come as a table of `count` items."""
        args = tuple(table[i] for i in range(1, count + 1))
        return self._call(*args) if raising else self._pcall(*args)

    def _pcall_reply(self, args: tuple) -> tuple[Any, bool]:
        run = self.run
        try:
            if run is None:
                raise ScriptCallError(b"redis.call/pcall can only be called inside a script invocation")
            return self._execute(run, args), False
        except ScriptCallError as e:
            return self.count_error(self.error_table(b"ERR " + e.message)), True
        except ReplyError as e:
            return self.count_error(self.error_table(error_message(e.message))), True
        except Exception:
            logger.exception("script %s: redis.call%r failed", run.name if run else b"?", args[:3])
            return self.error_table(b"ERR internal error in redis.call"), True

    def _execute(self, run: Run, args: tuple) -> Any:
        if run.non_local:  # it reached another shard's key: it runs again across shards, nothing more here
            raise ScriptCallError(ERR_NON_LOCAL)
        if not args:
            raise ScriptCallError(ERR_NO_ARGS)
        argv = []
        for a in args:
            t = type(a)
            if t is bytes:
                argv.append(a)
            elif t is int or t is float:
                argv.append(b"%.17g" % a)
            else:
                raise ScriptCallError(ERR_ARGS)
        cmd = find(argv)
        if cmd is None:
            raise ScriptCallError(ERR_UNKNOWN)
        ctx = run.ctx
        shard: Any = ctx.shard  # read once per call; a serving one (Shard, ScratchShard) logs and counts
        counter = getattr(shard, "script_call_stat", None)  # a serving shard's; a replay counts nothing
        stat = counter(cmd) if counter is not None else None
        if run.undo is not None and stat is not None:
            run.undo.note_stat(stat)  # a run put back counts nothing (shards/script_undo.py)
        handler = cmd.handler if cmd.where != ROUTER else None
        on_shard = handler is not None
        try:
            if not cmd.arity_ok(len(argv)):
                raise ScriptCallError(ERR_ARITY)
            if "noscript" in cmd.flags:
                raise ScriptCallError(ERR_NOSCRIPT_CMD)
            if not on_shard and cmd.name not in SCRIPT_ROUTER_COMMANDS:
                stat = None  # a router's command no shard can run: unknown, counted nowhere
                raise ScriptCallError(ERR_UNKNOWN)
            if ctx.acl_user is not None:
                denied = script_acl_error(ctx.acl_user, cmd, argv, ctx.acl_denials)
                if denied is not None:
                    raise ScriptCallError(denied)
            if run.read_only and (cmd.is_write or "may_replicate" in cmd.flags):
                raise ScriptCallError(ERR_WRITE_RO)  # may_replicate too, so CLIENT PAUSE WRITE lets RO scripts run
            if on_shard:
                noreplicas = getattr(shard, "noreplicas", None) if cmd.is_write else None
                if noreplicas is not None:
                    raise ReplyError(noreplicas)  # scriptVerifyWriteCommandAllow (min-replicas-to-write)
                if ctx.db.oom and not run.allow_oom and "denyoom" in cmd.flags and not run.wrote():
                    raise ReplyError(OOM_MESSAGE)  # scriptVerifyOOM: only before the script's first write
                first, last = shard.slot_range
                indexes = cmd.key_indexes(argv)
                for i in indexes:
                    if not first <= key_slot(argv[i]) <= last:
                        if run.undo is not None and run.undo.usable:
                            run.non_local = run.killed = True  # killed: a pcall cannot go on past it
                        raise ScriptCallError(ERR_NON_LOCAL)
                if run.undo is not None and cmd.is_write:
                    run.undo.note_write(ctx, cmd, argv, indexes)
        except ReplyError:
            if stat is not None:
                stat.rejected += 1  # Redis' scriptCall: refused before call(), a rejected call
            raise
        if self.on_call is not None:
            self.on_call(argv)
        proto = ctx.proto
        ctx.proto = run.resp
        start_ns = time.perf_counter_ns()
        try:
            if handler is not None:
                if cmd.name in ("xread", "xreadgroup"):
                    _refuse_block(cmd.name, argv)
                result = handler(ctx, argv)
            else:
                result = self._router_command(ctx, cmd.name, argv)
        except ReplyError:
            if stat is not None:
                stat.failed += 1
            raise
        finally:
            ctx.proto = proto
            if stat is not None:  # counted and logged as Redis' call() does a script's commands
                duration_us = (time.perf_counter_ns() - start_ns) // 1000
                stat.calls += 1
                stat.usec += duration_us
                if run.undo is None:
                    shard.log_script_call(cmd, argv, duration_us)
                else:
                    run.undo.hold_call(shard, cmd, argv, duration_us)  # logged if the run counts
        if cmd.is_readonly and ctx.db.tracking and not run.reads_reported:
            run.reads_reported = True
            ctx.db.events.extend(script_reads(run.command, ctx.client_id))
        return self.to_lua(result, run.resp)

    def _router_command(self, ctx: Ctx, name: str, argv: list[bytes]) -> Any:
        """PING, SELECT, PUBLISH, TIME and ECHO, the router's commands a script may run,
        answered here (TIME from this shard's clock: the host's, as the router's)."""
        if name == "time":
            now_us = time.time_ns() // 1000
            return [b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)]
        if name == "echo":
            return argv[1]
        if name == "ping":
            if len(argv) > 2:
                raise ReplyError(b"ERR wrong number of arguments for 'ping' command")
            return Simple(b"PONG") if len(argv) == 1 else argv[1]
        if name == "select":  # database 0 only, as in Redis Cluster
            select_db(argv[1])
            return Simple(b"OK")
        assert name == "publish", f"{name} is not one of SCRIPT_ROUTER_COMMANDS"
        if self.on_publish is None:
            raise ScriptCallError(ERR_UNKNOWN)  # no pub/sub here (a replay, a test's keyspace)
        if self.count_receivers is None:
            return self.on_publish(argv[1], argv[2])
        hold_publish(ctx.db.events, argv[1], argv[2])  # sent once durable, if this attempt counts
        self.publishes_held = True
        return self.count_receivers(argv[1])

    def count_error(self, table: Any) -> Any:
        """Count a redis.call/pcall error (an error table) by its code and mark the table."""
        code = table[b"err"][:MAX_ERROR_CODE_BYTES].split(b" ", 1)[0]
        counts = self.error_counts
        run = self.run
        if run is not None and run.undo is not None:
            run.undo.note_error(counts, code)  # a run put back counts nothing (shards/script_undo.py)
        if code in counts or len(counts) < MAX_ERROR_CODES:
            counts[code] = counts.get(code, 0) + 1
            table[COUNTED] = code
        return table

    def uncount_reply(self, value: Any) -> None:
        """The script replies with an error counted when its command failed: the
        router counts that reply, so it is taken back here (counted once, as in Redis)."""
        if self.lua_table(value) != "table":
            return
        code = self.boot["rawget"](value, COUNTED)
        if type(code) is bytes and self.error_counts.get(code, 0) > 0:
            self.error_counts[code] -= 1

    # --- conversions ---------------------------------------------------------------

    def error_table(self, message: bytes) -> Any:
        return self.runtime.table_from({b"err": message})

    def to_lua(self, value: Any, resp: int) -> Any:
        """A command's reply as Redis hands it to Lua (redisProtocolToLuaType)."""
        t = type(value)
        if t is bytes:
            return value
        if t is int:
            return value
        if t is bytearray or t is memoryview:
            return bytes(value)
        if value is None or t is NullArray:
            return None if resp == 3 else False
        rt = self.runtime
        if t is list or t is tuple or t is Push:
            items = value.items if t is Push else value
            return rt.table_from([self.to_lua(v, resp) for v in items])
        if t is Simple:
            return rt.table_from({b"ok": value.text})
        if t is Raw:
            return self.to_lua(parse_reply(value.data, resp), resp)
        if t is float:
            if resp == 2:
                return format_double(value)
            return rt.table_from({b"double": value})
        if t is bool:
            if resp == 2:
                return 1 if value else 0
            return value
        if t is Map:
            items = value.items
            if resp == 2:
                return rt.table_from([self.to_lua(v, resp) for v in items])
            inner = rt.table()
            for i in range(0, len(items), 2):
                inner[self.to_lua(items[i], resp)] = self.to_lua(items[i + 1], resp)
            return rt.table_from({b"map": inner})
        if t is SetReply:
            items = value.items
            if resp == 2:
                return rt.table_from([self.to_lua(v, resp) for v in items])
            inner = rt.table()
            for item in items:
                inner[self.to_lua(item, resp)] = True
            return rt.table_from({b"set": inner})
        if t is Verbatim:
            if resp == 2:
                return value.data
            return rt.table_from({b"verbatim_string": rt.table_from(
                {b"format": value.fmt, b"string": value.data})})
        if t is BigNumber:
            if resp == 2:
                return value.text
            return rt.table_from({b"big_number": value.text})
        if isinstance(value, ReplyError):
            return self.error_table(error_message(value.message))
        raise TypeError(f"cannot hand a {t.__name__} reply to Lua")

    def reply(self, value: Any, proto: int, script_resp: int, depth: int = 0) -> bytes:
        """A script's return value as the client's reply (luaReplyToRedisReply)."""
        if depth > MAX_REPLY_DEPTH:
            return b"-ERR reached lua stack limit\r\n"
        t = type(value)
        if t is bytes:
            return b"$%d\r\n%b\r\n" % (len(value), value)
        if t is bool:
            if script_resp == 2:
                return b":1\r\n" if value else (b"$-1\r\n" if proto == 2 else b"_\r\n")
            if proto == 2:
                return b":1\r\n" if value else b":0\r\n"
            return b"#t\r\n" if value else b"#f\r\n"
        if t is int or t is float:
            return b":%d\r\n" % _truncate(value)
        if value is None or self.lua_table(value) != "table":
            return b"$-1\r\n" if proto == 2 else b"_\r\n"
        rawget = self.boot["rawget"]
        err = rawget(value, b"err")
        if type(err) is bytes:
            return b"-%b\r\n" % err.replace(b"\r", b" ").replace(b"\n", b" ")
        ok = rawget(value, b"ok")
        if type(ok) is bytes:
            return b"+%b\r\n" % ok.replace(b"\r", b" ").replace(b"\n", b" ")
        double = rawget(value, b"double")
        if type(double) in (int, float):
            text = format_double(float(double))
            return b",%b\r\n" % text if proto == 3 else b"$%d\r\n%b\r\n" % (len(text), text)
        big = rawget(value, b"big_number")
        if type(big) is bytes:
            big = big.replace(b"\r", b" ").replace(b"\n", b" ")
            return b"(%b\r\n" % big if proto == 3 else b"$%d\r\n%b\r\n" % (len(big), big)
        verbatim = rawget(value, b"verbatim_string")
        if self.lua_table(verbatim) == "table":
            fmt = rawget(verbatim, b"format")
            text = rawget(verbatim, b"string")
            if type(fmt) is bytes and type(text) is bytes:
                if proto == 3:
                    body = fmt[:3] + b":" + text
                    return b"=%d\r\n%b\r\n" % (len(body), body)
                return b"$%d\r\n%b\r\n" % (len(text), text)
        next_ = self.boot["next"]
        mapping = rawget(value, b"map")
        if self.lua_table(mapping) == "table":
            parts = []
            key = None
            while True:
                step = next_(mapping, key)
                if step is None:
                    break
                key, item = step
                parts.append(self.reply(key, proto, script_resp, depth + 1))
                parts.append(self.reply(item, proto, script_resp, depth + 1))
            head = b"%%%d\r\n" % (len(parts) // 2) if proto == 3 else b"*%d\r\n" % len(parts)
            return head + b"".join(parts)
        members = rawget(value, b"set")
        if self.lua_table(members) == "table":
            parts = []
            key = None
            while True:
                step = next_(members, key)
                if step is None:
                    break
                key = step[0]
                parts.append(self.reply(key, proto, script_resp, depth + 1))
            return (b"~%d\r\n" if proto == 3 else b"*%d\r\n") % len(parts) + b"".join(parts)
        parts = []
        i = 1
        while True:
            item = rawget(value, i)
            if item is None:
                break
            parts.append(self.reply(item, proto, script_resp, depth + 1))
            i += 1
        return b"*%d\r\n" % len(parts) + b"".join(parts)

    def failure(self, err: Any, name: bytes) -> ReplyError:
        """The error a failed script replies with (luaCallFunction's error branch)."""
        if self.lua_table(err) != "table":
            text = err if type(err) is bytes else b"execution failure"
            return ReplyError(b"ERR Error running script %s, %s" % (name, text[:100]))
        rawget = self.boot["rawget"]
        message = rawget(err, b"err")
        message = message if type(message) is bytes else b"ERR unknown error"
        source, line = rawget(err, b"source"), rawget(err, b"line")
        if source is not None and line is not None:
            message += b" script: %s, on %s:%s." % (name, _text(source), _text(line))
        return ReplyError(message)


class BigNumber:
    """A RESP3 big number `(` inside a parsed reply."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


def _number(value: Any) -> float | None:
    """lua_tonumber: a number, or a string that reads as one."""
    if type(value) in (int, float):
        return value
    if type(value) is bytes:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is float and value.is_integer():
        return b"%d" % value
    return str(value).encode()


def _truncate(number: int | float) -> int:
    """(long long)lua_Number: C truncation toward zero; out of range (and NaN)
    gives what x86-64's conversion gives, LLONG_MIN."""
    if number != number or not -(1 << 63) <= number < (1 << 63):
        return -(1 << 63)
    return int(number)


def parse_reply(data: bytes, resp: int) -> object:
    """A pre-encoded reply (`Raw`) as reply values, for converting to Lua."""
    value, _ = _parse(data, 0)
    return value


def _parse(buf: bytes, pos: int) -> tuple[object, int]:
    end = buf.index(b"\r\n", pos)
    kind = buf[pos:pos + 1]
    head = buf[pos + 1:end]
    after = end + 2
    if kind == b"+":
        return Simple(head), after
    if kind == b"-":
        return ReplyError(head), after
    if kind == b":":
        return int(head), after
    if kind == b"_":
        return None, after
    if kind == b"#":
        return head == b"t", after
    if kind == b",":
        return float(head), after
    if kind == b"(":
        return BigNumber(head), after
    if kind in (b"$", b"="):
        size = int(head)
        if size < 0:
            return None, after
        body = buf[after:after + size]
        if kind == b"=":
            return Verbatim(body[4:], body[:3]), after + size + 2
        return body, after + size + 2
    count = int(head)
    if count < 0:
        return NullArray(), after
    items = []
    for _ in range(count * 2 if kind == b"%" else count):
        item, after = _parse(buf, after)
        items.append(item)
    if kind == b"%":
        return Map(items), after
    if kind == b"~":
        return SetReply(items), after
    return items, after


def _refuse_block(name: str, argv: list[bytes]) -> None:
    """XREAD/XREADGROUP with BLOCK from a script: Redis refuses them when it parses
    the option (there is no sense in blocking a script), before the STREAMS list."""
    for i in range(1, len(argv) - 1):
        option = argv[i].upper()
        if option == b"STREAMS":
            return
        if option == b"BLOCK":
            raise ReplyError(b"ERR %s command is not allowed with BLOCK option from scripts" % name.encode())


def scripting_of(db: Keyspace) -> Scripting:
    """The keyspace's Lua state, created on first use."""
    state = db.scripting
    if state is None:
        state = db.scripting = Scripting()
    assert isinstance(state, Scripting)
    return state


def in_script(db: Keyspace) -> bool:
    """Whether a command runs from a script or function (Redis' CLIENT_SCRIPT flag)."""
    state = db.scripting
    return state is not None and cast(Scripting, state).run is not None
