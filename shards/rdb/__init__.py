"""The RDB format, once (DESIGN.md "Layering"): the shard's DUMP/RESTORE and
the snapshotter's snapshots, restore, import-rdb and export-rdb all use it.

codec    durakv values <-> RDB object bytes (sans-IO), DUMP payloads
file     streamed RDB files on top of the codec (writer, reader, load_rdb)
packed   listpack, intset and ziplist blobs
lzf      LZF decompression (strings Redis stored compressed)
crc64    Redis' CRC-64 (numpy-accelerated, imported only for large inputs)

Modules are imported by name; this package imports nothing, so a shard that
needs only the codec does not pay for the rest.
"""
