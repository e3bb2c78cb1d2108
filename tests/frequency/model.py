"""A slow, obviously-correct Python model of FrequencyTable's policies.

Exact dictionaries, no sketch (tests size the sketch so that it is exact on
their small traces), one clock step per training call. Mirrors the contract in
docs/frequency.md: admission of missing keys in first-occurrence order, then
the score pass over every occurrence, then TTL expiry and budget eviction of
rows not touched by this call.
"""

from __future__ import annotations

import math

import numpy as np

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    x &= M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return x


def hash_key(key: int) -> int:
    return mix64((key & M64) + 0x9E3779B97F4A7C15)


def coin(seed: int, key: int, step: int) -> float:
    return (mix64(hash_key(key) ^ mix64(seed + step)) >> 11) / float(1 << 53)


class PolicyModel:
    def __init__(self, *, half_life, budget=0, policy="none", evict_fraction=0.05, ttl=0, ttl_interval=0,
                 admit_count=1, admit_probability=1.0, admit_seed=0):
        self.hl, self.budget, self.policy, self.frac = half_life, budget, policy, evict_fraction
        self.ttl = ttl
        self.ttl_interval = ttl_interval or max(1, ttl // 4)
        self.k, self.p, self.seed = admit_count, admit_probability, admit_seed
        self.rows: dict[int, list] = {}  # key -> [score (np.float32), last step]
        self.seen: dict[int, int] = {}  # sightings of keys while they had no row
        self.clock = 0

    def score_now(self, key):
        s, last = self.rows[key]
        return float(s) * 2.0 ** (-(self.clock - last) / self.hl)

    def step(self, keys, weights=None):
        """One training lookup; returns (hits, admitted keys, rejected keys, evicted keys in order)."""
        keys = [int(k) for k in keys]
        if self.budget and len(set(keys)) > self.budget:
            raise ValueError("batch larger than the budget")
        self.clock += 1
        now = self.clock
        hits = sum(k in self.rows for k in keys)
        order, count = [], {}
        for k in keys:
            if k not in self.rows:
                if k not in count:
                    order.append(k)
                    count[k] = 0
                count[k] += 1
        admitted, rejected = [], []
        for k in order:
            ok = True
            if self.k > 1:
                self.seen[k] = self.seen.get(k, 0) + count[k]
                ok = self.seen[k] >= self.k
            if ok and self.p < 1.0:
                ok = coin(self.seed, k, now) < self.p
            if ok:
                self.rows[k] = [np.float32(0.0), now]
                admitted.append(k)
            else:
                rejected.append(k)
        for i, k in enumerate(keys):
            if k not in self.rows:
                continue
            w = 1.0 if weights is None else float(np.float32(weights[i]))
            s, last = self.rows[k]
            base = float(s) if last == now else float(s) * 2.0 ** (-(now - last) / self.hl)
            self.rows[k] = [np.float32(base + w), now]
        evicted = []
        if self.policy == "ttl" and now % self.ttl_interval == 0:
            old = [k for k, (s, last) in self.rows.items() if last != now and now - last > self.ttl]
            old.sort(key=lambda k: (self.rows[k][1], k))
            for k in old:
                del self.rows[k]
            evicted += old
        if self.budget and len(self.rows) > self.budget:
            target = self.budget - math.floor(self.budget * self.frac)
            need = len(self.rows) - target
            cand = [k for k, (s, last) in self.rows.items() if last != now]
            if self.policy == "lfu":
                cand.sort(key=lambda k: (self.score_now(k), self.rows[k][1], k))
            else:
                cand.sort(key=lambda k: (self.rows[k][1], k))
            for k in cand[:need]:
                del self.rows[k]
                evicted.append(k)
        return hits, admitted, rejected, evicted
