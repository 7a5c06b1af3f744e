"""The off-box snapshotter (DESIGN.md "snapshotter", invariant 5).

build             one shard's next snapshot: previous snapshot + log -> verified RDB + manifest
s3                snapshots and archived log segments in S3
runner            the snapshotter process: schedule, publish, archive, release notices
restore           rebuild a data directory from S3 (newest or point in time)
rdb_import        seed a data directory from a Redis RDB; export: one RDB of everything
shard_hooks       what a shard calls at start and while serving

RDB files are read and written by durakv.shards.rdb, the one RDB codec that the
shard's DUMP/RESTORE uses too.
"""
