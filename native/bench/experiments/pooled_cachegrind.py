"""A standalone experiment behind docs/engine.md ("The bar"): instructions and
cache misses per key of the pooled forward, counted by cachegrind.

Table of 1 M rows x 64 under random 64-bit keys, one batch of 4096 bags x 32
uniform keys, pooled CALLS times. Run it under cachegrind with CALLS = 1 and
3; the difference of the totals, halved, is one call (table building cancels):
  PYTHONPATH=python OMP_NUM_THREADS=1 valgrind --tool=cachegrind --cache-sim=yes \
      python3 native/bench/experiments/pooled_cachegrind.py 1
  (the same with 3), then divide by 131072 keys.
"""

import sys

import numpy as np

import embedlookup as el

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rows, dim, B, P = 1_000_000, 64, 4096, 32
t = el.EmbeddingTable(dim, num_threads=1, initializer=el.init.uniform(-0.01, 0.01, seed=1))
keys = np.random.default_rng(1).integers(0, 2**62, rows)
t.lookup(keys)
rng = np.random.default_rng(0)
k = keys[rng.integers(0, rows, B * P)]
off = np.arange(0, B * P, P, dtype=np.int64)
for _ in range(calls):
    t.pooled_lookup(k, off)
