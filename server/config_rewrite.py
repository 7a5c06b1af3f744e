"""CONFIG REWRITE: write the parameters changed since startup back to the --config
TOML file, editing it in place with tomlkit so that comments, order and every
other key stay as the operator wrote them.

A parameter with a top-level home (hz, maxclients, requirepass, loglevel as
log-level, ...; settings.TOP_LEVEL_KEYS) is written there; every other one in the
[settings] table, which the next start applies as CONFIG SET would. Numbers are
written as TOML integers, yes/no parameters as booleans, the rest as strings. The
file is replaced durably (log/durable_file.py) with its mode kept. A parameter
back at its startup value is left as the file has it.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

from durakv.log.durable_file import replace_file
from durakv.server.settings import BOOL, NUMBER, TOP_LEVEL_KEYS, Param, Settings
from durakv.shards.resp import ReplyError

if TYPE_CHECKING:
    import tomlkit

logger = logging.getLogger("durakv.router")

SETTINGS_TABLE = "settings"
MAX_CONFIG_FILE_BYTES = 1024 * 1024
# Top-level keys the config file holds as TOML integers (every other is a string).
INTEGER_KEYS = frozenset({"port", "maxclients", "hz", "proto-max-bulk-len", "client-query-buffer-limit"})
# CONFIG SET's loglevel names are valid log-level values as they are (shards/config.py CHOICES).


def rewrite(settings: Settings, path: str) -> None:
    """Write settings' changes since startup into the TOML file at `path`.
    ReplyError with Redis' "Rewriting config file: ..." text when that fails."""
    if not path:
        raise ReplyError(b"ERR The server is running without a config file")
    try:
        # Imported here, its one user: a process that never rewrites never loads it.
        import tomlkit
    except ImportError:
        raise ReplyError(b"ERR Rewriting config file: tomlkit is not installed (a dependency of durakv)") from None
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_FILE_BYTES + 1)
        if len(text) > MAX_CONFIG_FILE_BYTES:
            raise ValueError(f"over {MAX_CONFIG_FILE_BYTES} bytes")
        doc = tomlkit.parse(text.decode())
        changed = _apply(doc, settings)
        if changed:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            replace_file(path, tomlkit.dumps(doc).encode(), mode=mode, tmp_path=f"{path}.{os.getpid()}.tmp")
    except (OSError, ValueError, tomlkit.exceptions.TOMLKitError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        logger.error("CONFIG REWRITE of %s failed: %s", path, reason)
        raise ReplyError(b"ERR Rewriting config file: " + reason.encode(errors="replace")) from None
    logger.info("CONFIG REWRITE: wrote %s to %s", ", ".join(changed) or "nothing new", path)


def _apply(doc: tomlkit.TOMLDocument, settings: Settings) -> list[str]:
    """Edit doc in place; the names of the parameters written."""
    import tomlkit
    from tomlkit.items import InlineTable, Table

    written = []
    for name, param in settings.params.items():
        value = settings.values[name]
        if value == param.default:
            continue
        top = TOP_LEVEL_KEYS.get(name)
        if top is not None:
            doc[top] = int(value) if top in INTEGER_KEYS else value
        else:
            table = doc.get(SETTINGS_TABLE)
            if table is None:
                table = tomlkit.table()
                doc[SETTINGS_TABLE] = table
            if not isinstance(table, (Table, InlineTable)):
                raise ValueError(f"{SETTINGS_TABLE} is not a table")
            table[name] = _typed(param, value)
        written.append(name)
    return written


def _typed(param: Param, value: str) -> int | bool | str:
    if param.kind == NUMBER:
        return int(value)
    if param.kind == BOOL:
        return value == "yes"
    return value
