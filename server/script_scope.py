"""Which scripts surely keep to their declared keys (issue 16, the script fence).

A script sent to the one shard of its declared keys may still reach another shard's
key; until its reply is in, the router does not send its client's requests for other
shards (server/script_retry.py `holds`), since one Redis would run them after it.
That wait costs a pipeline of scripts spread over shards one round trip per change of
shard, so it is skipped for a script whose text shows it cannot reach an undeclared key:
a conservative reading of its tokens (not a Lua parser, not what it computes). It keeps
to its keys when

- every `redis.call(` / `redis.pcall(` names its command as a string literal, and the
  command touches no key (PUBLISH...) or has fixed key positions (shards/table.py: no
  subcommands, no movable keys, no keys read by pattern) each of whose arguments is a
  *key name*: `KEYS[<n>]`, `KEYS[i]` with `i` the index of a loop over KEYS
  (`for i, k in ipairs(KEYS) do`, `for i = 1, #KEYS do`), a loop's value over KEYS (`k`
  there), or a local bound once at the chunk's top level to KEYS entries
  (`local a, b = KEYS[1], KEYS[2]`), used after it; a call's last argument that may give
  several values (`unpack(ARGV)`) must lie past the last key position, unless it is
  `unpack(KEYS)`;
- such a name is declared nowhere else (no local, loop variable, parameter or function
  of the same name) and never assigned (nor `ipairs`/`unpack`, nor KEYS' entries);
- `redis` appears only as `redis.<member>` of the members that touch no key, and `KEYS`
  only in the forms above or `#KEYS`;
- none of the names through which Lua reaches a global by another name appears, even
  inside a string or comment (`_G`, `getfenv`, `rawget`, `load`...).

Anything else (a call through a variable, a computed key) is treated as possibly
reaching. The verdicts are kept by body and by sha (an EVALSHA is judged by the body an
EVAL or SCRIPT LOAD showed this router), bounded. A function (FCALL) is judged by its
callback's body in its library's text (`function_verdicts`: the callback's parameters
read as KEYS and ARGV; a library with anything but `redis.register_function` calls at
its top level is not judged): a FUNCTION LOAD through this router shows it, and every
router asks the shards for their libraries once its links are up and after a FUNCTION
change through another process (server/script_cache.py refresh_functions); verdicts
last until any FUNCTION change through any process.
"""

from __future__ import annotations

import re

from durakv.shards.luaenv import sha1hex
from durakv.shards.resp import ReplyError
from durakv.shards.t_function import parse_metadata
from durakv.shards.table import find

MAX_VERDICTS = 4096  # bodies and shas remembered; all forgotten past it (only costs a wait)
MAX_BODY_BYTES = 8 * 1024  # longer scripts are not read (reading 8 KiB: ~6 ms of router CPU, load 7)
MAX_LIBRARY_BYTES = 32 * 1024  # FUNCTION LOAD's text read for its functions' verdicts (a rare command)
MAX_JUDGED_LIBRARIES = 256  # a router judges the shards' libraries up to this many (each: MAX_LIBRARY_BYTES)
MAX_SETTLED_SEEN = 64  # FUNCTION changes' settled notices remembered (a notice told again is judged once)
MAX_TARGET_TOKENS = 64  # a list of assignment targets longer than this is taken for one (conservative)

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
_TOKEN = re.compile(rb"""
    (?P<space>\s+)
  | (?P<comment>--(?:\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|[^\n]*))
  | (?P<long>\[(?P<leq>=*)\[.*?\](?P=leq)\])
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|[-+*/%^\#<>=(){}\[\];:,.])
""", re.X | re.S)
_COMMAND_NAME = re.compile(rb"[A-Za-z_]+")
_KEYWORDS = frozenset(b"and break do else elseif end false for function if in local nil not or repeat "
                      b"return then true until while".split())
