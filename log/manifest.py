"""The manifest (MANIFEST.json) and the directory layout of a log.

The manifest holds what must survive a crash but changes rarely: the lease epoch
and the first retained sequence number. It is replaced the POSIX-durable way:
write a temp file, fsync it, rename it over the old one, fsync the directory."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .disk import OS_DISK, Disk
from .durable_file import replace_file
from .errors import LogCorrupt

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_TMP_NAME = "MANIFEST.json.tmp"
SEGMENT_SUFFIX = ".seg"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_HOLDER_CHARS = 256
MAX_FENCES = 64   # takeovers remembered (log/FORMAT.md, "Leases and fencing")
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")


@dataclass(frozen=True, slots=True)
class Manifest:
    epoch: int = 0
    holder: str = ""
    first_seq: int = 1
    # First seqs of segments a new lease holder started when it fenced a live one: the
    # segment before such a segment is valid only up to the seq before it.
    fences: tuple[int, ...] = ()


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def list_segments(path: str) -> list[tuple[int, str]]:
    """(first_seq, file path) of every segment in the directory, in seq order.
    A *.seg file with a malformed name is damage, not something to ignore."""
    found = []
    for name in os.listdir(path):
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        match = _SEGMENT_RE.match(name)
        if match is None or int(match.group(1)) < 1:
            raise LogCorrupt(os.path.join(path, name), 0, "malformed segment file name")
        found.append((int(match.group(1)), os.path.join(path, name)))
    found.sort()
    return found


def load_manifest(path: str) -> Manifest | None:
    """The directory's manifest, or None if there is none. Malformed -> LogCorrupt."""
    file_path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(file_path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise LogCorrupt(file_path, 0, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw)
        version, epoch, holder, first_seq = (doc["format_version"], doc["epoch"],
                                             doc["holder"], doc["first_seq"])
        fences = doc.get("fences", [])
    except (ValueError, KeyError, TypeError) as exc:
        raise LogCorrupt(file_path, 0, f"unreadable manifest: {exc}") from exc
    if version != FORMAT_VERSION:
        raise LogCorrupt(file_path, 0, f"unsupported format_version {version!r}")
    if (type(epoch) is not int or epoch < 0 or type(first_seq) is not int or first_seq < 1
            or not isinstance(holder, str) or not isinstance(fences, list) or len(fences) > MAX_FENCES
            or any(type(f) is not int or f < 1 for f in fences)):
        raise LogCorrupt(file_path, 0, f"invalid manifest fields: {doc!r}")
    return Manifest(epoch=epoch, holder=holder, first_seq=first_seq, fences=tuple(fences))


def store_manifest(path: str, manifest: Manifest, disk: Disk = OS_DISK) -> None:
    """Durably replace the manifest: temp file, fsync, rename, fsync directory."""
    doc: dict[str, object] = {"format_version": FORMAT_VERSION, "epoch": manifest.epoch,
           "holder": manifest.holder, "first_seq": manifest.first_seq}
    if manifest.fences:
        doc["fences"] = list(manifest.fences)
    data = (json.dumps(doc, sort_keys=True) + "\n").encode()
    replace_file(os.path.join(path, MANIFEST_NAME), data, tmp_path=os.path.join(path, MANIFEST_TMP_NAME),
                 disk=disk)
