"""A sharded cut source for the serving tests (the contract a parameter server
implements), and a trainer that stamps its cut number into the rows."""

import threading

import numpy as np

import embedlookup as el
from embedlookup.sharding import Cut, shard_of
from embedlookup.storage import delta_info


class ShardedSource:
    """S EmbeddingTables with keys routed by shard_of; export_cut under one
    lock that every write also takes (a global cut)."""

    def __init__(self, num_shards, dim, optimizer=None):
        self.num_shards, self.dim = num_shards, dim
        self.tables = [el.EmbeddingTable(dim, optimizer=optimizer) for _ in range(num_shards)]
        self.lock = threading.Lock()

    def assign(self, keys, rows):
        keys = np.asarray(keys, np.int64)
        rows = np.asarray(rows, np.float32)
        sh = shard_of(keys, self.num_shards)
        with self.lock:
            for s, t in enumerate(self.tables):
                m = sh == s
                if m.any():
                    t.assign(keys[m], rows[m])

    def erase(self, keys):
        keys = np.asarray(keys, np.int64)
        sh = shard_of(keys, self.num_shards)
        with self.lock:
            for s, t in enumerate(self.tables):
                t.erase(keys[sh == s])

    def export_cut(self, since=None):
        since = tuple([0] * self.num_shards if since is None else since)
        with self.lock:
            deltas = tuple(t.export_delta(s) for t, s in zip(self.tables, since))
        versions = tuple(max(int(delta_info(d)["to_version"]), s) for d, s in zip(deltas, since))
        return Cut(since=since, versions=versions, deltas=deltas)

    def rows(self, keys):
        """Reference rows: what the model holds now (zeros when absent)."""
        keys = np.asarray(keys, np.int64)
        out = np.zeros((keys.shape[0], self.dim), np.float32)
        found = np.zeros(keys.shape[0], bool)
        sh = shard_of(keys, self.num_shards)
        for s, t in enumerate(self.tables):
            m = np.flatnonzero(sh == s)
            if m.size:
                out[m], found[m] = t.find(keys[m])
        return out, found
