"""A standalone experiment behind docs/compressed.md ("With rows prefetched on
two levels"): the pooled sum's compute alone. Times pooled_lookup over keys
resolved ahead (EmbeddingTable.resolve) on a table small enough that every
row stays in L1/L2 (default 2000 rows x 64), so the time per batch of
4096 x 32 keys is the kernel's instructions, not memory. With a large table
(e.g. 1000000) it gives the memory-bound time to compare.
Run from a checkout after scripts/dev-build:
  PYTHONPATH=python python3 native/bench/experiments/pooled_in_cache.py [rows] [seconds]
"""

import sys
import time

import numpy as np

import embedlookup as el

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
B, P, dim = 4096, 32, 64
rng = np.random.default_rng(0)
keys = rng.integers(0, 2**62, rows)
dense = (rng.standard_normal((rows, dim)) * 0.1).astype(np.float32)
offsets = np.arange(B, dtype=np.int64) * P
out = np.empty((B, dim), np.float32)
for row_type in ("fp32", "fp16", "bf16", "int8", "int4"):
    t = el.EmbeddingTable(dim, row_type=row_type, num_threads=1)
    t.assign(keys, dense)
    batches = [keys[rng.integers(0, rows, B * P)] for _ in range(3)]
    resolved = [t.resolve(k) for k in batches]
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        for k, r in zip(batches, resolved):
            t0 = time.perf_counter()
            t.pooled_lookup(k, offsets, out=out, resolved=r)
            times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(f"{row_type}: {med * 1e3:.3f} ms per batch, {med / (B * P) * 1e9:.2f} ns per key ({rows} rows, 1 thread)")