_OPENERS = frozenset({b"do", b"then", b"function", b"repeat"})
_CLOSERS = frozenset({b"end", b"until", b"elseif"})
# What may follow a complete expression and starts the next statement (or ends the chunk).
_STATEMENT_STARTS = frozenset({b";", b"local", b"if", b"for", b"while", b"do", b"return", b"repeat",
                               b"function", b"end", b"break", b"else", b"elseif", b"until"})
_PAIRS = {b"(": b")", b"[": b"]", b"{": b"}"}
NAME, KEYWORD, STRING, NUMBER, OP = range(5)

Token = tuple[int, bytes]


def tokens(body: bytes) -> list[Token] | None:
    """Lua's tokens (strings by their content), or None for text Lua would not read."""
    out: list[Token] = []
    pos, end = 0, len(body)
    while pos < end:
        m = _TOKEN.match(body, pos)
        if m is None:
            return None
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "name":
            out.append((KEYWORD if text in _KEYWORDS else NAME, text))
        elif kind == "str":
            out.append((STRING, text[1:-1]))
        elif kind == "long":
            out.append((STRING, text[len(m.group("leq")) + 2:-len(m.group("leq")) - 2]))
        elif kind == "num":
            out.append((NUMBER, text))
        elif kind == "op":
            out.append((OP, text))
    return out


def keeps_to_its_keys(body: bytes) -> bool:
    """Whether the script's text shows every key it touches is one of its KEYS."""
    if len(body) > MAX_BODY_BYTES or _BANNED.search(body):
        return False
    toks = tokens(body)
    if toks is None:
        return False
    reading = _Reading(toks)
    return reading.matched() and reading.keeps()


def function_verdicts(code: bytes) -> dict[bytes, bool]:
    """For a library's text (FUNCTION LOAD): each function it registers -> whether its
    body keeps to its keys, read as a script's whose KEYS and ARGV are the callback's
    parameters. Known only for a library that is nothing but `redis.register_function`
    calls of an inline `function(keys, args) ... end`, positional or as a table
    (`{function_name=..., callback=..., flags=..., description=...}`): anything else
    at its top level (a helper, a local) may be called from a body, so then none is
    known (empty: every FCALL of its functions might reach)."""
    try:
        shebang_bytes = parse_metadata(code)[2]
    except ReplyError:
        return {}
    text = code[shebang_bytes:]
    if len(text) > MAX_LIBRARY_BYTES or _BANNED.search(text):
        return {}
    toks = tokens(text)
    if toks is None:
        return {}
    library = _Reading(toks)
    if not library.matched():
        return {}
    verdicts: dict[bytes, bool] = {}
    i = 0
    while i < len(toks):
        if library.is_(i, OP, b";"):
            i += 1
            continue
        if not (library.is_(i, NAME, b"redis") and library.is_(i + 1, OP, b".")
                and library.is_(i + 2, NAME, b"register_function")):
            return {}
        opener = i + 3
        close = library.partner.get(opener)
        if close is None:
            return {}
        found = (_positional(library, opener + 1, close) if library.is_(opener, OP, b"(")
                 else _table_form(library, opener + 1, close))
        if found is None:
            return {}
        name, callback = found
        verdicts[name] = _callback_keeps(library, callback)
        i = close + 1
    return verdicts


def _positional(library: _Reading, i: int, close: int) -> tuple[bytes, int] | None:
    """`('name', function(...) ... end)`: the name and the callback's `function` token."""
    if not (library.is_(i, STRING) and library.is_(i + 1, OP, b",") and library.is_(i + 2, KEYWORD, b"function")):
        return None
    if library.partner.get(i + 2) != close - 1:
        return None
    return library.toks[i][1], i + 2


