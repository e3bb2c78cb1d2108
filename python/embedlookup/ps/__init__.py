"""The parameter server: embedding rows sharded over tables (in this process
or as Ray actors), pulled and pushed by trainers' clients in sync,
bounded-staleness or async mode, with idempotent pushes and shards that
recover every acknowledged push after a crash. See docs/ps.md.

Quick start::

    import numpy as np, embedlookup as el
    from embedlookup import ps
    with ps.ParameterServer(64, 2, optimizer=el.optim.Adagrad(lr=0.05)) as server:
        client = server.client(mode="sync")
        values, offsets = np.array([7, 42, 7], np.int64), np.array([0, 2], np.int64)
        pooled = client.pooled_pull(values, offsets, mode="sum")          # (2, 64)
        client.push_pooled(values, offsets, np.ones((2, 64), np.float32))  # fused backward on the shards
"""

from ._client import (ASYNC_MAX_IN_FLIGHT, Client, PSError, PushRejectedError, ShardUnavailableError,
                      parse_mode)
from ._server import ParameterServer
from ._shard import ShardLostError

__all__ = ["ParameterServer", "Client", "PSError", "ShardUnavailableError", "PushRejectedError", "ShardLostError",
           "ASYNC_MAX_IN_FLIGHT", "parse_mode"]
