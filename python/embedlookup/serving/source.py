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

import numpy as np

from .. import _checks
from ..sharding import Cut
from ..storage import delta_info

__all__ = ["ShardedTables", "TableSource"]


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


class ShardedTables:
    """An in-process sharded model and cut source: ``num_shards``
    EmbeddingTables, keys routed by ``shard_of``, one lock taken by every
    write and by ``export_cut`` (so a cut is one state of every shard). A
    stand-in for a parameter server in tests and benchmarks, and a way to
    serve a model split across tables."""

    def __init__(self, num_shards: int, dim: int, *, optimizer=None, initializer=None,
                 num_threads: Optional[int] = None):
        from ..table import EmbeddingTable

        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be an int >= 1, got {num_shards!r}")
        self.num_shards = num_shards
        self.tables = [EmbeddingTable(dim, optimizer=optimizer, initializer=initializer, num_threads=num_threads)
                       for _ in range(num_shards)]
        self.dim = self.tables[0].dim
        self.lock = threading.RLock()

    def _split(self, keys):
        from ..sharding import shard_of

        k = _checks.keys_1d(keys, "keys")
        sh = shard_of(k, self.num_shards)
        return k, [np.flatnonzero(sh == s) for s in range(self.num_shards)]

    def assign(self, keys, rows) -> None:
        """Sets the rows of ``keys`` on their shards, as one change of the model."""
        k, parts = self._split(keys)
        r = _checks.floats(rows, "rows", (k.shape[0], self.dim))
        with self.lock:
            for t, idx in zip(self.tables, parts):
                if idx.size:
                    t.assign(k[idx], r[idx])

    def apply_gradients(self, keys, grads, optimizer=None) -> None:
        """One optimizer step on the rows of ``keys`` (which must be held), shard by shard, as one change."""
        k, parts = self._split(keys)
        g = _checks.floats(grads, "grads", (k.shape[0], self.dim))
        with self.lock:
            for t, idx in zip(self.tables, parts):
                if idx.size:
                    t.apply_gradients(k[idx], g[idx], optimizer)

    def erase(self, keys) -> int:
        k, parts = self._split(keys)
        with self.lock:
            return sum(t.erase(k[idx]) for t, idx in zip(self.tables, parts) if idx.size)

    def find(self, keys):
        """(rows, found) over every shard (missing keys: zeros, False)."""
        k, parts = self._split(keys)
        out = np.zeros((k.shape[0], self.dim), np.float32)
        found = np.zeros(k.shape[0], np.bool_)
        with self.lock:
            for t, idx in zip(self.tables, parts):
                if idx.size:
                    out[idx], found[idx] = t.find(k[idx])
        return out, found

    def export_cut(self, since: Optional[Sequence[int]] = None) -> Cut:
        if since is None:
            since = (0,) * self.num_shards
        elif isinstance(since, (str, bytes)) or not hasattr(since, "__len__") or len(since) != self.num_shards:
            raise ValueError(f"since must be None or {self.num_shards} versions, got {since!r}")
        since = tuple(_checks.version(s, f"since[{i}]") for i, s in enumerate(since))
        with self.lock:
            deltas = tuple(t.export_delta(s) for t, s in zip(self.tables, since))
        versions = tuple(max(int(delta_info(d)["to_version"]), s) for d, s in zip(deltas, since))
        return Cut(since=since, versions=versions, deltas=deltas)
