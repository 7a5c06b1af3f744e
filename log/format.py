"""Record framing (specified byte by byte in log/FORMAT.md): encoding on the write
path and a chunked, bounded-memory frame parser on the read/recovery path.

A record is a 32-byte header followed by the payload:
magic(4) crc32c(4) length(4) write_index(4) seq(8) epoch(8) payload(length).
The CRC covers bytes 8..end of payload, so every header field except the magic
(which is checked by equality) is protected."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from dataclasses import dataclass
from typing import Callable, Sequence


def _load_crc32c() -> Callable[..., int]:
    """crc32c.crc32c, from the package's C extension alone. The package's __init__
    imports importlib.metadata (with email, zipfile, csv, tempfile) and argparse to
    state its version: ~2 MB in every process of a tree, as the log is imported by all
    (tests/test_process_memory.py). A layout without the extension loads the package."""
    package = importlib.util.find_spec("crc32c")
    for directory in (package.submodule_search_locations or []) if package else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_crc32c" + suffix)
            if os.path.exists(path):
                spec = importlib.util.spec_from_file_location("crc32c._crc32c", path)
                assert spec is not None and spec.loader is not None, path
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module.crc32c
    from crc32c import crc32c as packaged

    return packaged


crc32c = _load_crc32c()

MAGIC = b"DKVR"
HEADER_BYTES = 32
MAX_RECORD_BYTES = 1 << 30          # payload limit, part of the format
MAX_WRITE_INDEX = (1 << 32) - 1
READ_CHUNK_BYTES = 1 << 20          # parser reads files in chunks of this size
_MAX_PREAD_BYTES = 1 << 30          # one pread never asks for more than this

_TAIL = struct.Struct("<IIQQ")      # length, write_index, seq, epoch (bytes 8..32)
_HEADER = struct.Struct("<4sIIIQQ")  # the whole 32-byte header
_CRC = struct.Struct("<I")
ZERO_HEADER = bytes(HEADER_BYTES)
ZERO_HEADER_REASON = "zero header"  # preallocated space not yet written: the end of the log


class PayloadPieces:
    """A record payload given as consecutive buffers, a big value among them (a
    512 MiB SET), so that framing and writing it copies none of them: the CRC runs
    over the parts in turn and the log writes them with one pwritev
    (encode_records_scattered, Log.sync). Where a log needs one buffer (etcd),
    bytes(payload) joins them."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.size = sum(map(len, parts))

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


Unsealed = list[tuple[bytes, list[bytes]]]  # records framed but for their CRC: (header tail, payload buffers)


def encode_records_scattered(payloads: Sequence[bytes | PayloadPieces], first_seq: int, epoch: int,
                             first_write_index: int) -> Unsealed:
    """encode_records, but each record as its header's tail and its payload's buffers
    as they are, its CRC left to seal_records: a CRC over 512 MiB takes a while,
    which the log computes where it writes (the commit thread), not in append."""
    records: Unsealed = []
    seq = first_seq
    write_index = first_write_index
    for payload in payloads:
        tail = _TAIL.pack(len(payload), write_index, seq, epoch)
        records.append((tail, payload.parts if isinstance(payload, PayloadPieces) else [payload]))
        seq += 1
        write_index += 1
    return records


def unsealed_bytes(records: Unsealed) -> int:
    return sum(HEADER_BYTES + sum(map(len, pieces)) for _, pieces in records)


def seal_records(records: Unsealed) -> list[bytes]:
    """The buffers whose concatenation encode_records would return for these records."""
    parts: list[bytes] = []
    for tail, pieces in records:
        crc = crc32c(tail)
        for piece in pieces:
            crc = crc32c(piece, crc)
        parts.append(MAGIC + _CRC.pack(crc) + tail)
        parts.extend(pieces)
    return parts


def encode_records(payloads: Sequence[bytes], first_seq: int, epoch: int,
                   first_write_index: int) -> bytes:
    """Frame `payloads` as consecutive records seq first_seq.. (all with `epoch`);
    write indexes count up from `first_write_index`. Returns one bytes object."""
    parts: list[bytes] = []
    append = parts.append
    pack_tail = _TAIL.pack
    pack_crc = _CRC.pack
    seq = first_seq
    write_index = first_write_index
    for payload in payloads:
        tail = pack_tail(len(payload), write_index, seq, epoch)
        append(MAGIC)
        append(pack_crc(crc32c(payload, crc32c(tail))))
        append(tail)
        append(payload)
        seq += 1
        write_index += 1
    return b"".join(parts)


