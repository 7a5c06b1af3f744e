"""Importing this module registers every command a shard executes."""

from durakv.shards import t_keys, t_multi, t_string  # noqa: F401
from durakv.shards import t_set  # noqa: F401
from durakv.shards import t_zset  # noqa: F401
from durakv.shards import t_list  # noqa: F401
from durakv.shards import t_hash  # noqa: F401
from durakv.shards import t_blocking  # noqa: F401
from durakv.shards import t_bitops  # noqa: F401
from durakv.shards import t_hll  # noqa: F401
from durakv.shards import t_sort  # noqa: F401
from durakv.shards import t_memory  # noqa: F401
from durakv.shards import t_dump  # noqa: F401
from durakv.shards import t_stream  # noqa: F401
from durakv.shards import t_script  # noqa: F401
from durakv.shards import t_function  # noqa: F401
from durakv.shards import t_geo  # noqa: F401
