"""Connection commands the router answers itself: PING, ECHO, HELLO, AUTH,
SELECT, QUIT, RESET and CLIENT."""

from __future__ import annotations

import hmac
import time

from server.client import Client
from shards.args import ERR_SYNTAX, parse_ll
from shards.resp import OK, PONG, Map, ReplyError, Simple, Verbatim
from shards.table import ROUTER, command, container

REDIS_VERSION = b"7.0.15"
ERR_WRONGPASS = ReplyError(b"WRONGPASS invalid username-password pair or user is disabled.")


@command("ping", -1, "fast sentinel", group="connection", where=ROUTER)
def ping(client: Client, argv: list[bytes]):
    if len(argv) > 2:
        raise ReplyError(b"ERR wrong number of arguments for 'ping' command")
    return PONG if len(argv) == 1 else argv[1]


@command("echo", 2, "fast", group="connection", where=ROUTER)
def echo(client: Client, argv: list[bytes]):
    return argv[1]


def check_password(client: Client, username: bytes, password: bytes) -> None:
    required = client.router.settings.requirepass.encode()
    if username != b"default" or not hmac.compare_digest(password, required):
        raise ERR_WRONGPASS
    client.authed = True
    client.parser.authed = True


@command("auth", -2, "noscript loading stale fast no_auth sentinel allow_busy", group="connection", where=ROUTER)
def auth(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise ERR_SYNTAX
    if len(argv) == 2:
        if not client.router.settings.requirepass:
            raise ReplyError(b"ERR AUTH <password> called without any password configured for the "
                             b"default user. Are you sure your configuration is correct?")
        check_password(client, b"default", argv[1])
    else:
        if not client.router.settings.requirepass and argv[1] == b"default":
            client.authed = True
            return OK
        check_password(client, argv[1], argv[2])
    return OK


@command("hello", -1, "noscript loading stale fast no_auth sentinel allow_busy", group="connection", where=ROUTER)
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
        if client.router.settings.requirepass or credentials[0] != b"default":
            check_password(client, *credentials)
        else:
            client.authed = True
    if not client.authed:
        raise ReplyError(b"NOAUTH HELLO must be called with the client already authenticated, otherwise "
                         b"the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the "
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
    db = parse_ll(argv[1])
    if db is None or not -(2**31) <= db < 2**31:
        raise ReplyError(b"ERR value is not an integer or out of range")
    if db != 0:
        raise ReplyError(b"ERR SELECT is not allowed in cluster mode")
    return OK


@command("quit", -1, "allow_busy noscript loading stale fast no_auth", group="connection", where=ROUTER)
def quit_(client: Client, argv: list[bytes]):
    client.closing = True
    return OK


@command("reset", 1, "noscript loading stale fast no_auth allow_busy", group="connection", where=ROUTER)
def reset(client: Client, argv: list[bytes]):
    client.proto = 2
    client.name = b""
    client.authed = not client.router.settings.requirepass
    client.parser.authed = client.authed
    client.multi = None
    client.multi_error = False
    client.multi_shard = None
    client.unwatch_all()
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


def client_info_line(client: Client, now: float) -> bytes:
    return (
        f"id={client.id} addr={client.addr} laddr={client.laddr} fd={client.fd} "
        f"name={client.name.decode(errors='replace')} age={int(now - client.created)} "
        f"idle={int(now - client.last_cmd_at)} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 "
        f"qbuf={client.parser.buffered_bytes()} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=65536 rbp=0 "
        f"obl=0 oll={len(client.replies)} omem={len(client.outbuf)} tot-mem=0 events=r "
        f"cmd={client.last_cmd} user=default redir=-1 resp={client.proto} "
        f"lib-name={client.lib_name.decode(errors='replace')} "
        f"lib-ver={client.lib_ver.decode(errors='replace')}"
    ).encode()


@command("client|info", 2, "noscript loading stale", group="connection", where=ROUTER)
def client_info(client: Client, argv: list[bytes]):
    return Verbatim(client_info_line(client, time.monotonic()) + b"\n")


@command("client|list", -2, "admin noscript loading stale", group="connection", where=ROUTER)
def client_list(client: Client, argv: list[bytes]):
    clients = list(client.router.clients.values())
    if len(argv) > 2:
        opt = argv[2].upper()
        if opt == b"TYPE" and len(argv) == 4:
            kind = argv[3].lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise ReplyError(b"ERR Unknown client type '%s'" % argv[3])
            if kind != b"normal":
                clients = []
        elif opt == b"ID" and len(argv) >= 4:
            wanted = set()
            for raw in argv[3:]:
                value = parse_ll(raw)
                if value is None or value <= 0:
                    raise ReplyError(b"ERR Invalid client ID")
                wanted.add(value)
            clients = [c for c in clients if c.id in wanted]
        else:
            raise ERR_SYNTAX
    now = time.monotonic()
    return Verbatim(b"".join(client_info_line(c, now) + b"\n" for c in clients))


@command("client|kill", -3, "admin noscript loading stale", group="connection", where=ROUTER)
def client_kill(client: Client, argv: list[bytes]):
    router = client.router
    if len(argv) == 3:
        addr = argv[2].decode(errors="replace")
        victims = [c for c in router.clients.values() if c.addr == addr]
        if not victims:
            raise ReplyError(b"ERR No such client")
        _kill(client, victims)
        return OK
    if len(argv) % 2 != 0:
        raise ERR_SYNTAX
    victims = list(router.clients.values())
    skipme = True
    for i in range(2, len(argv), 2):
        opt, value = argv[i].upper(), argv[i + 1]
        if opt == b"ID":
            wanted = parse_ll(value)
            if wanted is None or wanted <= 0:
                raise ReplyError(b"ERR client-id should be greater than 0")
            victims = [c for c in victims if c.id == wanted]
        elif opt == b"ADDR":
            victims = [c for c in victims if c.addr == value.decode(errors="replace")]
        elif opt == b"LADDR":
            victims = [c for c in victims if c.laddr == value.decode(errors="replace")]
        elif opt == b"TYPE":
            kind = value.lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise ReplyError(b"ERR Unknown client type '%s'" % value)
            if kind != b"normal":
                victims = []
        elif opt == b"USER":
            if value != b"default":
                raise ReplyError(b"ERR No such user '%s'" % value)
        elif opt == b"SKIPME":
            if value.lower() not in (b"yes", b"no"):
                raise ERR_SYNTAX
            skipme = value.lower() == b"yes"
        else:
            raise ERR_SYNTAX
    if skipme:
        victims = [c for c in victims if c is not client]
    _kill(client, victims)
    return len(victims)


def _kill(caller: Client, victims: list[Client]) -> None:
    for victim in victims:
        if victim is caller:
            victim.closing = True
        else:
            victim.kill_event.set()


@command("client|no-evict", 3, "admin noscript loading stale", group="connection", where=ROUTER)
def client_no_evict(client: Client, argv: list[bytes]):
    if argv[2].upper() not in (b"ON", b"OFF"):
        raise ERR_SYNTAX
    return OK


@command("client|no-touch", 3, "noscript loading stale", group="connection", where=ROUTER)
def client_no_touch(client: Client, argv: list[bytes]):
    if argv[2].upper() not in (b"ON", b"OFF"):
        raise ERR_SYNTAX
    return OK


_CLIENT_HELP = [
    b"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"GETNAME", b"    Return the name of the current connection.",
    b"ID", b"    Return the ID of the current connection.",
    b"INFO", b"    Return information about the current client connection.",
    b"KILL <ip:port>", b"    Kill connection made from <ip:port>.",
    b"KILL <option> <value> [<option> <value> [...]]",
    b"    Kill connections. Options are: ID, ADDR, LADDR, TYPE, USER, SKIPME.",
    b"LIST [options ...]", b"    Return information about client connections.",
    b"SETNAME <name>", b"    Assign the name <name> to the current connection.",
    b"SETINFO <option> <value>", b"    Set client meta attr (LIB-NAME, LIB-VER).",
    b"NO-EVICT (ON|OFF)", b"    Protect current client connection from eviction.",
    b"NO-TOUCH (ON|OFF)", b"    Will not touch LRU/LFU stats when this mode is on.",
    b"HELP", b"    Print this help.",
]


@command("client|help", 2, "loading stale", group="connection", where=ROUTER)
def client_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in _CLIENT_HELP]
