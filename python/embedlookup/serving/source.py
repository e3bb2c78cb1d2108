"""Cut sources: what a delta log publishes from.

A *cut source* has ``num_shards``, ``dim`` and ``export_cut(since=None) ->
embedlookup.sharding.Cut``: one model version across all shards. The
parameter server implements it over its shards; :class:`TableSource` is the
one-shard adapter for a single ``EmbeddingTable`` / ``FrequencyTable``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Optional, Sequence

from .. import _checks
from ..sharding import Cut
from ..storage import delta_info

__all__ = ["TableSource"]


class TableSource:
    """A one-shard cut source over one table.

    ``export_cut(since)`` returns ``Cut(since=(s,), versions=(v,),
    deltas=(table.export_delta(s),))``.

    ``lock``: a lock that the training code holds around every change it
    makes to the table (``with source.lock: table.apply_gradients(...)``).
    A table's ``export_delta`` runs beside concurrent gradient steps and may
    carry some rows changed after its ``to_version``; a cut must be one
    training state, so the export runs under this lock. When the trainer
    calls ``publish()`` itself between steps (every k steps) no other thread
    writes and the lock costs nothing. Default: a new ``threading.RLock``.
    """

    num_shards = 1

    def __init__(self, table, *, lock: Optional[threading.RLock] = None):
        if not (hasattr(table, "export_delta") and hasattr(table, "dim")):
            raise TypeError(f"table must be an EmbeddingTable or FrequencyTable, got {type(table).__name__}")
        if lock is not None and not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
            raise TypeError(f"lock must be a lock (a context manager), got {type(lock).__name__}")
        self.table = table
        self.lock = lock if lock is not None else threading.RLock()

    @property
    def dim(self) -> int:
        return int(self.table.dim)

    def export_cut(self, since: Optional[Sequence[int]] = None) -> Cut:
        if since is None:
            s = 0
        else:
            if isinstance(since, (str, bytes)) or not hasattr(since, "__len__") or len(since) != 1:
                raise ValueError(f"since must be None or a sequence of 1 version (one shard), got {since!r}")
            s = _checks.version(since[0], "since[0]")
        with self.lock if self.lock is not None else contextlib.nullcontext():
            d = self.table.export_delta(s)
        v = int(delta_info(d)["to_version"])
        return Cut(since=(s,), versions=(max(v, s),), deltas=(d,))
