"""A second, deliberately plain implementation of the HBM cache policy
(docs/gpu-cache.md): linear scans instead of the ordered victim set, an exact
counter instead of the count-min sketch (a wide sketch over few keys has no
collisions, so its estimates are exact). The oracle of test_hbm_cache_policy."""

import math
from collections import deque

import numpy as np


class CachePolicyModel:
    def __init__(self, slots, half_life, admit_count):
        self.key = [None] * slots
        self.score = [0.0] * slots
        self.last = [0] * slots
        self.dirty = [False] * slots
        self.pins = [0] * slots
        self.hl, self.admit = float(half_life), admit_count
        self.count = {}  # sightings without a slot
        self.clock = 0
        self.pending = deque()

    def _prio(self, s):
        sc = self.score[s]
        return (math.log2(sc) if sc > 0 else -math.inf) + self.last[s] / self.hl

    def plan(self, keys, write):
        now = self.clock = self.clock + 1
        order, cnt = [], {}
        for k in keys.tolist():
            if k not in cnt:
                order.append(k)
                cnt[k] = 0
            cnt[k] += 1
        where = {k: s for s, k in enumerate(self.key) if k is not None}
        used, cands, hits, misses = [], [], 0, 0
        for u, k in enumerate(order):
            c = cnt[k]
            if k in where:
                s = where[k]
                self.pins[s] += 1
                decayed = float(self.score[s]) * 2.0 ** (-(now - self.last[s]) / self.hl)
                self.score[s] = float(np.float32(decayed + c))
                self.last[s] = now
                used.append(s)
                hits += c
            else:
                misses += c
                self.count[k] = self.count.get(k, 0) + c
                if self.count[k] >= self.admit:
                    cands.append((self.count[k], u, k))
        cands.sort(key=lambda t: (-t[0], t[1]))
        plan = {n: [] for n in ("writeback_slots", "writeback_keys", "evict_slots", "evict_keys", "fill_slots",
                                "fill_keys")}
        for est, _, k in cands:
            free = [s for s, key in enumerate(self.key) if key is None]
            if free:
                s = free[0]
            else:
                victims = [(self._prio(s), s) for s in range(len(self.key)) if self.pins[s] == 0]
                if not victims:
                    break
                p, s = min(victims)
                if not math.log2(est) + now / self.hl > p:
                    break
                plan["evict_slots"].append(s)
                plan["evict_keys"].append(self.key[s])
                if self.dirty[s]:
                    plan["writeback_slots"].append(s)
                    plan["writeback_keys"].append(self.key[s])
            self.key[s], self.score[s], self.last[s], self.dirty[s], self.pins[s] = k, float(est), now, False, 1
            used.append(s)
            plan["fill_slots"].append(s)
            plan["fill_keys"].append(k)
        where = {k: s for s, k in enumerate(self.key) if k is not None}
        plan["slot_of"] = [where.get(k, -1) for k in keys.tolist()]
        if write:
            for s in used:
                self.dirty[s] = True
        self.pending.append(used)
        plan["hits"], plan["misses"] = hits, misses
        return plan

    def release(self):
        for s in self.pending.popleft():
            self.pins[s] -= 1
