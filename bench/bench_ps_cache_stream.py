"""The trainer-side cache on a stream: the bounded step (``pooled_pull`` +
``push_pooled``, ``bounded:2``) with and without ``cache_rows`` = a fifth of
the rows, on Zipf(1.05) batches of 4096 x 32 over 1 M keys x 64, two local
shards of one thread each, Adagrad.

The suite's ``ps_step_cache`` (``embedlookup bench --suite ps-cache``) rotates
the workload's 3 batches, whose distinct keys all fit in the cache, so its
cache never evicts: the friendliest case. Here the batches rotate through
``--batches`` distinct ones (default 64, each drawn once from the stream's
distribution), so the cache admits and evicts as on a real stream. Per
client: the median step over the timed steps (after ``--warm`` steps), the
hit ratio (per pulled key) and the cache table's admissions and evictions per
step.

    PYTHONPATH=python python bench/bench_ps_cache_stream.py [--steps 40] [--warm 16] [--batches 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from embedlookup import optim, ps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warm", type=int, default=16)
    p.add_argument("--batches", type=int, default=64)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--admit-count", type=int, default=1, help="the cache's admit_count (cache_options)")
    a = p.parse_args(argv)
    dim, bags, pooling = 64, 4096, 32
    rng = np.random.default_rng(0)
    perm = rng.permutation(a.rows)
    offsets = np.arange(0, bags * pooling, pooling, dtype=np.int64)
    batches = [(perm[(rng.zipf(1.05, bags * pooling) - 1) % a.rows].astype(np.int64),
                (rng.standard_normal((bags, dim)) * 0.01).astype(np.float32)) for _ in range(a.batches)]
    server = ps.ParameterServer(dim, 2, optimizer=optim.Adagrad(lr=0.05), table_options={"num_threads": 1})
    out = {}
    try:
        warm = server.client(mode="sync")
        for lo in range(0, a.rows, 1 << 17):  # every row on its shard before timing
            warm.pull(np.arange(lo, min(a.rows, lo + (1 << 17)), dtype=np.int64))
        for name, kw in (("no cache", {}),
                         ("cache", {"cache_rows": a.rows // 5, "cache_options": {"admit_count": a.admit_count}})):
            c = server.client(mode="bounded:2", **kw)
            times, s0 = [], None
            for i in range(a.warm + a.steps):
                k, g = batches[i % len(batches)]
                if i == a.warm and c._cache is not None:
                    s0 = (c.stats()["cache"], c._cache.table.stats())
                t = time.perf_counter()
                c.pooled_pull(k, offsets, "sum")
                c.push_pooled(k, offsets, g, "sum")
                if i >= a.warm:
                    times.append(time.perf_counter() - t)
            c.flush()
            r = {"step_ms": float(np.median(times)) * 1e3}
            if s0 is not None:
                cs, ts = c.stats()["cache"], c._cache.table.stats()
                pulled = (cs["hits"] + cs["misses"]) - (s0[0]["hits"] + s0[0]["misses"])
                r["hit_ratio"] = (cs["hits"] - s0[0]["hits"]) / max(1, pulled)
                r["admitted_per_step"] = (ts["admitted"] - s0[1]["admitted"]) / a.steps
                r["evicted_per_step"] = (ts["evicted"] - s0[1]["evicted"]) / a.steps
            out[name] = r
            print(f"{name}: step {r['step_ms']:.1f} ms (median of {a.steps})"
                  + (f", hit ratio {r['hit_ratio']:.3f}, {r['admitted_per_step']:.0f} admitted and "
                     f"{r['evicted_per_step']:.0f} evicted a step" if s0 is not None else ""), flush=True)
    finally:
        server.shutdown()
    return out


if __name__ == "__main__":
    main()
