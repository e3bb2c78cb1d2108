"""A FrequencyTable under eviction churn: training lookups of the distinct keys
of Zipf(1.05) batches (4096 x 32 over 1 M keys) with a budget of a fifth of
the keys, the shape of the parameter server's trainer-side cache
(docs/ps.md): each call admits tens of thousands of keys and evicts as many.
Per ``admit_count``: the median call over the last two thirds of the calls
(the first third fills the table), and the keys admitted and evicted per
call. Rows of dim + 2 floats, one thread,
``on_evict="drop"``, as the cache's table.

    PYTHONPATH=python python bench/bench_frequency_churn.py [--admit 1,4,8] [--calls 48]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import embedlookup as el
from embedlookup import _core


def run(admit_count: int, calls: int, rows: int = 1_000_000, dim: int = 64, bags: int = 4096,
        pooling: int = 32) -> dict:
    rng = np.random.default_rng(0)
    perm = rng.permutation(rows)
    batches = [_core.distinct_keys(perm[(rng.zipf(1.05, bags * pooling) - 1) % rows].astype(np.int64))
               for _ in range(16)]
    t = el.FrequencyTable(dim + 2, budget_rows=rows // 5, initializer=el.init.zeros(), on_evict="drop",
                          num_threads=1, admit_count=admit_count)
    out = np.empty((max(b[0].shape[0] for b in batches), dim + 2), np.float32)
    warm = calls // 3  # the first third fills the table (no eviction yet at admit_count=1)
    times, s0 = [], None
    for i in range(calls):
        uk, _, counts = batches[i % len(batches)]
        if i == warm:
            s0 = t.stats()
        t0 = time.perf_counter()
        t.lookup(uk, train=True, weights=counts.astype(np.float32), out=out[:uk.shape[0]])
        if i >= warm:
            times.append(time.perf_counter() - t0)
    s1, n = t.stats(), calls - warm
    return {"admit_count": admit_count, "median_ms": float(np.median(times)) * 1e3, "timed_calls": n,
            "distinct_keys_per_call": float(np.mean([b[0].shape[0] for b in batches])), "rows": len(t),
            "admitted_per_call": (s1["admitted"] - s0["admitted"]) / n,
            "evicted_per_call": (s1["evicted"] - s0["evicted"]) / n}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admit", default="1,4,8", help="admit_count values, comma-separated")
    p.add_argument("--calls", type=int, default=48)
    a = p.parse_args(argv)
    for ac in (int(x) for x in a.admit.split(",")):
        r = run(ac, a.calls)
        print(f"admit_count={ac}: {r['median_ms']:.1f} ms a call (median of {r['timed_calls']}), "
              f"{r['distinct_keys_per_call']:.0f} distinct keys, {r['admitted_per_call']:.0f} admitted and "
              f"{r['evicted_per_call']:.0f} evicted a call; {r['rows']} rows held at the end", flush=True)


if __name__ == "__main__":
    main()