def _table_form(library: _Reading, i: int, close: int) -> tuple[bytes, int] | None:
    """`{function_name='name', callback=function(...) ... end, flags={...}, description='...'}`."""
    name: bytes | None = None
    callback = -1
    while i < close:
        if not (library.is_(i, NAME) and library.is_(i + 1, OP, b"=")):
            return None
        field = library.toks[i][1]
        value = i + 2
        if field == b"function_name" and library.is_(value, STRING):
            name, end = library.toks[value][1], value + 1
        elif field == b"description" and library.is_(value, STRING):
            end = value + 1
        elif field == b"flags" and library.is_(value, OP, b"{"):
            end = library.partner[value] + 1
        elif field == b"callback" and library.is_(value, KEYWORD, b"function"):
            callback, end = value, library.partner[value] + 1
        else:
            return None
        if end < close and not (library.is_(end, OP, b",") or library.is_(end, OP, b";")):
            return None
        i = end + 1
    return None if name is None or callback < 0 else (name, callback)


def _callback_keeps(library: _Reading, function: int) -> bool:
    """The callback `function(keys, args) BODY end` at `function`: BODY with its
    parameters read as KEYS and ARGV (a body naming KEYS or ARGV itself: unknown)."""
    if not library.is_(function + 1, OP, b"("):
        return False
    params_end = library.partner[function + 1]
    params = library.toks[function + 2:params_end]
    names = [text for kind, text in params[::2] if kind == NAME]
    if (len(params) > 3 or len(names) != (len(params) + 1) // 2
            or any(params[j] != (OP, b",") for j in range(1, len(params), 2))
            or len(set(names)) != len(names) or {b"redis", b"KEYS", b"ARGV"} & set(names)):
        return False
    as_script = dict(zip(names, (b"KEYS", b"ARGV")))
    body: list[Token] = []
    for j in range(params_end + 1, library.partner[function]):
        kind, text = library.toks[j]
        if kind == NAME and not library._field(j):
            if text in (b"KEYS", b"ARGV"):
                return False
            text = as_script.get(text, text)
        body.append((kind, text))
    reading = _Reading(body)
    return reading.matched() and reading.keeps()


