"""LZF decompression, for strings redis-server stored compressed in an RDB
(rdbcompression yes, strings over 20 bytes). durakv writes strings
uncompressed, so only the decoder is needed.

The stream is a series of runs, each led by a control byte c:
  c < 32        a literal: the next c + 1 bytes are copied as they are;
  c >= 32       a back reference: length = c >> 5 (7 means "7 + next byte"),
                plus 2; offset = ((c & 31) << 8 | next byte) + 1 bytes back
                from the end of the output (copies may overlap their source).
"""

from __future__ import annotations


class LzfError(ValueError):
    pass


def lzf_decompress(data: bytes, expected_bytes: int) -> bytes:
    """Decompress data, which must expand to exactly expected_bytes."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            end = i + ctrl + 1
            if end > n:
                raise LzfError("LZF literal runs past the end of the input")
            out += data[i:end]
            i = end
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise LzfError("LZF back reference truncated")
            length += data[i]
            i += 1
        if i >= n:
            raise LzfError("LZF back reference truncated")
        start = len(out) - ((ctrl & 31) << 8) - data[i] - 1
        i += 1
        if start < 0:
            raise LzfError("LZF back reference before the start of the output")
        length += 2
        if start + length <= len(out):
            out += out[start:start + length]
        else:
            for k in range(length):
                out.append(out[start + k])
        if len(out) > expected_bytes:
            raise LzfError(f"LZF data expands beyond the declared {expected_bytes} bytes")
    if len(out) != expected_bytes:
        raise LzfError(f"LZF data expands to {len(out)} bytes, not the declared {expected_bytes}")
    return bytes(out)
