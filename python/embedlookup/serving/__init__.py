"""Serving: a delta log published by the training side, and read-only
replicas that follow it (docs/serving.md).

* :class:`DeltaLog` -- publishes cuts of a *cut source* (``num_shards``,
  ``dim``, ``export_cut(since)``: a parameter server, or one table through
  :class:`TableSource`) every k steps or every T seconds, with periodic full
  snapshots and retention.
* :class:`Replica` -- read-only tables that follow the log; every request is
  served from one model version; gaps and corrupt cuts re-bootstrap;
  ``rollback(version)``.
* ``embedlookup serve --log DIR`` -- an HTTP endpoint (uvicorn + starlette,
  the ``serve`` extra): :mod:`embedlookup.serving.http`.
"""

from .log import CorruptCutError, CutManifest, DeltaLog, DirectoryTransport
from .replica import NoCutError, Replica, ReplicaView
from .source import ShardedTables, TableSource

__all__ = ["CorruptCutError", "CutManifest", "DeltaLog", "DirectoryTransport", "NoCutError", "Replica",
           "ReplicaView", "ShardedTables", "TableSource"]
