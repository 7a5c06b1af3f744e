"""Redis Cluster's key-to-slot function: CRC16-XMODEM of the key (or of its
`{hash tag}`) modulo 16384. `binascii.crc_hqx` is exactly CRC16-XMODEM, in C."""

from binascii import crc_hqx

SLOT_COUNT = 16384


def key_slot(key: bytes) -> int:
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & 16383


def slot_ranges(shard_count: int) -> list[tuple[int, int]]:
    """Contiguous, inclusive slot ranges, one per shard, as even as possible."""
    if not 1 <= shard_count <= SLOT_COUNT:  # read from cluster.json or a store: runtime input
        raise ValueError(f"shard count {shard_count} is outside 1..{SLOT_COUNT}")
    ranges = []
    for shard in range(shard_count):
        first = shard * SLOT_COUNT // shard_count
        last = (shard + 1) * SLOT_COUNT // shard_count - 1
        ranges.append((first, last))
    return ranges


def slot_owner_table(shard_count: int) -> list[int]:
    """A list indexed by slot giving the shard that owns it."""
    owners = [0] * SLOT_COUNT
    for shard, (first, last) in enumerate(slot_ranges(shard_count)):
        for slot in range(first, last + 1):
            owners[slot] = shard
    return owners
