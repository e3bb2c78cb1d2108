"""The sharded cut source of the serving tests, with the reference rows it holds."""

from embedlookup.serving import ShardedTables


class ShardedSource(ShardedTables):
    def rows(self, keys):
        """Reference rows: what the model holds now (zeros when absent), read from the source's own tables."""
        return self.find(keys)


def uniform_reads(rep, keys, seconds):
    """Reads ``keys`` from the replica's current version again and again for
    ``seconds``: (answers whose rows were not all one value or lacked a key,
    versions seen)."""
    import time

    import numpy as np

    bad, seen = [], set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with rep.snapshot() as v:
            rows, found = v.find(keys)
            seen.add(v.version)
        u = np.unique(rows)
        if u.size != 1 or not found.all():
            bad.append((v.version, u[:4]))
    return bad, seen
