"""Connection commands the router answers itself: PING, ECHO, HELLO, AUTH,
SELECT, QUIT, RESET and CLIENT."""

from __future__ import annotations

import time

from durakv.server.client import Client
from durakv.shards.args import ERR_SYNTAX, select_db
from durakv.shards.frames import VERB_NO_WRITES_FUNCTIONS
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, PONG, Map, ReplyError, Simple, Verbatim
from durakv.server.pause import PAUSE_ALL, PAUSE_WRITE
from durakv.shards.table import MULTI_RUN_NOW, ROUTER, arity_error, command, container, subcommand_syntax_error

REDIS_VERSION = b"7.0.15"
CLIENT_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


@command("ping", -1, "fast", group="connection", where=ROUTER,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def ping(client: Client, argv: list[bytes]):
    if len(argv) > 2:
        raise arity_error(b"ping")
    if client.pubsub is not None and client.proto == 2:
        return [b"pong", argv[1] if len(argv) == 2 else b""]  # RESP2 subscribed mode: a message-shaped reply
    return PONG if len(argv) == 1 else argv[1]


@command("echo", 2, "loading stale fast", group="connection", where=ROUTER)
def echo(client: Client, argv: list[bytes]):
    return argv[1]


@command("auth", -2, "noscript loading stale fast no_auth allow_busy", group="connection", where=ROUTER)
def auth(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise ERR_SYNTAX
    acl = client.router.acl
    if len(argv) == 2:
        if acl.default.nopass:
            raise ReplyError(b"ERR AUTH <password> called without any password configured for the "
                             b"default user. Are you sure your configuration is correct?")
        acl.authenticate(client, b"default", argv[1], argv[0])
    else:
        acl.authenticate(client, argv[1], argv[2], argv[0])
    return OK


@command("hello", -1, "noscript loading stale fast no_auth allow_busy", group="connection", where=ROUTER)
def hello(client: Client, argv: list[bytes]):
    proto = client.proto
    i = 1
    if len(argv) >= 2:
        version = parse_ll(argv[1])
        if version is None:
            raise ReplyError(b"ERR Protocol version is not an integer or out of range")
        if version < 2 or version > 3:
            raise ReplyError(b"NOPROTO unsupported protocol version")
        proto = version
        i = 2
    name = None
    credentials = None
    while i < len(argv):
        opt = argv[i].upper()
        remaining = len(argv) - i - 1
        if opt == b"AUTH" and remaining >= 2:
            credentials = (argv[i + 1], argv[i + 2])
            i += 3
        elif opt == b"SETNAME" and remaining >= 1:
            name = argv[i + 1]
            validate_client_name(name)
            i += 2
        else:
            raise ReplyError(b"ERR Syntax error in HELLO option '%s'" % argv[i])
    if credentials is not None:
        client.router.acl.authenticate(client, *credentials, argv[0])
    if not client.authed:
        raise ReplyError(b"NOAUTH HELLO must be called with the client already authenticated, otherwise "
                         b"the HELLO AUTH <user> <pass> option can be used to authenticate the "
                         b"client and select the RESP protocol version at the same time")
    if name is not None:
        client.name = name
    client.proto = proto
    return Map([
        b"server", b"redis",
        b"version", REDIS_VERSION,
        b"proto", proto,
        b"id", client.id,
        b"mode", b"cluster",
        b"role", b"master",
        b"modules", [],
    ])


@command("select", 2, "loading stale fast", group="connection", where=ROUTER)
def select(client: Client, argv: list[bytes]):
    select_db(argv[1])
    return OK


@command("quit", -1, "noscript loading stale fast no_auth allow_busy", group="connection", where=ROUTER,
         multi=MULTI_RUN_NOW)
def quit_(client: Client, argv: list[bytes]):
    client.closing = True
    return OK


@command("reset", 1, "noscript loading stale fast no_auth allow_busy", group="connection", where=ROUTER,
         multi=MULTI_RUN_NOW)
def reset(client: Client, argv: list[bytes]):
    """Back to a fresh connection's state: no transaction or watches, RESP2, no
    name, and unauthenticated again when a password is configured."""
    client.multi = None
    client.multi_error = False
    client.multi_shard = None
    client.unwatch_all()
    client.proto = 2
    client.name = b""
    client.user = client.router.acl.default
    client.authed = client.user.nopass and client.user.enabled
    client.parser.authed = client.authed
    if client.pubsub is not None:
        client.router.pubsub.forget(client)
    client.router.tracking.disable(client)
    client.router.monitors.remove(client)
    if client.reply_off:  # Redis clears REPLY OFF before replying (a SKIP in force still applies)
        client.reply_off = False
        client.unsilence_current()
    client.reply_skip = False
    return Simple(b"RESET")


# --- CLIENT -------------------------------------------------------------------

container("client", "connection", where=ROUTER)


def validate_client_name(name: bytes) -> None:
    if any(c < 33 or c > 126 for c in name):
        raise ReplyError(b"ERR Client names cannot contain spaces, newlines or special characters.")


@command("client|id", 2, "noscript loading stale", group="connection", where=ROUTER)
def client_id(client: Client, argv: list[bytes]):
    return client.id


@command("client|setname", 3, "noscript loading stale", group="connection", where=ROUTER)
def client_setname(client: Client, argv: list[bytes]):
    validate_client_name(argv[2])
    client.name = argv[2]
    return OK


@command("client|getname", 2, "noscript loading stale", group="connection", where=ROUTER)
def client_getname(client: Client, argv: list[bytes]):
    return client.name or None


@command("client|setinfo", 4, "noscript loading stale", group="connection", where=ROUTER)
def client_setinfo(client: Client, argv: list[bytes]):
    attr = argv[2].upper()
    if attr == b"LIB-NAME":
        if any(c < 33 or c > 126 for c in argv[3]):
            raise ReplyError(b"ERR lib-name cannot contain spaces, newlines or special characters.")
        client.lib_name = argv[3]
    elif attr == b"LIB-VER":
        if any(c < 33 or c > 126 for c in argv[3]):
            raise ReplyError(b"ERR lib-ver cannot contain spaces, newlines or special characters.")
        client.lib_ver = argv[3]
    else:
        raise ReplyError(b"ERR Unrecognized option '%s'" % argv[2])
    return OK


def request_bytes(argv: list[bytes]) -> int:
    """Size of argv as a multibulk request: what Redis' qbuf shows for the
    client running the command (its query buffer still holds the request)."""
    return len(b"*%d\r\n" % len(argv)) + sum(len(b"$%d\r\n" % len(a)) + len(a) + 2 for a in argv)


def client_info_line(client: Client, now: float, current: list[bytes] | None = None) -> bytes:
    """One CLIENT LIST line; `current` is the running command of the caller."""
    qbuf = client.parser.buffered_bytes() + (request_bytes(current) if current is not None else 0)
    multi = len(client.multi) if client.multi is not None else -1
    subs = client.pubsub
    sub, psub, ssub = (0, 0, 0) if subs is None else (len(subs.channels), len(subs.patterns), len(subs.shard_channels))
    tracking = client.tracking
    flags = ("O" if client.monitor else "" if subs is None else "P") + (
        tracking.list_flags() if tracking is not None else "") or "N"
    redir = tracking.redirect if tracking is not None else -1
    return (
        f"id={client.id} addr={client.addr} laddr={client.laddr} fd={client.fd} "
        f"name={client.name.decode(errors='replace')} age={int(now - client.created)} "
        f"idle={int(now - client.last_cmd_at)} flags={flags} db=0 sub={sub} psub={psub} ssub={ssub} multi={multi} "
        f"qbuf={qbuf} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=65536 rbp=0 "
        f"obl=0 oll={len(client.replies)} omem={client.outbuf_bytes} tot-mem=0 events=r "
        f"cmd={client.last_cmd} user={client.user.name.decode(errors='replace')} redir={redir} resp={client.proto} "
        f"lib-name={client.lib_name.decode(errors='replace')} "
        f"lib-ver={client.lib_ver.decode(errors='replace')}"
    ).encode()


@command("client|info", 2, "noscript loading stale", group="connection", where=ROUTER,
         tips=("nondeterministic_output",))
def client_info(client: Client, argv: list[bytes]):
    return Verbatim(client_info_line(client, time.monotonic(), argv) + b"\n")


@command("client|list", -2, "admin noscript loading stale", group="connection", where=ROUTER,
         tips=("nondeterministic_output",))
def client_list(client: Client, argv: list[bytes]):
    clients = list(client.router.clients.values())
    if len(argv) > 2:
        opt = argv[2].upper()
        if opt == b"TYPE" and len(argv) == 4:
            kind = argv[3].lower()
            if kind not in CLIENT_TYPES:
                raise ReplyError(b"ERR Unknown client type '%s'" % argv[3])
            if kind == b"pubsub":
                clients = [c for c in clients if c.pubsub is not None]
            elif kind == b"normal":
                clients = [c for c in clients if c.pubsub is None]
            else:
                clients = []
        elif opt == b"ID" and len(argv) >= 4:
            wanted = set()
            for raw in argv[3:]:
                value = parse_ll(raw)
                if value is None:
                    raise ReplyError(b"ERR Invalid client ID")
                wanted.add(value)
            clients = [c for c in clients if c.id in wanted]
        else:
            raise ERR_SYNTAX
    now = time.monotonic()
    return Verbatim(b"".join(client_info_line(c, now, argv if c is client else None) + b"\n"
                             for c in clients))


@command("client|kill", -3, "admin noscript loading stale", group="connection", where=ROUTER)
def client_kill(client: Client, argv: list[bytes]):
    """Both forms: old `CLIENT KILL addr` (+OK or an error, may kill the caller)
    and `CLIENT KILL opt value ...` (a count; a repeated option overrides)."""
    router = client.router
    if len(argv) == 3:
        addr = argv[2].decode(errors="replace")
        victims = [c for c in router.clients.values() if c.addr == addr]
        if not victims:
            raise ReplyError(b"ERR No such client")
        _kill(client, victims)
        return OK
    wanted_id = wanted_addr = wanted_laddr = wanted_user = None
    normal_only = True
    skipme = True
    for i in range(2, len(argv), 2):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise ERR_SYNTAX
        value = argv[i + 1]
        if opt == b"ID":
            wanted_id = parse_ll(value)
            if wanted_id is None or wanted_id <= 0:
                raise ReplyError(b"ERR client-id should be greater than 0")
        elif opt == b"TYPE":
            kind = value.lower()
            if kind not in CLIENT_TYPES:
                raise ReplyError(b"ERR Unknown client type '%s'" % value)
            normal_only = kind == b"normal"
        elif opt == b"ADDR":
            wanted_addr = value.decode(errors="replace")
        elif opt == b"LADDR":
            wanted_laddr = value.decode(errors="replace")
        elif opt == b"USER":
            wanted_user = router.acl.users.get(value)
            if wanted_user is None:
                raise ReplyError(b"ERR No such user '%s'" % value)
        elif opt == b"SKIPME":
            if value.lower() not in (b"yes", b"no"):
                raise ERR_SYNTAX
            skipme = value.lower() == b"yes"
        else:
            raise ERR_SYNTAX
    victims = [
        c for c in router.clients.values()
        if normal_only
        and (wanted_id is None or c.id == wanted_id)
        and (wanted_addr is None or c.addr == wanted_addr)
        and (wanted_laddr is None or c.laddr == wanted_laddr)
        and (wanted_user is None or c.user is wanted_user)
        and not (skipme and c is client)
    ]
    _kill(client, victims)
    return len(victims)


def _kill(caller: Client, victims: list[Client]) -> None:
    for victim in victims:
        if victim is caller:
            victim.closing = True
        else:
            victim.kill()


@command("client|no-evict", 3, "admin noscript loading stale", group="connection", where=ROUTER)
def client_no_evict(client: Client, argv: list[bytes]):
    if argv[2].upper() not in (b"ON", b"OFF"):
        raise ERR_SYNTAX
    return OK


@command("client|reply", 3, "noscript loading stale", group="connection", where=ROUTER)
def client_reply(client: Client, argv: list[bytes]):
    """As Redis: ON answers OK; OFF and SKIP answer nothing (SKIP: nor the next command)."""
    mode = argv[2].upper()
    if mode == b"ON":
        client.reply_off = client.reply_skip = False
        client.unsilence_current()
    elif mode == b"OFF":
        client.reply_off = True
        client.silence_current()
    elif mode == b"SKIP":
        client.reply_skip = not client.reply_off
        client.silence_current()
    else:
        raise ERR_SYNTAX
    return OK


@command("client|pause", -3, "admin noscript loading stale", group="connection", where=ROUTER)
def client_pause(client: Client, argv: list[bytes]):
    """CLIENT PAUSE timeout [WRITE|ALL] (server/pause.py), Redis' checks in its order."""
    if len(argv) > 4:
        raise subcommand_syntax_error(argv)
    mode = PAUSE_ALL
    if len(argv) == 4:
        word = argv[3].upper()
        if word not in (b"WRITE", b"ALL"):
            raise ReplyError(b"ERR CLIENT PAUSE mode must be WRITE or ALL")
        mode = PAUSE_WRITE if word == b"WRITE" else PAUSE_ALL
    timeout_ms = parse_ll(argv[2])
    if timeout_ms is None:
        raise ReplyError(b"ERR timeout is not an integer or out of range")
    if timeout_ms < 0:
        raise ReplyError(b"ERR timeout is negative")
    router = client.router
    pause = router.pause
    pause.pause(timeout_ms, mode)
    router.after(max(pause.end - time.monotonic(), 0), pause.expire)
    if mode == PAUSE_ALL or not router.links[router.home_shard].up:
        return OK

    def functions_known(names: list[bytes]) -> bytes:
        pause.no_writes_functions = frozenset(names)
        return b"+OK\r\n"

    # Which functions FCALL may run during the pause: the reply waits for the answer.
    return router.ask_shard(client, router.home_shard, [VERB_NO_WRITES_FUNCTIONS], functions_known)


@command("client|unpause", 2, "admin noscript loading stale", group="connection", where=ROUTER)
def client_unpause(client: Client, argv: list[bytes]):
    client.router.pause.unpause()
    return OK


@command("client|no-touch", 3, "noscript loading stale", group="connection", where=ROUTER)
def client_no_touch(client: Client, argv: list[bytes]):
    if argv[2].upper() not in (b"ON", b"OFF"):
        raise ERR_SYNTAX
    return OK


# Redis 7.0's CLIENT HELP text, verbatim (it is part of the observable interface).
_CLIENT_HELP = [
    b"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CACHING (YES|NO)",
    b"    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
    b"GETREDIR",
    b"    Return the client ID we are redirecting to when tracking is enabled.",
    b"GETNAME",
    b"    Return the name of the current connection.",
    b"ID",
    b"    Return the ID of the current connection.",
    b"INFO",
    b"    Return information about the current client connection.",
    b"KILL <ip:port>",
    b"    Kill connection made from <ip:port>.",
    b"KILL <option> <value> [<option> <value> [...]]",
    b"    Kill connections. Options are:",
    b"    * ADDR (<ip:port>|<unixsocket>:0)",
    b"      Kill connections made from the specified address",
    b"    * LADDR (<ip:port>|<unixsocket>:0)",
    b"      Kill connections made to specified local address",
    b"    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    b"      Kill connections by type.",
    b"    * USER <username>",
    b"      Kill connections authenticated by <username>.",
    b"    * SKIPME (YES|NO)",
    b"      Skip killing current connection (default: yes).",
    b"LIST [options ...]",
    b"    Return information about client connections. Options:",
    b"    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    b"      Return clients of specified type.",
    b"UNPAUSE",
    b"    Stop the current client pause, resuming traffic.",
    b"PAUSE <timeout> [WRITE|ALL]",
    b"    Suspend all, or just write, clients for <timeout> milliseconds.",
    b"REPLY (ON|OFF|SKIP)",
    b"    Control the replies sent to the current connection.",
    b"SETNAME <name>",
    b"    Assign the name <name> to the current connection.",
    b"UNBLOCK <clientid> [TIMEOUT|ERROR]",
    b"    Unblock the specified blocked client.",
    b"TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]]",
    b"         [OPTIN] [OPTOUT] [NOLOOP]",
    b"    Control server assisted client side caching.",
    b"TRACKINGINFO",
    b"    Report tracking status for the current connection.",
    b"NO-EVICT (ON|OFF)",
    b"    Protect current client connection from eviction.",
    b"HELP",
    b"    Prints this help.",
]


@command("client|help", 2, "loading stale", group="connection", where=ROUTER)
def client_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in _CLIENT_HELP]
