"""Distributed featurisation and pool scoring with Ray (``pip install bayesal[ray]``).

- :func:`featurize_with_ray`: a frozen backbone over a corpus with Ray Data ``map_batches`` (an actor
  pool, the model loaded once per worker), written to resumable shards.
- :func:`score_pool`: top-b of a row-wise score over a sharded pool, one task per shard, the per-shard
  top-b merged exactly; the posterior is put in the object store once per query. ``backend="local"``
  runs the same per-shard code in this process without Ray and returns the same result.

For a cluster, connect first with ``ray.init(address="auto")`` (or ``"ray://head:10001"``); the shard
files must be on a file system every node can read.
"""

from .featurize import featurize_with_ray
from .scoring import BACKENDS, pool_parts, score_pool

__all__ = ["featurize_with_ray", "score_pool", "pool_parts", "BACKENDS"]