class _Reading:
    """One script's tokens and what is found in them (see the module's docstring)."""

    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.partner: dict[int, int] = {}  # bracket or block opener <-> its closer, by token index
        self.declared: dict[bytes, int] = {}  # name -> how many times declared (local, loop, parameter...)
        self.bindings: set[int] = set()  # token indexes of the key names' own declarations
        self.key_names: dict[bytes, tuple[int, int]] = {}  # local or loop value -> its scope [from, to)
        self.indexes: dict[bytes, tuple[int, int]] = {}  # loop index over KEYS -> its scope
        self.keys_ok: set[int] = set()  # indexes of KEYS tokens read in a known form

    def tok(self, i: int) -> Token:
        return self.toks[i] if 0 <= i < len(self.toks) else (OP, b"")

    def is_(self, i: int, kind: int, text: bytes | None = None) -> bool:
        k, t = self.tok(i)
        return k == kind and (text is None or t == text)

    def matched(self) -> bool:
        """Pairs brackets and blocks (`partner`); False when they do not pair up."""
        brackets: list[int] = []
        blocks: list[int] = []
        for i, (kind, text) in enumerate(self.toks):
            if kind == OP and text in _PAIRS:
                brackets.append(i)
            elif kind == OP and text in (b")", b"]", b"}"):
                if not brackets or _PAIRS[self.toks[brackets[-1]][1]] != text:
                    return False
                self.partner[brackets.pop()] = i
            elif kind == KEYWORD and text in _CLOSERS:
                if not blocks:
                    return False
                self.partner[blocks.pop()] = i
            if kind == KEYWORD and text in _OPENERS:
                blocks.append(i)
        return not brackets and not blocks

    def keeps(self) -> bool:
        self._declarations()
        for name in (b"ipairs", b"unpack"):
            if self.declared.get(name):
                return False
        for names in (self.key_names, self.indexes):
            for name in list(names):
                if self.declared.get(name, 0) != 1:
                    del names[name]
        toks = self.toks
        for i, (kind, text) in enumerate(toks):
            if kind != NAME or self._field(i):
                continue
            if text in self.key_names or text in self.indexes or text in (b"ipairs", b"unpack"):
                if i not in self.bindings and self._assigned(i + 1):
                    self.key_names.pop(text, None)
                    self.indexes.pop(text, None)
                    if text in (b"ipairs", b"unpack"):
                        return False
        for i, (kind, text) in enumerate(toks):
            if kind != NAME or self._field(i):
                continue
            if text == b"redis" and not self._redis_member(i):
                return False
        for i, (kind, text) in enumerate(toks):
            if kind == NAME and text == b"KEYS" and not self._field(i) and not self._keys_read(i):
                return False
        return True

    def _field(self, i: int) -> bool:
        """The name at i follows `.` or `:`: a field's, not a variable's."""
        return self.is_(i - 1, OP, b".") or self.is_(i - 1, OP, b":")

    def _declarations(self) -> None:
        """Counts every declared name; finds the key names and loop indexes over KEYS."""
        toks = self.toks
        depth = 0
        for i, (kind, text) in enumerate(toks):
            if kind != KEYWORD:
                continue
            if text == b"local":
                if self.is_(i + 1, KEYWORD, b"function"):
                    self._declare(i + 2)
                else:
                    names = self._name_list(i + 1)
                    if depth == 0:
                        self._local_binding(i + 1, names)
            elif text == b"for":
                names = self._name_list(i + 1)
                self._loop_binding(i + 1, names)
            elif text == b"function":
                j = i + 1
                if self.is_(j, NAME) and not self.is_(j + 1, OP, b".") and not self.is_(j + 1, OP, b":"):
                    self._declare(j)  # `function f()` assigns f
                while self.is_(j, NAME) or self.is_(j, OP, b".") or self.is_(j, OP, b":"):
                    j += 1  # the function's name: a.b.c:d
                if self.is_(j, OP, b"("):
                    self._name_list(j + 1)
            if text in _OPENERS:
                depth += 1
            elif text in _CLOSERS:
                depth -= 1

    def _declare(self, i: int) -> None:
        if self.is_(i, NAME):
            name = self.toks[i][1]
            self.declared[name] = self.declared.get(name, 0) + 1

    def _name_list(self, i: int) -> list[int]:
        """Declares NAME {, NAME} from i; their token indexes."""
        found = []
        while self.is_(i, NAME):
            self._declare(i)
            found.append(i)
            if not self.is_(i + 1, OP, b","):
                break
            i += 2
        return found

    def _keys_entry(self, i: int) -> bool:
        """KEYS [ <number> ] at i."""
        return (self.is_(i, NAME, b"KEYS") and self.is_(i + 1, OP, b"[") and self.is_(i + 2, NUMBER)
                and self.is_(i + 3, OP, b"]"))

    def _local_binding(self, first: int, names: list[int]) -> None:
        """`local a, b = KEYS[1], KEYS[2]` (a whole statement) at the chunk's top level."""
        j = names[-1] + 1 if names else first
        if not names or not self.is_(j, OP, b"="):
            return
        j += 1
        for n, _ in enumerate(names):
            if not self._keys_entry(j):
                return
            j += 4
            if n < len(names) - 1:
                if not self.is_(j, OP, b","):
                    return
                j += 1
        kind, text = self.tok(j)
        if not (j >= len(self.toks) or kind == NAME or text in _STATEMENT_STARTS):
            return
        for i in names:
            self.key_names[self.toks[i][1]] = (j, len(self.toks))
            self.bindings.add(i)

    def _loop_binding(self, first: int, names: list[int]) -> None:
        """`for i, k in ipairs(KEYS) do` or `for i = <n>, #KEYS do`: their scope is the body."""
        if not names:
            return
        j = names[-1] + 1
        if (len(names) <= 2 and self.is_(j, KEYWORD, b"in") and self.is_(j + 1, NAME, b"ipairs")
                and self.is_(j + 2, OP, b"(") and self.is_(j + 3, NAME, b"KEYS") and self.is_(j + 4, OP, b")")
                and self.is_(j + 5, KEYWORD, b"do")):
            scope = (j + 6, self.partner[j + 5])
            self.keys_ok.add(j + 3)
            self.indexes[self.toks[names[0]][1]] = scope
            if len(names) == 2:
                self.key_names[self.toks[names[1]][1]] = scope
            self.bindings.update(names)
        elif (len(names) == 1 and self.is_(j, OP, b"=") and self.is_(j + 1, NUMBER) and self.is_(j + 2, OP, b",")
              and self.is_(j + 3, OP, b"#") and self.is_(j + 4, NAME, b"KEYS") and self.is_(j + 5, KEYWORD, b"do")):
            self.keys_ok.add(j + 4)
            self.indexes[self.toks[names[0]][1]] = (j + 6, self.partner[j + 5])
            self.bindings.add(names[0])

    def _assigned(self, i: int) -> bool:
        """Whether the variable ending before i may be an assignment's target: the tokens
        from i, as far as a list of variables goes (`, a.b[c], d`), reach `=`."""
        toks = self.toks
        after_separator = False  # a name continues the list only after `.`, `:` or `,`
        for _ in range(MAX_TARGET_TOKENS):
            if i >= len(toks):
                return False
            kind, text = toks[i]
            if kind == OP and text == b"=":
                return True
            if kind == NAME and after_separator:
                after_separator = False
            elif kind == OP and text in (b".", b":", b","):
                after_separator = True
            elif kind == OP and text in _PAIRS:
                i = self.partner[i]
                after_separator = False
            elif kind == STRING:
                after_separator = False
            else:
                return False
            i += 1
        return True

    def _redis_member(self, i: int) -> bool:
        """`redis.<safe member>`, or `redis.call(` / `redis.pcall(` whose keys are key names."""
        if not self.is_(i + 1, OP, b".") or not self.is_(i + 2, NAME):
            return False
        member = self.toks[i + 2][1]
        if member not in (b"call", b"pcall"):
            return member in SAFE_MEMBERS
        if not self.is_(i + 3, OP, b"("):
            return False
        return self._call_keeps_to_keys(i + 3, self.partner[i + 3])

    def _call_keeps_to_keys(self, open_: int, close: int) -> bool:
        args: list[tuple[int, int]] = []  # each argument's tokens [from, to)
        j = start = open_ + 1
        while j < close:
            kind, text = self.toks[j]
            if kind == OP and text in _PAIRS:
                j = self.partner[j]
            elif kind == OP and text == b",":
                args.append((start, j))
                start = j + 1
            j += 1
        args.append((start, close))
        first, end = args[0]
        if end != first + 1 or not self.is_(first, STRING) or not _COMMAND_NAME.fullmatch(self.toks[first][1]):
            return False
        name = self.toks[first][1].lower()
        if name in KEYLESS:
            return True
        cmd = find([name])
        if (cmd is None or cmd.subcommands or cmd.keys_fn is not None or cmd.reads_undeclared_keys is not None
                or cmd.first_key <= 0):
            return False
        args = args[1:]  # args[p - 1] is argv[p]
        n = len(args)
        tail = False  # the last argument may give any number of values (a call, `...`)
        unpack_keys = False  # it is `unpack(KEYS)`: every value a declared key
        if args:
            last_from, last_to = args[-1]
            end_kind, end_text = self.tok(last_to - 1)
            tail = end_text == b"..." or (last_to - last_from > 1 and (
                end_kind == STRING or (end_kind == OP and end_text in (b")", b"}"))))
            unpack_keys = (last_to - last_from == 4 and self.is_(last_from, NAME, b"unpack")
                           and self.is_(last_from + 1, OP, b"(") and self.is_(last_from + 2, NAME, b"KEYS")
                           and self.is_(last_from + 3, OP, b")"))
            if unpack_keys:
                self.keys_ok.add(last_from + 2)
        if tail:  # positions from n on come from the tail
            if (cmd.last_key < 0 or cmd.last_key >= n) and not unpack_keys:
                return False
            last = n - 1 if cmd.last_key < 0 else min(cmd.last_key, n - 1)
        else:
            last = cmd.last_key if cmd.last_key >= 0 else n + 1 + cmd.last_key
        for p in range(cmd.first_key, min(last, n) + 1, cmd.key_step):
            if not self._key_name(*args[p - 1]):
                return False
        return True

    def _key_name(self, start: int, end: int) -> bool:
        """Whether tokens [start, end) are a key name (see the module's docstring)."""
        kind, text = self.tok(start)
        if end == start + 1 and kind == NAME:
            return _in_scope(self.key_names.get(text), start)
        if end == start + 4 and self.is_(start, NAME, b"KEYS") and self.is_(start + 1, OP, b"[") \
                and self.is_(start + 3, OP, b"]"):
            index = self.tok(start + 2)
            return index[0] == NUMBER or (index[0] == NAME and _in_scope(self.indexes.get(index[1]), start))
        return False

    def _keys_read(self, i: int) -> bool:
        """A KEYS token in a known form, read and not assigned."""
        if i in self.keys_ok or (self.is_(i - 1, OP, b"#") and not self.is_(i + 1, OP, b"[")):
            return True
        if not (self.is_(i + 1, OP, b"[") and self.is_(i + 3, OP, b"]")):
            return False
        index = self.tok(i + 2)
        if index[0] != NUMBER and not (index[0] == NAME and _in_scope(self.indexes.get(index[1]), i)):
            return False
        return not self._assigned(i + 4)


