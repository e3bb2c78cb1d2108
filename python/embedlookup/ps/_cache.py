"""A trainer-side cache of hot rows (docs/ps.md, "Trainer-side cache").

The rows live in a ``FrequencyTable`` of ``dim + 2`` floats sized by the
user: its admission and eviction decide which keys are kept. The two extra
floats stamp each row with how fresh it is: ``fresh + 1`` (0: admitted, not
filled yet) split into two float32 digits of 24 bits (exact), where
``fresh`` is the number of this client's pushes the row's shard had applied
when it answered the pull (its last sequence number + 1): the row misses none
of them. A row is served
while ``pushes sent - fresh <= S``: it misses at most the last S pushes of
this client, the bounded mode's own guarantee. A pull scores each of its
distinct keys once, weighted by its occurrences; a batch of more distinct keys
than the cache holds scores only its ``rows`` most frequent ones.
"""

from __future__ import annotations

import numpy as np

from .. import _core

_DIGIT = float(1 << 24)
#: FrequencyTable options the cache sets itself.
RESERVED = ("dim", "budget_rows", "budget_bytes", "optimizer", "initializer", "default_row", "features", "tier",
            "on_evict")


class RowCache:
    def __init__(self, dim: int, rows: int, options: dict | None):
        from .. import init
        from ..frequency import FrequencyTable

        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"cache_rows must be an int >= 1, got {rows!r}")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise TypeError(f"cache_options must be a dict of FrequencyTable options, got {type(options).__name__}")
        for bad in RESERVED:
            if bad in options:
                raise ValueError(f"cache_options: {bad!r} is set by the cache (cache_rows sizes it)")
        opts = dict(options)
        opts.setdefault("num_threads", 1)
        self.dim, self.rows, self.options = int(dim), int(rows), dict(options)
        self.threads = int(opts["num_threads"] or 1)
        self.table = FrequencyTable(self.dim + 2, budget_rows=self.rows, initializer=init.zeros(), on_evict="drop",
                                    **opts)
        self.hits = 0
        self.misses = 0
        # Reused from call to call (the client holds its lock until it is done
        # with them): a fresh (distinct keys, dim + 2) array per pull, ~14 MB,
        # was mapped and zeroed by the kernel every time.
        self._raw = np.empty((0, self.dim + 2), np.float32)
        self._held = np.empty(0, np.bool_)

    def _buffers(self, n: int):
        if self._raw.shape[0] < n:
            self._raw = np.empty((max(n, 2 * self._raw.shape[0]), self.dim + 2), np.float32)
            self._held = np.empty(self._raw.shape[0], np.bool_)
        return self._raw[:n], self._held[:n]

    def lookup(self, keys: np.ndarray, now: int, bound: int):
        """Scores the keys (admission, eviction), each distinct key once
        weighted by its occurrences; returns ``(uk, inv, raw, hit, held)``:
        the distinct keys, each key's index into them, one cached row per
        distinct key with its stamp (``(len(uk), dim + 2)``, valid until the
        next call), whether that copy is at most ``bound`` pushes old (the
        rows of the others are to be replaced) and whether the cache holds a
        row for the key now (admitted, and kept by the eviction)."""
        uk, inv, counts = _core.distinct_keys(keys)  # a hash pass (np.unique sorts: twice the time)
        w = counts.astype(np.float32)
        raw, held = self._buffers(uk.shape[0])
        if uk.shape[0] > self.rows:  # a table scores at most its budget of distinct keys per call
            top = np.argsort(-counts, kind="stable")[:self.rows]
            self.table.lookup(uk[top], train=True, weights=w[top])
            _, held = self.table.find(uk, out=raw)  # the others: zeros (stamp 0, a miss)
        else:  # not admitted: the zero initializer
            self.table.lookup(uk, train=True, weights=w, out=raw, found=held)
        stamp = raw[:, self.dim].astype(np.float64) * _DIGIT + raw[:, self.dim + 1]
        hit = (stamp > 0) & (now - (stamp - 1) <= bound)
        n_hit = int(counts[hit].sum())
        self.hits += n_hit
        self.misses += keys.shape[0] - n_hit
        return uk, inv, raw, hit, held

    def fill(self, keys: np.ndarray, rows: np.ndarray, fresh: np.ndarray, found: np.ndarray) -> None:
        """Stores the rows just fetched for the keys the cache holds (distinct
        keys; ``found``: the ``held`` of :meth:`lookup` for them, unchanged
        since: the client's lock is held); ``fresh[i]``: how many of this
        client's pushes row i holds."""
        if not found.any():
            return
        s = fresh[found] + 1
        out = np.empty((int(np.count_nonzero(found)), self.dim + 2), np.float32)
        out[:, :self.dim] = rows[found]
        out[:, self.dim] = s // (1 << 24)
        out[:, self.dim + 1] = s % (1 << 24)
        self.table.assign(keys[found], out)

    def stats(self) -> dict:
        n = self.hits + self.misses
        return {"rows": len(self.table), "budget_rows": self.rows, "hits": self.hits, "misses": self.misses,
                "hit_ratio": self.hits / n if n else 0.0}


def merge_duplicates(keys: np.ndarray, grads: np.ndarray):
    """(distinct keys, their summed gradients), keys in order of first
    occurrence. The sums equal the shard's own merge up to float rounding
    (numpy's reduction order is not the kernel's). The arrays themselves when
    no key repeats."""
    uk, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    if uk.shape[0] == keys.shape[0]:
        return keys, grads
    order = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[order], np.arange(uk.shape[0]))
    merged = np.add.reduceat(grads[order], starts, axis=0)
    back = np.argsort(first, kind="stable")  # keys in order of first occurrence
    return np.ascontiguousarray(uk[back]), np.ascontiguousarray(merged[back])