@dataclass(slots=True)
class Frame:
    """One valid record as found on disk."""
    offset: int
    seq: int
    epoch: int
    write_index: int
    payload: bytes

    @property
    def write_first_seq(self) -> int:
        """Sequence number of the first record of the write(2) that stored this one."""
        return self.seq - self.write_index

    @property
    def end(self) -> int:
        return self.offset + HEADER_BYTES + len(self.payload)


@dataclass(slots=True)
class BadFrame:
    """The bytes at `offset` are not a valid record (torn or corrupt)."""
    offset: int
    reason: str


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """Read up to `size` bytes at `offset`, looping over short reads; shorter only at EOF."""
    chunks = []
    while size > 0:
        data = os.pread(fd, min(size, _MAX_PREAD_BYTES), offset)
        if not data:
            break
        chunks.append(data)
        size -= len(data)
        offset += len(data)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FrameReader:
    """Parses records from an open file descriptor starting at `offset`.

    next() returns a Frame, a BadFrame (and stays there), or None at a clean end
    of file. Memory is bounded by one chunk plus the largest record."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self._fd = fd
        self._buf = b""
        self._base = offset          # file offset of self._buf[0]
        self.pos = offset            # file offset of the next record

    def _fill(self, end: int) -> bool:
        """Make the buffer cover file bytes [pos, end); False if the file is shorter."""
        have_end = self._base + len(self._buf)
        if have_end >= end:
            return True
        keep = self._buf[self.pos - self._base:]
        more = _pread_full(self._fd, max(end - have_end, READ_CHUNK_BYTES), have_end)
        self._buf = keep + more
        self._base = self.pos
        return self._base + len(self._buf) >= end

    def next(self) -> Frame | BadFrame | None:
        pos = self.pos
        if not self._fill(pos + HEADER_BYTES):
            if self._base + len(self._buf) == pos:
                return None
            return BadFrame(pos, "incomplete header")
        start = pos - self._base
        magic, crc, length, write_index, seq, epoch = _HEADER.unpack_from(self._buf, start)
        if magic != MAGIC:
            if self._buf[start:start + HEADER_BYTES] == ZERO_HEADER:
                return BadFrame(pos, ZERO_HEADER_REASON)
            return BadFrame(pos, "bad magic")
        if length > MAX_RECORD_BYTES:
            return BadFrame(pos, f"length {length} exceeds the {MAX_RECORD_BYTES}-byte limit")
        end = pos + HEADER_BYTES + length
        if not self._fill(end):
            return BadFrame(pos, f"incomplete record (length {length})")
        start = pos - self._base
        view = memoryview(self._buf)
        payload = self._buf[start + HEADER_BYTES:start + HEADER_BYTES + length]
        if crc32c(payload, crc32c(view[start + 8:start + HEADER_BYTES])) != crc:
            return BadFrame(pos, "checksum mismatch")
        self.pos = end
        return Frame(pos, seq, epoch, write_index, payload)


def find_later_write(fd: int, bad_offset: int, expected_seq: int) -> Frame | None:
    """Search the file after a bad frame for a valid record written by a LATER
    write(2) than the one that held the bad frame (write_first_seq > expected_seq,
    see FORMAT.md). Such a record proves the bad frame had been fsync'd, so the
    damage is corruption rather than a torn tail. Returns the first one found."""
    offset = bad_offset + 1
    carry = b""
    while True:
        chunk = _pread_full(fd, READ_CHUNK_BYTES, offset)
        if not chunk:
            return None
        data = carry + chunk
        data_base = offset - len(carry)
        hit = data.find(MAGIC)
        while hit >= 0:
            frame = FrameReader(fd, data_base + hit).next()
            if isinstance(frame, Frame) and frame.write_first_seq > expected_seq:
                return frame
            hit = data.find(MAGIC, hit + 1)
        carry = data[-(len(MAGIC) - 1):]
        offset += len(chunk)


def nonzero_end(fd: int, offset: int) -> int:
    """The offset just past the file's last non-zero byte at or after `offset` (`offset`
    if there is none): what a preallocated segment (log/FORMAT.md, "Preallocation")
    holds beyond `offset` besides its unwritten zeros."""
    end = offset
    while True:
        chunk = _pread_full(fd, READ_CHUNK_BYTES, offset)
        if not chunk:
            return end
        kept = len(chunk.rstrip(b"\0"))
        if kept:
            end = offset + kept
        offset += len(chunk)
