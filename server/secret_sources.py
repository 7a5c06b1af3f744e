"""Where secrets come from, and where they never go.

argv is readable by every user (`ps`), and a child's environment by every process
of the same uid for as long as the child runs, so no secret is put on a command
line or in a child's environment: the password comes from the config file (warned
about when every user may read it), `--requirepass-file FILE` or stdin
(`--requirepass-file -`); S3 credentials from the config file or, when the operator
exports them, from the supervisor's environment, which it empties of them and hands
on through the config pipe (shards/config.py) to the snapshotter, whose boto3 reads
them from its own in-memory environment (never from /proc/PID/environ).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Mapping, MutableMapping

import msgspec

from durakv.shards.config import Config

PASSWORD_FILE_MAX_BYTES = 4096
WORLD_READABLE = stat.S_IROTH
# Environment variables that hold a secret: kept out of every child's environment.
S3_ENV = {"AWS_ACCESS_KEY_ID": "s3_access_key_id", "AWS_SECRET_ACCESS_KEY": "s3_secret_access_key",
          "AWS_SESSION_TOKEN": "s3_session_token"}
SECRET_ENV = frozenset([*S3_ENV, "AWS_SECURITY_TOKEN", "REDISCLI_AUTH"])
# Config keys (kebab case, as the file spells them) and [settings] entries that are secrets.
SECRET_KEYS = ("requirepass", "tls-key-file-pass", "s3-secret-access-key", "s3-session-token")
SECRET_SETTINGS = ("requirepass", "masterauth", "tls-key-file-pass")


class SecretSourceError(ValueError):
    """A password file that cannot be read: one line naming it and the fix."""


def read_password_file(path: str) -> str:
    """The password in `path` (its first line; `-`: stdin), without the line end."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(PASSWORD_FILE_MAX_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(PASSWORD_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise SecretSourceError(f"cannot read --requirepass-file {path}: {e.strerror}; give a readable "
                                "file holding the password (or - to read it from stdin)") from None
    if len(data) > PASSWORD_FILE_MAX_BYTES:
        raise SecretSourceError(f"--requirepass-file {path} is over {PASSWORD_FILE_MAX_BYTES} bytes; it holds "
                                "the password alone, on one line")
    password = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise SecretSourceError(f"--requirepass-file {path} holds no password on its first line")
    try:
        return password.decode()
    except UnicodeDecodeError:
        raise SecretSourceError(f"--requirepass-file {path}: the password is not UTF-8") from None


def exposed_secrets(config: Config) -> list[str]:
    """The secrets the config file holds, by their keys."""
    values = msgspec.to_builtins(config)
    found = [key for key in SECRET_KEYS if values.get(key)]
    found += [f"[settings] {name}" for name in SECRET_SETTINGS if config.settings.get(name)]
    return found


def config_file_warning(config: Config) -> str:
    """A line warning that the config file holds a secret every user may read ("" if not)."""
    if not config.config_file:
        return ""
    secrets = exposed_secrets(config)
    try:
        mode = stat.S_IMODE(os.stat(config.config_file).st_mode)
    except OSError:
        return ""  # it was read a moment ago; a file gone since is not this warning's business
    if not secrets or not mode & WORLD_READABLE:  # group-readable is the systemd install's: group durakv
        return ""
    return (f"warning: config file {config.config_file} holds {', '.join(secrets)} and every user may read "
            f"it (mode {mode:04o}); chmod o-r {config.config_file} (0600, or 0640 for the service's group)")


def take_env_credentials(config: Config, environ: MutableMapping[str, str] = os.environ) -> Config:
    """`serve`: the S3 credentials the operator exported move from this process's
    environment into the config (unless the file gave them), which reaches the
    snapshotter through the config pipe; every other secret variable is dropped."""
    taken = {}
    for name in SECRET_ENV:
        value = environ.pop(name, None)
        field = S3_ENV.get(name)
        if value and field and not getattr(config, field):
            taken[field] = value
    return msgspec.structs.replace(config, **taken) if taken else config


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a child is started with: this one without any secret."""
    return {name: value for name, value in environ.items() if name not in SECRET_ENV}


def export_s3_credentials(config: Config) -> None:
    """The snapshotter: give boto3 (which reads os.environ) the credentials of the
    config. putenv writes this process's heap, not the environment block the
    kernel shows in /proc/PID/environ."""
    for name, field in S3_ENV.items():
        value = getattr(config, field)
        if value:
            os.environ[name] = value
