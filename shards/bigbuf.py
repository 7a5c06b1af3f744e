"""A big value received straight into the bytes object the keyspace will hold.

A value of hundreds of megabytes that arrives over a socket was grown piece by
piece in a bytearray (each read copied once more, each growth a realloc) and
then copied into bytes, which the keyspace holds: two extra copies of every
byte and one copy of the whole value in a single loop turn (a 512 MiB SET held
its shard ~0.2 s in `bytes(blob)` alone). Instead, `Filling` allocates the bytes
object uninitialized (CPython's PyBytes_FromStringAndSize(NULL, n): a large
malloc is a fresh anonymous mapping, so nothing is written or zeroed up front),
exposes its storage as a writable memoryview that `recv_into` fills, and hands
the bytes out only once every byte of it was written. Until then the object is
reachable only through its Filling: nobody hashes, compares or shares it.
"""

from __future__ import annotations

import ctypes
import socket

_from_string_and_size = ctypes.pythonapi.PyBytes_FromStringAndSize
_from_string_and_size.restype = ctypes.py_object
_from_string_and_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
# ob_sval, the first byte of a bytes object's storage, is its last header field;
# __basicsize__ counts the one byte CPython keeps for the terminating NUL.
_DATA_OFFSET_BYTES = bytes.__basicsize__ - 1
# At most this much is received into a Filling per loop turn (recv_into's limit): a
# read into a large space goes on copying while the sender keeps up, holding the
# loop for as long; 4 MiB costs ~1 ms (copy and page faults).
FILL_READ_BYTES = 4 * 1024 * 1024


class Filling:
    """A bytes object of `size` bytes being written in order, from the start."""

    __slots__ = ("size", "have", "_value", "_view")

    def __init__(self, size: int) -> None:
        assert size > 0, "an empty value needs no filling"
        self.size = size
        self.have = 0
        value = _from_string_and_size(None, size)
        assert type(value) is bytes and len(value) == size
        self._value: bytes | None = value
        storage = (ctypes.c_char * size).from_address(id(value) + _DATA_OFFSET_BYTES)
        self._view: memoryview | None = memoryview(storage).cast("B")

    def space(self) -> memoryview:
        """The part not written yet, for recv_into; valid until the next write or take."""
        assert self._view is not None, "a taken Filling has no space"
        return self._view[self.have :]

    def recv(self, sock: socket.socket, leave_bytes: int = 0) -> int:
        """One read from sock into the space, of at most FILL_READ_BYTES, leaving the
        last `leave_bytes` unwritten; what it got (0: the end of the stream). The
        caller calls wrote(). BlockingIOError and OSError propagate."""
        with self.space() as space:
            return sock.recv_into(space, min(len(space) - leave_bytes, FILL_READ_BYTES))

    def wrote(self, count: int) -> None:
        """`count` more bytes were written into space()."""
        assert 0 <= count <= self.size - self.have, f"wrote {count} past the end ({self.have}/{self.size})"
        self.have += count

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy the head of data in; returns how many bytes it took."""
        assert self._view is not None, "a taken Filling takes no more bytes"
        take = min(len(data), self.size - self.have)
        with memoryview(data) as source:
            self._view[self.have : self.have + take] = source[:take]
        self.have += take
        return take

    @property
    def complete(self) -> bool:
        return self.have == self.size

    def take(self) -> bytes:
        """The value, once every byte was written; the Filling is done with it."""
        assert self.have == self.size and self._value is not None, \
            f"a value taken with {self.have} of {self.size} bytes written"
        value = self._value
        self._value = None
        self._view = None
        return value


def _self_check() -> None:
    """The layout assumption above, checked once at import on this interpreter."""
    filling = Filling(3)
    filling.write(b"abc")
    value = filling.take()
    if value != b"abc" or hash(value) != hash(b"abc"):
        raise RuntimeError("bytes objects are not laid out as shards/bigbuf.py expects")


_self_check()