def _in_scope(scope: tuple[int, int] | None, i: int) -> bool:
    return scope is not None and scope[0] <= i < scope[1]


class ScriptScopes:
    """The verdicts of keeps_to_its_keys, by body and by sha (bounded), and the shards
    known to have a sha's script cached (`homes`): an EVALSHA sent to a shard not known
    to have it may be answered NOSCRIPT and sent again once found elsewhere
    (server/script_retry.py), so its client's later requests, for any shard, wait for it.
    Learnt from this router's SCRIPT LOADs, EVALSHA replies and loads after a NOSCRIPT;
    forgotten on a SCRIPT FLUSH through any process (server/script_cache.py tells every
    router before its reply) and, for one shard, whenever the link to it (re)connects
    (a restarted shard's cache is empty), and for the scripts a shard dropped past its
    cache's bound (shards/t_script.py MAX_CACHED_SCRIPTS) once told on its link
    (shards/script_evict.py: what was sent before runs from the body the shard keeps)."""

    __slots__ = ("by_body", "by_sha", "homes", "by_function", "libraries", "functions_generation",
                 "functions_asked", "settled")

    def __init__(self) -> None:
        self.by_body: dict[bytes, bool] = {}
        self.by_sha: dict[bytes, bool] = {}
        # Function name -> verdict, from FUNCTION LOADs through this router that succeeded
        # and the shards' libraries (judge_shards_libraries); all forgotten on a FUNCTION change
        # through any other process, a reloaded library's own on a LOAD through this router (server/script_cache.py).
        self.by_function: dict[bytes, bool] = {}
        self.libraries: dict[bytes, list[bytes]] = {}  # library name -> its judged functions
        # Bumped on every FUNCTION change seen: the shards' libraries asked for before it
        # (server/script_cache.py refresh_functions) are not judged when they come back.
        self.functions_generation = 0
        self.functions_asked = -1  # the generation whose libraries are being asked for
        self.settled: dict[bytes, None] = {}  # ids of the latest changes settled elsewhere (server/script_cache.py)
        self.homes: dict[bytes, int] = {}  # sha (lower case) -> bit mask of the shards that have it

    def cached_on(self, sha: bytes, shard: int) -> bool:
        return bool(self.homes.get(sha.lower(), 0) >> shard & 1)

    def note_loaded(self, body: bytes, shards: int) -> None:
        """SCRIPT LOAD through this router: every shard has it."""
        self.note_cached(sha1hex(body), (1 << shards) - 1)

    def note_cached(self, sha: bytes, shards_mask: int) -> None:
        homes = self.homes
        if len(homes) >= MAX_VERDICTS:
            homes.clear()
        sha = sha.lower()
        homes[sha] = homes.get(sha, 0) | shards_mask

    def forget_shard(self, shard: int) -> None:
        """The link to a shard (re)connected: a new process, or one after a failover, whose
        cache may have lost any script (a kill -9 empties it)."""
        keep = ~(1 << shard)
        homes = self.homes
        for sha, mask in homes.items():
            homes[sha] = mask & keep

    def forget_evicted(self, shard: int, shas: list[bytes]) -> None:
        """A shard dropped these scripts past its cache's bound: this router no longer
        takes them for cached there."""
        keep = ~(1 << shard)
        homes = self.homes
        for sha in shas:
            mask = homes.get(sha)
            if mask is not None:
                homes[sha] = mask & keep

    def forget_library(self, code: bytes | None) -> None:
        """A FUNCTION change through this router is under way: the verdicts on the
        functions of the library a LOAD names (which REPLACE replaces) go; on any other
        change (`code` None) all of them."""
        try:
            name = None if code is None else parse_metadata(code)[1]
        except ReplyError:
            return  # the shards refuse it too: nothing changes
        if name is None:
            self.forget_functions()
            return
        self.functions_generation += 1
        for function in self.libraries.pop(name, ()):
            self.by_function.pop(function, None)

    def forget_functions(self) -> None:
        self.by_function.clear()
        self.libraries.clear()
        self.functions_generation += 1

    def first_settled(self, change: bytes) -> bool:
        """A change's settled notice (told again to whoever did not answer): True the first
        time this router hears of it; the latest MAX_SETTLED_SEEN ids are remembered."""
        if change in self.settled:
            return False
        if len(self.settled) >= MAX_SETTLED_SEEN:
            del self.settled[next(iter(self.settled))]
        self.settled[change] = None
        return True

    def judge_shards_libraries(self, generation: int, per_shard: list[list[bytes]]) -> bool:
        """Every shard's library texts (FUNCTION LIST WITHCODE, asked for at `generation`):
        their functions' verdicts replace this router's, unless a FUNCTION change was seen
        since (then they may be older than it) or the shards differ (a change under way:
        a function might run either text); past MAX_JUDGED_LIBRARIES none is judged
        (every FCALL holds its followers). True when judged."""
        if generation != self.functions_generation:
            return False
        first = sorted(per_shard[0]) if per_shard else []
        if any(sorted(codes) != first for codes in per_shard[1:]):
            return False
        self.by_function.clear()
        self.libraries.clear()
        if len(first) <= MAX_JUDGED_LIBRARIES:
            for code in first:
                self.note_library(code)
        return True

    def note_library(self, code: bytes) -> None:
        """A library the shards have (a FUNCTION LOAD through this router succeeded, or
        their FUNCTION LIST): its functions' verdicts."""
        verdicts = function_verdicts(code)
        if len(self.by_function) + len(verdicts) > MAX_VERDICTS:
            self.forget_functions()
        self.by_function.update(verdicts)
        self.libraries[parse_metadata(code)[1]] = list(verdicts)

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
        """For EVAL*/EVALSHA*/FCALL* argv (a function: as its library's text showed it)."""
        name = argv[0].lower()
        if name.startswith(b"evalsha"):
            return self.sha_keeps(argv[1])
        if name.startswith(b"eval"):
            return self.body_keeps(argv[1])
        return self.by_function.get(argv[1], False)
